"""Actions the decision cores ask the executor to perform (frozen dataclasses, no behaviour).

The executor performs them in order. Only ``RunScript`` is long: the executor starts it and
reports its end with ``ScriptExited``; the core emits nothing that depends on a script's effect
before that report arrives, so scripts run one at a time and the core alone decides which is next.
Every other action is quick (a netlink call, a message to the replicator, a database write).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hakit.core.events import ScriptCall, SwapPhase
from hakit.core.generations import DataGeneration, ResyncKind
from hakit.core.states import ModuleState, Readiness


class ScriptTimeout(enum.Enum):
    """Which configured timeout bounds a script call (``stoptimeout`` / ``forcestoptimeout``)."""

    NICE = "nice"
    FORCE = "force"


@dataclass(frozen=True)
class RunScript:
    """Run ``bin/<name>`` with SafeKit's arguments: ``current next action`` (``force`` first on the
    second call of a stop script)."""

    name: str
    current: ModuleState
    next: ModuleState
    action: str
    call: ScriptCall = ScriptCall.GRACEFUL

    @property
    def args(self) -> tuple[str, ...]:
        """Command-line arguments, e.g. ``("force", "PRIM", "WAIT", "stop")``."""
        base = (self.current.value, self.next.value, self.action)
        return ("force", *base) if self.call is ScriptCall.FORCE else base

    @property
    def timeout(self) -> ScriptTimeout:
        """The timeout bounding this call."""
        return ScriptTimeout.FORCE if self.call is ScriptCall.FORCE else ScriptTimeout.NICE


@dataclass(frozen=True)
class AbortScript:
    """Kill the running script's whole process group (``forcestop`` while a script runs)."""

    name: str


@dataclass(frozen=True)
class SetVip:
    """Bring the module's virtual IPs up (with gratuitous ARP) or down."""

    up: bool


class ReplicationRole(enum.Enum):
    """Which side of replication this node plays."""

    PRIMARY = "primary"  # intercept the replicated directories, send every change to the peer
    SECONDARY = "secondary"  # receive and apply changes; directories read-only for local processes


@dataclass(frozen=True)
class StartReplication:
    """Start replication in ``role`` (mount the replicated directories accordingly)."""

    role: ReplicationRole


@dataclass(frozen=True)
class StopReplication:
    """Stop replication and unmount the replicated directories (also cancels a running resync)."""


@dataclass(frozen=True)
class StartResync:
    """On a secondary: copy from the primary (``INCREMENTAL`` zones or ``FULL``); ends with
    ``ResyncDone`` or ``ResyncFailed``."""

    kind: ResyncKind


@dataclass(frozen=True)
class PreserveDivergentData:
    """Before a resync overwrites them, keep aside the local files changed since ``since`` (the
    last generation shared with the peer, or "" if none) and report them: split-brain data is never
    silently discarded."""

    generation: str
    since: str
    reason: str


@dataclass(frozen=True)
class PersistGeneration:
    """Durably store the node's generation record (before anything depends on it)."""

    generation: DataGeneration


@dataclass(frozen=True)
class PublishState:
    """The node's announced state changed: update the resources shown to users, ``ready.txt``
    and the heartbeat payload, and send a heartbeat at once."""

    state: ModuleState
    readiness: Readiness
    generation: DataGeneration
    stopping: bool = False
    swap: SwapPhase = SwapPhase.NONE


@dataclass(frozen=True)
class AnnounceStop:
    """Tell the peer this node has released its role (app stopped, VIP down): it may take over."""


class LogLevel(enum.Enum):
    """Module log levels (SafeKit's letters)."""

    CRITICAL = "C"
    EVENT = "E"
    INFO = "I"
    DEBUG = "D"


@dataclass(frozen=True)
class Log:
    """A line for the module log (SafeKit wording where one exists)."""

    level: LogLevel
    text: str


Action = (
    RunScript
    | AbortScript
    | SetVip
    | StartReplication
    | StopReplication
    | StartResync
    | PreserveDivergentData
    | PersistGeneration
    | PublishState
    | AnnounceStop
    | Log
)
