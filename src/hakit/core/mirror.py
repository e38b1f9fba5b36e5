"""The mirror module's decision core: ``decide(state, event, now, settings) -> Decision``.

Theory of operation
-------------------
A mirror module runs on two nodes. Each node's engine feeds this core one event at a time (an
administrator command, a detector verdict, a peer heartbeat, a tick of time, the end of a script
or of a resync) together with the current snapshot (:class:`MirrorState`) and the monotonic time.
The core answers with the next snapshot, the actions to perform in order, and a decision record
(a stable code plus SafeKit's wording). It performs no I/O and reads no clock, so every scenario
is a plain function of its inputs.

Where an event goes is data: :data:`TRANSITIONS` maps ``(state, activity)`` and the event's type
to a handler name. An event that cannot happen in a state (a script ending while none runs) raises
:class:`IllegalEventError` naming both; events that may arrive at any time (heartbeats, late resync
reports) say ``ignore`` explicitly.

Long work happens in *transitions*: a plan of steps built from the script automaton
(:mod:`hakit.core.scripts`) in which each ``RunScript`` waits for its ``ScriptExited`` before the
next step is emitted, so scripts run one at a time and this module alone decides which is next.
Peer news arriving meanwhile only updates the peer view; when the plan completes the node
*settles*: it runs a queued command (``stop`` during a transition is queued), else it re-evaluates
its situation from the snapshot. The same evaluators run on every heartbeat and tick in stable
activities, so "what should this node be doing now?" is answered in one place per state:

* WAIT (probing/blocked): :func:`choose_role` compares data generations with the peer's.
* ALONE: peer SECOND Ready with my data -> PRIM; peer also primary -> split-brain recovery.
* PRIM: peer no longer an in-sync SECOND -> ALONE (new data generation); swap handshake.
* SECOND: primary lost or stopped -> ALONE (failover on) or stopstart to WAIT (failover off);
  primary moved to a new generation -> resync.

Safety rules: a node never starts primary unless it knows its data is up to date (sole writer,
or the peer visibly holds the same or older data) — otherwise WAIT NotReady until the peer comes
or ``prim`` forces it; a SECOND still resyncing never takes over; a SECOND takes over only once
the primary released its role (stop announced, or stopping cleared, or heartbeats lost for
``timeout``); data a node wrote that its peer never saw is kept aside before any resync overwrites
it (``PreserveDivergentData``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hakit.core.actions import (
    AbortScript,
    Action,
    AnnounceStop,
    Log,
    LogLevel,
    PersistGeneration,
    PreserveDivergentData,
    PublishState,
    ReplicationRole,
    RunScript,
    SetVip,
    StartReplication,
    StartResync,
    StopReplication,
)
from hakit.core.events import (
    EVENT_TYPES,
    AdminCommand,
    AdminKind,
    CheckerAction,
    CheckerKind,
    Event,
    HeartbeatReceived,
    PeerOutOfDate,
    PeerStopAnnounced,
    ResyncDone,
    ResyncFailed,
    ScriptExited,
    SwapPhase,
    Tick,
    WaitCleared,
)
from hakit.core.generations import (
    DataGeneration,
    GenerationOrigin,
    ResyncKind,
    SyncVerdict,
    begin_solo_writing,
    common_ancestor,
    compare,
    forced_primary,
    left_pair,
    must_keep_aside,
    paired,
    resync_finished,
    resync_kind,
    resync_started,
)
from hakit.core.mirror_model import (
    CONTEXT_CODES,
    Activity,
    Decision,
    DecisionRecord,
    Finish,
    IllegalEventError,
    MirrorSettings,
    MirrorState,
    PeerGone,
    PeerView,
    RecordCode,
    Transition,
    TransitionKind,
    WaitReason,
)
from hakit.core.mirror_roles import RoleChoice, choose_role, split_brain_yields
from hakit.core.scripts import (
    LEAVE_ROWS,
    RESTART_ROWS,
    SCRIPT_TABLE,
    AwaitExit,
    Part,
    ScriptRow,
    Step,
    plan,
)
from hakit.core.states import PRIMARY_STATES, ModuleState, Readiness

S = ModuleState
R = Readiness
A = Activity
C = RecordCode

# ---------------------------------------------------------------------------------------------
# The transition table (data)
# ---------------------------------------------------------------------------------------------

ILLEGAL = "illegal"
IGNORE = "ignore"
STALE = "ignore_stale"

# Stable activities decide at once; a running plan only takes notes and decides when it completes.
# A replication timeout can come whenever this node may still be the replicating primary (also
# while it leaves that role); the handler ignores it once replication was stopped.
_STABLE: dict[type[Event], str] = {
    AdminCommand: "admin",
    CheckerAction: "checker",
    HeartbeatReceived: "observe",
    PeerStopAnnounced: "observe",
    Tick: "observe",
    ScriptExited: ILLEGAL,
    ResyncDone: STALE,
    ResyncFailed: STALE,
    PeerOutOfDate: "out_of_date",
    WaitCleared: IGNORE,
}
_BUSY: dict[type[Event], str] = {
    **_STABLE,
    AdminCommand: "admin_busy",
    CheckerAction: "checker_busy",
    HeartbeatReceived: "note",
    PeerStopAnnounced: "note",
    Tick: "note",
    ScriptExited: "script_exited",
}

#: (state, activity) -> event type -> handler name. Every reachable pair lists every event type.
TRANSITIONS: dict[tuple[ModuleState, Activity], dict[type[Event], str]] = {
    (S.STOP, A.IDLE): _STABLE,
    (S.WAIT, A.SCRIPTS): _BUSY,
    (S.WAIT, A.PROBING): _STABLE,
    (S.WAIT, A.BLOCKED): {**_STABLE, WaitCleared: "wakeup"},
    (S.ALONE, A.IDLE): _STABLE,
    (S.ALONE, A.SCRIPTS): _BUSY,
    (S.PRIM, A.IDLE): _STABLE,
    (S.PRIM, A.SCRIPTS): _BUSY,
    (S.SECOND, A.IDLE): _STABLE,
    (S.SECOND, A.SCRIPTS): _BUSY,
    (S.SECOND, A.RESYNCING): {**_STABLE, ResyncDone: "resync_done", ResyncFailed: "resync_failed"},
    (S.SECOND, A.HANDOVER): _STABLE,
}

# ---------------------------------------------------------------------------------------------
# Decision accumulator (local to one decide() call; the result is frozen)
# ---------------------------------------------------------------------------------------------


@dataclass
class _Out:
    s: MirrorState
    now: float
    cfg: MirrorSettings
    actions: list[Action] = field(default_factory=list)
    notes: list[tuple[RecordCode, str]] = field(default_factory=list)
    peer_changed: bool = False

    def set(self, **changes: Any) -> None:
        self.s = replace(self.s, **changes)

    def emit(self, *actions: Action) -> None:
        self.actions.extend(actions)
        for action in actions:
            # The snapshot remembers what the replicator was told: a replication timeout only
            # means something while this node is the replicating primary.
            if isinstance(action, StartReplication):
                self.s = replace(self.s, replication=action.role)
            elif isinstance(action, StopReplication):
                self.s = replace(self.s, replication=None)

    def note(self, code: RecordCode, message: str, level: LogLevel | None = LogLevel.EVENT) -> None:
        self.notes.append((code, message))
        if level is not None:
            self.emit(Log(level, message))

    def decision(self, default: RecordCode, default_message: str) -> Decision:
        notes = self.notes or [(default, default_message)]
        # The outcome is the last note that is not mere context (who asked, what the peer said);
        # the message keeps the whole story in order.
        outcome = [code for code, _ in notes if code not in CONTEXT_CODES] or [notes[-1][0]]
        record = DecisionRecord(
            code=outcome[-1],
            message="; ".join(message for _, message in notes),
            codes=tuple(code for code, _ in notes),
        )
        return Decision(self.s, tuple(self.actions), record)


Handler = Callable[[_Out, Any], None]


def decide(state: MirrorState, event: Event, now: float, settings: MirrorSettings) -> Decision:
    """Decide what ``event`` means for this node at monotonic time ``now``.

    Returns the next snapshot, the actions to perform in order, and a decision record. Raises
    :class:`IllegalEventError` for an event that cannot happen in the current state (an executor
    bug), naming the state, the activity and the event.
    """
    row = TRANSITIONS.get((state.state, state.activity))
    if row is None:
        raise IllegalEventError(
            f"mirror core: no transition row for state {state.state} {state.readiness} "
            f"(activity {state.activity.value}); the snapshot was not produced by decide()"
        )
    name = row[type(event)]
    if name == ILLEGAL:
        raise IllegalEventError(
            f"mirror core: event {event!r} is illegal in state {state.state} {state.readiness} "
            f"(activity {state.activity.value}); the executor must only report scripts it started"
        )
    out = _Out(state, now, settings)
    _HANDLERS[name](out, event)
    return out.decision(C.NO_CHANGE, f"{type(event).__name__}: nothing to do in {state.state}")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _publish(o: _Out) -> None:
    s = o.s
    o.emit(PublishState(s.state, s.readiness, s.data, s.stopping, s.swap))


def _enter(
    o: _Out, state: ModuleState, readiness: Readiness, activity: Activity, **kw: Any
) -> None:
    before = (o.s.state, o.s.readiness)
    o.set(state=state, readiness=readiness, activity=activity, since=o.now, **kw)
    if (state, readiness) != before:
        o.emit(Log(LogLevel.EVENT, f"Local state {state} {readiness}"))
    _publish(o)


def _persist(o: _Out, data: DataGeneration) -> None:
    o.set(data=data)
    o.emit(PersistGeneration(data))


def _solo(o: _Out, origin: GenerationOrigin) -> None:
    cfg = o.cfg
    before = o.s.data.current
    _persist(o, begin_solo_writing(o.s.data, cfg.local_node, cfg.incarnation, origin, S.ALONE))
    if o.s.data.current != before:
        o.note(C.NEW_GENERATION, f"New data generation {o.s.data.current}", LogLevel.INFO)


def _run(
    o: _Out,
    kind: TransitionKind,
    steps: tuple[Step, ...],
    finish: Finish,
    *,
    shown: ModuleState | None = None,
    intent: AdminCommand | None = None,
    resync: ResyncKind = ResyncKind.NONE,
    then_start: bool = False,
    park_reason: WaitReason | None = None,
    action: str = "start",
    keep_aside: str = "",
    **changes: Any,
) -> None:
    """Start a transition: show its state as Transient and emit its first steps.

    ``changes`` are further snapshot fields to set (``stopping``, ``swap``, ``pending``...); a
    node running a transition is no longer waiting, so its wait reason is cleared.
    """
    transition = Transition(
        kind,
        steps,
        finish,
        kind.target,
        intent=intent,
        resync=resync,
        then_start=then_start,
        wait_reason=park_reason,
        action=action,
        keep_aside=keep_aside,
    )
    changes.setdefault("wait_reason", None)
    _enter(o, shown or kind.target, R.TRANSIENT, A.SCRIPTS, transition=transition, **changes)
    _advance(o)


def _advance(o: _Out) -> None:
    transition = o.s.transition
    assert transition is not None
    steps = transition.steps
    while steps:
        head = steps[0]
        if isinstance(head, AwaitExit):
            break
        o.emit(head)
        if isinstance(head, RunScript):
            break
        steps = steps[1:]
    o.set(transition=replace(transition, steps=steps))
    if not steps:
        _complete(o, transition)


def _complete(o: _Out, transition: Transition) -> None:
    o.set(transition=None)
    _FINISHERS[transition.finish](o, transition)


def _settle(o: _Out) -> None:
    """After a transition: run the queued command, else re-evaluate from the snapshot."""
    pending = o.s.pending
    if pending is not None:
        o.set(pending=None)
        if isinstance(pending, AdminCommand):
            _admin(o, pending)
        else:
            _checker(o, pending)
        return
    _evaluate(o)


def _evaluate(o: _Out) -> None:
    evaluator = _EVALUATORS.get((o.s.state, o.s.activity))
    if evaluator is not None:
        evaluator(o)


def _script_plan(
    o: _Out,
    row: ScriptRow,
    action: str,
    *,
    release: tuple[Action, ...] = (),
    acquire: tuple[Action, ...] = (),
    part: Part = Part.WHOLE,
) -> tuple[Step, ...]:
    return plan(row, action, o.cfg.scripts, release=release, acquire=acquire, part=part)


_PRIMARY_ON = (StartReplication(ReplicationRole.PRIMARY), SetVip(True))
_PRIMARY_OFF = (SetVip(False), StopReplication())
_SECONDARY_ON = (StartReplication(ReplicationRole.SECONDARY),)
_SECONDARY_OFF = (StopReplication(),)


# ---------------------------------------------------------------------------------------------
# Applying a role choice (see hakit.core.mirror_roles)
# ---------------------------------------------------------------------------------------------


def _apply_choice(o: _Out, choice: RoleChoice) -> None:
    if choice.target is S.ALONE:
        o.note(choice.code, choice.message)
        _enter_alone(o, GenerationOrigin.PRIMARY)
    elif choice.target is S.PRIM:
        o.note(choice.code, choice.message)
        _enter_prim(o)
    elif choice.target is S.SECOND:
        o.note(choice.code, choice.message)
        _enter_second(o, choice.resync)
    elif choice.wait_reason is None:
        o.note(C.PROBING, choice.message, None)
    elif o.s.activity is A.BLOCKED and o.s.wait_reason is choice.wait_reason:
        o.note(C.NO_CHANGE, choice.message, None)
    else:
        reason = choice.wait_reason
        o.note(C.WAITING, choice.message)
        o.note(C.WAITING, reason.hint)
        _enter(o, S.WAIT, R.NOT_READY, A.BLOCKED, wait_reason=reason, rule=reason.rule)


# ---------------------------------------------------------------------------------------------
# Entering roles
# ---------------------------------------------------------------------------------------------


def _enter_alone(o: _Out, origin: GenerationOrigin) -> None:
    _solo(o, origin)
    steps = _script_plan(o, ScriptRow.WAIT_TO_ALONE, "start", acquire=_PRIMARY_ON)
    _run(o, TransitionKind.ENTER_ALONE, steps, Finish.READY, rule=None)


def _enter_prim(o: _Out) -> None:
    _persist(o, paired(o.s.data, S.PRIM))
    steps = _script_plan(o, ScriptRow.WAIT_TO_PRIM, "start", acquire=_PRIMARY_ON)
    _run(o, TransitionKind.ENTER_PRIM, steps, Finish.READY, rule=None)


def _keep_aside(o: _Out, why: str) -> None:
    data = o.s.data
    since = common_ancestor(data, o.s.peer.generation)
    o.emit(PreserveDivergentData(data.current, since, why))


def _enter_second(o: _Out, resync: ResyncKind) -> None:
    # Local writes the primary never saw are kept aside when the resync starts (the moment files
    # get overwritten, with the application stopped): see _start_resync.
    _persist(o, left_pair(o.s.data))
    steps = _script_plan(o, ScriptRow.WAIT_TO_SECOND, "start", acquire=_SECONDARY_ON)
    _run(o, TransitionKind.ENTER_SECOND, steps, Finish.SECOND_ENTERED, resync=resync, rule=None)


# ---------------------------------------------------------------------------------------------
# Finishers (what a completed transition leads to)
# ---------------------------------------------------------------------------------------------


def _finish_ready(o: _Out, t: Transition) -> None:
    _enter(o, t.target, R.READY, A.IDLE, swap=SwapPhase.NONE, stopping=False)
    o.note(C.READY, f"Local state {t.target} Ready", None)
    _settle(o)


def _finish_probe(o: _Out, t: Transition) -> None:
    intent = t.intent
    if o.s.pending is not None:
        # A stop came during the start-up scripts: honour it before choosing any role.
        _enter(o, S.WAIT, R.TRANSIENT, A.PROBING)
        _settle(o)
    elif intent is not None and intent.kind in (AdminKind.PRIM, AdminKind.PRIMFORCE):
        _force_primary(o, intent)
    elif intent is not None and intent.kind is AdminKind.SECOND:
        _force_second(o, intent)
    else:
        _enter(o, S.WAIT, R.TRANSIENT, A.PROBING)
        o.note(C.PROBING, "Start-up scripts done: looking for the peer", LogLevel.INFO)
        _evaluate(o)


def _finish_second(o: _Out, t: Transition) -> None:
    if t.resync is ResyncKind.NONE:
        _persist(o, paired(o.s.data, S.SECOND))
        _enter(o, S.SECOND, R.READY, A.IDLE, swap=SwapPhase.NONE)
        o.note(C.READY, "Local state SECOND Ready (nothing to copy)", None)
        _settle(o)
        return
    _start_resync(o, t.resync, t.keep_aside)


def _start_resync(o: _Out, kind: ResyncKind, why: str = "") -> None:
    # Keep aside, right before the copy overwrites them (the application and the local writes
    # have stopped by now), the files this node changed that the primary never saw.
    if must_keep_aside(o.s.data, o.s.peer.generation):
        _keep_aside(o, why or f"{o.cfg.peer_node} is primary without this node's latest writes")
    _persist(o, resync_started(o.s.data))
    o.emit(StartResync(kind))
    _enter(o, S.SECOND, R.TRANSIENT, A.RESYNCING, swap=SwapPhase.NONE)
    o.note(C.RESYNC_STARTED, f"Reintegration started ({kind.value}) from {o.cfg.peer_node}")


def _finish_swap_released(o: _Out, t: Transition) -> None:
    _enter(o, S.SECOND, R.TRANSIENT, A.HANDOVER, swap=SwapPhase.RELEASED)
    o.note(C.SWAP_RELEASED, "Swap: application stopped here, waiting for the peer to take PRIM")
    _evaluate(o)


def _finish_left(o: _Out, t: Transition) -> None:
    _finish_stop(o, t.action, then_start=t.then_start)


def _finish_stopped(o: _Out, t: Transition) -> None:
    _enter(o, S.STOP, R.NOT_READY, A.IDLE, stopping=False, swap=SwapPhase.NONE, wait_reason=None)
    o.note(C.STOPPED, "Local state STOP NotReady", None)
    if t.then_start:
        o.note(C.START, "Action start called automatically")
        _begin_start(o, None)
        return
    _settle(o)


def _finish_parked(o: _Out, t: Transition) -> None:
    reason = t.wait_reason or WaitReason.NOT_UPTODATE
    _enter(
        o, S.WAIT, R.NOT_READY, A.BLOCKED, stopping=False, swap=SwapPhase.NONE, wait_reason=reason
    )
    o.note(C.PARKED, reason.message)
    _settle(o)


_FINISHERS: dict[Finish, Callable[[_Out, Transition], None]] = {
    Finish.READY: _finish_ready,
    Finish.PROBE: _finish_probe,
    Finish.SECOND_ENTERED: _finish_second,
    Finish.SWAP_RELEASED: _finish_swap_released,
    Finish.LEFT: _finish_left,
    Finish.STOPPED: _finish_stopped,
    Finish.PARKED: _finish_parked,
}

# ---------------------------------------------------------------------------------------------
# Starting and stopping
# ---------------------------------------------------------------------------------------------


def _begin_start(o: _Out, intent: AdminCommand | None) -> None:
    steps = _script_plan(o, ScriptRow.STOP_TO_WAIT, "start")
    _run(o, TransitionKind.START, steps, Finish.PROBE, intent=intent, rule=None)


def _leave(
    o: _Out,
    action: str,
    finish: Finish,
    *,
    then_start: bool = False,
    wait_reason: WaitReason | None = None,
) -> None:
    """Leave ALONE/PRIM/SECOND for WAIT: graceful stop scripts, release, ``transition``."""
    state = o.s.state
    if state is S.SECOND:
        _persist(o, left_pair(o.s.data))
    release = _PRIMARY_OFF if state in PRIMARY_STATES else _SECONDARY_OFF
    if finish is Finish.PARKED:
        release = (*release, AnnounceStop())
    kind = {
        S.ALONE: TransitionKind.LEAVE_ALONE,
        S.PRIM: TransitionKind.LEAVE_PRIM,
        S.SECOND: TransitionKind.LEAVE_SECOND,
    }[state]
    steps = _script_plan(o, LEAVE_ROWS[state], action, release=release)
    _run(
        o,
        kind,
        steps,
        finish,
        then_start=then_start,
        park_reason=wait_reason,
        action=action,
        stopping=True,
        swap=SwapPhase.NONE,
        pending=None,
    )


def _finish_stop(o: _Out, action: str, *, then_start: bool = False) -> None:
    """WAIT -> STOP: stop scripts with ``force``, tell the peer, ``poststop``, ``transition``."""
    steps = _script_plan(o, ScriptRow.WAIT_TO_STOP, action, release=(AnnounceStop(),))
    _run(
        o,
        TransitionKind.FINISH_STOP,
        steps,
        Finish.STOPPED,
        shown=S.WAIT,
        then_start=then_start,
        action=action,
        stopping=True,
        swap=SwapPhase.NONE,
        pending=None,
    )


def _stop(o: _Out, action: str, *, then_start: bool = False) -> None:
    s = o.s
    o.note(C.STOPPING, f"Stopping the module ({action})", None)
    holds_app = s.state in (S.ALONE, S.PRIM) or (
        s.state is S.SECOND and s.swap is not SwapPhase.RELEASED
    )
    if holds_app:
        _leave(o, action, Finish.LEFT, then_start=then_start)
    else:
        _finish_stop(o, action, then_start=then_start)


def _forcestop(o: _Out) -> None:
    s = o.s
    prefix: tuple[Step, ...] = ()
    running = s.transition.steps[0] if s.transition and s.transition.steps else None
    if isinstance(running, RunScript):
        prefix = (AbortScript(running.name), AwaitExit(running.name))
    elif isinstance(running, AwaitExit):
        prefix = (running,)
    if s.state is S.SECOND:
        _persist(o, left_pair(s.data))
    release = (*_PRIMARY_OFF, AnnounceStop())
    steps = prefix + _script_plan(o, ScriptRow.WAIT_TO_STOP, "stop", release=release)
    o.note(C.FORCESTOP, "Forced stop: stop scripts called with force only")
    _run(
        o,
        TransitionKind.FORCESTOP,
        steps,
        Finish.STOPPED,
        shown=S.WAIT,
        action="stop",
        stopping=True,
        swap=SwapPhase.NONE,
        pending=None,
    )


def _restart(o: _Out) -> None:
    state = o.s.state
    kind = {
        S.ALONE: TransitionKind.RESTART_ALONE,
        S.PRIM: TransitionKind.RESTART_PRIM,
        S.SECOND: TransitionKind.RESTART_SECOND,
    }[state]
    o.note(C.RESTART, f"Restarting the application locally in {state} (no failover)", None)
    _run(o, kind, _script_plan(o, RESTART_ROWS[state], "stop"), Finish.READY)


def _maxloop_hit(o: _Out) -> bool:
    """Count one detector action; True if it is one too many within ``loop_interval``."""
    cfg = o.cfg
    if cfg.loop_interval <= 0:
        return False
    recent = (*(t for t in o.s.loop_times if o.now - t < cfg.loop_interval), o.now)
    o.set(loop_times=recent)
    if len(recent) > cfg.maxloop:
        o.note(C.MAXLOOP, "Action stop called by maxloop")
        _stop(o, "stop")
        return True
    return False


# ---------------------------------------------------------------------------------------------
# Administrator commands
# ---------------------------------------------------------------------------------------------


def _refuse(o: _Out, cmd: AdminCommand, why: str) -> None:
    o.note(C.REFUSED, f"{cmd.kind.value} refused: {why}")


def _prim_problem(s: MirrorState, cmd: AdminCommand) -> str | None:
    if s.peer.known and s.peer.state in PRIMARY_STATES:
        return f"the other node is already primary ({s.peer.describe()})"
    if s.data.interrupted_resync and cmd.kind is AdminKind.PRIM:
        reason = WaitReason.INCONSISTENT
        return f"{reason.message}. {reason.hint}"
    return None


def _startable(s: MirrorState) -> bool:
    return s.state is S.STOP or s.activity in (A.PROBING, A.BLOCKED)


def _cmd_start(o: _Out, cmd: AdminCommand) -> None:
    if o.s.state is not S.STOP:
        _refuse(o, cmd, f"the module is already started ({o.s.state} {o.s.readiness})")
        return
    _begin_start(o, cmd)


def _cmd_prim(o: _Out, cmd: AdminCommand) -> None:
    if not _startable(o.s):
        _refuse(o, cmd, f"the module is {o.s.state} {o.s.readiness}; stop it first")
        return
    problem = _prim_problem(o.s, cmd)
    if problem is not None:
        _refuse(o, cmd, problem)
    elif o.s.state is S.STOP:
        _begin_start(o, cmd)
    else:
        _force_primary(o, cmd)


def _force_primary(o: _Out, cmd: AdminCommand) -> None:
    problem = _prim_problem(o.s, cmd)
    if problem is not None:
        o.note(C.PRIM_ABORTED, f"Requested prim start aborted: {problem}")
        _finish_stop(o, "stop")
        return
    data = o.s.data
    full = cmd.fullsync or cmd.kind is AdminKind.PRIMFORCE or data.interrupted_resync
    o.set(data=forced_primary(data, full_sync=full))
    o.note(C.ENTER_ALONE, f"Forced start as primary ({cmd.kind.value})")
    _enter_alone(o, GenerationOrigin.ADMIN)


def _cmd_second(o: _Out, cmd: AdminCommand) -> None:
    if not _startable(o.s):
        _refuse(o, cmd, f"the module is {o.s.state} {o.s.readiness}; stop it first")
    elif not (o.s.peer.known and o.s.peer.state in PRIMARY_STATES):
        _refuse(o, cmd, f"the other node is not primary ({o.s.peer.describe()})")
    elif o.s.state is S.STOP:
        _begin_start(o, cmd)
    else:
        _force_second(o, cmd)


def _force_second(o: _Out, cmd: AdminCommand) -> None:
    peer = o.s.peer
    if not (peer.known and peer.state in PRIMARY_STATES):
        o.note(C.REFUSED, f"second aborted: the other node is not primary ({peer.describe()})")
        _finish_stop(o, "stop")
        return
    kind = ResyncKind.FULL if cmd.fullsync else resync_kind(o.s.data, peer.generation)
    o.note(C.ENTER_SECOND, f"Forced start as secondary ({kind.value} resync)")
    _enter_second(o, kind)


def _cmd_stop(o: _Out, cmd: AdminCommand) -> None:
    if o.s.state is S.STOP:
        o.note(C.IGNORED, "the module is already stopped")
        return
    _stop(o, "stop")


def _cmd_stopstart(o: _Out, cmd: AdminCommand) -> None:
    if o.s.state is S.STOP:
        _begin_start(o, None)
    elif cmd.identity is None or not _maxloop_hit(o):
        _stop(o, "stopstart", then_start=True)


def _cmd_forcestop(o: _Out, cmd: AdminCommand) -> None:
    if o.s.state is S.STOP:
        o.note(C.IGNORED, "the module is already stopped")
        return
    _forcestop(o)


def _cmd_restart(o: _Out, cmd: AdminCommand) -> None:
    if o.s.state not in (S.ALONE, S.PRIM, S.SECOND) or o.s.activity is not A.IDLE:
        _refuse(
            o, cmd, f"restart needs ALONE, PRIM or SECOND Ready, not {o.s.state} {o.s.readiness}"
        )
    elif cmd.identity is None or not _maxloop_hit(o):
        _restart(o)


def _peer_in_sync(s: MirrorState) -> bool:
    """The peer is a SECOND (or a starter about to be one) holding exactly my data."""
    peer = s.peer
    if not peer.known or peer.stopping or peer.generation.current != s.data.current:
        return False
    joining = peer.state is S.WAIT and peer.readiness is R.TRANSIENT
    return peer.state is S.SECOND or joining


def _cmd_swap(o: _Out, cmd: AdminCommand) -> None:
    s, peer = o.s, o.s.peer
    stable = s.activity is A.IDLE and s.swap is SwapPhase.NONE
    if stable and s.state is S.PRIM and peer.state is S.SECOND and peer.readiness is R.READY:
        if not _peer_in_sync(s):
            _refuse(o, cmd, "the SECOND does not hold this node's current data")
            return
        o.set(swap=SwapPhase.REQUESTED, swap_nosync=cmd.nosync)
        o.note(C.SWAP_REQUESTED, "Swap requested: waiting for the SECOND to accept")
        _publish(o)
    elif stable and s.state is S.SECOND and peer.state is S.PRIM and peer.readiness is R.READY:
        _accept_swap(o)
    else:
        _refuse(
            o,
            cmd,
            f"swap needs PRIM Ready and SECOND Ready (local {s.state} {s.readiness}, "
            f"{peer.describe()})",
        )


def _cmd_failover(o: _Out, cmd: AdminCommand) -> None:
    on = cmd.kind is AdminKind.FAILOVER_ON
    o.set(failover=on)
    o.note(C.SETTING, f"Resource usersetting.failover set to {'on' if on else 'off'} by admin")


def _cmd_resetloop(o: _Out, cmd: AdminCommand) -> None:
    o.set(loop_times=())
    o.note(C.SETTING, "maxloop counter reset")


_ADMIN: dict[AdminKind, Callable[[_Out, AdminCommand], None]] = {
    AdminKind.START: _cmd_start,
    AdminKind.STOP: _cmd_stop,
    AdminKind.RESTART: _cmd_restart,
    AdminKind.STOPSTART: _cmd_stopstart,
    AdminKind.FORCESTOP: _cmd_forcestop,
    AdminKind.SWAP: _cmd_swap,
    AdminKind.PRIM: _cmd_prim,
    AdminKind.SECOND: _cmd_second,
    AdminKind.PRIMFORCE: _cmd_prim,
    AdminKind.FAILOVER_ON: _cmd_failover,
    AdminKind.FAILOVER_OFF: _cmd_failover,
    AdminKind.RESETLOOP: _cmd_resetloop,
}
# Commands that act at once even while a transition runs (they start no transition of their own,
# or, for forcestop, take over the running one).
_ANYTIME = frozenset(
    {AdminKind.FORCESTOP, AdminKind.FAILOVER_ON, AdminKind.FAILOVER_OFF, AdminKind.RESETLOOP}
)
_QUEUED = frozenset({AdminKind.STOP, AdminKind.STOPSTART})


def _admin(o: _Out, cmd: AdminCommand) -> None:
    if cmd.identity is None:
        # SafeKit: any administrator command without -i resets the maxloop counter.
        o.set(loop_times=())
    o.note(C.ACTION, cmd.describe())
    _ADMIN[cmd.kind](o, cmd)


def _admin_busy(o: _Out, cmd: AdminCommand) -> None:
    if cmd.kind in _ANYTIME:
        _admin(o, cmd)
    elif cmd.kind in _QUEUED:
        o.set(pending=cmd)
        o.note(C.QUEUED, f"{cmd.describe()}: queued until the running transition ends")
    else:
        kind = o.s.transition.kind.name if o.s.transition else "?"
        _refuse(o, cmd, f"transition {kind} in progress; retry when it ends, or use forcestop")


# ---------------------------------------------------------------------------------------------
# Detector actions
# ---------------------------------------------------------------------------------------------


def _checker(o: _Out, c: CheckerAction) -> None:
    o.note(C.ACTION, c.describe())
    state = o.s.state
    if c.kind is CheckerKind.NOACTION:
        return
    if state is S.STOP:
        o.note(C.IGNORED, "the module is stopped")
        return
    if c.kind is CheckerKind.STOP:
        _stop(o, "stop")
        return
    running = state in (S.ALONE, S.PRIM, S.SECOND)
    if c.kind is CheckerKind.WAIT and o.s.wait_reason is WaitReason.RESOURCE:
        # The failover machine repeats its verdict while the resource is down: one wait counts.
        o.note(C.IGNORED, "already waiting for a resource", None)
        return
    if c.kind is CheckerKind.RESTART and not (running and o.s.activity is A.IDLE):
        o.note(C.IGNORED, f"restart ignored in {state} {o.s.readiness}")
        return
    if _maxloop_hit(o):
        return
    o.set(rule=c.rule or c.identity)
    if c.kind is CheckerKind.RESTART:
        _restart(o)
    elif c.kind is CheckerKind.STOPSTART:
        if c.rule is not None:
            o.note(C.CHECKER, f"Transition STOPSTART from failover rule {c.rule}", LogLevel.INFO)
        _stop(o, "stopstart", then_start=True)
    elif running and o.s.swap is not SwapPhase.RELEASED:
        if c.rule is not None:
            o.note(C.CHECKER, f"Transition WAIT_TR from failover rule {c.rule}", LogLevel.INFO)
        _leave(o, "stopwait", Finish.PARKED, wait_reason=WaitReason.RESOURCE)
    else:
        _enter(o, S.WAIT, R.NOT_READY, A.BLOCKED, wait_reason=WaitReason.RESOURCE)
        o.note(C.PARKED, WaitReason.RESOURCE.message)


def _checker_busy(o: _Out, c: CheckerAction) -> None:
    if c.kind is CheckerKind.STOP:
        o.set(pending=c)
        o.note(C.QUEUED, f"{c.describe()}: queued until the running transition ends")
    else:
        # Detectors repeat their verdict every period: acting on the next one is enough.
        o.note(C.IGNORED, f"{c.describe()}: ignored while a transition runs", LogLevel.INFO)


# ---------------------------------------------------------------------------------------------
# Peer news
# ---------------------------------------------------------------------------------------------


def _update_peer(o: _Out, event: HeartbeatReceived | PeerStopAnnounced | Tick) -> None:
    prev = o.s.peer
    if isinstance(event, HeartbeatReceived):
        if prev.gone is PeerGone.STOPPED and event.state in PRIMARY_STATES:
            # A datagram overtaken by the stop announcement: the peer passes through WAIT before
            # it can be primary again, so a primary claim right after "stopped" is stale.
            o.note(C.STALE, f"stale heartbeat ({event.state}) after the peer's stop ignored", None)
            return
        view = PeerView(
            state=event.state,
            readiness=event.readiness,
            generation=event.generation,
            stopping=event.stopping,
            swap=event.swap,
            last_seen=o.now,
            gone=None,
        )
        if (view.state, view.readiness) != (prev.state, prev.readiness):
            o.note(C.PEER_UPDATE, view.describe())
            o.peer_changed = True
        o.set(peer=view)
    elif isinstance(event, PeerStopAnnounced):
        o.set(peer=PeerView(generation=prev.generation, gone=PeerGone.STOPPED))
        o.note(C.PEER_STOPPED, "Remote state UNKNOWN Unknown (remote stop)")
        o.peer_changed = True
    elif prev.known and prev.last_seen is not None and o.now - prev.last_seen >= o.cfg.timeout:
        o.set(peer=PeerView(generation=prev.generation, gone=PeerGone.TIMEOUT))
        o.note(C.PEER_LOST, f"Remote state UNKNOWN Unknown (no heartbeat for {o.cfg.timeout:g}s)")
        o.peer_changed = True


def _observe(o: _Out, event: HeartbeatReceived | PeerStopAnnounced | Tick) -> None:
    _update_peer(o, event)
    _evaluate(o)


def _note_peer(o: _Out, event: HeartbeatReceived | PeerStopAnnounced | Tick) -> None:
    _update_peer(o, event)


def _eval_probing(o: _Out) -> None:
    s = o.s
    # Without news of the peer, wait one heartbeat timeout before concluding it is not running
    # (unless it told us it stopped).
    silent = not s.peer.known and s.peer.gone is not PeerGone.STOPPED
    if silent and o.now - s.since < o.cfg.timeout:
        return
    _apply_choice(o, choose_role(s.data, s.peer, o.cfg, failover=s.failover))


def _eval_blocked(o: _Out) -> None:
    if o.s.wait_reason is WaitReason.RESOURCE:
        return
    _apply_choice(o, choose_role(o.s.data, o.s.peer, o.cfg, failover=o.s.failover))


def _eval_alone(o: _Out) -> None:
    s, peer = o.s, o.s.peer
    if peer.known and peer.state in PRIMARY_STATES and not peer.stopping:
        _split_brain(o)
    elif (
        peer.state is S.SECOND
        and peer.readiness is R.READY
        and not peer.stopping
        and peer.generation.current == s.data.current
    ):
        _persist(o, paired(s.data, S.PRIM))
        o.note(C.PEER_JOINED, f"{o.cfg.peer_node} is SECOND Ready: replication is synchronous")
        _run(
            o,
            TransitionKind.PEER_JOINED,
            _script_plan(o, ScriptRow.ALONE_TO_PRIM, "start"),
            Finish.READY,
        )


def _split_brain(o: _Out) -> None:
    if not split_brain_yields(o.s.data, o.s.peer.generation, o.cfg):
        level = LogLevel.EVENT if o.peer_changed else None
        o.note(C.SPLIT_BRAIN_STAY, "Split brain recovery: staying alone", level)
        return
    o.note(C.SPLIT_BRAIN_YIELD, "Split brain recovery: exiting alone")
    _persist(o, left_pair(o.s.data))
    steps = _script_plan(
        o, ScriptRow.ALONE_TO_SECOND, "start", release=_PRIMARY_OFF, acquire=_SECONDARY_ON
    )
    _run(
        o,
        TransitionKind.YIELD,
        steps,
        Finish.SECOND_ENTERED,
        resync=resync_kind(o.s.data, o.s.peer.generation),
        keep_aside=f"split brain: {o.cfg.peer_node} stayed primary",
    )


def _eval_prim(o: _Out) -> None:
    s, peer, cfg = o.s, o.s.peer, o.cfg
    if not _peer_in_sync(s):
        if (
            peer.known
            and peer.state in PRIMARY_STATES
            and compare(s.data, peer.generation) is SyncVerdict.LOCAL_BEHIND
        ):
            # The peer took over while this node could not be heard (hung, or cut off) and wrote
            # since: this node must not start a generation of its own. It passes through ALONE
            # with its data unchanged, where the split-brain rule makes it yield to the peer.
            o.note(
                C.PEER_LEFT,
                f"{o.cfg.peer_node} took over while this node was unreachable "
                f"({peer.describe()}, newer data): leaving PRIM",
            )
            steps = _script_plan(o, ScriptRow.PRIM_TO_ALONE, "start")
            _run(o, TransitionKind.PEER_LEFT, steps, Finish.READY, swap=SwapPhase.NONE)
            return
        if not peer.known:
            why = f"peer lost ({(peer.gone or PeerGone.TIMEOUT).value})"
        elif peer.generation.current != s.data.current:
            why = "peer out of date"
        else:
            why = f"peer left the pair ({peer.describe()})"
        _solo(o, GenerationOrigin.PRIMARY)
        o.note(C.PEER_LEFT, f"{why}: continuing ALONE")
        steps = _script_plan(o, ScriptRow.PRIM_TO_ALONE, "start")
        _run(o, TransitionKind.PEER_LEFT, steps, Finish.READY, swap=SwapPhase.NONE)
        return
    if peer.swap is SwapPhase.ACCEPTED and peer.readiness is R.READY:
        o.note(C.SWAP_RELEASING, "Begin of Swap")
        steps = _script_plan(
            o, ScriptRow.PRIM_TO_SECOND, "stop", release=_PRIMARY_OFF, part=Part.UNTIL_RELEASE
        )
        _run(
            o,
            TransitionKind.SWAP_RELEASE,
            steps,
            Finish.SWAP_RELEASED,
            shown=S.PRIM,
            swap=SwapPhase.RELEASING,
        )
    elif (
        s.swap is SwapPhase.NONE
        and cfg.defaultprim == cfg.peer_node
        and peer.state is S.SECOND
        and peer.readiness is R.READY
    ):
        o.set(swap=SwapPhase.REQUESTED, swap_nosync=False)
        o.note(C.DEFAULTPRIM_SWAP, "Transition SWAP from defaultprim")
        _publish(o)


def _accept_swap(o: _Out) -> None:
    _enter(o, S.SECOND, R.READY, A.HANDOVER, swap=SwapPhase.ACCEPTED)
    o.note(C.SWAP_ACCEPTED, "Swap accepted: waiting for the PRIM to release its role")


def _take_over(o: _Out, gone: PeerGone) -> None:
    if o.s.failover:
        o.note(C.FAILOVER, f"Action alone called by heart: {gone.value}")
        _solo(o, GenerationOrigin.FAILOVER)
        steps = _script_plan(
            o, ScriptRow.SECOND_TO_ALONE, "start", release=_SECONDARY_OFF, acquire=_PRIMARY_ON
        )
        _run(o, TransitionKind.FAILOVER, steps, Finish.READY, swap=SwapPhase.NONE)
        return
    o.note(C.FAILOVER_OFF, "Failover-off configured")
    o.note(C.FAILOVER_OFF, "Action stopstart called by failover-off")
    o.note(C.FAILOVER_OFF, "Transition STOPSTART from failover-off")
    o.set(rule="failover-off", swap=SwapPhase.NONE, activity=A.IDLE)
    _leave(o, "stopstart", Finish.LEFT, then_start=True)


def _eval_second(o: _Out) -> None:
    s, peer = o.s, o.s.peer
    if not peer.known:
        _take_over(o, peer.gone or PeerGone.TIMEOUT)
    elif peer.swap in (SwapPhase.RELEASING, SwapPhase.RELEASED):
        _accept_swap(o)
        _eval_handover(o)
    elif peer.state not in PRIMARY_STATES:
        if not peer.stopping:
            _take_over(o, PeerGone.STOPPED)
    elif peer.stopping:
        return
    elif peer.swap is SwapPhase.REQUESTED:
        _accept_swap(o)
    elif peer.generation.current != s.data.current:
        o.note(C.RESYNC_STARTED, "The primary moved to a new data generation: resynchronizing")
        _start_resync(o, resync_kind(s.data, peer.generation))


def _eval_resyncing(o: _Out) -> None:
    peer = o.s.peer
    if peer.known and peer.state in PRIMARY_STATES and not peer.stopping:
        return
    reason = WaitReason.INCONSISTENT if o.s.data.interrupted_resync else WaitReason.NOT_UPTODATE
    o.note(
        C.RESYNC_ABANDONED,
        f"Primary gone during reintegration ({peer.describe()}): "
        "this node is not up to date and does not take over",
    )
    _leave(o, "stopwait", Finish.PARKED, wait_reason=reason)


def _eval_handover(o: _Out) -> None:
    s, peer = o.s, o.s.peer
    if s.swap is SwapPhase.ACCEPTED:
        if peer.known and peer.swap is SwapPhase.RELEASED:
            _persist(o, paired(s.data, S.PRIM))
            o.note(C.SWAP_TAKING, "Swap: the PRIM released its role, taking it")
            steps = _script_plan(
                o, ScriptRow.SECOND_TO_PRIM, "start", release=_SECONDARY_OFF, acquire=_PRIMARY_ON
            )
            _run(o, TransitionKind.SWAP_TAKE, steps, Finish.READY, swap=SwapPhase.TAKING)
        elif not peer.known or peer.state not in PRIMARY_STATES or peer.stopping:
            o.note(C.SWAP_CANCELLED, f"Swap cancelled: {peer.describe()}")
            _enter(o, S.SECOND, R.READY, A.IDLE, swap=SwapPhase.NONE)
            _eval_second(o)
        return
    # This node released PRIM and waits for the peer to take it.
    if peer.known and peer.state is S.PRIM:
        kind = ResyncKind.NONE if s.swap_nosync else resync_kind(s.data, peer.generation)
        o.note(C.SWAP_FINISHING, f"Swap: {o.cfg.peer_node} is PRIM, becoming SECOND")
        steps = _script_plan(
            o,
            ScriptRow.PRIM_TO_SECOND,
            "start",
            release=_PRIMARY_OFF,
            acquire=_SECONDARY_ON,
            part=Part.AFTER_RELEASE,
        )
        _run(o, TransitionKind.SWAP_FINISH, steps, Finish.SECOND_ENTERED, resync=kind)
    elif not (peer.known and peer.state is S.SECOND and peer.swap is SwapPhase.ACCEPTED):
        o.note(C.SWAP_CANCELLED, f"Swap interrupted: {peer.describe()}")
        reason = WaitReason.NOT_UPTODATE
        _enter(o, S.WAIT, R.NOT_READY, A.BLOCKED, swap=SwapPhase.NONE, wait_reason=reason)
        _eval_blocked(o)


_EVALUATORS: dict[tuple[ModuleState, Activity], Callable[[_Out], None]] = {
    (S.WAIT, A.PROBING): _eval_probing,
    (S.WAIT, A.BLOCKED): _eval_blocked,
    (S.ALONE, A.IDLE): _eval_alone,
    (S.PRIM, A.IDLE): _eval_prim,
    (S.SECOND, A.IDLE): _eval_second,
    (S.SECOND, A.RESYNCING): _eval_resyncing,
    (S.SECOND, A.HANDOVER): _eval_handover,
}

# ---------------------------------------------------------------------------------------------
# Scripts, resync, replication and wake-up events
# ---------------------------------------------------------------------------------------------


def _script_exited(o: _Out, e: ScriptExited) -> None:
    transition = o.s.transition
    assert transition is not None
    head = transition.steps[0] if transition.steps else None
    matches = (isinstance(head, RunScript) and head.name == e.script and head.call is e.call) or (
        isinstance(head, AwaitExit) and head.name == e.script
    )
    if not matches:
        raise IllegalEventError(
            f"mirror core: {e!r} in state {o.s.state} {o.s.readiness} (transition "
            f"{transition.kind.name}), but the step in progress is {head!r}"
        )
    call = " force" if e.call.value == "force" else ""
    if e.timed_out:
        o.note(C.SCRIPT_FAILED, f"Script {e.script}{call} timed out and was killed")
    elif e.exit_code != 0:
        code = "killed" if e.exit_code is None else f"exit code {e.exit_code}"
        o.note(C.SCRIPT_FAILED, f"Script {e.script}{call} failed ({code})")
    else:
        o.note(C.SCRIPT_EXITED, f"Script {e.script}{call} ended", None)
    o.set(transition=replace(transition, steps=transition.steps[1:]))
    _advance(o)


def _resync_done(o: _Out, e: ResyncDone) -> None:
    _persist(o, resync_finished(o.s.data, e.generation))
    o.note(C.RESYNC_DONE, "Reintegration ended (synchronize)")
    o.note(C.RESYNC_DONE, "Uptodate replicated file system", LogLevel.INFO)
    _enter(o, S.SECOND, R.READY, A.IDLE)
    _settle(o)


def _resync_failed(o: _Out, e: ResyncFailed) -> None:
    o.note(C.RESYNC_FAILED, f"Reintegration failed: {e.reason}")
    _checker(o, CheckerAction(CheckerKind.STOPSTART, identity="reintegre"))


def _out_of_date(o: _Out, e: PeerOutOfDate) -> None:
    if o.s.replication is not ReplicationRole.PRIMARY:
        o.note(C.STALE, f"late replication timeout ignored in {o.s.state} {o.s.readiness}", None)
        return
    o.note(C.OUT_OF_DATE, f"Replication to {o.cfg.peer_node} failed ({e.reason}): peer out of date")
    _solo(o, GenerationOrigin.PRIMARY)
    _publish(o)
    if o.s.activity is A.IDLE:
        _evaluate(o)


def _wakeup(o: _Out, e: WaitCleared) -> None:
    if o.s.wait_reason is not WaitReason.RESOURCE:
        o.note(C.IGNORED, "no wait rule was holding this node", None)
        return
    o.note(C.WAKEUP, "Action wakeup from failover rule Implicit_wakeup")
    _enter(o, S.WAIT, R.TRANSIENT, A.PROBING, wait_reason=None, rule=None)
    _evaluate(o)


def _ignore(o: _Out, e: Event) -> None:
    o.note(C.IGNORED, f"{type(e).__name__} ignored in {o.s.state} {o.s.readiness}", None)


def _ignore_stale(o: _Out, e: Event) -> None:
    o.note(C.STALE, f"late {type(e).__name__} ignored in {o.s.state} {o.s.readiness}", None)


def _illegal(o: _Out, e: Event) -> None:  # pragma: no cover - decide() raises before this
    raise IllegalEventError(f"mirror core: {e!r} is illegal in {o.s.state}")


_HANDLERS: dict[str, Handler] = {
    "admin": _admin,
    "admin_busy": _admin_busy,
    "checker": _checker,
    "checker_busy": _checker_busy,
    "observe": _observe,
    "note": _note_peer,
    "script_exited": _script_exited,
    "resync_done": _resync_done,
    "resync_failed": _resync_failed,
    "out_of_date": _out_of_date,
    "wakeup": _wakeup,
    IGNORE: _ignore,
    STALE: _ignore_stale,
    ILLEGAL: _illegal,
}

# ---------------------------------------------------------------------------------------------
# Rendering the data for docs/design/mirror-automaton.md
# ---------------------------------------------------------------------------------------------


def render_table() -> str:
    """Markdown rendering of :data:`TRANSITIONS`, the transitions and the script automaton.

    ``docs/design/mirror-automaton.md`` embeds this text; a test keeps the two identical.
    """
    lines = ["### Event table: (state, activity) x event -> handler", ""]
    header = "| state | activity | " + " | ".join(t.__name__ for t in EVENT_TYPES) + " |"
    lines += [header, "|" + "---|" * (len(EVENT_TYPES) + 2)]
    for (state, activity), row in TRANSITIONS.items():
        cells = " | ".join(f"`{row[t]}`" for t in EVENT_TYPES)
        lines.append(f"| {state} | {activity.value} | {cells} |")
    lines += ["", "### State diagram (from `TransitionKind`)", "", "```mermaid", "stateDiagram-v2"]
    lines.append("    [*] --> STOP")
    for kind in TransitionKind:
        lines.append(f"    {kind.origin} --> {kind.target} : {kind.name} ({kind.trigger})")
    lines += [
        "    WAIT --> WAIT : probing, then blocked (not up to date, waiting for the peer or a resource)",
        "```",
        "",
        "### Script automaton (`SCRIPT_TABLE`, reference §5.3)",
        "",
        "| transition | scripts, in order |",
        "|---|---|",
    ]
    for script_row, calls in SCRIPT_TABLE.items():
        names = ", ".join(
            f"`{name}{' force' if call.value == 'force' else ''}`" for name, call in calls
        )
        lines.append(f"| {script_row.label} | {names} |")
    lines += ["", "### Decision record codes (`RecordCode`)", ""]
    lines.append(", ".join(f"`{code}`" for code in RecordCode))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m hakit.core.mirror` prints the tables
    print(render_table(), end="")
