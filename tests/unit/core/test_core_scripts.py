"""The script automaton (reference §5.3) row for row, and where quick actions go in a plan."""

from __future__ import annotations

import pytest

from hakit.core.actions import AnnounceStop, RunScript, SetVip, StartReplication, StopReplication
from hakit.core.actions import ReplicationRole as Role
from hakit.core.events import ScriptCall
from hakit.core.scripts import (
    ALL_SCRIPTS,
    SCRIPT_TABLE,
    AwaitExit,
    Part,
    ScriptRow,
    plan,
    row_calls,
)

# The reference table, written out again on purpose: this is the specification the data must match.
REFERENCE = {
    ScriptRow.STOP_TO_WAIT: "transition prestart",
    ScriptRow.WAIT_TO_ALONE: "transition start_both start_prim start_sec",
    ScriptRow.WAIT_TO_PRIM: "transition start_both start_prim",
    ScriptRow.WAIT_TO_SECOND: "transition start_both start_second start_sec",
    ScriptRow.ALONE_TO_PRIM: "stop_sec transition",
    ScriptRow.PRIM_TO_ALONE: "transition start_sec",
    ScriptRow.SECOND_TO_ALONE: "stop_second transition start_prim",
    ScriptRow.ALONE_TO_SECOND: "stop_prim stop_prim:force transition start_second",
    ScriptRow.PRIM_TO_SECOND: "stop_prim stop_prim:force transition start_second start_sec",
    ScriptRow.SECOND_TO_PRIM: "stop_sec stop_second transition start_prim",
    ScriptRow.RESTART_ALONE: "stop_sec stop_prim stop_both start_both start_prim start_sec",
    ScriptRow.RESTART_PRIM: "stop_prim stop_both start_both start_prim",
    ScriptRow.RESTART_SECOND: "stop_sec stop_second stop_both start_both start_second start_sec",
    ScriptRow.PRIM_TO_WAIT: "stop_prim stop_both transition",
    ScriptRow.ALONE_TO_WAIT: "stop_sec stop_prim stop_both transition",
    ScriptRow.SECOND_TO_WAIT: "stop_sec stop_second stop_both transition",
    ScriptRow.WAIT_TO_STOP: (
        "stop_sec:force stop_prim:force stop_second:force stop_both:force poststop transition"
    ),
}


def spelled(row: ScriptRow) -> str:
    return " ".join(
        f"{name}:force" if call is ScriptCall.FORCE else name for name, call in SCRIPT_TABLE[row]
    )


@pytest.mark.parametrize("row", list(ScriptRow), ids=lambda r: r.name)
def test_every_row_matches_the_reference(row: ScriptRow) -> None:
    assert spelled(row) == REFERENCE[row]


def test_the_table_has_every_row() -> None:
    assert set(SCRIPT_TABLE) == set(ScriptRow) == set(REFERENCE)


@pytest.mark.parametrize("row", list(ScriptRow), ids=lambda r: r.name)
def test_plan_calls_scripts_with_safekit_arguments(row: ScriptRow) -> None:
    steps = plan(row, "stop", ALL_SCRIPTS)
    calls = [s for s in steps if isinstance(s, RunScript)]
    assert [(c.name, c.call) for c in calls] == list(SCRIPT_TABLE[row])
    for call in calls:
        assert call.args[-3:-1] == (row.current.value, row.next.value)
        if call.call is ScriptCall.FORCE:
            assert call.args[0] == "force"
            assert call.timeout.value == "force"


def test_first_start_step_calls_transition_stop_wait_start() -> None:
    first = plan(ScriptRow.STOP_TO_WAIT, "start", ALL_SCRIPTS)[0]
    assert isinstance(first, RunScript)
    assert first.args == ("STOP", "WAIT", "start")


def test_restart_rows_say_stop_then_start() -> None:
    steps = plan(ScriptRow.RESTART_PRIM, "ignored", ALL_SCRIPTS)
    assert [s.action for s in steps if isinstance(s, RunScript)] == [
        "stop",
        "stop",
        "start",
        "start",
    ]


def test_release_goes_after_the_last_stop_script_and_acquire_before_the_first_start() -> None:
    release = (SetVip(False), StopReplication())
    acquire = (StartReplication(Role.PRIMARY), SetVip(True))
    steps = plan(ScriptRow.SECOND_TO_PRIM, "start", ALL_SCRIPTS, release=release, acquire=acquire)
    names = [s.name if isinstance(s, RunScript) else type(s).__name__ for s in steps]
    assert names == [
        "stop_sec",
        "stop_second",
        "SetVip",
        "StopReplication",
        "transition",
        "StartReplication",
        "SetVip",
        "start_prim",
    ]


def test_stop_announcement_comes_after_the_force_calls_and_before_poststop() -> None:
    steps = plan(ScriptRow.WAIT_TO_STOP, "stop", ALL_SCRIPTS, release=(AnnounceStop(),))
    names = [s.name if isinstance(s, RunScript) else type(s).__name__ for s in steps]
    assert names.index("AnnounceStop") == names.index("poststop") - 1


def test_missing_scripts_are_skipped_but_actions_stay_in_place() -> None:
    steps = plan(
        ScriptRow.WAIT_TO_ALONE,
        "start",
        frozenset({"start_prim"}),
        acquire=(SetVip(True),),
    )
    assert [type(s).__name__ for s in steps] == ["SetVip", "RunScript"]
    assert row_calls(ScriptRow.WAIT_TO_ALONE, frozenset({"start_prim"})) == (
        ("start_prim", ScriptCall.GRACEFUL),
    )


def test_no_scripts_at_all_leaves_only_the_actions() -> None:
    assert plan(ScriptRow.PRIM_TO_WAIT, "stop", frozenset(), release=(SetVip(False),)) == (
        SetVip(False),
    )


def test_swap_splits_prim_to_second_at_the_release_point() -> None:
    release = (SetVip(False), StopReplication())
    acquire = (StartReplication(Role.SECONDARY),)
    whole = plan(ScriptRow.PRIM_TO_SECOND, "stop", ALL_SCRIPTS, release=release, acquire=acquire)
    first = plan(
        ScriptRow.PRIM_TO_SECOND,
        "stop",
        ALL_SCRIPTS,
        release=release,
        acquire=acquire,
        part=Part.UNTIL_RELEASE,
    )
    rest = plan(
        ScriptRow.PRIM_TO_SECOND,
        "stop",
        ALL_SCRIPTS,
        release=release,
        acquire=acquire,
        part=Part.AFTER_RELEASE,
    )
    assert first + rest == whole
    assert first[-2:] == release
    assert isinstance(rest[0], RunScript) and rest[0].name == "transition"


def test_await_exit_is_a_plan_step() -> None:
    assert AwaitExit("start_prim").name == "start_prim"
