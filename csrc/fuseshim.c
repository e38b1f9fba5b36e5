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

#include <fuse_lowlevel.h>

typedef void (*hakit_fallocate_fn)(fuse_req_t req, uint64_t ino, int mode, int64_t offset,
                                   int64_t length, uint64_t fh);
typedef void (*hakit_lseek_fn)(fuse_req_t req, uint64_t ino, int64_t offset, int whence,
                               uint64_t fh);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *, const struct fuse_lowlevel_ops *,
                                               size_t, void *);

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

/* ---- what Python calls (ctypes) ---------------------------------------------------------- */

void hakit_shim_set_handlers(hakit_fallocate_fn fallocate, hakit_lseek_fn lseek)
{
    __atomic_store_n(&on_fallocate, fallocate, __ATOMIC_RELEASE);
    __atomic_store_n(&on_lseek, lseek, __ATOMIC_RELEASE);
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
