"""Two-node stories, end to end through the simulator (fake clock, fake network).

Each test reads as the user's story; assertions are on states, record codes, scripts run, the
virtual IP and SafeKit's log lines.
"""

from __future__ import annotations

from hakit.core.events import (
    AdminKind,
    CheckerAction,
    CheckerKind,
    HeartbeatReceived,
    PeerOutOfDate,
    WaitCleared,
)
from hakit.core.generations import DataStatus, GenerationOrigin, SyncVerdict, compare
from hakit.core.mirror_model import WaitReason
from hakit.core.states import ModuleState as S
from hakit.core.states import Readiness as R
from hakit.testing.mirror_sim import MirrorSim

TIMEOUT = 5.0


def paired_sim(**kwargs: object) -> MirrorSim:
    """node1 PRIM Ready, node2 SECOND Ready, after the documented first start."""
    sim = MirrorSim(timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    sim.first_start("node1")
    sim.run_for(2)
    return sim


def scripts_during(sim: MirrorSim, name: str, action: object) -> list[str]:
    node = sim.node(name)
    before = len(node.scripts)
    action() if callable(action) else None
    return node.script_names()[before:]


def test_first_start_both_wait_until_prim_then_second_gets_a_full_copy() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.START)
    sim.command("node2", AdminKind.START)
    sim.settle()
    for name in ("node1", "node2"):
        node = sim.node(name)
        assert node.summary == "WAIT NotReady"
        assert node.state.wait_reason is WaitReason.NOT_UPTODATE
        assert node.state.rule == "rfs_notuptodate_server"
        assert (
            "Data may be not uptodate for replicated directories (wait for the start of the "
            "remote server) (first start: no node holds data yet)"
        ) in node.logs

    sim.command("node1", AdminKind.PRIM)  # from WAIT NotReady: forced primary
    assert sim.wait_for("node2", S.SECOND, R.READY)
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert "resync_started" in sim.node("node2").codes()
    assert "Reintegration started (full) from node1" in sim.node("node2").logs
    assert sim.node("node1").vip and not sim.node("node2").vip
    assert sim.node("node1").state.data.current == sim.node("node2").state.data.current
    assert not sim.vip_overlap


def test_primary_loses_power_secondary_goes_alone_after_timeout_running_its_scripts() -> None:
    sim = paired_sim()
    node2 = sim.node("node2")
    before = len(node2.scripts)
    sim.power_off("node1")
    sim.run_for(TIMEOUT - 1.5)
    assert node2.summary == "SECOND Ready"  # not before the heartbeat timeout
    assert sim.wait_for("node2", S.ALONE, R.READY, limit=5)
    assert node2.script_names()[before:] == ["stop_second", "transition", "start_prim"]
    assert "Action alone called by heart: no heartbeat" in node2.logs
    assert node2.logs[-1] == "Local state ALONE Ready"
    assert node2.vip
    assert node2.state.data.origin is GenerationOrigin.FAILOVER
    assert node2.disk.status is DataStatus.UP_TO_DATE


def test_clean_stop_of_the_primary_makes_the_secondary_take_over_at_once() -> None:
    sim = paired_sim()
    node1, node2 = sim.node("node1"), sim.node("node2")
    before1 = len(node1.scripts)
    sim.command("node1", AdminKind.STOP)
    assert sim.wait_for("node2", S.ALONE, R.READY, limit=TIMEOUT - 1)  # no timeout waited
    assert sim.wait_for("node1", S.STOP, R.NOT_READY)
    assert node1.script_names()[before1:] == [
        "stop_prim",
        "stop_both",
        "transition",
        "stop_sec force",
        "stop_prim force",
        "stop_second force",
        "stop_both force",
        "poststop",
        "transition",
    ]
    assert "Action alone called by heart: remote stop" in node2.logs
    assert not sim.vip_overlap and node2.vip and not node1.vip
    # node1 keeps a record saying it shared data with a peer that went on: it will not start alone
    assert node1.disk.status is DataStatus.PAIRED


