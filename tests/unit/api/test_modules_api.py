"""The module routes of the API and the ready.txt health check.

The engine is a fake served on a real Unix socket (``hakit.engine.control.serve``, in a thread with
its own event loop); the supervisor is a fake that says which engines are alive; the module log is
a real SQLite module log.
"""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from hakit import __version__
from hakit.api.app import create_app
from hakit.daemon.modules_service import ModulesService, check_options, read_state_file
from hakit.daemon.supervisor import EngineState, EngineStatus
from hakit.engine.control import serve, socket_path
from hakit.engine.modlog import Level, SqliteModuleLog
from hakit.errors import NotFoundError, UserConfigError
from hakit.paths import NodePaths

STATE_ANSWER = {
    "ok": True,
    "module": "web",
    "id": 1,
    "mode": "mirror",
    "node": "node1",
    "state": "PRIM",
    "readiness": "READY",
    "peer": {"node": "node2", "state": "SECOND", "readiness": "READY", "reachable": True},
    "resources": {"heartbeat.default": "up", "rfs.uptodate": "up"},
    "script": None,
    "decision": {"code": "stable", "message": "no action: PRIM with a SECOND"},
}


class FakeNode:
    """The node service part the app always needs."""

    def level(self) -> dict[str, Any]:
        return {"node": "node1", "version": __version__}

    def cluster_state(self) -> dict[str, Any]:
        return {"configured": False}

    async def reload(self) -> dict[str, Any]:
        return {"configured": False}


class FakeSupervisor:
    """Says which engines are alive; records restarts."""

    def __init__(self) -> None:
        self.alive: set[str] = set()
        self.restarted: list[str] = []

    def status(self, module: str) -> EngineStatus | None:
        if module not in self.alive and module not in ("held",):
            return None
        state = EngineState.RUNNING if module in self.alive else EngineState.HELD
        problem = None if module in self.alive else "the engine exited with code 78"
        return EngineStatus(
            module, state, 4242 if module in self.alive else None, 2, None, 0.0, problem
        )

    def is_alive(self, module: str) -> bool:
        return module in self.alive

    async def restart(self, module: str) -> EngineStatus:
        self.restarted.append(module)
        self.alive.add(module)
        status = self.status(module)
        assert status is not None
        return status


