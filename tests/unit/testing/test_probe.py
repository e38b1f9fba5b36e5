"""The failover probe against the hostname server, for real on loopback."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from hakit.testing.probe import attempt, first_answer_after, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_records_who_answered_and_failures(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "hakit.testing.hostname_server", str(port)])
    try:
        deadline = time.monotonic() + 10
        while asyncio.run(attempt("127.0.0.1", port, 1.0)) is None:
            assert time.monotonic() < deadline, "hostname server never answered"
            time.sleep(0.05)
        out = io.StringIO()
        stop = tmp_path / "stop"

        async def scenario() -> None:
            async def stopper() -> None:
                await asyncio.sleep(0.3)
                stop.touch()

            await asyncio.gather(run("127.0.0.1", port, 0.02, 1.0, stop, out), stopper())

        asyncio.run(scenario())
    finally:
        server.kill()
        server.wait()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) >= 5
    assert {r["who"] for r in lines} == {socket.gethostname()}
    assert all(r["t1"] >= r["t0"] for r in lines)
    assert (
        asyncio.run(attempt("127.0.0.1", port, 0.5)) is None
    )  # server gone: a failure, not a hang
    since = lines[2]["t0"]
    delay = first_answer_after(lines, socket.gethostname(), since)
    assert delay is not None and delay >= 0
    assert first_answer_after(lines, "someone-else", since) is None
