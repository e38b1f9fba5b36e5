"""The node's REST API (``/api/v1``): a thin shell over the node service.

Routes only translate HTTP to service calls and back; every decision lives in the service. Errors
are JSON ``{"code": <stable code>, "message": <one line for humans>}``: clients (the ``hakit`` CLI,
the console) branch on ``code``, never on the wording.

===================  ======  =========================================================
code                 status  when
===================  ======  =========================================================
invalid_config       422     a configuration file or argument is invalid
not_found            404     no such node, module, file or route
local_system_error   500     the node's system refused an operation
peer_error           502     a peer could not be reached or misbehaved
internal_error       500     a bug (the daemon log has the traceback)
method_not_allowed   405     wrong HTTP method for the route
bad_request          400     the request itself is malformed
engine_down          503     the module's engine is not running or does not answer
<engine's code>      409     the module's engine refused the command (``refused``...)
===================  ======  =========================================================

An error may carry more fields next to ``code`` and ``message`` (``engine_down`` on a state query
adds what the module's files say: ``state``, ``readiness``, ``engine``).

Module routes (only when the app is given a modules service, as hakitd does)::

    GET  /api/v1/modules                       installed modules, engine status, state
    GET  /api/v1/modules/{m}/state             the engine's state answer
    POST /api/v1/modules/{m}/command           {"command", "options", "identity", "origin"}
    POST /api/v1/modules/{m}/reload[?force=1]  restart the module's engine
    GET  /api/v1/modules/{m}/log               ?after_id=&limit=&levels=
    GET  /api/v1/modules/{m}/userlogs          script logs (.ulog)
    GET  /var/modules/{m}/ready.txt            health check: 200 "OK" or 404 "NOT FOUND"
    GET  /api/v1/modules/{m}/rfs[/manifest]    replicated directories (:mod:`hakit.api.rfs_routes`)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from hakit import __version__
from hakit.api.rfs_routes import rfs_router
from hakit.daemon.modules_service import CommandRefused, EngineDown, parse_levels
from hakit.errors import (
    HakitError,
    LocalSystemError,
    NotFoundError,
    PeerProtocolError,
    UserConfigError,
)
from hakit.paths import NodePaths

log = logging.getLogger(__name__)

API = "/api/v1"

# Most specific first: the first class the exception is an instance of decides.
ERROR_CODES: tuple[tuple[type[HakitError], int, str], ...] = (
    (EngineDown, 503, "engine_down"),
    (CommandRefused, 409, "refused"),
    (UserConfigError, 422, "invalid_config"),
    (NotFoundError, 404, "not_found"),
    (LocalSystemError, 500, "local_system_error"),
    (PeerProtocolError, 502, "peer_error"),
    (HakitError, 500, "error"),
)
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


class NodeServiceLike(Protocol):
    """What the API needs from the node service (:class:`hakit.daemon.service.NodeService`)."""

    def level(self) -> dict[str, Any]: ...

    def cluster_state(self) -> dict[str, Any]: ...

    async def reload(self) -> dict[str, Any]: ...


class ModulesServiceLike(Protocol):
    """What the module routes need (:class:`hakit.daemon.modules_service.ModulesService`)."""

    paths: NodePaths  # the node's files (the rfs routes read the module's active configuration)

    async def list(self) -> dict[str, Any]: ...

    async def state(self, module: str) -> dict[str, Any]: ...

    async def command(
        self,
        module: str,
        command: str,
        options: dict[str, Any] | None = None,
        identity: str | None = None,
        origin: str | None = None,
    ) -> dict[str, Any]: ...

    async def reload(self, module: str, *, force: bool = False) -> dict[str, Any]: ...

    def log(
        self,
        module: str,
        *,
        after_id: int | None = None,
        limit: int = 300,
        levels: frozenset[Any] | None = None,
    ) -> dict[str, Any]: ...

    def userlogs(self, module: str) -> dict[str, Any]: ...

    def is_ready(self, module: str) -> bool: ...


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error answer."""
    return {"code": code, "message": message}


def status_and_code(exc: HakitError) -> tuple[int, str]:
    """HTTP status and stable code of a service error (an explicit ``code`` attribute wins)."""
    for cls, status, code in ERROR_CODES:
        if isinstance(exc, cls):
            return status, str(getattr(exc, "code", None) or code)
    raise AssertionError("unreachable: HakitError is the last entry")