def test_stopped_node_with_stale_data_refuses_to_start_primary_until_prim() -> None:
    sim = paired_sim()
    sim.command("node1", AdminKind.STOP)
    sim.settle()
    sim.run_for(2)
    sim.command("node2", AdminKind.STOP)  # node2 was ALONE: it holds the newest data
    sim.settle()
    sim.run_for(2)
    sim.command("node1", AdminKind.START)
    sim.run_for(TIMEOUT + 3)
    node1 = sim.node("node1")
    assert node1.summary == "WAIT NotReady"
    assert node1.state.wait_reason is WaitReason.NOT_UPTODATE
    assert not node1.vip
    # node2 comes back: node1 follows it as SECOND, incremental
    sim.command("node2", AdminKind.START)
    assert sim.wait_for("node2", S.PRIM, R.READY)
    assert node1.summary == "SECOND Ready"
    assert "peer is ALONE: starting as SECOND (incremental resync)" in node1.logs


def test_prim_forces_a_stale_node_and_the_other_keeps_its_newer_files_aside() -> None:
    sim = paired_sim()
    sim.command("node1", AdminKind.STOP)
    sim.settle()
    sim.command("node2", AdminKind.STOP)
    sim.settle()
    sim.run_for(2)
    sim.command("node1", AdminKind.PRIM)  # the admin sacrifices node2's newer data
    assert sim.wait_for("node1", S.ALONE, R.READY)
    sim.command("node2", AdminKind.START)
    assert sim.wait_for("node2", S.SECOND, R.READY)
    node2 = sim.node("node2")
    assert len(node2.kept_aside) == 1
    assert node2.kept_aside[0].since != ""
    assert "Reintegration started (full) from node1" in node2.logs


def test_secondary_stop_leaves_the_primary_alone_with_a_new_generation() -> None:
    sim = paired_sim()
    node1 = sim.node("node1")
    old = node1.state.data.current
    before = len(node1.scripts)
    before2 = len(sim.node("node2").scripts)
    sim.command("node2", AdminKind.STOP)
    assert sim.wait_for("node1", S.ALONE, R.READY)
    sim.settle()
    assert node1.script_names()[before:] == ["transition", "start_sec"]
    assert node1.state.data.current != old
    assert old in node1.state.data.history
    assert sim.node("node2").script_names()[before2:][:4] == [
        "stop_sec",
        "stop_second",
        "stop_both",
        "transition",
    ]
    # node2 returns: incremental resync, then node1 goes PRIM running stop_sec, transition
    before = len(node1.scripts)
    sim.command("node2", AdminKind.START)
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert node1.script_names()[before:] == ["stop_sec", "transition"]
    assert "Reintegration started (incremental) from node1" in sim.node("node2").logs


def test_failover_off_secondary_ends_in_wait_and_old_primary_restores_the_pair() -> None:
    sim = paired_sim(failover=False)
    node2 = sim.node("node2")
    sim.command("node1", AdminKind.STOP)
    sim.run_for(TIMEOUT * 3)
    assert node2.summary == "WAIT NotReady"
    assert not node2.vip
    for line in (
        "Failover-off configured",
        "Action stopstart called by failover-off",
        "Transition STOPSTART from failover-off",
        "Action start called automatically",
    ):
        assert line in node2.logs
    sim.command("node1", AdminKind.START)
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert sim.wait_for("node2", S.SECOND, R.READY)


def test_failover_can_be_switched_off_at_run_time() -> None:
    sim = paired_sim()
    sim.command("node2", AdminKind.FAILOVER_OFF)
    sim.power_off("node1")
    sim.run_for(TIMEOUT * 3)
    assert sim.node("node2").summary == "WAIT NotReady"
    assert "Resource usersetting.failover set to off by admin" in sim.node("node2").logs


