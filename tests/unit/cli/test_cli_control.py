"""The module control commands of ``hakit``, run against the real API app.

The app's modules service is real; its engine is a fake ``request`` function (the control socket
itself is tested in tests/unit/api/test_modules_api.py) and its supervisor a fake. The CLI's
ApiClient talks to the app in-process (a TestClient as its HTTP client).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from hakit import __version__
from hakit.api.app import create_app
from hakit.cli import cmd_control
from hakit.cli.client import ApiClient, EngineDown
from hakit.cli.main import cli
from hakit.daemon.modules_service import ModulesService
from hakit.daemon.supervisor import EngineState, EngineStatus
from hakit.engine.modlog import Level, SqliteModuleLog
from hakit.errors import NotFoundError, PeerProtocolError, UserConfigError
from hakit.paths import NodePaths
from hakit.testing.clock import FakeClock


class FakeNode:
    def level(self) -> dict[str, Any]:
        return {"node": "node1", "version": __version__}

    def cluster_state(self) -> dict[str, Any]:
        return {"configured": False}

    async def reload(self) -> dict[str, Any]:
        return {}


class FakeSupervisor:
    def __init__(self) -> None:
        self.alive = {"web"}

    def status(self, module: str) -> EngineStatus | None:
        if module == "web":
            alive = module in self.alive
            state = EngineState.RUNNING if alive else EngineState.BACKOFF
            problem = None if alive else "engine exited with code 1; restart in 4 s"
            return EngineStatus(module, state, 99 if alive else None, 0, None, 0.0, problem)
        return None

    def is_alive(self, module: str) -> bool:
        return module in self.alive

    async def restart(self, module: str) -> EngineStatus:
        raise AssertionError("not used")


class FakeEngine:
    """Answers like an engine: ``states`` are returned in turn (the last one stays)."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = [("PRIM", "READY")]
        self.down = False
        self.refuse: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, path: Path, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.down:
            raise PeerProtocolError(
                f"the engine of module web is not running (no control socket at {path})"
            )
        self.requests.append(message)
        if message["op"] == "state":
            state, readiness = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            return {
                "ok": True,
                "module": "web",
                "node": "node1",
                "state": state,
                "readiness": readiness,
                "peer": {
                    "node": "node2",
                    "state": "SECOND",
                    "readiness": "READY",
                    "reachable": True,
                },
                "resources": {"rfs.uptodate": "up", "heartbeat.default": "up"},
                "script": None,
                "decision": {"code": "stable", "message": "no action"},
            }
        command = message["command"]
        if command in self.refuse:
            return {"ok": False, "code": "refused", "message": self.refuse[command]}
        return {"ok": True, "code": "accepted", "message": f"{command}: accepted"}


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodePaths:
    paths = NodePaths(tmp_path)
    paths.ensure()
    for name in ("web", "db"):
        paths.module_source(name).mkdir()
    paths.module_ids.write_text(json.dumps({"web": 1, "db": 2}))
    version = paths.active / ".web.1"
    version.mkdir()
    (version / "module.json").write_text(json.dumps({"signature": "s1", "mode": "mirror"}))
    paths.module_active("web").symlink_to(version.name)
    paths.module_state("web").mkdir()
    monkeypatch.setenv("HAKIT_ROOT", str(tmp_path))
    monkeypatch.delenv("SAFEMODULE", raising=False)
    return paths


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def supervisor() -> FakeSupervisor:
    return FakeSupervisor()


