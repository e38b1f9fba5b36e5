"""choose_role(): what a starting node becomes, case by case (both nodes must agree)."""

from __future__ import annotations

import pytest

from hakit.core.generations import DataGeneration, DataStatus, GenerationOrigin, ResyncKind
from hakit.core.mirror_model import MirrorSettings, PeerView, WaitReason
from hakit.core.mirror_roles import choose_role, prefers_local_primary, split_brain_yields
from hakit.core.states import ModuleState as S
from hakit.core.states import Readiness as R

N1 = MirrorSettings(local_node="node1", peer_node="node2", pulse=1, timeout=5)
N2 = MirrorSettings(local_node="node2", peer_node="node1", pulse=1, timeout=5)
NONE = DataGeneration()
SOLE = DataGeneration("b", ("a",), DataStatus.UP_TO_DATE, GenerationOrigin.PRIMARY)
PAIRED_PRIM = DataGeneration("a", (), DataStatus.PAIRED, last_role=S.PRIM)
PAIRED_SECOND = DataGeneration("a", (), DataStatus.PAIRED, last_role=S.SECOND)
BEHIND = DataGeneration("a", (), DataStatus.OUT_OF_DATE, last_role=S.SECOND)
INCONSISTENT = DataGeneration("a", (), DataStatus.OUT_OF_DATE, interrupted_resync=True)
FAILOVER_GEN = DataGeneration("x", ("a",), DataStatus.UP_TO_DATE, GenerationOrigin.FAILOVER)
PRIMARY_GEN = DataGeneration("y", ("a",), DataStatus.UP_TO_DATE, GenerationOrigin.PRIMARY)


def peer(state: S | None, gen: DataGeneration = NONE, readiness: R = R.READY) -> PeerView:
    if state is None:
        return PeerView()
    return PeerView(state=state, readiness=readiness, generation=gen, last_seen=0.0, gone=None)


CASES = [
    # (label, local, peer view, expected target, expected wait reason, resync)
    ("first start alone", NONE, peer(None), None, WaitReason.NOT_UPTODATE, ResyncKind.NONE),
    ("sole writer alone", SOLE, peer(None), S.ALONE, None, ResyncKind.NONE),
    ("paired alone", PAIRED_PRIM, peer(None), None, WaitReason.NOT_UPTODATE, ResyncKind.NONE),
    (
        "inconsistent alone",
        INCONSISTENT,
        peer(None),
        None,
        WaitReason.INCONSISTENT,
        ResyncKind.NONE,
    ),
    (
        "peer stopped, same data",
        PAIRED_SECOND,
        peer(S.STOP, PAIRED_PRIM),
        S.ALONE,
        None,
        ResyncKind.NONE,
    ),
    (
        "peer stopped, newer data",
        BEHIND,
        peer(S.STOP, SOLE),
        None,
        WaitReason.NOT_UPTODATE,
        ResyncKind.NONE,
    ),
    (
        "peer ALONE, I am behind",
        BEHIND,
        peer(S.ALONE, SOLE),
        S.SECOND,
        None,
        ResyncKind.INCREMENTAL,
    ),
    ("peer ALONE, I hold nothing", NONE, peer(S.ALONE, SOLE), S.SECOND, None, ResyncKind.FULL),
    (
        "peer PRIM, same data",
        PAIRED_SECOND,
        peer(S.PRIM, PAIRED_PRIM),
        S.SECOND,
        None,
        ResyncKind.NONE,
    ),
    (
        "peer ALONE, diverged",
        FAILOVER_GEN,
        peer(S.ALONE, PRIMARY_GEN),
        S.SECOND,
        None,
        ResyncKind.FULL,
    ),
    (
        "both waiting, I am ahead",
        SOLE,
        peer(S.WAIT, BEHIND, R.TRANSIENT),
        S.ALONE,
        None,
        ResyncKind.NONE,
    ),
    (
        "both waiting, I am behind",
        BEHIND,
        peer(S.WAIT, SOLE, R.TRANSIENT),
        None,
        None,
        ResyncKind.NONE,
    ),
    (
        "both waiting, peer blocked",
        BEHIND,
        peer(S.WAIT, SOLE, R.NOT_READY),
        None,
        WaitReason.NOT_UPTODATE,
        ResyncKind.NONE,
    ),
    (
        "both waiting, same data, I was PRIM",
        PAIRED_PRIM,
        peer(S.WAIT, PAIRED_SECOND, R.TRANSIENT),
        S.PRIM,
        None,
        ResyncKind.NONE,
    ),
    (
        "both waiting, same data, I was SECOND",
        PAIRED_SECOND,
        peer(S.WAIT, PAIRED_PRIM, R.TRANSIENT),
        None,
        None,
        ResyncKind.NONE,
    ),
    (
        "both waiting, first start",
        NONE,
        peer(S.WAIT, NONE, R.NOT_READY),
        None,
        WaitReason.NOT_UPTODATE,
        ResyncKind.NONE,
    ),
    (
        "both waiting, peer inconsistent",
        PAIRED_SECOND,
        peer(S.WAIT, INCONSISTENT, R.TRANSIENT),
        S.ALONE,
        None,
        ResyncKind.NONE,
    ),
    (
        "both waiting, unrelated data",
        SOLE,
        peer(S.WAIT, DataGeneration("q"), R.NOT_READY),
        None,
        WaitReason.UNRELATED,
        ResyncKind.NONE,
    ),
    (
        "peer SECOND without primary",
        PAIRED_PRIM,
        peer(S.SECOND, PAIRED_SECOND),
        None,
        None,
        ResyncKind.NONE,
    ),
]


