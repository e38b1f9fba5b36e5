"""Data generations: comparisons, resync kinds, and how records evolve."""

from __future__ import annotations

import pytest

from hakit.core.generations import (
    HISTORY_LIMIT,
    DataGeneration,
    DataStatus,
    GenerationOrigin,
    ResyncKind,
    SyncVerdict,
    begin_solo_writing,
    common_ancestor,
    compare,
    forced_primary,
    left_pair,
    must_keep_aside,
    new_generation_id,
    paired,
    resync_finished,
    resync_started,
)
from hakit.core.states import ModuleState

EMPTY = DataGeneration()


def gen(current: str, *history: str, **kw: object) -> DataGeneration:
    return DataGeneration(current=current, history=history, **kw)  # type: ignore[arg-type]


CASES = [
    ("same", gen("b", "a"), gen("b", "a"), SyncVerdict.SAME, ResyncKind.NONE),
    ("peer behind", gen("c", "a", "b"), gen("b", "a"), SyncVerdict.LOCAL_AHEAD, ResyncKind.FULL),
    (
        "I am behind",
        gen("b", "a"),
        gen("c", "a", "b"),
        SyncVerdict.LOCAL_BEHIND,
        ResyncKind.INCREMENTAL,
    ),
    ("split brain", gen("x", "a", "b"), gen("y", "a", "b"), SyncVerdict.DIVERGED, ResyncKind.FULL),
    ("unrelated", gen("x", "p"), gen("y", "q"), SyncVerdict.UNRELATED, ResyncKind.FULL),
    ("fresh local", EMPTY, gen("b", "a"), SyncVerdict.UNRELATED, ResyncKind.FULL),
    ("both fresh", EMPTY, EMPTY, SyncVerdict.UNRELATED, ResyncKind.FULL),
]


@pytest.mark.parametrize(
    ("label", "local", "peer", "verdict", "kind"), CASES, ids=[c[0] for c in CASES]
)
def test_compare_and_resync_kind(
    label: str, local: DataGeneration, peer: DataGeneration, verdict: SyncVerdict, kind: ResyncKind
) -> None:
    assert compare(local, peer) is verdict
    # resync_kind(secondary=local, primary=peer)
    assert resync_kind_of(local, peer) is kind


def resync_kind_of(secondary: DataGeneration, primary: DataGeneration) -> ResyncKind:
    from hakit.core.generations import resync_kind

    return resync_kind(secondary, primary)


def test_compare_is_antisymmetric() -> None:
    mirror = {
        SyncVerdict.SAME: SyncVerdict.SAME,
        SyncVerdict.LOCAL_AHEAD: SyncVerdict.LOCAL_BEHIND,
        SyncVerdict.LOCAL_BEHIND: SyncVerdict.LOCAL_AHEAD,
        SyncVerdict.DIVERGED: SyncVerdict.DIVERGED,
        SyncVerdict.UNRELATED: SyncVerdict.UNRELATED,
    }
    for _, local, peer, verdict, _ in CASES:
        assert compare(peer, local) is mirror[verdict]


def test_interrupted_resync_or_fullsync_primary_means_full_copy() -> None:
    from hakit.core.generations import resync_kind

    assert resync_kind(gen("a", interrupted_resync=True), gen("a")) is ResyncKind.FULL
    assert resync_kind(gen("a"), gen("a", full_sync_required=True)) is ResyncKind.FULL


def test_keep_aside_only_when_the_secondary_wrote_something_the_primary_never_saw() -> None:
    assert must_keep_aside(gen("x", "a"), gen("y", "a"))  # diverged
    assert must_keep_aside(gen("c", "a", "b"), gen("b", "a"))  # ahead
    assert must_keep_aside(gen("x"), gen("y"))  # unrelated, with data
    assert not must_keep_aside(EMPTY, gen("y"))  # nothing to keep
    assert not must_keep_aside(gen("b", "a"), gen("c", "a", "b"))  # simply behind
    assert not must_keep_aside(gen("b"), gen("b"))


