"""What the replication filesystem costs, and which Python FUSE binding can carry it, in one run.

Setups (each a directory under /var/tmp on the same ext4 disk; every FUSE server is its own
process mounted over its directory, as the replicator will be):

* ``raw``: the directory itself, no FUSE;
* ``hakit-pyfuse3``: ``hakit.replication.passthrough`` (pyfuse3 low-level API on asyncio, fsync on
  the loop), no peer; ``-thread-fsync``: fsync in a worker thread; ``-trio``: the same filesystem on
  pyfuse3's native trio loop; ``pyfuse3-lean``: the same with a bare write path
  (what the binding costs without hakit's bookkeeping);
* ``mfusepy-mt`` / ``mfusepy-st``: a minimal path-based pass-through on mfusepy (libfuse's
  high-level API through ctypes), multi-threaded / single-threaded, no peer;
* ``*+ack200us``: the same servers, each mutation waiting 200 µs before it returns (a simulated
  peer acknowledgement: a sleep in a waiter thread for pyfuse3, in the FUSE thread for mfusepy):
  whether concurrent requests overlap their waits is what pipelining needs;
* ``hakit-pyfuse3+tcp-ack``: the hakit pass-through whose sink sends every mutation (write data
  included) over a TCP connection on loopback to a peer process that acknowledges on receipt
  (``async="second"``), requests pipelined, matched by sequence number: the replication data path
  without the receiver's disk writes.

Workloads: 1 MiB sequential writes of 256 MiB then fsync (MiB/s); 4 KiB random writes into a
64 MiB file by one thread, by 8 threads into 8 files of 8 MiB, and by 8 threads into the one file
(IOPS); 4 KiB write + fsync latency (p50/p99, µs); metadata:
create+close, rename, unlink of 1000 files (ops/s); and the FUSE server's CPU time per 4 KiB write
(µs, from /proc: the cost that does not depend on what else the machine runs).

Run as root from the repository on a quiet machine: ``.venv/bin/python bench/fuse_binding.py``
(about a minute). Results: a JSON file under ``bench/results/`` and a Markdown table on stdout
(copied into docs/design/replication.md).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

MiB = 1024 * 1024
SEQ_MIB = 256
RAND_FILE = 64 * MiB
RAND_OPS = 16000
FSYNC_OPS = 1500
META_FILES = 1000
THREADS = 8


# ---- servers (run as child processes of the bench) ---------------------------------------------


MUTATING = [
    "create", "mknod", "mkdir", "symlink", "link", "unlink", "rmdir", "rename", "write",
    "truncate", "chmod", "chown", "utimens", "setxattr", "removexattr", "fsync",
]  # fmt: skip


def delay_sink(delay_us: int, wait: Callable[[float], Any]) -> Any:
    """A sink whose every report waits ``delay_us`` (``await wait(seconds)``)."""
    from hakit.replication import sink as sinkmod

    class DelaySink(sinkmod.NullSink):
        pass

    def waiting(_name: str) -> Callable[..., Any]:
        async def method(self: Any, *args: Any) -> None:
            await wait(delay_us / 1e6)

        return method

    for name in MUTATING:
        setattr(DelaySink, name, waiting(name))
    return DelaySink()


def serve_pyfuse3(directory: str, delay_us: int, ack_port: int, thread_fsync: bool) -> None:
    from hakit.replication import passthrough
    from hakit.replication import sink as sinkmod

    runner = passthrough.flush_in_thread if thread_fsync else None

    async def run() -> None:
        passthrough.install_signal_handlers(asyncio.get_running_loop())
        sink: sinkmod.MutationSink
        if delay_us:
            # asyncio timers have 1 ms resolution (epoll): the wait runs in a thread instead, as
            # an acknowledgement arriving from elsewhere would end it.
            waiters = concurrent.futures.ThreadPoolExecutor(max_workers=64)

            async def wait(seconds: float) -> None:
                await asyncio.get_running_loop().run_in_executor(waiters, time.sleep, seconds)

            sink = delay_sink(delay_us, wait)
        elif ack_port:
            sink = await TcpAckSink.connect(ack_port, MUTATING)
        else:
            sink = sinkmod.NullSink()
        await passthrough.serve(
            directory, sink, flush_runner=runner, on_mounted=lambda: print("mounted", flush=True)
        )

    asyncio.run(run())


def serve_pyfuse3_lean(directory: str) -> None:
    """The hakit filesystem with a bare write path (no mtime, path or sink; getxattr without the
    error wrapper): what the binding costs apart from hakit's bookkeeping (asyncio, fsync inline)."""
    import pyfuse3

    from hakit.replication import passthrough
    from hakit.replication.sink import NullSink

    class Lean(passthrough.PassthroughFS):
        async def write(self, fh: Any, off: int, buf: bytes) -> int:  # type: ignore[override]
            return os.pwrite(self._files[fh].fd, buf, off)

        async def getxattr(self, inode: Any, name: bytes, ctx: Any) -> bytes:  # type: ignore[override]
            try:
                return os.getxattr(f"/proc/self/fd/{self._inodes[inode].fd}", name)
            except OSError as exc:
                raise pyfuse3.FUSEError(
                    pyfuse3.ENOATTR if exc.errno == errno.ENODATA else exc.errno
                ) from None

    passthrough.PassthroughFS = Lean  # type: ignore[misc]

    async def run() -> None:
        passthrough.install_signal_handlers(asyncio.get_running_loop())
        await passthrough.serve(
            directory,
            NullSink(),
            flush_runner=None,
            on_mounted=lambda: print("mounted", flush=True),
        )

    asyncio.run(run())


