"""Immutable inputs and outputs of the mirror decision core: settings, state snapshot, decision."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from hakit.core.actions import Action, ReplicationRole
from hakit.core.events import AdminCommand, CheckerAction, SwapPhase
from hakit.core.generations import DataGeneration, ResyncKind
from hakit.core.scripts import ALL_SCRIPTS, ScriptRow, Step
from hakit.core.states import ModuleState, Readiness
from hakit.errors import HakitError, UserConfigError

S = ModuleState

#: ``defaultprim`` values that are not node names.
DEFAULTPRIM_KEYWORDS = ("alone", "lastprim")


@dataclass(frozen=True)
class MirrorSettings:
    """What the mirror core needs from the configuration (built by the engine from userconfig.xml).

    Durations are seconds. ``scripts`` lists the scripts present in the module's ``bin/``;
    ``incarnation`` is a random token drawn once per engine start (names new data generations).
    """

    local_node: str
    peer_node: str
    pulse: float = 0.7
    timeout: float = 30.0
    failover: bool = True
    defaultprim: str = "alone"
    maxloop: int = 3
    loop_interval: float = 24 * 3600.0
    scripts: frozenset[str] = ALL_SCRIPTS
    incarnation: str = "0"

    def __post_init__(self) -> None:
        where = "mirror settings"
        if not self.local_node or not self.peer_node or self.local_node == self.peer_node:
            raise UserConfigError(
                f"{where}: a mirror module needs two distinct nodes, got "
                f"{self.local_node!r} and {self.peer_node!r}"
            )
        if self.pulse <= 0 or self.timeout < 3 * self.pulse:
            raise UserConfigError(
                f"{where}: <heart> pulse={self.pulse}s timeout={self.timeout}s: timeout must be at "
                "least 3 pulses (several heartbeats may be lost before the peer is declared down)"
            )
        nodes = (self.local_node, self.peer_node)
        if self.defaultprim not in DEFAULTPRIM_KEYWORDS and self.defaultprim not in nodes:
            raise UserConfigError(
                f"{where}: <service defaultprim={self.defaultprim!r}>: expected alone, lastprim or "
                f"one of the module's nodes {nodes[0]!r}, {nodes[1]!r}"
            )
        if self.maxloop < 0 or self.loop_interval < 0:
            raise UserConfigError(
                f"{where}: <service maxloop={self.maxloop} loop_interval={self.loop_interval}>: "
                "must not be negative"
            )
        unknown = sorted(self.scripts - ALL_SCRIPTS)
        if unknown:
            raise UserConfigError(
                f"{where}: scripts {unknown} are not part of the script automaton "
                f"(known: {sorted(ALL_SCRIPTS)})"
            )


class Activity(enum.Enum):
    """What the node is doing inside its (state, readiness); the second key of the table."""

    IDLE = "idle"  # stable: STOP NotReady, or ALONE / PRIM / SECOND Ready
    SCRIPTS = "scripts"  # a transition runs its plan (one script at a time)
    PROBING = "probing"  # WAIT Transient: started, learning whether and how the peer runs
    BLOCKED = "blocked"  # WAIT NotReady: waiting for the peer, an administrator or a resource
    RESYNCING = "resyncing"  # SECOND Transient: copying from the primary
    HANDOVER = "handover"  # swap: waiting for the peer's next handshake step


class PeerGone(enum.Enum):
    """Why the peer's state is unknown."""

    NEVER_SEEN = "never seen"
    TIMEOUT = "no heartbeat"
    STOPPED = "remote stop"


@dataclass(frozen=True)
class PeerView:
    """What this node knows of its peer (from heartbeats). ``state`` None means UNKNOWN."""

    state: ModuleState | None = None
    readiness: Readiness | None = None
    generation: DataGeneration = field(default_factory=DataGeneration)
    stopping: bool = False
    swap: SwapPhase = SwapPhase.NONE
    last_seen: float | None = None
    gone: PeerGone | None = PeerGone.NEVER_SEEN

    @property
    def known(self) -> bool:
        """True while the peer's state is known (a heartbeat came within the timeout)."""
        return self.state is not None

    def describe(self) -> str:
        """SafeKit's wording: ``Remote state PRIM Ready`` / ``Remote state UNKNOWN Unknown``."""
        if self.state is None or self.readiness is None:
            return "Remote state UNKNOWN Unknown"
        return f"Remote state {self.state} {self.readiness}"