class FakeEngine:
    """A module engine's control socket, served from a thread with its own event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[dict[str, Any]] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(serve(path, self.handle), self.loop).result(
            10
        )

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        if request.get("op") == "state":
            return STATE_ANSWER
        command = request.get("command")
        if command == "swap":
            return {
                "ok": False,
                "code": "refused",
                "message": "swap refused: the peer is not SECOND",
            }
        return {"ok": True, "code": "accepted", "message": f"{command} accepted"}

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def paths(tmp_path: Path) -> NodePaths:
    # A short root: Unix socket paths are limited to 107 bytes.
    paths = NodePaths(tmp_path)
    paths.ensure()
    for name in ("web", "db"):
        paths.module_source(name).mkdir()
    paths.module_ids.write_text(json.dumps({"web": 1, "db": 2}))
    version = paths.active / ".web.1"
    version.mkdir()
    (version / "module.json").write_text(
        json.dumps({"signature": "s1", "mode": "mirror", "configured_at": "2026-01-01T00:00:00Z"})
    )
    paths.module_active("web").symlink_to(version.name)
    paths.module_state("web").mkdir()
    return paths


@pytest.fixture
def supervisor() -> FakeSupervisor:
    return FakeSupervisor()


@pytest.fixture
def engine(paths: NodePaths, supervisor: FakeSupervisor) -> Iterator[FakeEngine]:
    fake = FakeEngine(socket_path(paths.run, "web"))
    supervisor.alive.add("web")
    yield fake
    fake.close()


@pytest.fixture
def api(paths: NodePaths, supervisor: FakeSupervisor) -> TestClient:
    modules = ModulesService(paths, supervisor, hostname=lambda: "host1", timeout=5.0)  # type: ignore[arg-type]
    return TestClient(create_app(FakeNode(), modules), raise_server_exceptions=False)


# -- list and state -------------------------------------------------------------------------------


def test_list_shows_modules_engines_and_states(
    api: TestClient, engine: FakeEngine, paths: NodePaths
) -> None:
    (paths.module_state("web") / "state").write_text("STOP NOT_READY\n")
    answer = api.get("/api/v1/modules")
    assert answer.status_code == 200
    rows = {row["name"]: row for row in answer.json()["modules"]}
    assert set(rows) == {"web", "db"}
    web, db = rows["web"], rows["db"]
    assert web["id"] == 1 and web["configured"] is True
    assert web["engine"]["alive"] is True and web["engine"]["pid"] == 4242
    assert (web["state"], web["readiness"], web["state_source"]) == ("PRIM", "READY", "engine")
    assert db["configured"] is False and db["engine"] is None
    assert db["state"] is None and db["state_source"] is None


def test_list_falls_back_on_the_state_file(api: TestClient, paths: NodePaths) -> None:
    (paths.module_state("web") / "state").write_text("STOP NotReady\n")
    rows = {row["name"]: row for row in api.get("/api/v1/modules").json()["modules"]}
    assert (rows["web"]["state"], rows["web"]["readiness"]) == ("STOP", "NOT_READY")
    assert rows["web"]["state_source"] == "file"


def test_state_is_forwarded_to_the_engine(api: TestClient, engine: FakeEngine) -> None:
    answer = api.get("/api/v1/modules/web/state")
    assert answer.status_code == 200
    body = answer.json()
    assert body["state"] == "PRIM" and body["readiness"] == "READY"
    assert body["peer"]["node"] == "node2" and body["resources"]["rfs.uptodate"] == "up"
    assert body["engine"]["alive"] is True
    assert "ok" not in body
    assert engine.requests == [{"op": "state"}]


def test_state_with_the_engine_down_says_what_the_files_say(
    api: TestClient, paths: NodePaths
) -> None:
    (paths.module_state("web") / "state").write_text("PRIM READY\n")
    answer = api.get("/api/v1/modules/web/state")
    assert answer.status_code == 503
    body = answer.json()
    assert body["code"] == "engine_down"
    assert "not running" in body["message"] and "web" in body["message"]
    assert (body["state"], body["readiness"], body["state_source"]) == ("PRIM", "READY", "file")
    assert body["engine"] is None


def test_state_of_a_held_engine_names_the_problem(api: TestClient, paths: NodePaths) -> None:
    paths.module_source("held").mkdir()
    body = api.get("/api/v1/modules/held/state").json()
    assert body["code"] == "engine_down" and "exited with code 78" in body["message"]
    assert body["engine"]["state"] == "held" and body["state"] is None


def test_unknown_and_invalid_modules(api: TestClient) -> None:
    answer = api.get("/api/v1/modules/nope/state")
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"
    assert "hakit module list" in answer.json()["message"]
    answer = api.get("/api/v1/modules/bad..name/state")
    assert answer.status_code == 422


# -- commands -------------------------------------------------------------------------------------


def test_command_accepted(api: TestClient, engine: FakeEngine) -> None:
    answer = api.post(
        "/api/v1/modules/web/command", json={"command": "stop", "identity": "checker"}
    )
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "code": "accepted", "message": "stop accepted"}
    assert engine.requests == [
        {
            "op": "command",
            "command": "stop",
            "options": {},
            "identity": "checker",
            "origin": "admin@host1",
        }
    ]


def test_command_options_and_origin_are_passed(api: TestClient, engine: FakeEngine) -> None:
    body = {"command": "prim", "options": {"fullsync": True}, "origin": "admin@node9"}
    assert api.post("/api/v1/modules/web/command", json=body).status_code == 200
    assert engine.requests[-1]["options"] == {"fullsync": True}
    assert (
        engine.requests[-1]["origin"] == "admin@node9" and engine.requests[-1]["identity"] is None
    )


def test_command_refused_by_the_engine_is_409(api: TestClient, engine: FakeEngine) -> None:
    answer = api.post("/api/v1/modules/web/command", json={"command": "swap"})
    assert answer.status_code == 409
    assert answer.json() == {"code": "refused", "message": "swap refused: the peer is not SECOND"}


def test_command_with_the_engine_down_is_503(api: TestClient) -> None:
    answer = api.post("/api/v1/modules/web/command", json={"command": "start"})
    assert answer.status_code == 503
    assert answer.json()["code"] == "engine_down"
    assert "the command was not sent" in answer.json()["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"command": "explode"}, "unknown module command 'explode'"),
        ({"command": "stop", "options": {"nosync": True}}, "it takes none"),
        ({"command": "swap", "options": {"fullsync": True}}, "it takes nosync"),
        ({"command": "failover", "options": {"value": "maybe"}}, "'on' or 'off'"),
        ({"command": "failover"}, "say 'on' or 'off'"),
        ({"command": "prim", "options": {"fullsync": "yes"}}, "true or false"),
    ],
)
def test_bad_commands_are_refused_before_the_engine(
    api: TestClient, engine: FakeEngine, body: dict[str, Any], fragment: str
) -> None:
    answer = api.post("/api/v1/modules/web/command", json=body)
    assert answer.status_code == 422
    assert fragment in answer.json()["message"]
    assert engine.requests == []


def test_command_body_is_required(api: TestClient) -> None:
    answer = api.post("/api/v1/modules/web/command", json={"options": {}})
    assert answer.status_code == 400 and answer.json()["code"] == "bad_request"


def test_check_options_keeps_valid_ones() -> None:
    assert check_options("failover", {"value": "off"}) == {"value": "off"}
    assert check_options("swap", {"nosync": False}) == {"nosync": False}
    with pytest.raises(UserConfigError):
        check_options("second", {"value": "on"})


# -- reload ---------------------------------------------------------------------------------------


def test_reload_restarts_the_engine(api: TestClient, supervisor: FakeSupervisor) -> None:
    answer = api.post("/api/v1/modules/web/reload")
    assert answer.status_code == 200
    assert answer.json()["engine"]["alive"] is True
    assert supervisor.restarted == ["web"]


def test_reload_refused_while_the_module_runs_unless_forced(
    api: TestClient, supervisor: FakeSupervisor, paths: NodePaths
) -> None:
    (paths.module_state("web") / "state").write_text("PRIM READY\n")
    answer = api.post("/api/v1/modules/web/reload")
    assert answer.status_code == 409 and answer.json()["code"] == "module_running"
    assert "hakit stop -m web" in answer.json()["message"]
    assert supervisor.restarted == []
    assert api.post("/api/v1/modules/web/reload?force=true").status_code == 200
    assert supervisor.restarted == ["web"]


# -- health check ---------------------------------------------------------------------------------


def test_ready_txt_follows_the_file_and_the_engine(
    api: TestClient, supervisor: FakeSupervisor, paths: NodePaths
) -> None:
    url = "/var/modules/web/ready.txt"
    ready = paths.module_state("web") / "ready.txt"

    def check(status: int, body: str) -> None:
        answer = api.get(url)
        assert (answer.status_code, answer.text) == (status, body)

    check(404, "NOT FOUND\n")  # no file, no engine
    ready.write_text("")
    check(404, "NOT FOUND\n")  # file left by an engine that is gone
    supervisor.alive.add("web")
    check(200, "OK\n")
    ready.unlink()
    check(404, "NOT FOUND\n")  # no caching: the next request sees the change
    ready.write_text("")
    check(200, "OK\n")
    supervisor.alive.clear()
    check(404, "NOT FOUND\n")
    assert api.get("/var/modules/..%2Fetc/ready.txt").status_code == 404
    assert api.get("/var/modules/nope/ready.txt").status_code == 404


# -- module log and script logs -------------------------------------------------------------------


def fill_log(paths: NodePaths) -> None:
    wall = iter(range(1_700_000_000, 1_700_000_100))
    with SqliteModuleLog(
        paths.module_state("web") / "module.db", "web", wall=lambda: float(next(wall))
    ) as modlog:
        modlog.append("heart", Level.EVENT, "Local state ALONE Ready", code="state")
        modlog.append("engine", Level.DEBUG, "tick")
        modlog.append("user", Level.INFO, "hello from a script")
        modlog.append("engine", Level.USER, "Action stop called by admin@host1")
        modlog.append("userplug", Level.SCRIPT, "Script stop_prim")


def test_log_reads_the_module_database_without_the_engine(
    api: TestClient, paths: NodePaths
) -> None:
    fill_log(paths)
    body = api.get("/api/v1/modules/web/log").json()
    assert body["module"] == "web" and body["last_id"] == 5
    lines = body["lines"]
    assert [line["id"] for line in lines] == [1, 2, 3, 4, 5]
    first = lines[0]
    assert first["component"] == "heart" and first["level"] == "E" and first["code"] == "state"
    assert first["message"] == "Local state ALONE Ready"
    assert first["ts_wall"] == 1_700_000_000_000_000
    assert first["text"].endswith("| heart | E | Local state ALONE Ready")


def test_log_levels_limit_and_after_id(api: TestClient, paths: NodePaths) -> None:
    fill_log(paths)

    def ids(**params: Any) -> list[int]:
        answer = api.get("/api/v1/modules/web/log", params=params)
        assert answer.status_code == 200, answer.text
        return [line["id"] for line in answer.json()["lines"]]

    assert ids(levels="main") == [1, 4, 5]
    assert ids(levels="E,S") == [1, 5]
    assert ids(levels="all", limit=2) == [4, 5]
    assert ids(after_id=1, limit=2) == [2, 3]
    assert ids(after_id=3, levels="main") == [4, 5]
    assert ids(after_id=5) == []


def test_log_bad_parameters(api: TestClient, paths: NodePaths) -> None:
    fill_log(paths)
    answer = api.get("/api/v1/modules/web/log", params={"levels": "X"})
    assert answer.status_code == 422 and "unknown log level 'X'" in answer.json()["message"]
    assert api.get("/api/v1/modules/web/log", params={"limit": 0}).status_code == 422
    assert api.get("/api/v1/modules/web/log", params={"after_id": -1}).status_code == 400


def test_log_of_a_module_never_started_is_empty(api: TestClient) -> None:
    body = api.get("/api/v1/modules/db/log").json()
    assert body == {"module": "db", "lines": [], "last_id": 0}
    assert api.get("/api/v1/modules/nope/log").status_code == 404


def test_userlogs(api: TestClient, paths: NodePaths) -> None:
    state = paths.module_state("web")
    (state / "userlog_2026_01_02T030405_start_prim.ulog").write_text("started\n")
    (state / "userlog_2026_01_02T030500_stop_prim.ulog").write_text("")
    (state / "module.db").write_text("")
    body = api.get("/api/v1/modules/web/userlogs").json()
    assert [(u["script"], u["started"], u["size"]) for u in body["userlogs"]] == [
        ("start_prim", "2026-01-02T03:04:05", 8),
        ("stop_prim", "2026-01-02T03:05:00", 0),
    ]


# -- service details ------------------------------------------------------------------------------


def test_read_state_file_spellings(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    paths.module_state("web").mkdir(parents=True)
    state = paths.module_state("web") / "state"
    assert read_state_file(paths, "web") is None
    for text, expected in (
        ("PRIM READY", ("PRIM", "READY")),
        ("second Transient\n", ("SECOND", "TRANSIENT")),
        ("WAIT NotReady", ("WAIT", "NOT_READY")),
        ("STOP", ("STOP", "NOT_READY")),
    ):
        state.write_text(text)
        assert read_state_file(paths, "web") == expected
    state.write_text("")
    assert read_state_file(paths, "web") is None


def test_routes_absent_without_a_modules_service() -> None:
    api = TestClient(create_app(FakeNode()), raise_server_exceptions=False)
    assert api.get("/api/v1/modules").status_code == 404


def test_service_requires_an_installed_module(paths: NodePaths, supervisor: FakeSupervisor) -> None:
    modules = ModulesService(paths, supervisor)  # type: ignore[arg-type]
    with pytest.raises(NotFoundError):
        modules.userlogs("nope")
