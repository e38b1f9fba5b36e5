"""Two mirror engines (real executor + real core) wired by an in-memory heartbeat link.

Scripts, VIP and module log are fakes; time is real but short (pulse 20 ms, timeout 200 ms) and no
assertion is on durations: each step waits for a state with a generous deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from hakit.config.model import User, VipInterface, VirtualAddr
from hakit.core.events import AdminCommand, AdminKind, CheckerAction
from hakit.core.mirror_model import MirrorSettings
from hakit.core.scripts import ALL_SCRIPTS
from hakit.engine.mirror_engine import MirrorEngine, MirrorSpec, ModuleVip, admin_event
from hakit.errors import UserConfigError
from hakit.net.heartbeat import Beat, HeartbeatPath
from hakit.net.vip import Vip
from hakit.testing.fake_modlog import FakeModuleLog
from hakit.testing.fake_scripts import FakeScriptRunner, Outcome
from hakit.testing.fake_vip import FakeVip

PULSE = 0.02
TIMEOUT = 1.0
SCRIPTS = ("prestart", "start_prim", "stop_prim", "start_second", "stop_second", "poststop")


class LinkedHeartbeat:
    """Delivers this side's payload to the peer engine every pulse and at once on change."""

    def __init__(self) -> None:
        self.peer: LinkedHeartbeat | None = None
        self.engine: MirrorEngine | None = None
        self.payload: dict[str, Any] = {}
        self.connected = True
        self.last_heard: float | None = None

    def _deliver(self, payload: Mapping[str, Any]) -> None:
        if self.connected and self.peer is not None and self.peer.engine is not None:
            self.peer.last_heard = time.monotonic()
            self.peer.engine.on_beat(Beat("default", dict(payload), time.monotonic(), 1))

    def set_payload(self, payload: Mapping[str, Any]) -> None:
        self.payload = {**payload, "module": "app"}
        self._deliver(self.payload)

    async def announce_stop(self, payload: Mapping[str, Any]) -> None:
        self._deliver({**payload, "module": "app"})

    def resources(self, now: float) -> dict[str, str]:
        up = self.last_heard is not None and now - self.last_heard < TIMEOUT
        return {"heartbeat.default": "up" if up else "down"}

    async def run(self) -> None:
        while True:
            self._deliver(self.payload)
            await asyncio.sleep(PULSE)


def make_engine(tmp: Path, local: str, peer: str, hb: LinkedHeartbeat) -> MirrorEngine:
    runner = FakeScriptRunner()
    for name in SCRIPTS:
        runner.script(name, Outcome.exits(0))
    settings = MirrorSettings(
        local_node=local,
        peer_node=peer,
        pulse=PULSE,
        timeout=TIMEOUT,
        scripts=frozenset(SCRIPTS) & ALL_SCRIPTS,
        incarnation=local,
    )
    vip = ModuleVip(
        Vip.parse("10.0.0.100"), VirtualAddr("10.0.0.100", "one_side_alias"), VipInterface(addrs=())
    )
    spec = MirrorSpec(
        module="app",
        module_id=1,
        local=local,
        peer=peer,
        settings=settings,
        heartbeat_paths=(
            HeartbeatPath("default", "default", "127.0.0.1", "127.0.0.2", 1, PULSE, TIMEOUT),
        ),
        vips=(vip,),
        tcpreset=True,
        user=User(),
        state_dir=tmp / local,
    )
    engine = MirrorEngine(
        spec=spec,
        runner=runner,
        vip=FakeVip(),
        modlog=FakeModuleLog("app"),
        heartbeat=hb,
        clock=time.monotonic,
    )
    hb.engine = engine
    return engine


RUNNING: list[asyncio.Task[None]] = []


async def until(
    engine: MirrorEngine, state: str, readiness: str = "Ready", limit: float = 10.0
) -> None:
    deadline = time.monotonic() + limit
    while (engine.state.state.value, engine.state.readiness.value) != (state, readiness):
        for task in RUNNING:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(
                    f"an engine crashed: {task.exception()!r}"
                ) from task.exception()
        assert time.monotonic() < deadline, (
            f"{engine.spec.local} never reached {state} {readiness}: now {engine.state.state} "
            f"{engine.state.readiness}; log: {engine.modlog.messages()[-8:]}"  # type: ignore[attr-defined]
        )
        await asyncio.sleep(0.01)


async def cmd(engine: MirrorEngine, command: str, **options: Any) -> dict[str, Any]:
    return await engine.command({"op": "command", "command": command, "options": options})


def ran(engine: MirrorEngine) -> list[str]:
    """The scripts the engine ran, in order (names only)."""
    return [line.split()[0] for line in engine.runner.ran]  # type: ignore[attr-defined]


