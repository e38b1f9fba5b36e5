"""Events fed to the decision cores by the executor (frozen dataclasses, no behaviour).

The executor turns everything that happens around a module into one of these: an administrator
command, a detector verdict, a datagram from the peer, the passing of time, the end of a script or
of a resync. The core never looks at anything else.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hakit.core.generations import DataGeneration, ResyncKind
from hakit.core.states import ModuleState, Readiness


class AdminKind(enum.Enum):
    """Administrative commands (``hakit <command> -m AM``)."""

    START = "start"
    STOP = "stop"
    RESTART = "restart"
    STOPSTART = "stopstart"
    FORCESTOP = "forcestop"
    SWAP = "swap"
    PRIM = "prim"
    SECOND = "second"
    PRIMFORCE = "primforce"
    FAILOVER_ON = "failover on"
    FAILOVER_OFF = "failover off"
    RESETLOOP = "resetloop"


class CheckerKind(enum.Enum):
    """What a detector (errd, checker, failover rule, a script's ``stop -i``) asks for."""

    RESTART = "restart"
    STOPSTART = "stopstart"
    STOP = "stop"
    WAIT = "wait"
    NOACTION = "noaction"


class SwapPhase(enum.Enum):
    """Where a node is in the swap handshake (carried in its heartbeats).

    The primary asks (REQUESTED) or the secondary offers (ACCEPTED); the primary releases its
    role only once the secondary has ACCEPTED (RELEASING, then RELEASED once the application is
    stopped and the virtual IP is down); the secondary then promotes itself (TAKING).
    """

    NONE = "none"
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    RELEASING = "releasing"
    RELEASED = "released"
    TAKING = "taking"


@dataclass(frozen=True)
class AdminCommand:
    """An administrator command. ``identity`` (``-i``) marks a detector-originated command."""

    kind: AdminKind
    fullsync: bool = False
    nosync: bool = False
    identity: str | None = None
    origin: str = "admin"

    def describe(self) -> str:
        """SafeKit's wording: ``Action start called by admin``."""
        caller = self.identity if self.identity is not None else self.origin
        return f"Action {self.kind.value} called by {caller}"


@dataclass(frozen=True)
class CheckerAction:
    """A detector's verdict. ``rule`` names a failover rule when one decided it."""

    kind: CheckerKind
    identity: str
    rule: str | None = None

    def describe(self) -> str:
        """SafeKit's wording: ``Action restart from failover rule r`` / ``... called by errd``."""
        if self.rule is not None:
            return f"Action {self.kind.value} from failover rule {self.rule}"
        return f"Action {self.kind.value} called by {self.identity}"


@dataclass(frozen=True)
class HeartbeatReceived:
    """One valid heartbeat datagram from the peer (on any LAN)."""

    state: ModuleState
    readiness: Readiness
    generation: DataGeneration
    stopping: bool = False
    swap: SwapPhase = SwapPhase.NONE


@dataclass(frozen=True)
class PeerStopAnnounced:
    """The peer says it has stopped cleanly and released its role (app stopped, VIP down)."""


@dataclass(frozen=True)
class Tick:
    """Time passes (sent every ``pulse``): heartbeat timeout and start-up probing are checked."""


class ScriptCall(enum.Enum):
    """Graceful call, or the second call of a stop script with ``force``."""

    GRACEFUL = "graceful"
    FORCE = "force"


@dataclass(frozen=True)
class ScriptExited:
    """A script run by ``RunScript`` ended. ``exit_code`` is None when it was killed."""

    script: str
    call: ScriptCall = ScriptCall.GRACEFUL
    exit_code: int | None = 0
    timed_out: bool = False


@dataclass(frozen=True)
class ResyncDone:
    """The resync ended; ``generation`` is the primary's record the copy brought us to."""

    kind: ResyncKind
    generation: DataGeneration


@dataclass(frozen=True)
class ResyncFailed:
    """The resync could not complete (peer vanished mid-copy, I/O error...)."""

    reason: str


@dataclass(frozen=True)
class PeerOutOfDate:
    """The replicator on a primary gave up waiting for the peer's acknowledgements."""

    reason: str


@dataclass(frozen=True)
class WaitCleared:
    """No wait rule holds any more (SafeKit's ``Implicit_wakeup``)."""


Event = (
    AdminCommand
    | CheckerAction
    | HeartbeatReceived
    | PeerStopAnnounced
    | Tick
    | ScriptExited
    | ResyncDone
    | ResyncFailed
    | PeerOutOfDate
    | WaitCleared
)

#: Every event type, in the order the transition table documents them.
EVENT_TYPES: tuple[type[Event], ...] = (
    AdminCommand,
    CheckerAction,
    HeartbeatReceived,
    PeerStopAnnounced,
    Tick,
    ScriptExited,
    ResyncDone,
    ResyncFailed,
    PeerOutOfDate,
    WaitCleared,
)
