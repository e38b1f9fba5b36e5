/*
 * hakit FUSE shim: the low-level operations pyfuse3 does not register, added under it.
 *
 * pyfuse3 (3.5) builds its `struct fuse_lowlevel_ops` without `fallocate` and `lseek`, so the
 * kernel answers fallocate(2) with EOPNOTSUPP and SEEK_DATA/SEEK_HOLE as "all data" for our
 * mount. This library defines `fuse_session_new` (symbol version FUSE_3.0, like libfuse's own):
 * loaded with RTLD_GLOBAL before pyfuse3 first calls it, it is the definition pyfuse3 binds to.
 * It copies pyfuse3's table, fills the two empty slots with the trampolines below, and calls
 * libfuse's real `fuse_session_new`. The trampolines hand each request to the handler Python
 * registered (a ctypes callback, run on the thread that processes requests: pyfuse3's event
 * loop), which replies later with hakit_reply_err / hakit_reply_lseek.
 *
 * Without a registered handler the requests are answered as the kernel would answer them
 * alone: fallocate with EOPNOTSUPP (per call, so a handler registered later is reached) and
 * lseek with ENOSYS (the kernel then serves SEEK_DATA/SEEK_HOLE itself from the file size).
 *
 *
 * It also defines libfuse's `fuse_session_mount` (FUSE_3.0 as well): after the real mount it
 * puts a custom I/O (libfuse's fuse_session_custom_io, on the same /dev/fuse descriptor) under
 * the session, which negotiates FUSE_HANDLE_KILLPRIV_V2 (libfuse 3.14 does not know it):
 *  - read() reads a request as libfuse would, and notes what the kernel asked: the flags of
 *    INIT, and for WRITE, SETATTR, OPEN and CREATE whether the kernel asks the server to kill
 *    suid/sgid (FUSE_WRITE_KILL_SUIDGID, FATTR_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID), in
 *    `hakit_last_request` (pyfuse3 runs the handler of a request before it reads another one:
 *    see fuseshim.py); it also counts requests per opcode (logged at unmount);
 *  - writev() adds FUSE_HANDLE_KILLPRIV_V2 to the flags of the INIT reply when the kernel
 *    offered it, and writes everything else unchanged.
 * With the flag the kernel sets SB_NOSEC on the mount, so it stops asking for
 * security.capability before every write (once per inode, until the attributes are refreshed),
 * and leaves killing suid/sgid on write, truncate, O_TRUNC open and chown to the server. Without
 * the custom I/O libfuse would read requests with splice(); with it, with read().
 * hakit_shim_set_killpriv(0) before the mount keeps libfuse's own I/O (the previous behaviour).
 *
 * Built as a Python extension module (hakit.replication._fuseshim) so that pip compiles it
 * with the rest of the package; Python reaches it through ctypes, not through import.
 */
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <fuse_lowlevel.h>

/* Kernel ABI (include/uapi/linux/fuse.h, protocol 7.33+; checked against the kernel's header):
   libfuse 3.14's own copy is not installed, and it does not use these. */
#define HAKIT_FUSE_INIT 26
#define HAKIT_FUSE_SETATTR 4
#define HAKIT_FUSE_OPEN 14
#define HAKIT_FUSE_WRITE 16
#define HAKIT_FUSE_CREATE 35
#define HAKIT_FUSE_HANDLE_KILLPRIV_V2 (1u << 28)
#define HAKIT_FUSE_WRITE_KILL_SUIDGID (1u << 2)
#define HAKIT_FATTR_FH (1u << 6)
#define HAKIT_FATTR_KILL_SUIDGID (1u << 11)
#define HAKIT_FUSE_OPEN_KILL_SUIDGID (1u << 0)
#define HAKIT_IN_HEADER 40  /* sizeof(struct fuse_in_header) */
#define HAKIT_OUT_HEADER 16 /* sizeof(struct fuse_out_header) */
#define HAKIT_OPCODES 64

typedef void (*hakit_fallocate_fn)(fuse_req_t req, uint64_t ino, int mode, int64_t offset,
                                   int64_t length, uint64_t fh);
