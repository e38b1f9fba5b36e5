"""The channel without sockets: plans from cluster.xml, hellos over a fake network, fake clock."""

from __future__ import annotations

import logging

import pytest

from hakit.config.cluster import ClusterConfig, parse_cluster
from hakit.errors import NotFoundError
from hakit.net.auth import OpenedMessage, Reason, Rejection, Sealer
from hakit.net.channel import ChannelCore, DropReporter, Route, plan_channel
from hakit.testing.clock import FakeClock
from hakit.testing.fakes_net import FakeNetwork, Receiver

KEY = bytes(range(32))
CLUSTER_XML = """<cluster>
  <lans port="4800" pulse="100" slost_count="10">
    <lan name="default" command="on">
      <node name="node1" addr="10.0.0.1"/>
      <node name="node2" addr="10.0.0.2"/>
      <node name="node3" addr="10.0.0.3"/>
    </lan>
    <lan name="repli">
      <node name="node1" addr="10.1.0.1" laddr="192.168.0.1"/>
      <node name="node2" addr="[fd00::2]"/>
    </lan>
  </lans>
</cluster>
"""


def cluster() -> ClusterConfig:
    config, report = parse_cluster(CLUSTER_XML, "cluster.xml")
    assert config is not None, report.render()
    return config


def test_plan_routes_every_shared_lan_and_binds_laddr() -> None:
    plan = plan_channel(cluster(), "node1")
    assert plan.peers == ("node2", "node3")
    assert plan.binds == {"default": "10.0.0.1", "repli": "192.168.0.1"}
    assert plan.routes == (
        Route("node2", "default", "10.0.0.2"),
        Route("node3", "default", "10.0.0.3"),
        Route("node2", "repli", "fd00::2"),
    )
    assert plan.lost_after == pytest.approx(1.0)
    assert plan.lans["node2"] == {"default": "10.0.0.2", "repli": "[fd00::2]"}


def test_plan_of_a_node_on_fewer_lans() -> None:
    plan = plan_channel(cluster(), "node3")
    assert plan.lan_names == ("default",)
    assert [r.node for r in plan.routes] == ["node1", "node2"]


def test_plan_refuses_a_node_not_in_the_cluster() -> None:
    with pytest.raises(NotFoundError, match=r"'nodeX'.*node1, node2, node3.*HAKIT_NODE"):
        plan_channel(cluster(), "nodeX")


class Cluster:
    """Three channel cores on a fake network; each node has one fake host per lan address."""

    def __init__(self, network: FakeNetwork) -> None:
        self.network = network
        config = cluster()
        self.cores = {
            name: ChannelCore(plan_channel(config, name), KEY, incarnation=1)
            for name in config.node_names()
        }
        # Each node's address on each lan is one fake host (node1's laddr is not used here).
        self.addrs = {name: config.addrs_of(name) for name in self.cores}
        for name, core in self.cores.items():
            for addr in self.addrs[name].values():
                network.attach((addr.strip("[]"), 4800), self._receiver(core))

    def _receiver(self, core: ChannelCore) -> Receiver:
        def receive(data: bytes, src: tuple[str, int]) -> None:
            core.receive(data, self.network.clock())

        return receive

    def pulse(self) -> None:
        for name, core in self.cores.items():
            for route, data in core.hellos():
                src = self.addrs[name][route.lan].strip("[]")
                self.network.send((src, 4800), (route.host, 4800), data)

    def run(self, seconds: float) -> None:
        clock = self.network.clock
        end = clock() + seconds
        while clock() < end - 1e-9:
            self.pulse()
            self.network.run_until(clock() + 0.1, step=0.01)

    def reachable(self, name: str) -> frozenset[str]:
        return self.cores[name].membership.reachable(self.network.clock())


def test_every_node_sees_every_other_node() -> None:
    net = FakeNetwork(FakeClock(), seed=1, delay=0.002, jitter=0.01)
    c = Cluster(net)
    c.run(0.5)
    assert c.reachable("node1") == {"node2", "node3"}
    assert c.reachable("node2") == {"node1", "node3"}
    assert c.reachable("node3") == {"node1", "node2"}
    counters = c.cores["node1"].counters()
    assert counters["accepted"] > 0
    assert counters["forged"] == counters["replayed"] == counters["corrupted"] == 0


def test_one_lan_cut_keeps_the_peer_reachable_through_the_other() -> None:
    net = FakeNetwork(FakeClock(), seed=2)
    c = Cluster(net)
    c.run(0.5)
    net.partition("10.0.0.1", "10.0.0.2")  # default lan between node1 and node2
    c.run(3.0)
    assert "node2" in c.reachable("node1")
    (node2, _) = c.cores["node1"].status(net.clock())
    assert node2.lans_last_seen_s["default"] is not None
    assert node2.lans_last_seen_s["default"] >= 3.0
    assert node2.lans_last_seen_s["repli"] is not None
    assert node2.lans_last_seen_s["repli"] < 0.2