class WaitReason(enum.Enum):
    """Why a node sits in WAIT NotReady: (failover rule shown, message, hint)."""

    NOT_UPTODATE = (
        "rfs_notuptodate_server",
        "Data may be not uptodate for replicated directories (wait for the start of the remote "
        "server)",
        "If you are sure that this server has valid data, run hakit prim to force start as primary",
    )
    INCONSISTENT = (
        "rfs_notuptodate_server",
        "Data may be inconsistent for replicated directories (stopped during reintegration)",
        "If you are sure that this server has valid data, run hakit primforce to force start as "
        "primary",
    )
    UNRELATED = (
        "rfs_notuptodate_server",
        "Data of the two nodes have no common history (different installations or lost history)",
        "Run hakit prim on the node whose data must be kept; the other one keeps its files aside "
        "and gets a full copy",
    )
    RESOURCE = (
        "",
        "Waiting for a resource (failover rule wait)",
        "The module resumes start-up by itself when no wait rule holds any more",
    )

    @property
    def rule(self) -> str:
        """Failover rule name shown in the console."""
        return self.value[0]

    @property
    def message(self) -> str:
        """SafeKit's log message (verbatim where SafeKit has one)."""
        return self.value[1]

    @property
    def hint(self) -> str:
        """What the administrator can do."""
        return self.value[2]


class Finish(enum.Enum):
    """What happens when a transition's plan is complete."""

    READY = "ready"  # settle in ``target`` Ready
    PROBE = "probe"  # start-up scripts done: learn the peer, or apply the start intent
    SECOND_ENTERED = "second_entered"  # resync if needed, else SECOND Ready
    SWAP_RELEASED = "swap_released"  # old primary released its role: wait for the peer to take it
    LEFT = "left"  # X -> WAIT leg of a stop done: run the WAIT -> STOP leg
    STOPPED = "stopped"  # STOP NotReady (and start again after a stopstart)
    PARKED = "parked"  # WAIT NotReady (checker wait, resync interrupted)


class TransitionKind(enum.Enum):
    """Every transition the core runs: (script row, origin, target, trigger). The state diagram in
    ``docs/design/mirror-automaton.md`` is generated from these."""

    START = (ScriptRow.STOP_TO_WAIT, S.STOP, S.WAIT, "start / prim / second")
    ENTER_ALONE = (
        ScriptRow.WAIT_TO_ALONE,
        S.WAIT,
        S.ALONE,
        "data up to date, peer absent or behind",
    )
    ENTER_PRIM = (ScriptRow.WAIT_TO_PRIM, S.WAIT, S.PRIM, "both start with the same data")
    ENTER_SECOND = (ScriptRow.WAIT_TO_SECOND, S.WAIT, S.SECOND, "peer is primary")
    PEER_JOINED = (ScriptRow.ALONE_TO_PRIM, S.ALONE, S.PRIM, "peer SECOND Ready")
    PEER_LEFT = (ScriptRow.PRIM_TO_ALONE, S.PRIM, S.ALONE, "peer lost / stopped / out of date")
    FAILOVER = (
        ScriptRow.SECOND_TO_ALONE,
        S.SECOND,
        S.ALONE,
        "primary lost or stopped, failover on",
    )
    YIELD = (ScriptRow.ALONE_TO_SECOND, S.ALONE, S.SECOND, "split brain, exiting alone")
    SWAP_RELEASE = (
        ScriptRow.PRIM_TO_SECOND,
        S.PRIM,
        S.SECOND,
        "swap, release once the peer accepted",
    )
    SWAP_FINISH = (ScriptRow.PRIM_TO_SECOND, S.SECOND, S.SECOND, "swap, the peer took PRIM")
    SWAP_TAKE = (ScriptRow.SECOND_TO_PRIM, S.SECOND, S.PRIM, "swap, the peer released PRIM")
    RESTART_ALONE = (ScriptRow.RESTART_ALONE, S.ALONE, S.ALONE, "restart")
    RESTART_PRIM = (ScriptRow.RESTART_PRIM, S.PRIM, S.PRIM, "restart")
    RESTART_SECOND = (ScriptRow.RESTART_SECOND, S.SECOND, S.SECOND, "restart")
    LEAVE_ALONE = (ScriptRow.ALONE_TO_WAIT, S.ALONE, S.WAIT, "stop / stopstart / wait")
    LEAVE_PRIM = (ScriptRow.PRIM_TO_WAIT, S.PRIM, S.WAIT, "stop / stopstart / wait")
    LEAVE_SECOND = (
        ScriptRow.SECOND_TO_WAIT,
        S.SECOND,
        S.WAIT,
        "stop / stopstart / wait / failover off",
    )
    FINISH_STOP = (ScriptRow.WAIT_TO_STOP, S.WAIT, S.STOP, "stop, after the leave leg")
    FORCESTOP = (ScriptRow.WAIT_TO_STOP, S.WAIT, S.STOP, "forcestop, from any state")

    @property
    def row(self) -> ScriptRow:
        """The script automaton row whose scripts this transition runs."""
        return self.value[0]

    @property
    def origin(self) -> ModuleState:
        """State the transition leaves."""
        return self.value[1]

    @property
    def target(self) -> ModuleState:
        """State the transition reaches."""
        return self.value[2]

    @property
    def trigger(self) -> str:
        """What causes it (for the generated diagram)."""
        return self.value[3]


