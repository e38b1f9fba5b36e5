"""The control socket between ``hakitd`` and one module engine process.

hakitd's REST API (under the CLI and the console) forwards module commands and state queries to the
module's engine over a Unix stream socket, ``$HAKIT_ROOT/run/hakit/modules/<module>.sock``: one JSON
object per line each way, one request then one response per line, several requests per connection.

Why a Unix socket and not HTTP inside the engine: it is reachable only by root on the node itself
(file permissions), needs no port, and keeps the engine free of a web stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hakit.errors import PeerProtocolError

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# A request line larger than this is refused (the largest real one is a command with a few options).
MAX_LINE = 1 << 20


def socket_path(run_dir: Path, module: str) -> Path:
    """Where the engine of ``module`` listens."""
    return run_dir / "modules" / f"{module}.sock"


async def serve(path: Path, handler: Handler) -> asyncio.Server:
    """Listen on ``path`` (replacing a stale socket file) and answer each line with ``handler``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("not a JSON object")
                except ValueError as exc:
                    response: dict[str, Any] = {
                        "ok": False,
                        "code": "bad_request",
                        "message": f"invalid request: {exc}",
                    }
                else:
                    response = await handler(request)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_LINE)
    os.chmod(path, 0o600)
    return server


async def request(path: Path, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the engine listening on ``path`` and return its response."""
    module = path.stem
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path), limit=MAX_LINE), timeout
        )
    except (FileNotFoundError, ConnectionRefusedError):
        raise PeerProtocolError(
            f"the engine of module {module} is not running (no control socket at {path})"
        ) from None
    except TimeoutError:
        raise PeerProtocolError(
            f"the engine of module {module} does not accept connections"
        ) from None
    try:
        writer.write(json.dumps(message).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise PeerProtocolError(
            f"the engine of module {module} did not answer within {timeout:g} s"
        ) from None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    if not line:
        raise PeerProtocolError(f"the engine of module {module} closed the connection")
    response = json.loads(line)
    if not isinstance(response, dict):
        raise PeerProtocolError(f"the engine of module {module} answered {response!r}")
    return response