typedef void (*hakit_lseek_fn)(fuse_req_t req, uint64_t ino, int64_t offset, int whence,
                               uint64_t fh);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                               size_t, void *);
typedef int (*session_mount_fn)(struct fuse_session *, const char *);

/* The request read last (what its handler, run before the next read, asks for): opcode,
   unique, nodeid, the file handle of WRITE (and of SETATTR with FATTR_FH), whether the
   kernel asks to kill suid/sgid, and the caller (uid, gid, pid: whether it is in the file's
   group decides for S_ISGID without group execute). Written by read() and read by Python on
   the same thread. */
struct hakit_request {
    uint32_t opcode;
    uint32_t kill;
    uint64_t unique;
    uint64_t nodeid;
    uint64_t fh;
    uint32_t uid;
    uint32_t gid;
    uint32_t pid;
    uint32_t padding;
};
struct hakit_request hakit_last_request;

/* What the custom I/O saw of the session (hakit_shim_io_state). */
static int want_killpriv = 1;      /* set by Python before the mount */
static int io_installed;           /* 1: custom I/O in place; -errno: fuse_session_custom_io failed */
static int init_seen;              /* the INIT request was read */
static uint64_t init_unique;       /* ... its unique */
static uint32_t kernel_flags;      /* fuse_init_in.flags the kernel offered */
static int init_replied;           /* the INIT reply went out */
static int killpriv_v2;            /* ... with FUSE_HANDLE_KILLPRIV_V2 */
static uint64_t opcode_counts[HAKIT_OPCODES];

static hakit_fallocate_fn on_fallocate;
static hakit_lseek_fn on_lseek;
static int sessions_wrapped;

static void shim_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                           struct fuse_file_info *fi)
{
    hakit_fallocate_fn handler = __atomic_load_n(&on_fallocate, __ATOMIC_ACQUIRE);
    if (handler == NULL) {
        fuse_reply_err(req, EOPNOTSUPP);
        return;
    }
    handler(req, ino, mode, offset, length, fi->fh);
}

static void shim_lseek(fuse_req_t req, fuse_ino_t ino, off_t offset, int whence,
                       struct fuse_file_info *fi)
{
    hakit_lseek_fn handler = __atomic_load_n(&on_lseek, __ATOMIC_ACQUIRE);
    if (handler == NULL) {
        fuse_reply_err(req, ENOSYS);
        return;
    }
    handler(req, ino, offset, whence, fi->fh);
}

/* The definition pyfuse3 binds to (see the version script: FUSE_3.0). */
struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    struct fuse_lowlevel_ops ops;
    session_new_fn real = (session_new_fn)dlvsym(RTLD_NEXT, "fuse_session_new", "FUSE_3.0");
    if (real == NULL) {
        fprintf(stderr, "hakit fuseshim: libfuse's fuse_session_new not found: %s\n", dlerror());
        return NULL;
    }
    memset(&ops, 0, sizeof ops);
    memcpy(&ops, op, op_size < sizeof ops ? op_size : sizeof ops);
    if (ops.fallocate == NULL)
        ops.fallocate = shim_fallocate;
    if (ops.lseek == NULL)
        ops.lseek = shim_lseek;
    __atomic_add_fetch(&sessions_wrapped, 1, __ATOMIC_RELEASE);
    return real(args, &ops, sizeof ops, userdata);
}

/* ---- the custom I/O: what the kernel asks, and KILLPRIV_V2 in the INIT reply ----------------- */

