"""Single-node decisions of the mirror core, from hand-built snapshots (no simulator)."""

from __future__ import annotations

import pytest

from hakit.core.actions import (
    Action,
    PersistGeneration,
    PublishState,
    RunScript,
    SetVip,
    StartReplication,
)
from hakit.core.events import (
    AdminCommand,
    AdminKind,
    CheckerAction,
    CheckerKind,
    Event,
    HeartbeatReceived,
    PeerStopAnnounced,
    ScriptExited,
    Tick,
)
from hakit.core.generations import DataGeneration, DataStatus, GenerationOrigin
from hakit.core.mirror import decide
from hakit.core.mirror_model import (
    Activity,
    Decision,
    MirrorSettings,
    MirrorState,
    WaitReason,
    initial_state,
)
from hakit.core.states import ModuleState as S
from hakit.core.states import Readiness as R
from hakit.errors import UserConfigError

CFG = MirrorSettings(local_node="node1", peer_node="node2", pulse=1, timeout=5, incarnation="x")
SOLE = DataGeneration("g1", status=DataStatus.UP_TO_DATE, origin=GenerationOrigin.ADMIN)
SHARED = DataGeneration("g1", status=DataStatus.PAIRED, last_role=S.PRIM)


def run(
    state: MirrorState, event: Event, now: float, cfg: MirrorSettings = CFG
) -> tuple[MirrorState, list[Action], list[Decision]]:
    """Feed ``event``, then answer every script with a success, until no script is pending."""
    actions: list[Action] = []
    decisions: list[Decision] = []
    pending: list[Event] = [event]
    while pending:
        d = decide(state, pending.pop(0), now, cfg)
        state = d.state
        actions += d.actions
        decisions.append(d)
        pending += [ScriptExited(a.name, a.call) for a in d.actions if isinstance(a, RunScript)]
    return state, actions, decisions


def names(actions: list[Action]) -> list[str]:
    out = []
    for a in actions:
        if isinstance(a, RunScript):
            out.append(a.name + (" force" if a.args[0] == "force" else ""))
        elif isinstance(a, SetVip):
            out.append(f"vip {'up' if a.up else 'down'}")
        elif isinstance(a, StartReplication):
            out.append(f"replication {a.role.value}")
        elif isinstance(a, PersistGeneration):
            out.append("persist")
    return out


def heartbeat(
    state: S, readiness: R = R.READY, gen: DataGeneration = SHARED, **kw: object
) -> HeartbeatReceived:
    return HeartbeatReceived(state, readiness, gen, **kw)  # type: ignore[arg-type]


def test_start_alone_with_shared_data_waits_not_ready_after_timeout() -> None:
    state, actions, _ = run(initial_state(CFG, SHARED), AdminCommand(AdminKind.START), 0.0)
    assert (state.state, state.readiness, state.activity) == (S.WAIT, R.TRANSIENT, Activity.PROBING)
    first = next(a for a in actions if isinstance(a, RunScript))
    assert first.args == ("STOP", "WAIT", "start")
    assert decide(state, Tick(), 4.9, CFG).state.activity is Activity.PROBING
    d = decide(state, Tick(), 5.0, CFG)
    assert (d.state.state, d.state.readiness) == (S.WAIT, R.NOT_READY)
    assert d.state.wait_reason is WaitReason.NOT_UPTODATE
    assert d.state.rule == "rfs_notuptodate_server"
    assert d.record.code == "waiting"
    assert "If you are sure that this server has valid data, run hakit prim" in d.record.message


def test_sole_writer_starts_alone_and_orders_its_actions() -> None:
    state, _, _ = run(initial_state(CFG, SOLE), AdminCommand(AdminKind.START), 0.0)
    state, actions, decisions = run(state, Tick(), 6.0)
    assert (state.state, state.readiness) == (S.ALONE, R.READY)
    assert names(actions) == [
        "persist",
        "transition",
        "replication primary",
        "vip up",
        "start_both",
        "start_prim",
        "start_sec",
    ]
    assert state.data.history == ("g1",)  # a new generation, descending from g1
    assert decisions[-1].record.code == "ready"
    published = [a for a in actions if isinstance(a, PublishState)]
    assert (published[-1].state, published[-1].readiness) == (S.ALONE, R.READY)