def test_common_ancestor() -> None:
    assert common_ancestor(gen("x", "a", "b"), gen("y", "a", "b")) == "b"
    assert common_ancestor(gen("b", "a"), gen("c", "a", "b")) == "b"
    assert common_ancestor(gen("x"), gen("y")) == ""


def test_new_generation_when_a_shared_generation_is_written_alone() -> None:
    shared = gen("a", status=DataStatus.PAIRED, serial=4)
    solo = begin_solo_writing(shared, "node1", "inc", GenerationOrigin.PRIMARY, ModuleState.ALONE)
    assert solo.current == new_generation_id("node1", "inc", 5) == "node1.inc.5"
    assert solo.history == ("a",)
    assert solo.status is DataStatus.UP_TO_DATE
    assert solo.origin is GenerationOrigin.PRIMARY
    assert solo.last_role is ModuleState.ALONE


def test_even_a_sole_writer_starts_a_new_generation() -> None:
    # Its peer may have copied the current generation just before leaving: reusing the id would
    # let two different contents carry the same name.
    solo = gen("a", status=DataStatus.UP_TO_DATE, origin=GenerationOrigin.PRIMARY)
    again = begin_solo_writing(solo, "node1", "inc", GenerationOrigin.ADMIN, ModuleState.ALONE)
    assert again.current != "a" and again.history == ("a",)
    assert again.origin is GenerationOrigin.ADMIN


def test_history_is_bounded() -> None:
    record = EMPTY
    for i in range(HISTORY_LIMIT + 10):
        record = begin_solo_writing(
            paired(record, ModuleState.PRIM),
            "n",
            str(i),
            GenerationOrigin.PRIMARY,
            ModuleState.ALONE,
        )
    assert len(record.history) == HISTORY_LIMIT


def test_resync_lifecycle() -> None:
    primary = gen("p2", "p1", status=DataStatus.UP_TO_DATE, serial=9)
    mine = left_pair(gen("p1", status=DataStatus.PAIRED))
    assert mine.status is DataStatus.OUT_OF_DATE
    started = resync_started(mine)
    assert started.interrupted_resync
    done = resync_finished(started, primary)
    assert (done.current, done.history) == ("p2", ("p1",))
    assert not done.interrupted_resync
    assert done.status is DataStatus.PAIRED
    assert done.origin is GenerationOrigin.RESYNC
    assert done.serial == 9


def test_forced_primary_clears_inconsistency_and_asks_full_copy() -> None:
    record = forced_primary(gen("a", interrupted_resync=True), full_sync=True)
    assert not record.interrupted_resync and record.full_sync_required
    assert paired(record, ModuleState.PRIM).full_sync_required is False


def test_record_round_trips_through_its_json_form() -> None:
    import json

    record = DataGeneration(
        "n1.i.3",
        ("n1.i.1", "n2.j.2"),
        DataStatus.PAIRED,
        GenerationOrigin.FAILOVER,
        interrupted_resync=True,
        full_sync_required=True,
        last_role=ModuleState.SECOND,
        serial=3,
    )
    assert DataGeneration.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert DataGeneration.from_dict(EMPTY.to_dict()) == EMPTY


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"serial": "3"}, "field 'serial' must be int"),
        ({"serial": True}, "field 'serial' must be int"),
        ({"history": ["a", 1]}, "field 'history' must list generation ids"),
        ({"status": "fresh"}, "'fresh' is not a valid DataStatus"),
        ({"last_role": "MASTER"}, "'MASTER' is not a valid ModuleState"),
    ],
)
def test_malformed_record_names_the_field(change: dict[str, object], fragment: str) -> None:
    from hakit.errors import PeerProtocolError

    data = {**EMPTY.to_dict(), **change}
    with pytest.raises(PeerProtocolError, match=fragment) as info:
        DataGeneration.from_dict(data, "heartbeat from node2")
    assert str(info.value).startswith("heartbeat from node2: ")


def test_non_object_record_is_rejected() -> None:
    from hakit.errors import PeerProtocolError

    with pytest.raises(PeerProtocolError, match="expected an object, got list"):
        DataGeneration.from_dict([], "db row")