def test_pair_prim_second_failover_and_return(tmp_path: Path) -> None:
    async def scenario() -> None:
        hb1, hb2 = LinkedHeartbeat(), LinkedHeartbeat()
        hb1.peer, hb2.peer = hb2, hb1
        e1 = make_engine(tmp_path, "node1", "node2", hb1)
        e2 = make_engine(tmp_path, "node2", "node1", hb2)
        t1 = asyncio.create_task(e1.run())
        t2 = asyncio.create_task(e2.run())
        RUNNING[:] = [t1, t2]
        try:
            # First start: nobody knows whose data is good -> WAIT NotReady on both.
            assert (await cmd(e1, "start"))["ok"]
            await until(e1, "WAIT", "NotReady")
            assert "Data may be not uptodate" in (e1.snapshot()["wait_reason"] or "")
            # The admin says node1 holds the data.
            r = await cmd(e1, "prim")
            assert r["ok"], r
            await until(e1, "ALONE")
            assert e1.vip.addresses == {"10.0.0.100"}  # type: ignore[attr-defined]
            assert (tmp_path / "node1" / "ready.txt").exists()
            assert (await cmd(e2, "second"))["ok"]
            await until(e2, "SECOND")
            await until(e1, "PRIM")
            assert e2.vip.addresses == set()  # type: ignore[attr-defined]
            assert "start_prim" in ran(e1) and "start_second" in ran(e2)
            assert not (tmp_path / "node2" / "ready.txt").exists()
            assert e2.snapshot()["resources"]["rfs.uptodate"] == "up"  # a synchronized SECOND
            assert (tmp_path / "node1" / "state").read_text() == "PRIM Ready\n"

            # Clean stop of the primary: announced, node2 takes over at once.
            assert (await cmd(e1, "stop"))["ok"]
            await until(e1, "STOP", "NotReady")
            await until(e2, "ALONE")
            assert e1.vip.addresses == set()  # type: ignore[attr-defined]
            assert e2.vip.addresses == {"10.0.0.100"}  # type: ignore[attr-defined]
            assert any("remote stop" in m for m in e2.modlog.messages())  # type: ignore[attr-defined]

            # node1 returns: its data is behind, it becomes SECOND; node2 PRIM.
            assert (await cmd(e1, "start"))["ok"]
            await until(e1, "SECOND")
            await until(e2, "PRIM")

            # Hard failure of node2 (its heartbeats stop): node1 goes ALONE after the timeout.
            hb2.connected = False
            await until(e1, "ALONE")
            assert any("no heartbeat" in m for m in e1.modlog.messages())  # type: ignore[attr-defined]
        finally:
            t1.cancel()
            t2.cancel()
            results = await asyncio.gather(t1, t2, return_exceptions=True)
        # The engines ran until cancelled: no crash hidden behind the cancellation.
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results

    asyncio.run(scenario())


def test_state_files_and_persisted_generation(tmp_path: Path) -> None:
    async def scenario() -> None:
        hb1, hb2 = LinkedHeartbeat(), LinkedHeartbeat()
        hb1.peer, hb2.peer = hb2, hb1
        hb1.connected = hb2.connected = False  # node1 alone in the world
        e1 = make_engine(tmp_path, "node1", "node2", hb1)
        task = asyncio.create_task(e1.run())
        RUNNING[:] = [task]
        assert (await cmd(e1, "prim"))["ok"]
        await until(e1, "ALONE")
        gen = (tmp_path / "node1" / "generation.json").read_text()
        assert '"status": "uptodate"' in gen
        assert (tmp_path / "node1" / "intent").read_text() == "started\n"
        refused = await cmd(e1, "second")
        assert refused["ok"] is False
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    # A new engine on the same state directory remembers it is up to date.
    hb = LinkedHeartbeat()
    e = make_engine(tmp_path, "node1", "node2", hb)
    assert e.state.data.status.value == "uptodate"


def test_admin_event_mapping() -> None:
    assert admin_event({"command": "start"}) == AdminCommand(AdminKind.START)
    ev = admin_event({"command": "stop", "identity": "start_prim"})
    assert isinstance(ev, CheckerAction) and ev.identity == "start_prim"
    assert (
        admin_event({"command": "failover", "options": {"value": "off"}}).kind
        is AdminKind.FAILOVER_OFF
    )  # type: ignore[union-attr]
    assert admin_event({"command": "prim", "options": {"fullsync": True}}) == AdminCommand(
        AdminKind.PRIM, fullsync=True
    )
    with pytest.raises(UserConfigError, match="unknown command"):
        admin_event({"command": "explode"})
    with pytest.raises(UserConfigError, match="on or off"):
        admin_event({"command": "failover", "options": {}})