static uint32_t get32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static void note_request(const unsigned char *buf, size_t len)
{
    const unsigned char *arg = buf + HAKIT_IN_HEADER;
    struct hakit_request r;
    memset(&r, 0, sizeof r);
    r.opcode = get32(buf + 4);
    r.unique = get64(buf + 8);
    r.nodeid = get64(buf + 16);
    r.uid = get32(buf + 24);
    r.gid = get32(buf + 28);
    r.pid = get32(buf + 32);
    if (r.opcode < HAKIT_OPCODES)
        opcode_counts[r.opcode]++;
    switch (r.opcode) {
    case HAKIT_FUSE_WRITE: /* fuse_write_in: fh, offset, size, write_flags */
        if (len >= HAKIT_IN_HEADER + 24) {
            r.fh = get64(arg);
            r.kill = (get32(arg + 20) & HAKIT_FUSE_WRITE_KILL_SUIDGID) != 0;
        }
        break;
    case HAKIT_FUSE_SETATTR: /* fuse_setattr_in: valid, padding, fh */
        if (len >= HAKIT_IN_HEADER + 16) {
            uint32_t valid = get32(arg);
            r.fh = (valid & HAKIT_FATTR_FH) ? get64(arg + 8) : 0;
            r.kill = (valid & HAKIT_FATTR_KILL_SUIDGID) != 0;
        }
        break;
    case HAKIT_FUSE_OPEN: /* fuse_open_in: flags, open_flags */
        if (len >= HAKIT_IN_HEADER + 8)
            r.kill = (get32(arg + 4) & HAKIT_FUSE_OPEN_KILL_SUIDGID) != 0;
        break;
    case HAKIT_FUSE_CREATE: /* fuse_create_in: flags, mode, umask, open_flags */
        if (len >= HAKIT_IN_HEADER + 16)
            r.kill = (get32(arg + 12) & HAKIT_FUSE_OPEN_KILL_SUIDGID) != 0;
        break;
    case HAKIT_FUSE_INIT: /* fuse_init_in: major, minor, max_readahead, flags */
        if (len >= HAKIT_IN_HEADER + 16 && !init_seen) {
            init_seen = 1;
            kernel_flags = get32(arg + 12);
            init_unique = r.unique;
        }
        break;
    default:
        break;
    }
    hakit_last_request = r;
}

static ssize_t shim_read(int fd, void *buf, size_t buf_len, void *userdata)
{
    (void)userdata;
    ssize_t res = read(fd, buf, buf_len);
    if (res >= HAKIT_IN_HEADER) {
        int saved = errno;
        note_request(buf, (size_t)res);
        errno = saved;
    }
    return res;
}

/* The INIT reply: copied whole (it is small), its flags completed, written at once. */
static ssize_t write_init_reply(int fd, struct iovec *iov, int count)
{
    unsigned char msg[512];
    size_t len = 0;
    for (int i = 0; i < count; i++) {
        if (len + iov[i].iov_len > sizeof msg)
            return writev(fd, iov, count); /* not the reply we know: leave it alone */
        memcpy(msg + len, iov[i].iov_base, iov[i].iov_len);
        len += iov[i].iov_len;
    }
    /* fuse_out_header (len, error, unique), then fuse_init_out (major, minor, max_readahead,
       flags): only a successful reply of protocol 7.x with the flags field is changed. */
    if (len >= HAKIT_OUT_HEADER + 16 && get32(msg + 4) == 0 && get32(msg + 16) == 7) {
        uint32_t flags = get32(msg + HAKIT_OUT_HEADER + 12) | HAKIT_FUSE_HANDLE_KILLPRIV_V2;
        memcpy(msg + HAKIT_OUT_HEADER + 12, &flags, sizeof flags);
        __atomic_store_n(&killpriv_v2, 1, __ATOMIC_RELEASE);
    }
    ssize_t res = write(fd, msg, len);
    __atomic_store_n(&init_replied, 1, __ATOMIC_RELEASE);
    return res;
}

static ssize_t shim_writev(int fd, struct iovec *iov, int count, void *userdata)
{
    (void)userdata;
    if (!__atomic_load_n(&init_replied, __ATOMIC_ACQUIRE) && count > 0 &&
        iov[0].iov_len >= HAKIT_OUT_HEADER && init_seen &&
        get64((const unsigned char *)iov[0].iov_base + 8) == init_unique) {
        if (kernel_flags & HAKIT_FUSE_HANDLE_KILLPRIV_V2)
            return write_init_reply(fd, iov, count);
        __atomic_store_n(&init_replied, 1, __ATOMIC_RELEASE);
    }
    return writev(fd, iov, count);
}

