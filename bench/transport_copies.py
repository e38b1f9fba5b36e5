"""Replication transport on loopback: the per-byte cost of the stream, old vs new implementation.

One process, one event loop: a Sender and a Receiver (hakit.replication.transport) connected over
127.0.0.1, the receiver's apply pwrite()s each WRITE-like request's payload into a file (offset in
the header). Each request is awaited before the next is sent (one writer, stop-and-wait, as a
FUSE write through the mount). Both ends share one CPU thread, so the time per request is the
sum of both sides' work (framing, copies, syscalls, the loop), which is what this measures.

"old" is src/hakit/replication/{wire,transport}.py at --baseline (loaded from ``git show``, under
other module names), "new" is the working tree. Reports the median of --rounds rounds.

    .venv/bin/python bench/transport_copies.py [--baseline REV] [--rounds 5] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from hakit.replication import transport as new_transport
from hakit.replication import wire as new_wire

ROOT = Path(__file__).resolve().parent.parent
# The commit before the copy reductions (transport.py/wire.py as the profile measured them).
DEFAULT_BASELINE = "dd7a66b"
KEY = bytes(range(32))
OFFSET = struct.Struct("!Q")
WORKLOADS = [("1 MiB", 256, 1024 * 1024), ("4 KiB", 4000, 4096)]


def load_baseline(rev: str) -> tuple[types.ModuleType, types.ModuleType]:
    """wire and transport as of ``rev``, as modules hakit_old_wire / hakit_old_transport."""
    modules = []
    for name in ("wire", "transport"):
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:src/hakit/replication/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        source = source.replace("from hakit.replication.wire import", "from hakit_old_wire import")
        module_name = f"hakit_old_{name}"
        spec = importlib.util.spec_from_loader(module_name, loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        exec(compile(source, f"{rev}:{name}.py", "exec"), module.__dict__)
        modules.append(module)
    return modules[0], modules[1]


async def one_round(
    tr: Any, wire: Any, mode: str, count: int, size: int, fd: int
) -> tuple[float, int]:
    """Send ``count`` requests of ``size`` bytes; seconds until the last one is applied."""
    applied = 0
    done = asyncio.Event()

    async def apply(frame: Any) -> None:
        nonlocal applied
        (offset,) = OFFSET.unpack(frame.header)
        os.pwrite(fd, frame.payload, offset)
        applied += 1
        if applied == count:
            done.set()

    primary = tr.Identity(KEY, "node1", "node2", "bench", 0)
    secondary = tr.Identity(KEY, "node2", "node1", "bench", 0)
    receiver = tr.Receiver(secondary, apply, async_mode=mode)
    port = await receiver.start("127.0.0.1", 0)
    sender = await tr.Sender.connect(
        "127.0.0.1", port, primary, sendtimeout=30, on_peer_lost=lambda reason: None
    )
    payload = os.urandom(size)
    write = wire.FrameType.WRITE
    try:
        await sender.send(write, OFFSET.pack(0), payload)  # warm up (connection, buffers)
        applied = 0
        start = time.perf_counter()
        for n in range(count):
            await sender.send(write, OFFSET.pack(n * size), payload)
        await done.wait()
        return time.perf_counter() - start, count * size
    finally:
        await sender.close()
        await receiver.close()


async def main_async(args: argparse.Namespace) -> None:
    old_wire, old_transport = load_baseline(args.baseline)
    impls = [("old", old_transport, old_wire), ("new", new_transport, new_wire)]
    fd, path = tempfile.mkstemp(dir=args.dir, prefix="transport-copies-")
    rows = []
    try:
        for label, count, size in WORKLOADS:
            for mode in ("second", "none"):
                results = {}
                for impl, tr, wire in impls:
                    times = []
                    for _ in range(args.rounds):
                        os.ftruncate(fd, 0)
                        seconds, nbytes = await one_round(tr, wire, mode, count, size, fd)
                        times.append(seconds)
                    median = statistics.median(times)
                    results[impl] = median
                    rows.append(
                        (
                            label,
                            mode,
                            impl,
                            count,
                            nbytes / median / 2**20,
                            median / count * 1e6,
                        )
                    )
                    print(
                        f"{label:6} async={mode:6} {impl}: {nbytes / median / 2**20:8.1f} MiB/s "
                        f"{median / count * 1e6:8.1f} us/request  (rounds: "
                        + ", ".join(f"{t:.3f}s" for t in times)
                        + ")",
                        flush=True,
                    )
    finally:
        os.close(fd)
        os.unlink(path)
    print()
    print(
        f"baseline {args.baseline}, median of {args.rounds} rounds, Python {sys.version.split()[0]}"
    )
    print("| requests | async | impl | MiB/s | µs/request |")
    print("|---|---|---|---|---|")
    for label, mode, impl, count, mibs, us in rows:
        print(f"| {count} × {label} | {mode} | {impl} | {mibs:.1f} | {us:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of 'old'")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="where the pwrite target file goes")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
