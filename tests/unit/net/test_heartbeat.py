"""Module heartbeats over real UDP on loopback (127.0.0.1 <-> 127.0.0.2)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from hakit.net.auth import Sealer
from hakit.net.heartbeat import Beat, HeartbeatPath, HeartbeatService, default_port

KEY = bytes(range(32))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service(
    local: str,
    peer: str,
    addr: str,
    peer_addr: str,
    port: int,
    got: list[Beat],
    key: bytes = KEY,
    module: str = "app",
) -> HeartbeatService:
    path = HeartbeatPath("default", "default", addr, peer_addr, port, pulse=0.05, timeout=1.0)
    return HeartbeatService(
        module=module,
        local=local,
        peer=peer,
        key=key,
        incarnation=1,
        paths=[path],
        on_beat=got.append,
    )


async def until(cond, what: str, limit: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not cond():
        assert loop.time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.01)


def test_default_port_follows_safekit() -> None:
    assert default_port(1) == 8888
    assert default_port(3) == 8890


def test_beats_flow_both_ways_and_carry_state() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        got1: list[Beat] = []
        got2: list[Beat] = []
        s1 = service("node1", "node2", "127.0.0.1", "127.0.0.2", port, got1)
        s2 = service("node2", "node1", "127.0.0.2", "127.0.0.1", port, got2)
        s1.set_payload({"state": "PRIM", "readiness": "READY"})
        async with asyncio.TaskGroup() as tg:
            t1 = tg.create_task(s1.run())
            t2 = tg.create_task(s2.run())
            await until(
                lambda: any(b.payload.get("state") == "PRIM" for b in got2), "node2 hears PRIM"
            )
            await until(lambda: len(got1) > 0, "node1 hears node2")
            s1.set_payload({"state": "ALONE", "readiness": "READY"})
            await until(
                lambda: got2[-1].payload.get("state") == "ALONE", "state change reaches node2"
            )
            now = asyncio.get_running_loop().time()
            assert s2.resources(now) == {"heartbeat.default": "up"}
            await s1.announce_stop({"state": "STOP", "readiness": "NotReady", "released": 1})
            await until(lambda: got2[-1].payload.get("released") == 1, "stop announced")
            assert s2.counters()["accepted"] >= 3
            assert s2.counters()["forged"] == 0
            t1.cancel()
            t2.cancel()

    asyncio.run(scenario())


def test_wrong_key_and_wrong_module_are_dropped_and_counted() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        got: list[Beat] = []
        s2 = service("node2", "node1", "127.0.0.2", "127.0.0.1", port, got)
        task = asyncio.create_task(s2.run())
        await asyncio.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
            raw.bind(("127.0.0.1", 0))
            forged = Sealer(bytes(32), "node1", 1).seal("hb", {"module": "app", "state": "PRIM"})
            other = Sealer(KEY, "node1", 1).seal("hb", {"module": "other", "state": "PRIM"})
            good = Sealer(KEY, "node1", 2).seal("hb", {"module": "app", "state": "PRIM"})
            for data in (forged, other, good, good):
                raw.sendto(data, ("127.0.0.2", port))
        await until(lambda: s2.counters()["replayed"] == 1, "replayed copy counted")
        c = s2.counters()
        assert (c["forged"], c["wrong_module"], c["accepted"]) == (1, 1, 2)
        assert [b.payload["state"] for b in got] == ["PRIM"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_resources_follow_each_path_timeout() -> None:
    got: list[Beat] = []
    s = service("node1", "node2", "127.0.0.1", "127.0.0.2", 1, got)
    assert s.resources(100.0) == {"heartbeat.default": "down"}
    s.last_heard["default"] = 100.0
    assert s.resources(100.5) == {"heartbeat.default": "up"}
    assert s.resources(101.0) == {"heartbeat.default": "down"}


def test_two_lans_one_silent_the_peer_is_still_heard() -> None:
    """Two heartbeat LANs; node2's beats on LAN 'b' never reach node1 (wrong port): node1 still hears
    node2 on 'a', and only heartbeat.b is down."""

    async def scenario() -> None:
        port_a, port_b, dead = free_udp_port(), free_udp_port(), free_udp_port()
        got1: list[Beat] = []
        p1 = [
            HeartbeatPath("a", "a", "127.0.0.1", "127.0.0.2", port_a, 0.05, 0.5),
            HeartbeatPath("b", "b", "127.0.0.3", "127.0.0.4", port_b, 0.05, 0.5),
        ]
        p2 = [
            HeartbeatPath("a", "a", "127.0.0.2", "127.0.0.1", port_a, 0.05, 0.5),
            HeartbeatPath("b", "b", "127.0.0.4", "127.0.0.3", dead, 0.05, 0.5),
        ]
        s1 = HeartbeatService(
            module="app",
            local="node1",
            peer="node2",
            key=KEY,
            incarnation=1,
            paths=p1,
            on_beat=got1.append,
        )
        s2 = HeartbeatService(
            module="app",
            local="node2",
            peer="node1",
            key=KEY,
            incarnation=1,
            paths=p2,
            on_beat=lambda b: None,
        )
        t1 = asyncio.create_task(s1.run())
        t2 = asyncio.create_task(s2.run())
        await until(lambda: len(got1) >= 5, "node1 hears node2")
        now = asyncio.get_running_loop().time()
        assert s1.resources(now) == {"heartbeat.a": "up", "heartbeat.b": "down"}
        assert {b.ident for b in got1} == {"a"}
        t1.cancel()
        t2.cancel()
        await asyncio.gather(t1, t2, return_exceptions=True)

    asyncio.run(scenario())