@dataclass(frozen=True)
class Transition:
    """A transition in progress: the remaining plan (its head is the script running) and what to
    do once it is complete."""

    kind: TransitionKind
    steps: tuple[Step, ...]
    finish: Finish
    target: ModuleState
    intent: AdminCommand | None = None
    resync: ResyncKind = ResyncKind.NONE
    then_start: bool = False
    wait_reason: WaitReason | None = None
    action: str = "start"
    keep_aside: str = ""


@dataclass(frozen=True)
class MirrorState:
    """One immutable snapshot of a mirror module on this node."""

    state: ModuleState = ModuleState.STOP
    readiness: Readiness = Readiness.NOT_READY
    activity: Activity = Activity.IDLE
    since: float = 0.0
    data: DataGeneration = field(default_factory=DataGeneration)
    peer: PeerView = field(default_factory=PeerView)
    transition: Transition | None = None
    pending: AdminCommand | CheckerAction | None = None
    wait_reason: WaitReason | None = None
    swap: SwapPhase = SwapPhase.NONE
    swap_nosync: bool = False
    stopping: bool = False
    failover: bool = True
    loop_times: tuple[float, ...] = ()
    rule: str | None = None
    replication: ReplicationRole | None = None


def initial_state(settings: MirrorSettings, data: DataGeneration) -> MirrorState:
    """The state of a module when its engine starts: STOP, with the persisted generation record."""
    return MirrorState(data=data, failover=settings.failover)


class RecordCode(enum.StrEnum):
    """Stable codes of decision records (tests, API and console rely on these, not on prose)."""

    IGNORED = "ignored"
    STALE = "stale"
    NO_CHANGE = "no_change"
    REFUSED = "refused"
    QUEUED = "queued"
    SETTING = "setting"
    PEER_UPDATE = "peer_update"
    PEER_LOST = "peer_lost"
    PEER_STOPPED = "peer_stopped"
    START = "start"
    PROBING = "probing"
    WAITING = "waiting"
    ENTER_ALONE = "enter_alone"
    ENTER_PRIM = "enter_prim"
    ENTER_SECOND = "enter_second"
    RESYNC_STARTED = "resync_started"
    RESYNC_DONE = "resync_done"
    RESYNC_FAILED = "resync_failed"
    RESYNC_ABANDONED = "resync_abandoned"
    PEER_JOINED = "peer_joined"
    PEER_LEFT = "peer_left"
    OUT_OF_DATE = "peer_out_of_date"
    FAILOVER = "failover"
    FAILOVER_OFF = "failover_off"
    SPLIT_BRAIN_YIELD = "split_brain_yield"
    SPLIT_BRAIN_STAY = "split_brain_stay"
    SWAP_REQUESTED = "swap_requested"
    SWAP_ACCEPTED = "swap_accepted"
    SWAP_RELEASING = "swap_releasing"
    SWAP_RELEASED = "swap_released"
    SWAP_TAKING = "swap_taking"
    SWAP_FINISHING = "swap_finishing"
    SWAP_CANCELLED = "swap_cancelled"
    DEFAULTPRIM_SWAP = "defaultprim_swap"
    RESTART = "restart"
    STOPPING = "stopping"
    FORCESTOP = "forcestop"
    STOPPED = "stopped"
    PARKED = "parked"
    WAKEUP = "wakeup"
    MAXLOOP = "maxloop"
    SCRIPT_EXITED = "script_exited"
    SCRIPT_FAILED = "script_failed"
    READY = "ready"
    PRIM_ABORTED = "prim_aborted"
    CHECKER = "checker"
    ACTION = "action"
    NEW_GENERATION = "new_generation"


#: Codes that give context (who asked, what the peer said) rather than the decision's outcome.
CONTEXT_CODES = frozenset(
    {
        RecordCode.ACTION,
        RecordCode.PEER_UPDATE,
        RecordCode.NEW_GENERATION,
        RecordCode.SCRIPT_EXITED,
        RecordCode.NO_CHANGE,
    }
)


@dataclass(frozen=True)
class DecisionRecord:
    """Why a decision was taken: the main ``code`` and message, plus every step's code."""

    code: RecordCode
    message: str
    codes: tuple[RecordCode, ...] = ()


@dataclass(frozen=True)
class Decision:
    """The outcome of one event: the new snapshot, the actions to perform in order, the record."""

    state: MirrorState
    actions: tuple[Action, ...]
    record: DecisionRecord


class IllegalEventError(HakitError):
    """An event arrived in a state where it cannot happen: a bug in the executor, not the user."""
