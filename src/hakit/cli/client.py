"""``ApiClient``: how the ``hakit`` command talks to the local daemon's REST API.

The daemon's JSON errors ``{"code", "message"}`` come back as the matching :mod:`hakit.errors` class
(so the CLI exits with the documented code), with the whole JSON body in ``details`` and its
``code`` in ``code``; a daemon that cannot be reached becomes :class:`DaemonUnreachable` with the
next step to take.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from hakit.errors import (
    HakitError,
    LocalSystemError,
    NotFoundError,
    PeerProtocolError,
    UserConfigError,
)

DEFAULT_API = "http://127.0.0.1:9010"
# The daemon answers from memory: a few seconds means it is stuck, not busy.
TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class DaemonUnreachable(PeerProtocolError):
    """No hakitd answers at the API address (not running, wrong port, firewall)."""


class Refused(HakitError):
    """HTTP 409: a module's engine refused the command (``code`` is the engine's)."""


class EngineDown(PeerProtocolError):
    """HTTP 503 ``engine_down``: the module's engine is not running or does not answer."""


_ERRORS: dict[int, type[HakitError]] = {
    400: UserConfigError,
    404: NotFoundError,
    409: Refused,
    422: UserConfigError,
    500: LocalSystemError,
    502: PeerProtocolError,
    503: EngineDown,
}


class ApiClient:
    """A small synchronous client of ``/api/v1`` (base URL: ``HAKIT_API`` or the local daemon)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
        http: httpx.Client | None = None,
    ) -> None:
        """``http``: a ready client to use instead (e.g. a test client of the app itself)."""
        self.base_url = (base_url or os.environ.get("HAKIT_API") or DEFAULT_API).rstrip("/")
        self._http = http or httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """``GET /api/v1/<path>`` (with query ``params``) and return the JSON object."""
        return self._request("GET", path, params=params)

    def post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """``POST /api/v1/<path>`` with an optional JSON body and return the JSON object."""
        return self._request("POST", path, body)

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        url = f"/api/v1/{path.lstrip('/')}"
        try:
            response = self._http.request(method, url, json=body, params=params)
        except httpx.ConnectError:
            raise DaemonUnreachable(
                f"cannot reach the hakit daemon at {self.base_url}: is hakitd running? "
                "(systemctl status hakit)"
            ) from None
        except httpx.TimeoutException:
            raise PeerProtocolError(
                f"the hakit daemon at {self.base_url} did not answer {method} {url} in time "
                "(see its log: /var/log/hakit/hakitd.log)"
            ) from None
        except httpx.HTTPError as exc:
            raise PeerProtocolError(f"{method} {self.base_url}{url} failed: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success and isinstance(data, dict):
            return data
        if isinstance(data, dict) and "message" in data:
            cls = _ERRORS.get(response.status_code, PeerProtocolError)
            error = cls(str(data["message"]))
            error.code = str(data.get("code", ""))  # type: ignore[attr-defined]
            error.details = data  # type: ignore[attr-defined]
            raise error
        raise PeerProtocolError(
            f"{method} {self.base_url}{url}: unexpected answer HTTP {response.status_code} "
            f"{response.text[:200]!r} (is it a hakit daemon?)"
        )
