"""The real cluster channel over UDP on loopback: two nodes see each other; junk is dropped.

node1 binds 127.0.0.1, node2 127.0.0.2 and node3 is a plain test socket on 127.0.0.3 (it receives
node1's genuine hellos, which the test then replays). Waits poll a condition with a generous
deadline: they are not timing assertions.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from hakit.config.cluster import parse_cluster
from hakit.errors import LocalSystemError
from hakit.net.auth import Sealer
from hakit.net.channel import ClusterChannel, plan_channel

KEY = bytes(range(32))
DEADLINE = 10.0


def free_udp_port() -> int:
    """A port free on 127.0.0.1, .2 and .3 (checked by binding all three)."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        socks = []
        try:
            for host in ("127.0.0.2", "127.0.0.3"):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free UDP port on 127.0.0.1-3")


def cluster_xml(port: int, node3: str = "127.0.0.3") -> str:
    return f"""<cluster><lans port="{port}" pulse="20" slost_count="10"><lan name="default">
      <node name="node1" addr="127.0.0.1"/>
      <node name="node2" addr="127.0.0.2"/>
      <node name="node3" addr="{node3}"/>
    </lan></lans></cluster>"""


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        await asyncio.sleep(0.01)


def reachable(channel: ClusterChannel) -> set[str]:
    return {s.name for s in channel.status() if s.reachable}


async def two_nodes_and_junk() -> None:
    port = free_udp_port()
    config, report = parse_cluster(cluster_xml(port), "cluster.xml")
    assert config is not None, report.render()
    one = ClusterChannel(plan_channel(config, "node1"), KEY, incarnation=11)
    two = ClusterChannel(plan_channel(config, "node2"), KEY, incarnation=22)
    sniffer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniffer.bind(("127.0.0.3", port))
    sniffer.setblocking(False)
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[None]] = []
    try:
        await one.open()
        await two.open()
        assert one.bound == [("127.0.0.1", port)]
        assert two.bound == [("127.0.0.2", port)]
        tasks = [asyncio.create_task(one.run()), asyncio.create_task(two.run())]
        await wait_for(lambda: "node2" in reachable(one), "node1 sees node2")
        await wait_for(lambda: "node1" in reachable(two), "node2 sees node1")
        assert "node3" not in reachable(one)

        # A genuine hello of node1, captured on the wire by the node3 socket.
        captured = await asyncio.wait_for(loop.sock_recv(sniffer, 65535), DEADLINE)
        before = dict(two.counters())
        target = ("127.0.0.2", port)
        forged = Sealer(bytes(32), "node1", 99).seal("hello", {"lan": "default"})
        sniffer.sendto(forged, target)
        sniffer.sendto(b"HK\x01garbage", target)
        # Wait until node2 is 64+ datagrams past the captured one: then it is surely too old.
        await wait_for(
            lambda: two.counters()["accepted"] > before["accepted"] + 70, "node2 moves on"
        )
        sniffer.sendto(captured, target)
        sniffer.sendto(captured, target)
        await wait_for(lambda: two.counters()["replayed"] >= 2, "replays counted")
        await wait_for(lambda: two.counters()["forged"] >= 1, "forgery counted")
        await wait_for(lambda: two.counters()["corrupted"] >= 1, "corruption counted")
        counters = two.counters()
        assert counters["forged"] == 1
        assert counters["corrupted"] == 1
        assert counters["replayed"] == 2
        assert reachable(two) == {"node1"}  # node3 never spoke with the key

        # node2 stops: node1 declares it unreachable after slost_count x pulse.
        tasks[1].cancel()
        two.close()
        await wait_for(lambda: "node2" not in reachable(one), "node1 loses node2")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        one.close()
        two.close()
        sniffer.close()


def test_two_channels_see_each_other_and_drop_forged_corrupted_replayed() -> None:
    asyncio.run(two_nodes_and_junk())


async def wildcard_fallback() -> None:
    port = free_udp_port()
    # node1's address is not local (a NAT external address): the channel binds 0.0.0.0 instead.
    xml = cluster_xml(port).replace('addr="127.0.0.1"', 'addr="192.0.2.1"')
    config, _ = parse_cluster(xml, "cluster.xml")
    assert config is not None
    one = ClusterChannel(plan_channel(config, "node1"), KEY, incarnation=1)
    try:
        await one.open()
        assert one.bound == [("0.0.0.0", port)]
    finally:
        one.close()


def test_non_local_address_falls_back_to_the_wildcard() -> None:
    asyncio.run(wildcard_fallback())


async def port_taken() -> None:
    port = free_udp_port()
    config, _ = parse_cluster(cluster_xml(port), "cluster.xml")
    assert config is not None
    one = ClusterChannel(plan_channel(config, "node1"), KEY, incarnation=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        with pytest.raises(LocalSystemError, match=rf"UDP port {port}.*another hakitd"):
            await one.open()
    assert one.bound == []


def test_port_in_use_is_a_local_system_error() -> None:
    asyncio.run(port_taken())
