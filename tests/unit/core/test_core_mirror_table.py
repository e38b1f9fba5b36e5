"""The transition table as data: complete, consistent, strict about illegal events, documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.core.events import (
    EVENT_TYPES,
    AdminCommand,
    AdminKind,
    CheckerAction,
    CheckerKind,
    HeartbeatReceived,
    PeerOutOfDate,
    PeerStopAnnounced,
    ResyncDone,
    ResyncFailed,
    ScriptCall,
    ScriptExited,
    Tick,
    WaitCleared,
)
from hakit.core.generations import DataGeneration, ResyncKind
from hakit.core.mirror import _HANDLERS, TRANSITIONS, decide, render_table
from hakit.core.mirror_model import Activity, IllegalEventError, MirrorSettings, MirrorState
from hakit.core.states import MIRROR_STATES, ModuleState, Readiness

SETTINGS = MirrorSettings(local_node="node1", peer_node="node2", pulse=1, timeout=5)
DOC = Path(__file__).resolve().parents[3] / "docs" / "design" / "mirror-automaton.md"


def test_every_mirror_state_has_rows_and_every_row_lists_every_event_type() -> None:
    assert {state for state, _ in TRANSITIONS} == set(MIRROR_STATES)
    for key, row in TRANSITIONS.items():
        missing = [t.__name__ for t in EVENT_TYPES if t not in row]
        assert not missing, f"{key}: no entry for {missing}"
        assert set(row) == set(EVENT_TYPES)


def test_every_handler_name_exists() -> None:
    for row in TRANSITIONS.values():
        for name in row.values():
            assert name in _HANDLERS


def test_script_ends_only_where_scripts_run() -> None:
    for (state, activity), row in TRANSITIONS.items():
        expected = "script_exited" if activity is Activity.SCRIPTS else "illegal"
        assert row[ScriptExited] == expected, (state, activity)


def test_events_that_may_come_at_any_time_are_never_illegal() -> None:
    anytime = (
        HeartbeatReceived,
        PeerStopAnnounced,
        Tick,
        ResyncDone,
        ResyncFailed,
        PeerOutOfDate,
        WaitCleared,
        AdminCommand,
        CheckerAction,
    )
    for row in TRANSITIONS.values():
        for event_type in anytime:
            assert row[event_type] != "illegal"


def test_illegal_event_raises_naming_state_and_event() -> None:
    with pytest.raises(IllegalEventError) as info:
        decide(MirrorState(), ScriptExited("start_prim"), 0.0, SETTINGS)
    message = str(info.value)
    assert "STOP NotReady" in message
    assert "ScriptExited" in message and "start_prim" in message


def test_script_end_that_does_not_match_the_running_script_raises() -> None:
    started = decide(MirrorState(), AdminCommand(AdminKind.START), 0.0, SETTINGS).state
    with pytest.raises(IllegalEventError, match="step in progress"):
        decide(started, ScriptExited("prestart"), 1.0, SETTINGS)
    with pytest.raises(IllegalEventError, match="step in progress"):
        decide(started, ScriptExited("transition", ScriptCall.FORCE), 1.0, SETTINGS)


def test_snapshot_in_an_unknown_row_raises() -> None:
    odd = MirrorState(state=ModuleState.UP, readiness=Readiness.READY)
    with pytest.raises(IllegalEventError, match="no transition row"):
        decide(odd, Tick(), 0.0, SETTINGS)


def test_late_resync_report_is_ignored_explicitly() -> None:
    d = decide(MirrorState(), ResyncDone(ResyncKind.FULL, DataGeneration()), 0.0, SETTINGS)
    assert d.record.code == "stale"
    assert d.state == MirrorState() and d.actions == ()


def test_wait_cleared_outside_a_wait_is_ignored() -> None:
    d = decide(MirrorState(), WaitCleared(), 0.0, SETTINGS)
    assert d.record.code == "ignored"


def test_checker_noaction_only_records() -> None:
    d = decide(MirrorState(), CheckerAction(CheckerKind.NOACTION, "custom"), 0.0, SETTINGS)
    assert d.state == MirrorState()
    assert d.record.code == "action"


def test_render_table_lists_every_row() -> None:
    text = render_table()
    for state, activity in TRANSITIONS:
        assert f"| {state} | {activity.value} |" in text
    assert "stateDiagram-v2" in text
    assert "| WAIT(Transient) → STOP |" in text


def test_design_doc_embeds_the_current_table() -> None:
    if not DOC.exists():
        pytest.fail(f"{DOC} is missing: paste render_table() output into it")
    text = DOC.read_text(encoding="utf-8")
    begin, end = "<!-- BEGIN render_table() -->\n", "<!-- END render_table() -->"
    assert begin in text and end in text, f"{DOC}: generated-table markers missing"
    embedded = text.split(begin, 1)[1].split(end, 1)[0]
    assert embedded == render_table(), (
        f"{DOC} is out of date: regenerate with `python -m hakit.core.mirror > table.md` "
        "and paste it between the markers"
    )