@pytest.fixture(autouse=True)
def daemon(
    paths: NodePaths,
    engine: FakeEngine,
    supervisor: FakeSupervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    modules = ModulesService(paths, supervisor, request=engine, hostname=lambda: "daemonhost")  # type: ignore[arg-type]
    app = create_app(FakeNode(), modules)
    monkeypatch.setattr(
        cmd_control,
        "_client",
        lambda: ApiClient(http=TestClient(app, raise_server_exceptions=False)),
    )
    monkeypatch.setattr(cmd_control.platform, "node", lambda: "adminhost")


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


# -- admin commands -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "command", "options"),
    [
        (["start"], "start", {}),
        (["stop"], "stop", {}),
        (["restart"], "restart", {}),
        (["stopstart"], "stopstart", {}),
        (["forcestop"], "forcestop", {}),
        (["primforce"], "primforce", {}),
        (["swap"], "swap", {"nosync": False}),
        (["swap", "nosync"], "swap", {"nosync": True}),
        (["prim"], "prim", {"fullsync": False}),
        (["prim", "fullsync"], "prim", {"fullsync": True}),
        (["second", "fullsync"], "second", {"fullsync": True}),
        (["failover", "off"], "failover", {"value": "off"}),
        (["failover", "on"], "failover", {"value": "on"}),
    ],
)
def test_admin_commands_reach_the_engine(
    engine: FakeEngine, args: list[str], command: str, options: dict[str, Any]
) -> None:
    result = invoke(*args, "-m", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{command}: accepted\n"
    assert engine.requests == [
        {
            "op": "command",
            "command": command,
            "options": options,
            "identity": None,
            "origin": "admin@adminhost",
        }
    ]


def test_identity_and_safemodule(engine: FakeEngine) -> None:
    result = invoke("stop", "-i", "checkapp", env={"SAFEMODULE": "web"})
    assert result.exit_code == 0, result.output
    assert engine.requests[0]["identity"] == "checkapp"


def test_refused_command_exits_1_with_the_engines_message(engine: FakeEngine) -> None:
    engine.refuse["swap"] = "swap refused: the peer is not SECOND"
    result = invoke("swap", "-m", "web")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "swap -m web refused: swap refused: the peer is not SECOND" in result.stderr


def test_command_with_the_engine_down(engine: FakeEngine) -> None:
    engine.down = True
    result = invoke("start", "-m", "web")
    assert isinstance(result.exception, EngineDown)
    assert result.exception.exit_code == 5
    assert "the command was not sent" in str(result.exception)


def test_command_needs_a_module() -> None:
    result = invoke("start")
    assert result.exit_code == 2
    assert "-m" in result.stderr


def test_command_on_an_unknown_module() -> None:
    result = invoke("start", "-m", "nope")
    assert isinstance(result.exception, NotFoundError)


def test_wrong_option_word_is_a_usage_error() -> None:
    assert invoke("swap", "fullsync", "-m", "web").exit_code == 2
    assert invoke("failover", "maybe", "-m", "web").exit_code == 2


# -- state ----------------------------------------------------------------------------------------


def test_state_of_one_module(engine: FakeEngine) -> None:
    result = invoke("state", "-m", "web")
    assert result.exit_code == 0, result.output
    assert result.stdout == "web  PRIM (Ready)\n"


def test_state_verbose_shows_peer_and_resources() -> None:
    result = invoke("state", "-m", "web", "-v")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "web  PRIM (Ready)"
    assert "  peer: node2  SECOND (Ready)" in lines
    assert "  resources:" in lines
    assert "    heartbeat.default  up" in lines and "    rfs.uptodate       up" in lines


def test_state_of_every_module(paths: NodePaths) -> None:
    result = invoke("state")
    assert result.exit_code == 0, result.output
    assert result.stdout == "db   NOT CONFIGURED\nweb  PRIM (Ready)\n"


def test_state_of_every_module_with_an_engine_down(
    supervisor: FakeSupervisor, paths: NodePaths
) -> None:
    supervisor.alive.clear()
    (paths.module_state("web") / "state").write_text("STOP NOT_READY\n")
    result = invoke("state")
    assert result.exit_code == 0, result.output
    assert "web  STOP (NotReady)  [engine not running: engine exited with code 1" in result.stdout


def test_state_with_the_engine_down_gives_the_last_known_state(
    engine: FakeEngine, paths: NodePaths
) -> None:
    engine.down = True
    (paths.module_state("web") / "state").write_text("PRIM READY\n")
    result = invoke("state", "-m", "web")
    assert isinstance(result.exception, EngineDown)
    assert "last known state: PRIM (Ready)" in str(result.exception)


@pytest.mark.parametrize(
    ("state", "code"),
    [("STOP", 0), ("WAIT", 1), ("ALONE", 2), ("UP", 2), ("PRIM", 3), ("SECOND", 4), ("ODD", 10)],
)
def test_state_lq_exit_codes(engine: FakeEngine, state: str, code: int) -> None:
    engine.states = [(state, "READY")]
    result = invoke("state", "-m", "web", "-lq")
    assert result.exit_code == code
    assert result.stdout == ""


def test_state_lq_when_the_state_cannot_be_known(engine: FakeEngine) -> None:
    engine.down = True
    result = invoke("state", "-m", "web", "-lq")
    assert result.exit_code == cmd_control.LQ_UNKNOWN == 10
    assert "not running" in result.stderr
    assert invoke("state", "-m", "nope", "-lq").exit_code == 10
    assert invoke("state", "-lq").exit_code == 10


def test_state_lq_without_a_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    monkeypatch.setattr(
        cmd_control, "_client", lambda: ApiClient("http://x", transport=httpx.MockTransport(refuse))
    )
    result = invoke("state", "-m", "web", "-lq")
    assert result.exit_code == 10
    assert "cannot reach the hakit daemon" in result.stderr


# -- waitstate ------------------------------------------------------------------------------------


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """waitstate's clock and sleep: a sleep moves the fake clock, never waits."""
    fake = FakeClock()
    monkeypatch.setattr(cmd_control, "_clock", fake)
    monkeypatch.setattr(cmd_control, "_sleep", fake.advance)
    return fake


def test_waitstate_polls_until_the_state_is_reached(engine: FakeEngine, clock: FakeClock) -> None:
    engine.states = [
        ("STOP", "NOT_READY"),
        ("WAIT", "TRANSIENT"),
        ("PRIM", "TRANSIENT"),
        ("PRIM", "READY"),
    ]
    start = clock.now
    result = invoke("waitstate", "-m", "web", "prim")
    assert result.exit_code == 0, result.output
    assert result.stdout == "web  PRIM (Transient)\n"
    assert clock.now - start == pytest.approx(2 * cmd_control.WAIT_POLL)
    assert len(engine.requests) == 3


def test_waitstate_times_out_with_the_current_state(engine: FakeEngine, clock: FakeClock) -> None:
    engine.states = [("SECOND", "TRANSIENT")]
    result = invoke("waitstate", "-m", "web", "PRIM", "--timeout", "1")
    assert result.exit_code == 1
    assert "module web not PRIM after 1 s; current state: SECOND (Transient)" in result.stderr
    assert len(engine.requests) == 6  # t = 0, 0.2, ... 1.0


def test_waitstate_keeps_waiting_while_the_engine_is_down(
    engine: FakeEngine, clock: FakeClock
) -> None:
    engine.down = True
    result = invoke("waitstate", "-m", "web", "STOP", "--timeout", "0.5")
    assert result.exit_code == 1
    assert "current state: unknown" in result.stderr and "not running" in result.stderr


def test_waitstate_rejects_unknown_states() -> None:
    assert invoke("waitstate", "-m", "web", "DANCING").exit_code == 2


# -- log ------------------------------------------------------------------------------------------


def fill_log(paths: NodePaths) -> None:
    with SqliteModuleLog(paths.module_state("web") / "module.db", "web") as modlog:
        modlog.append("heart", Level.EVENT, "Local state ALONE Ready")
        modlog.append("engine", Level.DEBUG, "tick")
        modlog.append("user", Level.INFO, "hello")
        modlog.append("engine", Level.USER, "Action stop called by admin@adminhost")
        modlog.append("userplug", Level.SCRIPT, "Script stop_prim")


def test_log_shows_the_main_levels_in_safekit_format(paths: NodePaths) -> None:
    fill_log(paths)
    result = invoke("log", "-m", "web")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(" | ", 1)[1] for line in lines] == [
        "heart | E | Local state ALONE Ready",
        "engine | U | Action stop called by admin@adminhost",
        "userplug | S | Script stop_prim",
    ]
    assert all(line.startswith("| 2") for line in lines)