def test_secondary_still_resyncing_never_takes_over() -> None:
    sim = MirrorSim(timeout=TIMEOUT, resync_time=30.0)
    sim.command("node1", AdminKind.PRIM)
    assert sim.wait_for("node1", S.ALONE, R.READY)
    sim.run_for(2)
    sim.command("node2", AdminKind.SECOND)
    assert sim.wait_for("node2", S.SECOND, R.TRANSIENT)
    sim.run_for(3)
    sim.power_off("node1")
    sim.run_for(TIMEOUT * 3)
    node2 = sim.node("node2")
    assert node2.summary == "WAIT NotReady"
    assert node2.state.wait_reason is WaitReason.INCONSISTENT
    assert not node2.vip
    assert "resync_abandoned" in node2.codes()
    # prim is refused (inconsistent data); primforce is required
    decision = sim.command("node2", AdminKind.PRIM)
    assert decision.record.code == "refused"
    assert "stopped during reintegration" in decision.record.message
    sim.command("node2", AdminKind.PRIMFORCE)
    assert sim.wait_for("node2", S.ALONE, R.READY)
    assert node2.state.data.full_sync_required


def test_defaultprim_swaps_back_once_the_preferred_node_is_second_ready() -> None:
    sim = paired_sim(defaultprim="node1")
    sim.command("node1", AdminKind.STOPSTART)  # node1 fails over to node2, comes back SECOND
    assert sim.run_until(lambda: "defaultprim_swap" in sim.node("node2").codes())
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert sim.wait_for("node2", S.SECOND, R.READY)
    node2 = sim.node("node2")
    assert "Transition SWAP from defaultprim" in node2.logs
    assert "Begin of Swap" in node2.logs
    assert sim.node("node1").vip and not node2.vip
    assert not sim.vip_overlap


def test_swap_exchanges_roles_with_the_documented_scripts_on_each_side() -> None:
    sim = paired_sim()
    node1, node2 = sim.node("node1"), sim.node("node2")
    b1, b2 = len(node1.scripts), len(node2.scripts)
    decision = sim.command("node2", AdminKind.SWAP)  # may be asked on either node
    assert decision.record.code == "swap_accepted"
    assert sim.wait_for("node2", S.PRIM, R.READY)
    assert sim.wait_for("node1", S.SECOND, R.READY)
    assert node1.script_names()[b1:] == [
        "stop_prim",
        "stop_prim force",
        "transition",
        "start_second",
        "start_sec",
    ]
    assert node2.script_names()[b2:] == ["stop_sec", "stop_second", "transition", "start_prim"]
    assert node2.vip and not node1.vip and not sim.vip_overlap
    # and back, asked on the PRIM this time
    assert sim.command("node2", AdminKind.SWAP).record.code == "swap_requested"
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert sim.wait_for("node2", S.SECOND, R.READY)
    assert not sim.vip_overlap


def test_swap_refused_unless_both_ready() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.PRIM)
    assert sim.wait_for("node1", S.ALONE, R.READY)
    assert sim.command("node1", AdminKind.SWAP).record.code == "refused"


def test_restart_runs_local_stop_and_start_scripts_without_failover() -> None:
    sim = paired_sim()
    expected = {
        "node1": ["stop_prim", "stop_both", "start_both", "start_prim"],
        "node2": [
            "stop_sec",
            "stop_second",
            "stop_both",
            "start_both",
            "start_second",
            "start_sec",
        ],
    }
    for name, scripts in expected.items():
        node = sim.node(name)
        before = len(node.scripts)
        sim.command(name, AdminKind.RESTART)
        assert node.state.readiness is R.TRANSIENT
        sim.settle()
        assert node.script_names()[before:] == scripts
        assert sim.states() == {"node1": "PRIM Ready", "node2": "SECOND Ready"}
    assert sim.node("node1").vip


def test_restart_in_alone() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.PRIM)
    sim.settle()
    node1 = sim.node("node1")
    before = len(node1.scripts)
    sim.command("node1", AdminKind.RESTART)
    sim.settle()
    assert node1.script_names()[before:] == [
        "stop_sec",
        "stop_prim",
        "stop_both",
        "start_both",
        "start_prim",
        "start_sec",
    ]


def test_checker_actions_count_and_the_fourth_stops_the_module() -> None:
    sim = paired_sim()
    restart = CheckerAction(CheckerKind.RESTART, identity="errd", rule=None)
    for _ in range(3):
        decision = sim.deliver("node2", restart)
        assert decision.record.code != "maxloop"
        sim.settle()
        assert sim.node("node2").summary == "SECOND Ready"
    decision = sim.deliver("node2", restart)
    assert "maxloop" in decision.record.codes
    assert "Action stop called by maxloop" in sim.node("node2").logs
    assert sim.wait_for("node2", S.STOP, R.NOT_READY)


