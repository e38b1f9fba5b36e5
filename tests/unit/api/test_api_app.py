"""The REST API: routes over a fake node service, JSON errors with stable codes."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette 1.x prefers the httpx2 package for its test client; httpx (a hakit dependency)
    # still works, so only the import-time notice is silenced, for this import only.
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from hakit import __version__
from hakit.api.app import create_app, status_and_code
from hakit.config.report import ConfigInvalid, ConfigReport
from hakit.daemon.service import NodeService
from hakit.errors import (
    HakitError,
    LocalSystemError,
    NotFoundError,
    PeerProtocolError,
    UserConfigError,
)
from hakit.paths import NodePaths

STATE = {
    "configured": True,
    "local": "node1",
    "channel": "running",
    "nodes": [{"name": "node2", "reachable": True, "last_seen_s": 0.05, "lans": {}}],
    "counters": {"accepted": 3, "forged": 0, "corrupted": 0, "replayed": 0},
}


class FakeService:
    """Records calls; ``reload`` raises ``error`` when set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.reloads = 0

    def level(self) -> dict[str, Any]:
        return {"node": "node1", "version": __version__}

    def cluster_state(self) -> dict[str, Any]:
        return STATE

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        if self.error is not None:
            raise self.error
        return STATE


def client(service: FakeService) -> TestClient:
    return TestClient(create_app(service), raise_server_exceptions=False)


def test_level() -> None:
    answer = client(FakeService()).get("/api/v1/level")
    assert answer.status_code == 200
    assert answer.json() == {"node": "node1", "version": __version__}


def test_cluster_state() -> None:
    answer = client(FakeService()).get("/api/v1/cluster/state")
    assert answer.status_code == 200
    assert answer.json() == STATE


def test_reload_calls_the_service() -> None:
    service = FakeService()
    answer = client(service).post("/api/v1/cluster/reload")
    assert answer.status_code == 200
    assert service.reloads == 1


def test_invalid_configuration_is_422_with_every_error() -> None:
    report = ConfigReport(file="cluster.xml")
    report.add_error("bad pulse", line=2, element="cluster/lans", attribute="pulse", value="x")
    answer = client(FakeService(ConfigInvalid(report))).post("/api/v1/cluster/reload")
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "invalid_config"
    assert "cluster.xml:2: error: <cluster/lans> @pulse='x': bad pulse" in body["message"]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UserConfigError("x"), 422, "invalid_config"),
        (NotFoundError("x"), 404, "not_found"),
        (LocalSystemError("x"), 500, "local_system_error"),
        (PeerProtocolError("x"), 502, "peer_error"),
        (HakitError("x"), 500, "error"),
    ],
)
def test_error_classes_map_to_stable_codes(error: HakitError, status: int, code: str) -> None:
    assert status_and_code(error) == (status, code)
    answer = client(FakeService(error)).post("/api/v1/cluster/reload")
    assert answer.status_code == status
    assert answer.json() == {"code": code, "message": "x"}


def test_explicit_code_attribute_wins() -> None:
    error = LocalSystemError("port busy")
    error.code = "port_in_use"  # type: ignore[attr-defined]
    assert status_and_code(error) == (500, "port_in_use")


def test_bug_is_a_json_500() -> None:
    answer = client(FakeService(ZeroDivisionError("oops"))).post("/api/v1/cluster/reload")
    assert answer.status_code == 500
    assert answer.json()["code"] == "internal_error"
    assert "ZeroDivisionError" in answer.json()["message"]


def test_unknown_route_and_wrong_method_are_json() -> None:
    c = client(FakeService())
    missing = c.get("/api/v1/nothing")
    assert missing.status_code == 404
    assert missing.json() == {"code": "not_found", "message": "GET /api/v1/nothing: Not Found"}
    wrong = c.get("/api/v1/cluster/reload")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"


def test_real_service_not_configured(tmp_path: Path) -> None:
    service = NodeService(NodePaths(tmp_path), "node7", incarnation=lambda: 1)
    c = TestClient(create_app(service))
    level = c.get("/api/v1/level").json()
    assert level["node"] == "node7"
    assert level["version"] == __version__
    state = c.get("/api/v1/cluster/state").json()
    assert state["configured"] is False
    assert state["local"] == "node7"
    assert state["nodes"] == []