def test_prim_refused_when_the_peer_is_already_primary() -> None:
    state = decide(initial_state(CFG, SOLE), heartbeat(S.ALONE), 0.0, CFG).state
    d = decide(state, AdminCommand(AdminKind.PRIM), 0.1, CFG)
    assert d.record.code == "refused"
    assert "already primary" in d.record.message and "ALONE Ready" in d.record.message
    assert d.state.state is S.STOP


def test_prim_aborted_when_the_peer_turns_primary_during_start_scripts() -> None:
    state = decide(initial_state(CFG, SOLE), AdminCommand(AdminKind.PRIM), 0.0, CFG).state
    state = decide(state, heartbeat(S.ALONE), 0.1, CFG).state
    state, _, decisions = run(state, ScriptExited("transition"), 0.2)
    assert any("prim_aborted" in d.record.codes for d in decisions)
    assert "Requested prim start aborted" in decisions[1].record.message
    assert state.state is S.STOP


def test_second_refused_when_the_peer_is_not_primary() -> None:
    d = decide(initial_state(CFG, SOLE), AdminCommand(AdminKind.SECOND), 0.0, CFG)
    assert d.record.code == "refused"
    assert "Remote state UNKNOWN Unknown" in d.record.message


def test_start_refused_when_already_started_and_stop_ignored_when_stopped() -> None:
    state, _, _ = run(initial_state(CFG, SOLE), AdminCommand(AdminKind.START), 0.0)
    assert decide(state, AdminCommand(AdminKind.START), 1.0, CFG).record.code == "refused"
    assert decide(MirrorState(), AdminCommand(AdminKind.STOP), 1.0, CFG).record.code == "ignored"


def test_restart_refused_outside_a_ready_role() -> None:
    d = decide(MirrorState(), AdminCommand(AdminKind.RESTART), 0.0, CFG)
    assert d.record.code == "refused" and "STOP NotReady" in d.record.message


def test_commands_other_than_stop_are_refused_during_a_transition_naming_it() -> None:
    state = decide(MirrorState(), AdminCommand(AdminKind.START), 0.0, CFG).state
    d = decide(state, AdminCommand(AdminKind.SWAP), 0.1, CFG)
    assert d.record.code == "refused" and "START" in d.record.message


def test_peer_update_and_no_change_records() -> None:
    d1 = decide(MirrorState(), heartbeat(S.SECOND), 0.0, CFG)
    assert d1.record.code == "peer_update"
    assert d1.record.message == "Remote state SECOND Ready"
    d2 = decide(d1.state, heartbeat(S.SECOND), 1.0, CFG)
    assert d2.record.code == "no_change" and d2.actions == ()


def test_peer_lost_only_after_timeout_since_the_last_heartbeat() -> None:
    state = decide(MirrorState(), heartbeat(S.PRIM), 10.0, CFG).state
    assert decide(state, Tick(), 14.9, CFG).state.peer.known
    d = decide(state, Tick(), 15.0, CFG)
    assert not d.state.peer.known and d.record.code == "peer_lost"


def test_stale_primary_heartbeat_after_a_stop_announcement_is_ignored() -> None:
    state = decide(MirrorState(), heartbeat(S.PRIM), 0.0, CFG).state
    state = decide(state, PeerStopAnnounced(), 0.1, CFG).state
    d = decide(state, heartbeat(S.PRIM), 0.2, CFG)
    assert d.record.code == "stale" and not d.state.peer.known
    d = decide(d.state, heartbeat(S.WAIT, R.TRANSIENT, stopping=True), 0.3, CFG)
    assert d.state.peer.state is S.WAIT


