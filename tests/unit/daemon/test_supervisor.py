"""The engine supervisor of hakitd, with real child processes: a small fake engine written here.

The fake engine reads what to do from ``active/<module>/behaviour``: ``serve`` (answer on the
control socket until SIGTERM), ``stubborn`` (serve and ignore SIGTERM) or ``exit N``. Back-off
delays go through a recording sleep and lifetimes through a fake clock: nothing waits for real
time except the children themselves (bounded waits, no timing assertions).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hakit.daemon.supervisor import (
    EX_CONFIG,
    ActiveCopy,
    Backoff,
    EngineState,
    EngineSupervisor,
    engine_log_path,
    engine_stop_timeout,
    read_active_copy,
    scan_active,
)
from hakit.engine.control import request, socket_path
from hakit.errors import NotFoundError, PeerProtocolError
from hakit.paths import NodePaths
from hakit.testing.clock import FakeClock

FAKE_ENGINE = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from hakit.engine.control import serve, socket_path
    from hakit.paths import NodePaths

    module = sys.argv[1]
    paths = NodePaths.from_env()
    mode = (paths.module_active(module) / "behaviour").read_text().split()
    print(f"fake engine {module} pid {os.getpid()} mode {mode}", flush=True)
    if mode[0] == "exit":
        sys.exit(int(mode[1]))

    async def main():
        stop = asyncio.Event()
        if mode[0] == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        else:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

        async def handler(req):
            return {"ok": True, "module": module, "pid": os.getpid(), "op": req.get("op")}

        server = await serve(socket_path(paths.run, module), handler)
        await stop.wait()
        server.close()
        print("fake engine: SIGTERM, bye", flush=True)

    asyncio.run(main())
    """
)


class RecordingSleep:
    """Records back-off delays; returns at once, then blocks for ever after ``limit`` calls."""

    def __init__(self, limit: int = 1000) -> None:
        self.delays: list[float] = []
        self.limit = limit

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.limit:
            await asyncio.Event().wait()
        await asyncio.sleep(0)


def configure(paths: NodePaths, module: str, behaviour: str, signature: str = "sig1") -> Path:
    """Activate a version of ``module`` (as ``hakit config`` does: a new directory, link swapped)."""
    paths.ensure()
    version = paths.active / f".{module}.{signature}"
    version.mkdir(exist_ok=True)
    (version / "module.json").write_text(json.dumps({"signature": signature, "mode": "mirror"}))
    (version / "behaviour").write_text(behaviour)
    link = paths.module_active(module)
    tmp = paths.active / f".{module}.link"
    os.symlink(version.name, tmp)
    os.replace(tmp, link)
    return version


def make_supervisor(
    tmp_path: Path,
    sleep: RecordingSleep | None = None,
    stop_timeout: float = 20.0,
    poll_interval: float = 2.0,
) -> EngineSupervisor:
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    paths = NodePaths(tmp_path / "root")
    paths.ensure()
    return EngineSupervisor(
        paths,
        command=lambda module: [sys.executable, str(script), module],
        sleep=sleep or RecordingSleep(),
        clock=FakeClock(),
        stop_timeout=lambda paths, module: stop_timeout,
        poll_interval=poll_interval,
    )