def test_admin_command_without_identity_resets_the_maxloop_counter() -> None:
    sim = paired_sim()
    restart = CheckerAction(CheckerKind.RESTART, identity="errd")
    for _ in range(3):
        sim.deliver("node2", restart)
        sim.settle()
    sim.command("node2", AdminKind.RESTART)  # an administrator restart: counter back to zero
    sim.settle()
    sim.deliver("node2", restart)
    sim.settle()
    assert sim.node("node2").summary == "SECOND Ready"


def test_checker_wait_parks_in_wait_and_implicit_wakeup_resumes() -> None:
    sim = paired_sim()
    node1 = sim.node("node1")
    sim.deliver("node1", CheckerAction(CheckerKind.WAIT, identity="ping", rule="p_gw"))
    assert sim.wait_for("node2", S.ALONE, R.READY)  # a wait on PRIM causes failover
    assert sim.wait_for("node1", S.WAIT, R.NOT_READY)
    assert node1.state.wait_reason is WaitReason.RESOURCE
    assert "Action wait from failover rule p_gw" in node1.logs
    assert not node1.vip
    sim.run_for(TIMEOUT * 2)
    assert node1.summary == "WAIT NotReady"  # only the wake-up resumes it
    sim.deliver("node1", WaitCleared())
    assert "Action wakeup from failover rule Implicit_wakeup" in node1.logs
    assert sim.wait_for("node1", S.SECOND, R.READY)


def test_stopstart_on_primary_is_a_failover_and_it_returns_as_secondary() -> None:
    sim = paired_sim()
    sim.command("node1", AdminKind.STOPSTART)
    assert sim.wait_for("node2", S.PRIM, R.READY)
    assert sim.node("node1").summary == "SECOND Ready"
    assert "Action start called automatically" in sim.node("node1").logs


def test_split_brain_the_former_secondary_yields_and_keeps_its_files_aside() -> None:
    sim = paired_sim()
    sim.partition()
    sim.run_for(TIMEOUT * 2)
    assert sim.states() == {"node1": "ALONE Ready", "node2": "ALONE Ready"}
    assert sim.node("node1").vip and sim.node("node2").vip
    assert compare(sim.node("node1").state.data, sim.node("node2").state.data) is (
        SyncVerdict.DIVERGED
    )
    node2_gen = sim.node("node2").state.data.current
    sim.heal()
    assert sim.wait_for("node2", S.SECOND, R.READY)
    assert sim.wait_for("node1", S.PRIM, R.READY)
    node1, node2 = sim.node("node1"), sim.node("node2")
    assert "Split brain recovery: staying alone" in node1.logs
    assert "Split brain recovery: exiting alone" in node2.logs
    assert [k.generation for k in node2.kept_aside] == [node2_gen]
    assert node2.script_names()[-4:] == [
        "stop_prim",
        "stop_prim force",
        "transition",
        "start_second",
    ]
    assert "Reintegration started (full) from node1" in node2.logs
    assert node1.vip and not node2.vip


def test_simultaneous_power_loss_first_node_back_waits_then_roles_return() -> None:
    sim = paired_sim()
    sim.power_off("node1")
    sim.power_off("node2")
    sim.power_on("node2")
    sim.command("node2", AdminKind.START)
    sim.run_for(TIMEOUT * 2)
    assert sim.node("node2").summary == "WAIT NotReady"  # it cannot know it is up to date
    sim.power_on("node1")
    sim.command("node1", AdminKind.START)
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert sim.wait_for("node2", S.SECOND, R.READY)
    assert "resync_started" not in sim.node("node2").codes()[-10:]  # same data: nothing to copy


