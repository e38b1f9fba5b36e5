"""The engine's replication wiring with a fake replicator port (real executor and core)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from test_mirror_engine import RUNNING, LinkedHeartbeat, cmd, make_engine, until

from hakit.core.events import ResyncDone
from hakit.engine.mirror_engine import MirrorEngine
from hakit.testing.fake_replication import FakeReplication


def wire(engine: MirrorEngine, fake: FakeReplication) -> FakeReplication:
    engine.replication = fake
    fake.on_event = engine.on_replication
    fake.generation_file = engine.spec.generation_file
    return fake


def test_roles_resync_and_peer_out_of_date(tmp_path: Path) -> None:
    async def scenario() -> None:
        hb1, hb2 = LinkedHeartbeat(), LinkedHeartbeat()
        hb1.peer, hb2.peer = hb2, hb1
        e1 = make_engine(tmp_path, "node1", "node2", hb1)
        e2 = make_engine(tmp_path, "node2", "node1", hb2)
        r1, r2 = wire(e1, FakeReplication()), wire(e2, FakeReplication(auto_resync=False))
        t1, t2 = asyncio.create_task(e1.run()), asyncio.create_task(e2.run())
        RUNNING[:] = [t1, t2]
        try:
            assert (await cmd(e1, "prim"))["ok"]
            await until(e1, "ALONE")
            assert "start primary paired=False in_sync=False" in r1.calls
            assert r1.role == "primary"
            # node2 joins: the secondary replicator starts and asks for a full copy; the module
            # stays SECOND Transient until every directory reported its copy.
            assert (await cmd(e2, "second"))["ok"]
            await until(e2, "SECOND", "Transient")
            assert r2.role == "secondary"
            assert "resync full" in r2.calls
            r2.finish_resync("full")
            await until(e2, "SECOND")
            await until(e1, "PRIM")
            assert r1.paired is True
            assert "Directory 0 copied from node1" in " ".join(e2.modlog.messages())  # type: ignore[attr-defined]

            # The primary's replicator gives up on node2: the engine records a new generation
            # BEFORE telling the replicator to release the held requests.
            before = json.loads(e1.spec.generation_file.read_text())["current"]
            r1.peer_out_of_date("peer node2 did not acknowledge #7 within sendtimeout 1s")
            await until(e1, "ALONE")
            for _ in range(200):
                if r1.persisted:
                    break
                await asyncio.sleep(0.01)
            assert r1.persisted == 1
            after = json.loads(r1.persisted_after[0])["current"]
            assert after != before, "generation must change before the requests are released"
            assert r1.paired is False
            assert any("peer out of date" in m for m in e1.modlog.messages())  # type: ignore[attr-defined]
            # node2 sees the new generation in the heartbeats: resynchronizes again.
            await until(e2, "SECOND", "Transient")
            assert r2.calls.count("resync full") + r2.calls.count("resync incremental") == 2
            r2.finish_resync("full")
            await until(e1, "PRIM")
        finally:
            t1.cancel()
            t2.cancel()
            await asyncio.gather(t1, t2, return_exceptions=True)

    asyncio.run(scenario())


def test_replicator_failure_to_start_stops_the_module(tmp_path: Path) -> None:
    async def scenario() -> None:
        hb = LinkedHeartbeat()
        hb.connected = False
        e1 = make_engine(tmp_path, "node1", "node2", hb)
        fake = wire(e1, FakeReplication())
        fake.fail_start = "replicated directory /srv/data: <tocheck path='x'> does not exist"
        task = asyncio.create_task(e1.run())
        RUNNING[:] = [task]
        try:
            assert (await cmd(e1, "prim"))["ok"]
            await until(e1, "STOP", "NotReady")
            text = " ".join(e1.modlog.messages())  # type: ignore[attr-defined]
            assert "tocheck" in text
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_unexpected_replicator_exit_restarts_the_module(tmp_path: Path) -> None:
    async def scenario() -> None:
        hb = LinkedHeartbeat()
        hb.connected = False
        e1 = make_engine(tmp_path, "node1", "node2", hb)
        fake = wire(e1, FakeReplication())
        task = asyncio.create_task(e1.run())
        RUNNING[:] = [task]
        try:
            assert (await cmd(e1, "prim"))["ok"]
            await until(e1, "ALONE")
            starts = sum(c.startswith("start") for c in fake.calls)
            fake.emit(0, {"ev": "exited", "code": 1})
            for _ in range(500):
                if sum(c.startswith("start") for c in fake.calls) > starts:
                    break
                await asyncio.sleep(0.01)
            assert "stop" in fake.calls
            text = " ".join(e1.modlog.messages())  # type: ignore[attr-defined]
            assert "ended unexpectedly" in text
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_resync_done_waits_for_every_directory(tmp_path: Path) -> None:
    async def scenario() -> None:
        hb = LinkedHeartbeat()
        e = make_engine(tmp_path, "node2", "node1", hb)
        fake = wire(e, FakeReplication(dirs=2, auto_resync=False))
        submitted: list[object] = []
        e.submit = submitted.append  # type: ignore[method-assign]
        e._resyncing = {0, 1}
        fake.emit(0, {"ev": "resync_done", "kind": "full"})
        assert not any(isinstance(x, ResyncDone) for x in submitted)
        fake.emit(1, {"ev": "resync_done", "kind": "full"})
        assert any(isinstance(x, ResyncDone) for x in submitted)

    asyncio.run(scenario())