def serve_pyfuse3_trio(directory: str, delay_us: int) -> None:
    """The same filesystem on pyfuse3's native trio loop (fsync inline)."""
    import pyfuse3
    import trio

    from hakit.replication import passthrough
    from hakit.replication import sink as sinkmod

    async def wait(seconds: float) -> None:
        await trio.to_thread.run_sync(time.sleep, seconds)

    sink = delay_sink(delay_us, wait) if delay_us else sinkmod.NullSink()
    fs = passthrough.mount(directory, sink, flush_runner=None)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print("mounted", flush=True)
    try:
        trio.run(pyfuse3.main)
    except KeyboardInterrupt:
        pass
    finally:
        passthrough.unmount(fs)


class TcpAckSink:
    """Sends each mutation as ``seq, length, payload`` and waits for the peer's ``seq`` back.

    The stream position is taken before the first await, so the stream keeps the local order;
    many requests wait for their acks at once."""

    @classmethod
    async def connect(cls, port: int, names: list[str]) -> Any:
        from hakit.replication import sink as sinkmod

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending: dict[int, asyncio.Future[None]] = {}
        counter = iter(range(1, 1 << 62))

        async def acks_any() -> None:
            buf = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise ConnectionError("peer closed")
                buf += chunk
                n = len(buf) // 8 * 8
                for (seq,) in struct.iter_unpack("!Q", buf[:n]):
                    fut = pending.pop(seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                buf = buf[n:]

        task = asyncio.get_running_loop().create_task(acks_any())

        class Sink(sinkmod.NullSink):
            reader_task = task

        def sending(_name: str) -> Callable[..., Any]:
            async def method(self: Any, *args: Any) -> None:
                payload = b""
                for a in args:
                    if isinstance(a, bytes) and len(a) > 64:
                        payload = a  # write data
                seq = next(counter)
                fut = asyncio.get_running_loop().create_future()
                pending[seq] = fut
                writer.write(struct.pack("!QI", seq, len(payload) + 64) + payload + bytes(64))
                if writer.transport.get_write_buffer_size() > 8 * MiB:
                    await writer.drain()
                await fut

            return method

        for name in names:
            setattr(Sink, name, sending(name))
        return Sink()


def ack_peer(port: int) -> None:
    """Acknowledge every message on receipt (``async="second"``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readexactly(12)
                seq, length = struct.unpack("!QI", head)
                await reader.readexactly(length)
                writer.write(struct.pack("!Q", seq))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        print("listening", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def serve_mfusepy(directory: str, single: bool, delay_us: int) -> None:
    import mfusepy

    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    delay = delay_us / 1e6
    os.umask(0)

    def rel(path: str) -> str:
        return path.lstrip("/") or "."

    def ack() -> None:
        if delay:
            time.sleep(delay)

    class Passthrough(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
            st = (
                os.fstat(fh)
                if fh is not None
                else os.stat(rel(path), dir_fd=root, follow_symlinks=False)
            )
            keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks", "st_ino")
            out = {k: getattr(st, k) for k in keys}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
            return out

        def readdir(self, path: str, fh: int) -> list[str]:
            fd = os.open(rel(path), os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
            try:
                return [".", "..", *os.listdir(fd)]
            finally:
                os.close(fd)

        def open(self, path: str, flags: int) -> int:
            return os.open(rel(path), flags & ~os.O_APPEND, dir_fd=root)

        def create(self, path: str, mode: int, fi: Any = None) -> int:
            fd = os.open(rel(path), os.O_CREAT | os.O_RDWR, mode, dir_fd=root)
            ack()
            return fd

        def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
            return os.pread(fh, size, offset)

        def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
            n = os.pwrite(fh, data, offset)
            ack()
            return n

        def truncate(self, path: str, length: int, fh: int | None = None) -> int:
            if fh is not None:
                os.truncate(fh, length)
            else:
                os.truncate(os.open(rel(path), os.O_WRONLY, dir_fd=root), length)
            ack()
            return 0

        def flush(self, path: str, fh: int) -> int:
            return 0

        def release(self, path: str, fh: int) -> int:
            os.close(fh)
            return 0

        def fsync(self, path: str, datasync: int, fh: int) -> int:
            (os.fdatasync if datasync else os.fsync)(fh)
            ack()
            return 0

        def unlink(self, path: str) -> int:
            os.unlink(rel(path), dir_fd=root)
            ack()
            return 0

        def rename(self, old: str, new: str) -> int:
            os.rename(rel(old), rel(new), src_dir_fd=root, dst_dir_fd=root)
            ack()
            return 0

        def mkdir(self, path: str, mode: int) -> int:
            os.mkdir(rel(path), mode, dir_fd=root)
            ack()
            return 0

        def rmdir(self, path: str) -> int:
            os.rmdir(rel(path), dir_fd=root)
            ack()
            return 0

        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            os.utime(rel(path), ns=times, dir_fd=root, follow_symlinks=False)
            ack()
            return 0

        def chmod(self, path: str, mode: int) -> int:
            os.chmod(rel(path), mode, dir_fd=root)
            ack()
            return 0

        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            # Implemented as in the hakit filesystem: the kernel asks security.capability on
            # every write of a file system that answers xattrs.
            try:
                return os.getxattr(f"/proc/self/fd/{root}/{rel(path)}", name, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    raise mfusepy.FuseOSError(errno.ENODATA) from None
                raise

        def listxattr(self, path: str) -> list[str]:
            return os.listxattr(f"/proc/self/fd/{root}/{rel(path)}", follow_symlinks=False)

        def statfs(self, path: str) -> dict[str, int]:
            sv = os.statvfs(root)
            return {
                k: getattr(sv, k)
                for k in (
                    "f_bsize",
                    "f_frsize",
                    "f_blocks",
                    "f_bfree",
                    "f_bavail",
                    "f_files",
                    "f_ffree",
                    "f_namemax",
                )
            }

    signal.signal(
        signal.SIGTERM,
        lambda *_: subprocess.run(["fusermount3", "-u", "-z", directory], check=False),
    )
    print("mounted", flush=True)
    mfusepy.FUSE(
        Passthrough(),
        directory,
        foreground=True,
        nothreads=single,
        allow_other=True,
        default_permissions=True,
        hard_remove=True,
    )


# ---- workloads ---------------------------------------------------------------------------------


def seq_write(d: Path) -> float:
    buf = os.urandom(MiB)
    path = d / "seq"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for _ in range(SEQ_MIB):
        os.write(fd, buf)
    os.fsync(fd)
    os.close(fd)
    elapsed = time.perf_counter() - t0
    os.unlink(path)
    return SEQ_MIB / elapsed


def rand_writes(d: Path, threads: int, same_file: bool = False) -> float:
    """4 KiB writes at random aligned offsets; with several threads each has its own file, or all
    share one (``same_file``: the kernel serializes writes to one FUSE file under its inode lock)."""
    size = RAND_FILE if same_file else RAND_FILE // threads
    chunk = os.urandom(MiB)
    paths = [d / "rand0"] if same_file else [d / f"rand{i}" for i in range(threads)]
    for path in paths:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        for i in range(size // MiB):
            os.pwrite(fd, chunk, i * MiB)
        os.fsync(fd)
        os.close(fd)
    per = RAND_OPS // threads
    block = os.urandom(4096)

    def work(index: int) -> None:
        rng = random.Random(index)
        offsets = [rng.randrange(size // 4096) * 4096 for _ in range(per)]
        f = os.open(paths[0 if same_file else index], os.O_WRONLY)
        try:
            for off in offsets:
                os.pwrite(f, block, off)
        finally:
            os.close(f)

    t0 = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    for path in paths:
        os.unlink(path)
    return per * threads / elapsed


def fsync_latency(d: Path) -> tuple[float, float]:
    path = d / "fsync"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    block = os.urandom(4096)
    lat = []
    for i in range(FSYNC_OPS):
        t0 = time.perf_counter()
        os.pwrite(fd, block, i * 4096)
        os.fsync(fd)
        lat.append(time.perf_counter() - t0)
    os.close(fd)
    os.unlink(path)
    q = statistics.quantiles(lat, n=100)
    return q[49] * 1e6, q[98] * 1e6


def metadata(d: Path) -> float:
    sub = d / "meta"
    sub.mkdir()
    t0 = time.perf_counter()
    for i in range(META_FILES):
        os.close(os.open(sub / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(META_FILES):
        os.rename(sub / f"f{i}", sub / f"g{i}")
    for i in range(META_FILES):
        os.unlink(sub / f"g{i}")
    elapsed = time.perf_counter() - t0
    sub.rmdir()
    return 3 * META_FILES / elapsed


def cpu_seconds(pid: int | None) -> float:
    """CPU time used so far by process ``pid`` and its threads (0 for none)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(d: Path, server_pid: int | None = None) -> dict[str, float]:
    p50, p99 = fsync_latency(d)
    cpu0 = cpu_seconds(server_pid)
    iops = rand_writes(d, 1)
    cpu = cpu_seconds(server_pid) - cpu0
    return {
        "seq_mib_s": seq_write(d),
        "rand4k_iops_1t": iops,
        "server_cpu_us_per_4k_write": cpu / RAND_OPS * 1e6,
        f"rand4k_iops_{THREADS}t": rand_writes(d, THREADS),
        f"rand4k_iops_{THREADS}t_1file": rand_writes(d, THREADS, same_file=True),
        "fsync4k_p50_us": p50,
        "fsync4k_p99_us": p99,
        "meta_ops_s": metadata(d),
    }


# ---- orchestration -----------------------------------------------------------------------------


def _is_mounted(d: Path) -> bool:
    target = str(d)
    return any(
        line.split(" ")[4] == target
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )


@contextlib.contextmanager
def server(d: Path, argv: list[str]) -> Iterator[int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        deadline = time.monotonic() + 10
        while not _is_mounted(d):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{argv}: did not mount ({line!r})")
            time.sleep(0.01)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        while _is_mounted(d):
            subprocess.run(["fusermount3", "-u", "-z", str(d)], check=False)


@contextlib.contextmanager
def peer(port: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "ack-peer", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        yield
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("serve-pyfuse3")
    p.add_argument("dir")
    p.add_argument("--delay-us", type=int, default=0)
    p.add_argument("--ack-port", type=int, default=0)
    p.add_argument("--thread-fsync", action="store_true")
    p = sub.add_parser("serve-pyfuse3-lean")
    p.add_argument("dir")
    p = sub.add_parser("serve-pyfuse3-trio")
    p.add_argument("dir")
    p.add_argument("--delay-us", type=int, default=0)
    p = sub.add_parser("serve-mfusepy")
    p.add_argument("dir")
    p.add_argument("--single", action="store_true")
    p.add_argument("--delay-us", type=int, default=0)
    p = sub.add_parser("ack-peer")
    p.add_argument("port", type=int)
    parser.add_argument("--cases", default="", help="comma-separated subset of the cases")
    parser.add_argument(
        "--quick", action="store_true", help="tiny workloads: check the setups work"
    )
    args = parser.parse_args()
    if args.cmd == "serve-pyfuse3":
        serve_pyfuse3(args.dir, args.delay_us, args.ack_port, args.thread_fsync)
        return 0
    if args.cmd == "serve-pyfuse3-lean":
        serve_pyfuse3_lean(args.dir)
        return 0
    if args.cmd == "serve-pyfuse3-trio":
        serve_pyfuse3_trio(args.dir, args.delay_us)
        return 0
    if args.cmd == "serve-mfusepy":
        serve_mfusepy(args.dir, args.single, args.delay_us)
        return 0
    if args.cmd == "ack-peer":
        ack_peer(args.port)
        return 0

    if args.quick:
        global SEQ_MIB, RAND_OPS, FSYNC_OPS, META_FILES
        SEQ_MIB, RAND_OPS, FSYNC_OPS, META_FILES = 8, 400, 100, 50
    if os.geteuid() != 0:
        print("run as root (FUSE mounts with allow_other)", file=sys.stderr)
        return 2
    port = 5600 + 200 + os.getpid() % 1000
    me = [sys.executable, __file__]
    cases: dict[str, list[str] | None] = {
        "raw": None,
        "hakit-pyfuse3": [*me, "serve-pyfuse3"],
        "hakit-pyfuse3-thread-fsync": [*me, "serve-pyfuse3", "--thread-fsync"],
        "hakit-pyfuse3-trio": [*me, "serve-pyfuse3-trio"],
        "pyfuse3-lean": [*me, "serve-pyfuse3-lean"],
        "mfusepy-mt": [*me, "serve-mfusepy"],
        "mfusepy-st": [*me, "serve-mfusepy", "--single"],
        "hakit-pyfuse3+ack200us": [*me, "serve-pyfuse3", "--delay-us", "200"],
        "hakit-pyfuse3-trio+ack200us": [*me, "serve-pyfuse3-trio", "--delay-us", "200"],
        "mfusepy-mt+ack200us": [*me, "serve-mfusepy", "--delay-us", "200"],
        "mfusepy-st+ack200us": [*me, "serve-mfusepy", "--single", "--delay-us", "200"],
        "hakit-pyfuse3+tcp-ack": [*me, "serve-pyfuse3", "--ack-port", str(port)],
    }
    wanted = [c for c in args.cases.split(",") if c] or list(cases)
    base = Path(tempfile.mkdtemp(prefix="hakit-fusebench-", dir="/var/tmp"))
    results: dict[str, dict[str, float]] = {}
    try:
        with peer(port):
            for name in wanted:
                d = base / name.replace("+", "_")
                d.mkdir()
                d.chmod(0o777)
                argv = cases[name]
                if argv is None:
                    results[name] = measure(d)
                else:
                    with server(d, [*argv, str(d)]) as pid:
                        results[name] = measure(d, pid)
                print(name, {k: round(v, 1) for k, v in results[name].items()}, flush=True)
    finally:
        for d in base.iterdir():
            while _is_mounted(d):
                subprocess.run(["fusermount3", "-u", "-z", str(d)], check=False)
        shutil.rmtree(base, ignore_errors=True)

    raw = results.get("raw")
    keys = list(next(iter(results.values())))
    print()
    print("| setup | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, r in results.items():
        cells = []
        for k in keys:
            cell = f"{r[k]:,.0f}"
            if raw and name != "raw" and raw[k]:
                cell += f" ({r[k] / raw[k]:.2f}×)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    info = {
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "loadavg_after": os.getloadavg(),
        "results": results,
    }
    (out_dir / f"fuse_binding-{stamp}.json").write_text(json.dumps(info, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(errno.EINTR)
