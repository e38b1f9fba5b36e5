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
===================  ======  =========================================================
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hakit import __version__
from hakit.errors import (
    HakitError,
    LocalSystemError,
    NotFoundError,
    PeerProtocolError,
    UserConfigError,
)

log = logging.getLogger(__name__)

API = "/api/v1"

# Most specific first: the first class the exception is an instance of decides.
ERROR_CODES: tuple[tuple[type[HakitError], int, str], ...] = (
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


def error_body(code: str, message: str) -> dict[str, str]:
    """The JSON body of every error answer."""
    return {"code": code, "message": message}


def status_and_code(exc: HakitError) -> tuple[int, str]:
    """HTTP status and stable code of a service error (an explicit ``code`` attribute wins)."""
    for cls, status, code in ERROR_CODES:
        if isinstance(exc, cls):
            return status, str(getattr(exc, "code", None) or code)
    raise AssertionError("unreachable: HakitError is the last entry")


def create_app(node_service: NodeServiceLike) -> FastAPI:
    """The FastAPI application serving ``node_service``."""
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
        return JSONResponse(error_body(code, str(exc)), status_code=status)

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

    return app
