"""Control socket round trips, malformed requests, missing engine."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest

from hakit.engine.control import request, serve, socket_path
from hakit.errors import PeerProtocolError


def test_request_response_and_bad_request(tmp_path: Path) -> None:
    path = socket_path(tmp_path, "app")

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "echo": req}

    async def scenario() -> None:
        server = await serve(path, handler)
        async with server:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert await request(path, {"op": "state"}) == {"ok": True, "echo": {"op": "state"}}
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(b"[1, 2]\n{nope\n")
            first = await reader.readline()
            second = await reader.readline()
            writer.close()
            assert b'"bad_request"' in first and b"not a JSON object" in first
            assert b'"bad_request"' in second

    asyncio.run(scenario())


def test_missing_engine_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PeerProtocolError, match="engine of module app is not running"):
        asyncio.run(request(socket_path(tmp_path, "app"), {"op": "state"}))


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = socket_path(tmp_path, "app")
    path.parent.mkdir(parents=True)
    path.write_text("stale")

    async def handler(req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True}

    async def scenario() -> None:
        async with await serve(path, handler):
            assert (await request(path, {}))["ok"] is True

    asyncio.run(scenario())