def run(sup: EngineSupervisor, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            sup.attach(tg)
            try:
                await scenario()
            finally:
                await sup.close()

    asyncio.run(main())


async def until(condition: Callable[[], bool], what: str, bound: float = 20.0) -> None:
    """Wait until ``condition()`` holds (the bound only turns a hang into a clear failure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not condition():
        assert loop.time() < deadline, f"still not {what} after {bound} s"
        await asyncio.sleep(0.02)


async def ask_state(sup: EngineSupervisor, module: str) -> dict[str, object]:
    """Ask the engine over its control socket, retrying until it listens (a new engine needs a
    moment; the socket file of a previous one may still be there)."""
    path = socket_path(sup.paths.run, module)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    while True:
        try:
            return await request(path, {"op": "state"})
        except PeerProtocolError:
            assert loop.time() < deadline, f"no engine answers on {path}"
            await asyncio.sleep(0.02)


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- pure parts -----------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_maximum_and_resets_after_a_long_life() -> None:
    backoff = Backoff(first=1, maximum=30, stable_after=60)
    assert [backoff.after_exit(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after_exit(60) == 1
    assert backoff.after_exit(3) == 2


def test_scan_active_sees_configured_modules_only(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    configure(paths, "web", "serve", "s1")
    (paths.active / "dangling").symlink_to(".nowhere")
    (paths.active / ".hidden.tmp").mkdir()
    copies = scan_active(paths)
    assert list(copies) == ["web"]
    assert copies["web"] == ActiveCopy(str((paths.active / ".web.s1").resolve()), "s1")
    assert read_active_copy(paths, "dangling") is None
    assert read_active_copy(paths, "absent") is None


def test_stop_timeout_outlasts_the_engines_own_limit(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    version = configure(paths, "web", "serve")
    (version / "conf").mkdir()
    conf = version / "conf" / "userconfig.xml"
    conf.write_text(
        '<safe><service mode="mirror"><heart><heartbeat name="default"/></heart>'
        '<user nicestoptimeout="10s" forcestoptimeout="5s"/></service></safe>'
    )
    assert engine_stop_timeout(paths, "web") == 60 + 2 * 15 + 30
    conf.write_text(
        '<safe><service mode="mirror"><heart><heartbeat name="default"/></heart></service></safe>'
    )
    assert engine_stop_timeout(paths, "web") == 60 + 30  # no <user>: no scripts to wait for
    assert engine_stop_timeout(paths, "absent") == 60 + 2 * 600 + 30  # unreadable: defaults


def test_scan_without_active_directory(tmp_path: Path) -> None:
    assert scan_active(NodePaths(tmp_path / "nothing")) == {}


# -- with processes -------------------------------------------------------------------------------


def test_one_engine_per_configured_module_answering_on_its_socket(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    configure(sup.paths, "web", "serve")
    configure(sup.paths, "db", "serve")

    async def scenario() -> None:
        await sup.reconcile()
        for module in ("web", "db"):
            answer = await ask_state(sup, module)
            status = sup.status(module)
            assert status is not None and status.alive and sup.is_alive(module)
            assert status.state is EngineState.RUNNING
            assert answer["module"] == module and answer["pid"] == status.pid
            assert status.restarts == 0 and status.last_exit is None
        assert set(sup.statuses()) == {"db", "web"}
        assert sup.status("other") is None and not sup.is_alive("other")
        # a second reconciliation with nothing changed starts nothing new
        pid = sup.status("web").pid  # type: ignore[union-attr]
        await sup.reconcile()
        assert sup.status("web").pid == pid  # type: ignore[union-attr]

    run(sup, scenario)
    text = engine_log_path(sup.paths, "web").read_text()
    assert "hakitd: engine started" in text and "fake engine web" in text
    assert "fake engine: SIGTERM, bye" in text and "stopped by hakitd" in text


def test_engine_environment_names_the_node_root(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    assert sup._environ["HAKIT_ROOT"] == str(sup.paths.root)


def test_crashing_engine_is_restarted_with_backoff(tmp_path: Path) -> None:
    sleep = RecordingSleep(limit=6)
    sup = make_supervisor(tmp_path, sleep)
    configure(sup.paths, "web", "exit 3")

    async def scenario() -> None:
        await sup.reconcile()
        await until(lambda: len(sleep.delays) >= 6, "six restarts scheduled")
        status = sup.status("web")
        assert status is not None
        assert status.state is EngineState.BACKOFF and not status.alive and status.pid is None
        assert status.last_exit == 3
        assert status.restarts == 5
        assert status.problem == "engine exited with code 3; restart in 30 s"

    run(sup, scenario)
    assert sleep.delays == [1, 2, 4, 8, 16, 30]
    assert engine_log_path(sup.paths, "web").read_text().count("exit code 3") == 6


def test_engine_that_cannot_start_is_retried(tmp_path: Path) -> None:
    sleep = RecordingSleep(limit=2)
    paths = NodePaths(tmp_path)
    sup = EngineSupervisor(
        paths,
        command=lambda module: [str(tmp_path / "no-such-engine"), module],
        sleep=sleep,
        clock=FakeClock(),
        stop_timeout=lambda paths, module: 5.0,
    )
    configure(paths, "web", "serve")

    async def scenario() -> None:
        await sup.reconcile()
        await until(lambda: len(sleep.delays) >= 2, "two retries scheduled")
        status = sup.status("web")
        assert status is not None and status.state is EngineState.BACKOFF
        assert status.last_exit is None and status.problem is not None
        assert "could not start" in status.problem

    run(sup, scenario)
    assert "cannot start the engine" in engine_log_path(paths, "web").read_text()


def test_exit_78_is_held_until_the_active_copy_changes(tmp_path: Path) -> None:
    sleep = RecordingSleep()
    sup = make_supervisor(tmp_path, sleep)
    configure(sup.paths, "web", f"exit {EX_CONFIG}", "sig1")

    async def scenario() -> None:
        await sup.reconcile()
        await until(lambda: sup.status("web").state is EngineState.HELD, "held")  # type: ignore[union-attr]
        status = sup.status("web")
        assert status is not None and status.last_exit == EX_CONFIG and status.restarts == 0
        assert status.problem is not None and "hakit config -m web" in status.problem
        await sup.reconcile()  # same copy: still held, not restarted
        assert sup.status("web").state is EngineState.HELD  # type: ignore[union-attr]
        configure(sup.paths, "web", "serve", "sig2")
        await sup.reconcile()
        answer = await ask_state(sup, "web")
        status = sup.status("web")
        assert status is not None and status.alive and answer["pid"] == status.pid

    run(sup, scenario)
    assert sleep.delays == []


def test_release_held_starts_held_engines_again(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    version = configure(sup.paths, "web", f"exit {EX_CONFIG}")

    async def scenario() -> None:
        await sup.reconcile()
        await until(lambda: sup.status("web").state is EngineState.HELD, "held")  # type: ignore[union-attr]
        (version / "behaviour").write_text("serve")  # e.g. cluster.xml fixed meanwhile
        await sup.release_held()
        await ask_state(sup, "web")
        assert sup.is_alive("web")

    run(sup, scenario)


def test_removed_module_has_its_engine_stopped(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    configure(sup.paths, "web", "serve")

    async def scenario() -> None:
        await sup.reconcile()
        await ask_state(sup, "web")
        pid = sup.status("web").pid  # type: ignore[union-attr]
        assert pid is not None
        sup.paths.module_active("web").unlink()
        await sup.reconcile()
        await until(lambda: sup.status("web") is None, "forgotten")
        assert pid_gone(pid)

    run(sup, scenario)
    assert "exit code 0" in engine_log_path(sup.paths, "web").read_text()


def test_new_active_copy_restarts_the_engine(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    configure(sup.paths, "web", "serve", "sig1")

    async def scenario() -> None:
        await sup.reconcile()
        first = (await ask_state(sup, "web"))["pid"]
        configure(sup.paths, "web", "serve", "sig2")
        await sup.reconcile()

        def replaced() -> bool:
            status = sup.status("web")
            return status is not None and status.alive and status.pid != first

        await until(replaced, "restarted on the new copy")
        answer = await ask_state(sup, "web")
        assert answer["pid"] != first
        assert isinstance(first, int) and pid_gone(first)

    run(sup, scenario)


def test_restart_and_unknown_module(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    configure(sup.paths, "web", "serve")

    async def scenario() -> None:
        # restart starts a configured module's engine even before the first poll
        status = await sup.restart("web")
        await ask_state(sup, "web")
        first = sup.status("web").pid  # type: ignore[union-attr]
        assert status.module == "web"
        status = await sup.restart("web")
        await until(lambda: sup.is_alive("web"), "running again")
        assert sup.status("web").pid != first  # type: ignore[union-attr]
        with pytest.raises(NotFoundError, match="hakit config -m nope"):
            await sup.restart("nope")

    run(sup, scenario)


def test_stubborn_engine_is_killed_after_its_stop_timeout(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path, stop_timeout=0.3)
    configure(sup.paths, "web", "stubborn")
    pids: list[int] = []

    async def scenario() -> None:
        await sup.reconcile()
        answer = await ask_state(sup, "web")
        assert isinstance(answer["pid"], int)
        pids.append(answer["pid"])

    run(sup, scenario)
    assert pid_gone(pids[0])
    assert "exit code -9" in engine_log_path(sup.paths, "web").read_text()
    assert sup.statuses() == {}


def test_status_dict(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path)
    configure(sup.paths, "web", "serve")

    async def scenario() -> None:
        await sup.reconcile()
        await ask_state(sup, "web")
        data = sup.status("web").to_dict()  # type: ignore[union-attr]
        assert data["module"] == "web" and data["alive"] is True and data["state"] == "running"
        assert isinstance(data["pid"], int) and data["restarts"] == 0
        assert data["last_exit"] is None and data["problem"] is None
        assert data["since"].endswith("+00:00")

    run(sup, scenario)


def test_polling_loop_picks_up_new_modules(tmp_path: Path) -> None:
    sup = make_supervisor(tmp_path, poll_interval=0.05)

    async def scenario() -> None:
        sup.start()
        configure(sup.paths, "web", "serve")
        await ask_state(sup, "web")
        await until(lambda: sup.is_alive("web"), "started by the poll loop")

    run(sup, scenario)


# -- with the API ---------------------------------------------------------------------------------


def test_api_over_real_engines_and_the_health_check(tmp_path: Path) -> None:
    """hakitd's pieces together: NodeService, the supervisor, the app, a real fake engine."""
    import signal

    import httpx

    from hakit.api.app import create_app
    from hakit.daemon.service import NodeService

    sleep = RecordingSleep(limit=1)  # after a crash, no automatic restart: the test restarts it
    sup = make_supervisor(tmp_path, sleep)
    paths = sup.paths
    paths.module_source("web").mkdir()
    configure(paths, "web", "serve")
    service = NodeService(paths, "node1", supervisor=sup)
    ready = paths.module_state("web") / "ready.txt"

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=create_app(service, service.modules))
        async with httpx.AsyncClient(transport=transport, base_url="http://hakitd") as api:

            async def health() -> int:
                return (await api.get("/var/modules/web/ready.txt")).status_code

            await sup.reconcile()
            first = await ask_state(sup, "web")
            assert (await api.get("/api/v1/modules/web/state")).json()["pid"] == first["pid"]
            answer = await api.post("/api/v1/modules/web/command", json={"command": "start"})
            assert answer.status_code == 200 and answer.json()["ok"] is True
            rows = (await api.get("/api/v1/modules")).json()["modules"]
            assert rows[0]["name"] == "web" and rows[0]["engine"]["alive"] is True

            assert await health() == 404  # engine alive, no ready.txt
            paths.module_state("web").mkdir(parents=True, exist_ok=True)
            ready.write_text("")
            assert await health() == 200

            assert isinstance(first["pid"], int)
            os.kill(first["pid"], signal.SIGKILL)  # the engine dies; ready.txt stays behind
            await until(lambda: not sup.is_alive("web"), "seen dead")
            assert await health() == 404
            down = await api.get("/api/v1/modules/web/state")
            assert down.status_code == 503 and down.json()["code"] == "engine_down"
            assert down.json()["engine"]["last_exit"] == -signal.SIGKILL

            answer = await api.post("/api/v1/modules/web/reload")
            assert answer.status_code == 200, answer.text
            second = await ask_state(sup, "web")
            assert second["pid"] != first["pid"]
            assert await health() == 200
            gone = await api.post("/api/v1/modules/nope/reload")
            assert gone.status_code == 404

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            service.attach(tg, engines=False)
            try:
                await scenario()
            finally:
                await service.close()

    asyncio.run(main())
    assert sleep.delays == [1]