def create_app(node_service: NodeServiceLike, modules: ModulesServiceLike | None = None) -> FastAPI:
    """The FastAPI application serving ``node_service`` (and ``modules``' routes when given)."""
    app = FastAPI(
        title="hakit",
        version=__version__,
        docs_url=f"{API}/docs",
        redoc_url=None,
        openapi_url=f"{API}/openapi.json",
    )

    @app.exception_handler(HakitError)
    async def _hakit_error(request: Request, exc: HakitError) -> JSONResponse:
        status, code = status_and_code(exc)
        body: dict[str, Any] = {**getattr(exc, "details", {}), **error_body(code, str(exc))}
        return JSONResponse(body, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(code, message), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("bad_request", str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error serving %s %s", request.method, request.url.path)
        message = f"internal error: {type(exc).__name__}: {exc} (see the hakitd log)"
        return JSONResponse(error_body("internal_error", message), status_code=500)

    @app.get(f"{API}/level")
    async def level() -> dict[str, Any]:
        """Node name, hakit version, OS (``hakit level``)."""
        return node_service.level()

    @app.get(f"{API}/cluster/state")
    async def cluster_state() -> dict[str, Any]:
        """Configuration in effect and reachability of every cluster node."""
        return node_service.cluster_state()

    @app.post(f"{API}/cluster/reload")
    async def cluster_reload() -> dict[str, Any]:
        """Re-read cluster.xml and cluster.key and restart the cluster channel."""
        return await node_service.reload()

    if modules is not None:
        _module_routes(app, modules)
        app.include_router(rfs_router(modules.paths), prefix=API)
    return app


class CommandBody(BaseModel):
    """Body of ``POST /api/v1/modules/{m}/command``."""

    command: str
    options: dict[str, Any] | None = None
    identity: str | None = None  # a detector's name (``hakit stop -i NAME``): counts for maxloop
    origin: str | None = None  # who asks, for the module log (default admin@<daemon's host>)


def _module_routes(app: FastAPI, modules: ModulesServiceLike) -> None:
    @app.get(f"{API}/modules")
    async def module_list() -> dict[str, Any]:
        """Installed modules: id, mode, configuration, engine status and state."""
        return await modules.list()

    @app.get(f"{API}/modules/{{module}}/state")
    async def module_state(module: str) -> dict[str, Any]:
        """The module's state as its engine tells it (503 ``engine_down`` with the files' view)."""
        return await modules.state(module)

    @app.post(f"{API}/modules/{{module}}/command")
    async def module_command(module: str, body: CommandBody) -> dict[str, Any]:
        """An admin command (start, stop, swap...), answered once the engine has decided."""
        return await modules.command(module, body.command, body.options, body.identity, body.origin)

    @app.post(f"{API}/modules/{{module}}/reload")
    async def module_reload(module: str, force: bool = False) -> dict[str, Any]:
        """Restart the module's engine on its active copy (refused while it runs, unless force)."""
        return await modules.reload(module, force=force)

    @app.get(f"{API}/modules/{{module}}/log")
    async def module_log(
        module: str,
        after_id: int | None = Query(None, ge=0),
        limit: int = 300,
        levels: str | None = None,
    ) -> dict[str, Any]:
        """Module log lines, oldest first: the last ``limit``, or those after ``after_id``;
        ``levels`` = letters (``CEUS``), ``main`` or ``all`` (default)."""
        wanted = parse_levels(levels)
        return await asyncio.to_thread(
            modules.log, module, after_id=after_id, limit=limit, levels=wanted
        )

    @app.get(f"{API}/modules/{{module}}/userlogs")
    async def module_userlogs(module: str) -> dict[str, Any]:
        """The module's script logs (name, script, start time, size), oldest first."""
        return await asyncio.to_thread(modules.userlogs, module)

    @app.get("/var/modules/{module}/ready.txt", response_class=PlainTextResponse)
    async def module_ready(module: str) -> PlainTextResponse:
        """Load balancer health check (SafeKit's URL): 200 ``OK`` when the module is PRIM or ALONE
        (UP for a farm) and Ready with its engine running, else 404 ``NOT FOUND``."""
        if modules.is_ready(module):
            return PlainTextResponse("OK\n")
        return PlainTextResponse("NOT FOUND\n", status_code=404)