/* The definition pyfuse3 binds to (FUSE_3.0): mount, then the custom I/O before INIT is read. */
int fuse_session_mount(struct fuse_session *se, const char *mountpoint)
{
    session_mount_fn real = (session_mount_fn)dlvsym(RTLD_NEXT, "fuse_session_mount", "FUSE_3.0");
    if (real == NULL) {
        fprintf(stderr, "hakit fuseshim: libfuse's fuse_session_mount not found: %s\n", dlerror());
        return -1;
    }
    int res = real(se, mountpoint);
    if (res != 0 || !want_killpriv)
        return res;
    init_seen = 0;
    init_unique = 0;
    kernel_flags = 0;
    __atomic_store_n(&init_replied, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&killpriv_v2, 0, __ATOMIC_RELEASE);
    memset(opcode_counts, 0, sizeof opcode_counts);
    struct fuse_custom_io io;
    memset(&io, 0, sizeof io);
    io.read = shim_read;
    io.writev = shim_writev;
    int err = fuse_session_custom_io(se, &io, fuse_session_fd(se));
    __atomic_store_n(&io_installed, err == 0 ? 1 : err, __ATOMIC_RELEASE);
    return res; /* without the custom I/O the session works as before (no KILLPRIV_V2) */
}

/* ---- what Python calls (ctypes) ---------------------------------------------------------- */

void hakit_shim_set_handlers(hakit_fallocate_fn fallocate, hakit_lseek_fn lseek)
{
    __atomic_store_n(&on_fallocate, fallocate, __ATOMIC_RELEASE);
    __atomic_store_n(&on_lseek, lseek, __ATOMIC_RELEASE);
}

/* 0: keep libfuse's own I/O at the next mount (no KILLPRIV_V2); 1 (default): the custom I/O. */
void hakit_shim_set_killpriv(int on)
{
    want_killpriv = on;
}

/* out: [custom I/O installed (1) or -errno or 0, kernel offered KILLPRIV_V2, INIT replied,
         KILLPRIV_V2 negotiated, kernel INIT flags] */
void hakit_shim_io_state(int64_t out[5])
{
    out[0] = __atomic_load_n(&io_installed, __ATOMIC_ACQUIRE);
    out[1] = (kernel_flags & HAKIT_FUSE_HANDLE_KILLPRIV_V2) != 0;
    out[2] = __atomic_load_n(&init_replied, __ATOMIC_ACQUIRE);
    out[3] = __atomic_load_n(&killpriv_v2, __ATOMIC_ACQUIRE);
    out[4] = kernel_flags;
}

/* Requests read per opcode since the mount (out: HAKIT_OPCODES counters). */
void hakit_shim_opcode_counts(uint64_t out[HAKIT_OPCODES])
{
    memcpy(out, opcode_counts, sizeof opcode_counts);
}

int hakit_shim_sessions(void)
{
    return __atomic_load_n(&sessions_wrapped, __ATOMIC_ACQUIRE);
}

int hakit_reply_err(fuse_req_t req, int err)
{
    return fuse_reply_err(req, err);
}

int hakit_reply_lseek(fuse_req_t req, int64_t offset)
{
    return fuse_reply_lseek(req, offset);
}

/* The caller of a request: pid, uid, gid (for logging a refusal on a read-only secondary). */
void hakit_req_caller(fuse_req_t req, int64_t out[3])
{
    const struct fuse_ctx *ctx = fuse_req_ctx(req);
    out[0] = ctx->pid;
    out[1] = ctx->uid;
    out[2] = ctx->gid;
}

/* ---- the (empty) Python module, so that pip builds this file with the package ------------ */

static struct PyModuleDef shim_module = {
    PyModuleDef_HEAD_INIT, "_fuseshim",
    "hakit's FUSE shim (fallocate, lseek under pyfuse3): used through ctypes, see fuseshim.py",
    -1, NULL,
};

PyMODINIT_FUNC PyInit__fuseshim(void)
{
    return PyModule_Create(&shim_module);
}