def test_both_start_together_with_the_same_data_return_to_previous_roles() -> None:
    sim = paired_sim()
    sim.command("node2", AdminKind.SWAP)
    assert sim.wait_for("node1", S.SECOND, R.READY)
    sim.settle()
    assert sim.states() == {"node1": "SECOND Ready", "node2": "PRIM Ready"}
    sim.power_off("node1")
    sim.power_off("node2")
    sim.power_on("node1")
    sim.power_on("node2")
    b2 = len(sim.node("node2").scripts)
    sim.command("node1", AdminKind.START)
    sim.command("node2", AdminKind.START)
    assert sim.wait_for("node2", S.PRIM, R.READY)
    assert sim.wait_for("node1", S.SECOND, R.READY)
    # WAIT -> PRIM row
    assert sim.node("node2").script_names()[b2:][:5] == [
        "transition",
        "prestart",
        "transition",
        "start_both",
        "start_prim",
    ]


def test_replication_timeout_drops_prim_to_alone_and_the_secondary_resyncs() -> None:
    sim = paired_sim()
    node1 = sim.node("node1")
    old = node1.state.data.current
    sim.deliver("node1", PeerOutOfDate("sendtimeout"))
    assert node1.state.data.current != old
    assert node1.disk == node1.state.data  # persisted before anything else
    assert sim.wait_for("node1", S.ALONE, R.READY)
    assert sim.run_until(
        lambda: "Reintegration started (incremental) from node1" in sim.node("node2").logs
    )
    assert sim.wait_for("node1", S.PRIM, R.READY)
    assert sim.node("node2").summary == "SECOND Ready"


def test_resync_failure_is_a_stopstart_counted_by_maxloop() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.PRIM)
    sim.settle()
    sim.run_for(2)
    sim.resync_failures = 1
    sim.command("node2", AdminKind.SECOND)
    assert sim.run_until(lambda: "resync_failed" in sim.node("node2").codes())
    assert sim.wait_for("node2", S.SECOND, R.READY)
    assert len(sim.node("node2").state.loop_times) == 1


def test_forcestop_aborts_the_running_script() -> None:
    sim = MirrorSim(timeout=TIMEOUT, script_time=50.0)
    sim.command("node1", AdminKind.START)
    node1 = sim.node("node1")
    assert node1.script_names() == ["transition"]
    decision = sim.command("node1", AdminKind.FORCESTOP)
    assert "forcestop" in decision.record.codes
    assert sim.wait_for("node1", S.STOP, R.NOT_READY, limit=600)
    assert node1.script_names()[1:] == [
        "stop_sec force",
        "stop_prim force",
        "stop_second force",
        "stop_both force",
        "poststop",
        "transition",
    ]


def test_stop_during_a_transition_is_queued_and_runs_when_it_ends() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.PRIM)
    assert sim.wait_for("node1", S.ALONE, R.TRANSIENT)
    decision = sim.command("node1", AdminKind.STOP)
    assert decision.record.code == "queued"
    assert sim.wait_for("node1", S.STOP, R.NOT_READY)
    names = sim.node("node1").script_names()
    assert names.index("start_sec") < names.index("stop_sec")  # the start completed first


def test_failed_start_script_is_logged_and_the_sequence_goes_on() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.script_exit_codes["start_prim"] = 3
    sim.command("node1", AdminKind.PRIM)
    assert sim.wait_for("node1", S.ALONE, R.READY)
    assert "Script start_prim failed (exit code 3)" in sim.node("node1").logs
    assert sim.node("node1").script_names()[-1] == "start_sec"


def test_only_existing_scripts_run() -> None:
    sim = MirrorSim(timeout=TIMEOUT, scripts=frozenset({"start_prim", "stop_prim"}))
    sim.first_start("node1")
    assert sim.node("node1").script_names() == ["start_prim"]
    assert sim.node("node2").script_names() == []
    sim.command("node1", AdminKind.STOP)
    assert sim.wait_for("node2", S.ALONE, R.READY)
    assert sim.node("node1").script_names() == ["start_prim", "stop_prim", "stop_prim force"]
    assert sim.node("node2").script_names() == ["start_prim"]


