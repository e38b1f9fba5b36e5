"""A client that opens a new TCP connection to a service every ``interval`` and records who answered.

Used by failover tests and the failover benchmark, run in the lab's ``client`` host: each attempt is
independent (a connection stuck in a SYN retransmission to a frozen node does not delay the next
attempt), and every attempt is written as one JSON line ``{"t0", "t1", "who"}`` with monotonic
times (CLOCK_MONOTONIC is shared by every namespace of the machine, so the driver can compare them
with the time it injected a fault). ``who`` is the first line of the HTTP body, or ``null``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TextIO


async def attempt(host: str, port: int, timeout: float) -> str | None:
    """One HTTP/1.0 GET on a fresh connection; the first body line, or None on any failure."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(-1), timeout)  # the server closes
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        return None
    return body.decode(errors="replace").strip().splitlines()[0] if body.strip() else None


async def run(
    host: str, port: int, interval: float, timeout: float, stop: Path, out: TextIO
) -> None:
    """Start an attempt every ``interval`` until the file ``stop`` exists."""

    async def one() -> None:
        t0 = time.monotonic()
        who = await attempt(host, port, timeout)
        out.write(json.dumps({"t0": t0, "t1": time.monotonic(), "who": who}) + "\n")
        out.flush()

    async with asyncio.TaskGroup() as tg:
        while not stop.exists():
            tg.create_task(one())
            await asyncio.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``probe HOST PORT --stop FILE [--interval 0.02] [--timeout 3] [--out FILE]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--stop", type=Path, required=True, help="stop once this file exists")
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    ns = parser.parse_args(argv)
    if ns.out is None:
        asyncio.run(run(ns.host, ns.port, ns.interval, ns.timeout, ns.stop, sys.stdout))
    else:
        with ns.out.open("a") as out:
            asyncio.run(run(ns.host, ns.port, ns.interval, ns.timeout, ns.stop, out))


def first_answer_after(lines: list[dict[str, object]], who: str, since: float) -> float | None:
    """Seconds from ``since`` to the end of the first attempt started after it answered by ``who``."""
    ends = [float(str(r["t1"])) for r in lines if r["who"] == who and float(str(r["t0"])) >= since]
    return min(ends) - since if ends else None


if __name__ == "__main__":
    main()