def test_log_all_levels_and_size(paths: NodePaths) -> None:
    fill_log(paths)
    lines = invoke("log", "-m", "web", "-A").stdout.splitlines()
    assert [line.split(" | ")[1] for line in lines] == [
        "heart",
        "engine",
        "user",
        "engine",
        "userplug",
    ]
    lines = invoke("log", "-m", "web", "-A", "-s", "2").stdout.splitlines()
    assert [line.split(" | ")[2] for line in lines] == ["U", "S"]


def test_log_of_a_module_never_started(paths: NodePaths) -> None:
    result = invoke("log", "-m", "db")
    assert result.exit_code == 0 and result.stdout == ""


def test_render_line_falls_back_on_the_daemons_text() -> None:
    assert cmd_control.render_line({"text": "| raw |"}) == "| raw |"


# -- printi / printe ------------------------------------------------------------------------------


def test_printi_and_printe_write_the_module_log(paths: NodePaths) -> None:
    assert invoke("printi", "hello", "world", env={"SAFEMODULE": "web"}).exit_code == 0
    assert invoke("printe", "-m", "db", "disk nearly full").exit_code == 0
    with SqliteModuleLog.for_module(paths, "web", readonly=True) as modlog:
        (record,) = modlog.tail(10)
    assert (record.component, record.level, record.message) == ("user", Level.INFO, "hello world")
    with SqliteModuleLog.for_module(paths, "db", readonly=True) as modlog:
        (record,) = modlog.tail(10)
    assert (record.level, record.message) == (Level.EVENT, "disk nearly full")


def test_printi_needs_a_module() -> None:
    result = invoke("printi", "hello")
    assert isinstance(result.exception, UserConfigError)
    assert "SAFEMODULE" in str(result.exception)