@pytest.mark.parametrize(
    ("label", "local", "view", "target", "reason", "resync"), CASES, ids=[c[0] for c in CASES]
)
def test_choose_role(
    label: str,
    local: DataGeneration,
    view: PeerView,
    target: S | None,
    reason: WaitReason | None,
    resync: ResyncKind,
) -> None:
    choice = choose_role(local, view, N1)
    assert (choice.target, choice.wait_reason, choice.resync) == (target, reason, resync)


def test_failover_off_never_starts_alone_because_the_peer_stopped() -> None:
    choice = choose_role(PAIRED_SECOND, peer(S.STOP, PAIRED_PRIM), N1, failover=False)
    assert choice.target is None and choice.wait_reason is WaitReason.NOT_UPTODATE


def test_diverged_start_one_node_wins_on_each_side() -> None:
    # node1's generation began with a failover: node1 yields, node2 starts ALONE.
    n1 = choose_role(FAILOVER_GEN, peer(S.WAIT, PRIMARY_GEN, R.TRANSIENT), N1)
    n2 = choose_role(PRIMARY_GEN, peer(S.WAIT, FAILOVER_GEN, R.TRANSIENT), N2)
    assert n1.target is None and n2.target is S.ALONE


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [(FAILOVER_GEN, PRIMARY_GEN), (PRIMARY_GEN, FAILOVER_GEN), (PRIMARY_GEN, PRIMARY_GEN)],
)
def test_exactly_one_side_yields_after_a_split_brain(
    mine: DataGeneration, theirs: DataGeneration
) -> None:
    assert split_brain_yields(mine, theirs, N1) != split_brain_yields(theirs, mine, N2)


@pytest.mark.parametrize("defaultprim", ["alone", "lastprim", "node1", "node2"])
def test_exactly_one_side_is_preferred_with_identical_data(defaultprim: str) -> None:
    s1 = MirrorSettings(
        local_node="node1", peer_node="node2", pulse=1, timeout=5, defaultprim=defaultprim
    )
    s2 = MirrorSettings(
        local_node="node2", peer_node="node1", pulse=1, timeout=5, defaultprim=defaultprim
    )
    for a, b in ((PAIRED_PRIM, PAIRED_SECOND), (PAIRED_SECOND, PAIRED_SECOND)):
        assert prefers_local_primary(a, b, s1) != prefers_local_primary(b, a, s2)
    if defaultprim in ("node1", "node2"):
        assert prefers_local_primary(PAIRED_SECOND, PAIRED_PRIM, s1) is (defaultprim == "node1")
