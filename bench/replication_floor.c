/*
 * The floor of synchronous replication on this machine kind: what issue 4's workloads cost with
 * NO interception at all (no FUSE, no Python), only the work the semantics demand, in C.
 *
 *   replication_floor serve PORT FILE
 *       The peer: accepts one connection; for each WRITE receives the data, acknowledges on
 *       receipt (async="second"), then pwrite()s it into FILE; for each FSYNC fdatasync()s FILE,
 *       then acknowledges. Exits when the connection ends.
 *   replication_floor run HOST PORT FILE CASE
 *       CASE raw-fsync | repl-fsync: COUNT x (4 KiB pwrite at a random aligned offset of a 64 MiB
 *       file, then fdatasync): prints the p50 and p99 latency in microseconds. repl- also sends
 *       the 4 KiB to the peer (first, so that the peer receives while the local pwrite runs) and
 *       waits for its receipt ack before the write "returns", then sends FSYNC, runs the local
 *       fdatasync meanwhile, and waits for the peer's flush ack.
 *       CASE raw-seq | repl-seq: 256 x 1 MiB sequential pwrite, then fdatasync: prints MiB/s.
 *       repl- sends each MiB (before its local pwrite) and waits for its receipt ack, then FSYNC
 *       as above.
 *
 * Messages: u8 op ('W' or 'F'), u32 length, u64 offset (little endian), then length bytes.
 * Acks: one byte. Built and driven by bench/replication.py (--floor); not part of hakit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KIB 1024
#define MIB (1024 * KIB)
#define FSYNC_OPS 1000
#define SEQ_MIB 256
#define FILE_SIZE (64 * MIB)

struct __attribute__((packed)) msg {
    uint8_t op;
    uint32_t length;
    uint64_t offset;
};

static void __attribute__((noreturn)) die(const char *what)
{
    perror(what);
    exit(1);
}

static void all(ssize_t (*io)(int, void *, size_t), int fd, void *buf, size_t n)
{
    char *p = buf;
    while (n > 0) {
        ssize_t r = io(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                exit(0); /* the other side closed */
            die("socket");
        }
        p += r;
        n -= (size_t)r;
    }
}

static ssize_t rd(int fd, void *b, size_t n) { return read(fd, b, n); }
static ssize_t wr(int fd, void *b, size_t n) { return write(fd, b, n); }

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pwrite_all(int fd, const char *buf, size_t n, off_t off)
{
    while (n > 0) {
        ssize_t r = pwrite(fd, buf, n, off);
        if (r < 0)
            die("pwrite");
        buf += r;
        n -= (size_t)r;
        off += r;
    }
}

static void __attribute__((noreturn)) serve(int port, const char *path)
{
    int file = open(path, O_RDWR | O_CREAT, 0644);
    if (file < 0)
        die(path);
    int lsock = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(lsock, (struct sockaddr *)&a, sizeof a) || listen(lsock, 1))
        die("bind");
    printf("listening\n");
    fflush(stdout);
    int s = accept(lsock, NULL, NULL);
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *buf = malloc(MIB), ack = 'A';
    for (;;) {
        struct msg m;
        all(rd, s, &m, sizeof m);
        if (m.op == 'W') {
            if (m.length > MIB)
                die("length");
            all(rd, s, buf, m.length);
            all(wr, s, &ack, 1); /* on receipt */
            pwrite_all(file, buf, m.length, (off_t)m.offset);
        } else {
            if (fdatasync(file))
                die("fdatasync");
            all(wr, s, &ack, 1);
        }
    }
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void send_msg(int s, char op, const char *data, uint32_t length, uint64_t offset)
{
    struct msg m = {.op = (uint8_t)op, .length = length, .offset = offset};
    all(wr, s, &m, sizeof m);
    if (length)
        all(wr, s, (void *)data, length);
}

static void wait_ack(int s)
{
    char ack;
    all(rd, s, &ack, 1);
}

static int run(const char *host, int port, const char *path, const char *kase)
{
    int repl = strncmp(kase, "repl-", 5) == 0, s = -1, one = 1;
    int file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (file < 0)
        die(path);
    if (repl) {
        s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
        inet_pton(AF_INET, host, &a.sin_addr);
        if (connect(s, (struct sockaddr *)&a, sizeof a))
            die("connect");
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    char *buf = malloc(MIB);
    for (int i = 0; i < MIB; i++)
        buf[i] = (char)(i * 7 + 1);
    if (strstr(kase, "fsync")) {
        if (ftruncate(file, FILE_SIZE))
            die("ftruncate");
        fdatasync(file);
        double lat[FSYNC_OPS];
        srand(1);
        for (int i = 0; i < FSYNC_OPS; i++) {
            off_t off = (off_t)(rand() % (FILE_SIZE / (4 * KIB))) * 4 * KIB;
            double t0 = now_us();
            if (repl) /* sent first: the peer receives while the local copy is made */
                send_msg(s, 'W', buf, 4 * KIB, (uint64_t)off);
            pwrite_all(file, buf, 4 * KIB, off);
            if (repl) {
                wait_ack(s);
                send_msg(s, 'F', NULL, 0, 0);
            }
            if (fdatasync(file))
                die("fdatasync");
            if (repl)
                wait_ack(s);
            lat[i] = now_us() - t0;
        }
        qsort(lat, FSYNC_OPS, sizeof lat[0], cmp);
        printf("{\"p50_us\": %.0f, \"p99_us\": %.0f}\n", lat[FSYNC_OPS / 2],
               lat[FSYNC_OPS * 99 / 100]);
    } else {
        double t0 = now_us();
        for (int i = 0; i < SEQ_MIB; i++) {
            if (repl)
                send_msg(s, 'W', buf, MIB, (uint64_t)i * MIB);
            pwrite_all(file, buf, MIB, (off_t)i * MIB);
            if (repl)
                wait_ack(s);
        }
        if (repl)
            send_msg(s, 'F', NULL, 0, 0);
        if (fdatasync(file))
            die("fdatasync");
        if (repl)
            wait_ack(s);
        printf("{\"mib_s\": %.0f}\n", SEQ_MIB / ((now_us() - t0) / 1e6));
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 4 && strcmp(argv[1], "serve") == 0)
        serve(atoi(argv[2]), argv[3]); /* returns only by exit() */
    if (argc == 6 && strcmp(argv[1], "run") == 0)
        return run(argv[2], atoi(argv[3]), argv[4], argv[5]);
    fprintf(stderr, "usage: %s serve PORT FILE | run HOST PORT FILE CASE\n", argv[0]);
    return 2;
}