def test_maxloop_disabled_with_zero_interval() -> None:
    cfg = MirrorSettings(local_node="node1", peer_node="node2", pulse=1, timeout=5, loop_interval=0)
    state, _, _ = run(initial_state(cfg, SOLE), AdminCommand(AdminKind.PRIM), 0.0, cfg)
    for i in range(10):
        state, _, decisions = run(state, CheckerAction(CheckerKind.RESTART, "errd"), 1.0 + i, cfg)
        assert state.state is S.ALONE
        assert "maxloop" not in decisions[0].record.codes


def test_detector_actions_outside_the_window_are_forgotten() -> None:
    state, _, _ = run(initial_state(CFG, SOLE), AdminCommand(AdminKind.PRIM), 0.0)
    day = CFG.loop_interval
    for t in (1.0, 2.0, 3.0, day + 2.5):  # the first two fell out of the window
        state, _, _ = run(state, CheckerAction(CheckerKind.RESTART, "errd"), t)
    assert state.state is S.ALONE
    assert state.loop_times == (3.0, day + 2.5)


def test_checker_identity_is_shown_as_safekit_does() -> None:
    assert CheckerAction(CheckerKind.RESTART, "errd").describe() == "Action restart called by errd"
    rule = CheckerAction(CheckerKind.WAIT, "failover", rule="c_app")
    assert rule.describe() == "Action wait from failover rule c_app"
    assert AdminCommand(AdminKind.STOP).describe() == "Action stop called by admin"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"peer_node": "node1"}, "two distinct nodes"),
        ({"timeout": 2.0}, "at least 3 pulses"),
        ({"defaultprim": "node3"}, "defaultprim='node3'"),
        ({"maxloop": -1}, "must not be negative"),
        ({"scripts": frozenset({"start_pirm"})}, "start_pirm"),
    ],
)
def test_settings_errors_name_the_field(kwargs: dict[str, object], fragment: str) -> None:
    base: dict[str, object] = {
        "local_node": "node1",
        "peer_node": "node2",
        "pulse": 1.0,
        "timeout": 5.0,
    }
    base.update(kwargs)
    with pytest.raises(UserConfigError, match=fragment.replace("(", r"\(")):
        MirrorSettings(**base)  # type: ignore[arg-type]


def test_replication_timeout_during_the_stop_of_a_primary_starts_a_new_generation() -> None:
    # The application may still write while stop_prim runs: a write the peer misses must not
    # stay under the generation the peer holds.
    from hakit.core.events import PeerOutOfDate

    state, _, _ = run(initial_state(CFG, SOLE), AdminCommand(AdminKind.PRIM), 0.0)
    before = state.data.current
    state = decide(state, AdminCommand(AdminKind.STOP), 1.0, CFG).state
    assert (state.state, state.activity) == (S.WAIT, Activity.SCRIPTS)  # stop_sec running
    d = decide(state, PeerOutOfDate("sendtimeout"), 1.1, CFG)
    assert d.record.code == "peer_out_of_date"
    assert d.state.data.current != before
    assert any(isinstance(a, PersistGeneration) for a in d.actions)


def test_replication_timeout_after_replication_stopped_is_stale() -> None:
    from hakit.core.events import PeerOutOfDate

    state, _, _ = run(initial_state(CFG, SOLE), AdminCommand(AdminKind.PRIM), 0.0)
    state, _, _ = run(state, AdminCommand(AdminKind.STOP), 1.0)
    assert state.state is S.STOP and state.replication is None
    d = decide(state, PeerOutOfDate("sendtimeout"), 2.0, CFG)
    assert d.record.code == "stale" and d.state == state and d.actions == ()


def test_start_after_the_peer_announced_its_stop_does_not_wait_for_the_timeout() -> None:
    state = decide(initial_state(CFG, SHARED), heartbeat(S.PRIM), 0.0, CFG).state
    state = decide(state, PeerStopAnnounced(), 0.5, CFG).state
    state, _, _ = run(state, AdminCommand(AdminKind.START), 1.0)
    # decided right after the start-up scripts: shared data and no running peer -> WAIT NotReady
    assert (state.state, state.readiness) == (S.WAIT, R.NOT_READY)
    assert state.wait_reason is WaitReason.NOT_UPTODATE