def test_alone_node_stop_and_start_rows() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    node1 = sim.node("node1")
    sim.command("node1", AdminKind.PRIM)
    assert sim.wait_for("node1", S.ALONE, R.READY)
    # STOP -> WAIT(Transient), then WAIT -> ALONE
    assert node1.script_names() == [
        "transition",
        "prestart",
        "transition",
        "start_both",
        "start_prim",
        "start_sec",
    ]
    assert node1.scripts[0][1] == ("STOP", "WAIT", "start")
    assert node1.scripts[2][1] == ("WAIT", "ALONE", "start")
    before = len(node1.scripts)
    sim.command("node1", AdminKind.STOP)
    assert sim.wait_for("node1", S.STOP, R.NOT_READY)
    # ALONE -> WAIT, then WAIT(Transient) -> STOP
    assert node1.script_names()[before:] == [
        "stop_sec",
        "stop_prim",
        "stop_both",
        "transition",
        "stop_sec force",
        "stop_prim force",
        "stop_second force",
        "stop_both force",
        "poststop",
        "transition",
    ]
    assert node1.scripts[before][1] == ("ALONE", "WAIT", "stop")
    assert node1.scripts[before + 4][1] == ("force", "WAIT", "STOP", "stop")
    # the sole writer starts again by itself
    sim.command("node1", AdminKind.START)
    assert sim.wait_for("node1", S.ALONE, R.READY, limit=TIMEOUT + 5)


def test_wait_to_second_row() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.PRIM)
    assert sim.wait_for("node1", S.ALONE, R.READY)
    sim.run_for(2)
    sim.command("node2", AdminKind.SECOND)
    assert sim.wait_for("node2", S.SECOND, R.READY)
    node2 = sim.node("node2")
    assert node2.script_names() == [
        "transition",
        "prestart",
        "transition",
        "start_both",
        "start_second",
        "start_sec",
    ]
    assert node2.scripts[2][1] == ("WAIT", "SECOND", "start")


def test_repeated_wait_verdicts_count_once() -> None:
    sim = paired_sim()
    wait = CheckerAction(CheckerKind.WAIT, identity="ping", rule="p_gw")
    sim.deliver("node2", wait)
    assert sim.wait_for("node2", S.WAIT, R.NOT_READY)
    for _ in range(5):  # the failover machine repeats its verdict every period
        assert sim.deliver("node2", wait).record.code == "ignored"
    assert len(sim.node("node2").state.loop_times) == 1
    assert sim.node("node2").summary == "WAIT NotReady"


def test_stop_queued_during_start_scripts_stops_before_any_role() -> None:
    sim = MirrorSim(timeout=TIMEOUT)
    sim.command("node1", AdminKind.PRIM)
    assert sim.command("node1", AdminKind.STOP).record.code == "queued"
    assert sim.wait_for("node1", S.STOP, R.NOT_READY)
    node1 = sim.node("node1")
    assert "start_prim" not in node1.script_names()
    assert not node1.vip


def test_hung_primary_that_wakes_up_yields_to_the_peer_that_took_over() -> None:
    """node1 hangs (frozen) while PRIM; node2 takes over and writes. When node1 wakes up, the first
    thing it hears is node2 ALONE with newer data: node1 must not start a generation of its own,
    and node2's writes must not be set aside (this is not a split brain: node1 wrote nothing)."""
    sim = paired_sim()
    frozen = sim.node("node1").state  # node1's snapshot at the moment it hangs
    sim.partition()
    sim.run_for(TIMEOUT * 2)
    node2 = sim.node("node2")
    assert node2.summary == "ALONE Ready"
    assert node2.state.data.origin is GenerationOrigin.FAILOVER
    # node1 wakes up with the state it had when it hung; node2's newest heartbeat is the first
    # event it processes (datagrams buffered during the hang are read before its timers fire).
    sim.node("node1").state = frozen
    sim.deliver(
        "node1",
        HeartbeatReceived(S.ALONE, R.READY, node2.state.data),
    )
    sim.heal()
    assert sim.wait_for("node1", S.SECOND, R.READY)
    assert sim.wait_for("node2", S.PRIM, R.READY)
    node1 = sim.node("node1")
    assert node1.kept_aside == []
    assert node2.kept_aside == []
    assert "Split brain recovery: staying alone" in node2.logs
    assert compare(node1.state.data, node2.state.data) is SyncVerdict.SAME
    assert node2.vip and not node1.vip
    assert any("took over while this node was unreachable" in line for line in node1.logs)