def test_silent_node_becomes_unreachable_after_slost_count_pulses_and_comes_back() -> None:
    net = FakeNetwork(FakeClock(), seed=3)
    c = Cluster(net)
    c.run(0.5)
    net.set_down("10.0.0.3")
    c.run(0.8)
    assert "node3" in c.reachable("node1")  # 0.8 s < 10 x 100 ms
    c.run(0.4)
    assert "node3" not in c.reachable("node1")
    assert "node3" not in c.reachable("node2")
    net.set_down("10.0.0.3", down=False)
    c.run(0.3)
    assert "node3" in c.reachable("node1")


def test_loss_duplication_and_reordering_are_tolerated() -> None:
    net = FakeNetwork(FakeClock(), seed=4, delay=0.001, jitter=0.05, drop=0.3, duplicate=0.3)
    c = Cluster(net)
    c.run(5.0)
    assert c.reachable("node1") == {"node2", "node3"}
    counters = c.cores["node1"].counters()
    assert counters["replayed"] > 0  # the duplicates
    assert counters["forged"] == counters["corrupted"] == 0


def test_replayed_captured_datagram_cannot_revive_a_dead_node() -> None:
    net = FakeNetwork(FakeClock(), seed=5)
    c = Cluster(net)
    c.run(0.5)
    captured = [
        d for (src, dst, d) in net.captured if src[0] == "10.0.0.3" and dst[0] == "10.0.0.1"
    ]
    net.set_down("10.0.0.3")
    c.run(1.5)
    assert "node3" not in c.reachable("node1")
    for data in captured:
        net.inject(("10.0.0.3", 4800), ("10.0.0.1", 4800), data)
    net.set_down("10.0.0.3", down=False)  # let the injected copies through...
    net.deliver_due()
    net.set_down("10.0.0.3")
    assert "node3" not in c.reachable("node1")
    assert c.cores["node1"].counters()["replayed"] >= len(captured)


def test_hello_for_a_lan_not_shared_is_ignored() -> None:
    core = ChannelCore(plan_channel(cluster(), "node1"), KEY, incarnation=1)
    # node3 is not on lan repli: an authentic hello claiming it is ignored, not counted as seen.
    data = Sealer(KEY, "node3", 1).seal("hello", {"lan": "repli"})
    assert isinstance(core.receive(data, 0.0), OpenedMessage)
    assert core.membership.last_seen("node3") is None
    assert core.counters()["ignored"] == 1


def test_forged_and_foreign_datagrams_are_counted() -> None:
    core = ChannelCore(plan_channel(cluster(), "node1"), KEY, incarnation=1)
    forged = Sealer(bytes(32), "node2", 1).seal("hello", {"lan": "default"})
    stranger = Sealer(KEY, "node9", 1).seal("hello", {"lan": "default"})
    mine = Sealer(KEY, "node1", 1).seal("hello", {"lan": "default"})
    verdicts = [core.receive(d, 0.0) for d in (forged, stranger, mine, b"junk")]
    assert [v.reason for v in verdicts if isinstance(v, Rejection)] == [
        Reason.FORGED,
        Reason.UNKNOWN_SENDER,
        Reason.LOOPED,
        Reason.CORRUPTED,
    ]
    assert core.membership.reachable(0.0) == frozenset()


def test_hello_with_a_non_text_lan_is_ignored() -> None:
    core = ChannelCore(plan_channel(cluster(), "node1"), KEY, incarnation=1)
    data = Sealer(KEY, "node2", 1).seal("hello", {"lan": ["default"]})
    assert isinstance(core.receive(data, 0.0), OpenedMessage)
    assert core.counters()["ignored"] == 1


def test_drops_are_logged_at_most_once_per_reason_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    drops = DropReporter(clock, interval=60.0)
    forged = Rejection(Reason.FORGED, "bad MAC")
    with caplog.at_level(logging.WARNING, logger="hakit.net.channel"):
        for _ in range(5):
            drops.dropped(forged, "10.0.0.9")
        drops.dropped(Rejection(Reason.CORRUPTED, "bad magic"), "10.0.0.8")
        clock.advance(60.0)
        drops.dropped(forged, "10.0.0.9")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "cluster channel: dropped 1 forged datagram(s) (last from 10.0.0.9: bad MAC)"
        " -- every node needs the same cluster.key",
        "cluster channel: dropped 1 corrupted datagram(s) (last from 10.0.0.8: bad magic)",
        "cluster channel: dropped 5 forged datagram(s) (last from 10.0.0.9: bad MAC)"
        " -- every node needs the same cluster.key",
    ]
