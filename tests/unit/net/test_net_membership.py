"""Membership: reachable when a valid datagram arrived on ANY lan within slost_count x pulse."""

from __future__ import annotations

import pytest

from hakit.net.membership import Change, Membership
from hakit.testing.clock import FakeClock


def membership() -> Membership:
    return Membership(["node2", "node3"], ["default", "repli"], lost_after=1.0)


def test_never_heard_peer_is_unreachable_with_no_last_seen() -> None:
    clock = FakeClock()
    m = membership()
    assert m.reachable(clock()) == frozenset()
    status = m.status(clock())
    assert [s.name for s in status] == ["node2", "node3"]
    assert status[0].last_seen_s is None
    assert status[0].lans_last_seen_s == {"default": None, "repli": None}


def test_peer_is_reachable_until_lost_after_elapses() -> None:
    clock = FakeClock()
    m = membership()
    m.on_datagram("node2", "default", clock())
    assert m.reachable(clock.advance(0.999)) == {"node2"}
    assert m.reachable(clock.advance(0.001)) == frozenset()  # exactly lost_after: lost


def test_any_lan_keeps_the_peer_reachable() -> None:
    clock = FakeClock()
    m = membership()
    m.on_datagram("node2", "default", clock())
    clock.advance(0.8)
    m.on_datagram("node2", "repli", clock())  # the default lan went silent, repli still talks
    clock.advance(0.8)
    assert m.is_reachable("node2", clock())
    (node2, _) = m.status(clock())
    assert node2.last_seen_s == pytest.approx(0.8)
    assert node2.lans_last_seen_s["default"] == pytest.approx(1.6)
    assert node2.lans_last_seen_s["repli"] == pytest.approx(0.8)


def test_late_event_does_not_move_last_seen_backwards() -> None:
    m = membership()
    m.on_datagram("node2", "default", 10.0)
    m.on_datagram("node2", "default", 9.0)
    assert m.last_seen("node2") == 10.0


def test_changes_are_reported_once() -> None:
    clock = FakeClock()
    m = membership()
    m.on_datagram("node3", "default", clock())
    m.on_datagram("node2", "default", clock())
    assert m.changes(clock()) == [Change("node2", True), Change("node3", True)]
    assert m.changes(clock.advance(0.5)) == []
    m.on_datagram("node3", "repli", clock())
    assert m.changes(clock.advance(0.6)) == [Change("node2", False)]
    assert str(Change("node2", False)) == "node node2 is unreachable"


def test_unknown_node_or_lan_is_a_caller_bug() -> None:
    m = membership()
    with pytest.raises(ValueError, match="peer"):
        m.on_datagram("node9", "default", 0.0)
    with pytest.raises(ValueError, match="lan"):
        m.on_datagram("node2", "nolan", 0.0)
    with pytest.raises(ValueError, match="positive"):
        Membership(["a"], ["l"], lost_after=0)
