"""Data generations: which node holds up-to-date replicated data (pure, no I/O).

Theory of operation
-------------------
Each node persists a :class:`DataGeneration` (the idea of DRBD's generation UUIDs):

* ``current`` names the content of the replicated directories. Two nodes with the same
  ``current`` hold the same data. A **new generation starts whenever a primary begins writing
  without its peer** (entering ALONE, or the replicator declaring the peer out of date because it
  is about to acknowledge a write the peer will not have);
  the previous ``current`` is pushed onto ``history`` (bounded: an id that fell off the history
  makes the comparison say "unrelated", which costs a full copy but is never wrong).
* ``status`` says what the node knows about its own data when it cannot see its peer:
  ``UP_TO_DATE`` (it was the only writer since ``current`` began: it may start ALONE by itself),
  ``PAIRED`` (it shared ``current`` with a peer that may have gone on writing after this node left:
  it must not start ALONE by itself), ``OUT_OF_DATE`` (known to be behind).
* ``interrupted_resync`` is set while a resync writes into the directories and cleared when it
  ends: a node stopped during reintegration holds inconsistent files and needs ``primforce``.
* ``origin`` says why ``current`` began; a generation started by a SECOND taking over after losing
  its peer is the one that yields after a split brain (SafeKit: "the node that was SECOND before
  the isolation is sacrificed").
* ``full_sync_required`` is set on a primary forced with ``prim fullsync`` or ``primforce``: the
  next secondary gets a full copy whatever the histories say.

Comparing two generations (:func:`compare`) gives a :class:`SyncVerdict`; :func:`resync_kind`
turns it into what a joining secondary must copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Any

from hakit.core.states import ModuleState
from hakit.errors import PeerProtocolError

#: How many past generation ids a node remembers. Beyond this, comparisons answer UNRELATED.
HISTORY_LIMIT = 32


class DataStatus(enum.Enum):
    """What a node knows about its data without seeing its peer."""

    UP_TO_DATE = "uptodate"
    PAIRED = "paired"
    OUT_OF_DATE = "not_uptodate"


class GenerationOrigin(enum.Enum):
    """Why the current generation began."""

    NONE = "none"  # no data generation yet (freshly configured module)
    ADMIN = "admin"  # `prim` / `primforce` forced this node primary
    PRIMARY = "primary"  # a primary lost its secondary (or started alone) and went on writing
    FAILOVER = "failover"  # a SECOND took over after losing its primary
    RESYNC = "resync"  # copied from the primary by a resync


class SyncVerdict(enum.Enum):
    """Result of comparing the local generation with the peer's."""

    SAME = "same"  # identical data: nothing to copy
    LOCAL_AHEAD = "local_ahead"  # the peer's current is in my history: the peer is behind me
    LOCAL_BEHIND = "local_behind"  # my current is in the peer's history: I am behind
    DIVERGED = "diverged"  # both wrote after a common ancestor: split brain
    UNRELATED = "unrelated"  # no common ancestor known (first start, other cluster, lost history)


class ResyncKind(enum.Enum):
    """What a joining secondary copies from the primary."""

    NONE = "none"
    INCREMENTAL = "incremental"  # only zones changed since the common generation
    FULL = "full"  # every file (compared by size/mtime then block hashes)


@dataclass(frozen=True)
class DataGeneration:
    """The persisted generation record of one node (also carried in its heartbeats)."""

    current: str = ""
    history: tuple[str, ...] = ()
    status: DataStatus = DataStatus.OUT_OF_DATE
    origin: GenerationOrigin = GenerationOrigin.NONE
    interrupted_resync: bool = False
    full_sync_required: bool = False
    last_role: ModuleState | None = None
    serial: int = 0

    @property
    def has_data(self) -> bool:
        """True once this node has ever held a data generation (it was primary or resynced)."""
        return self.current != ""

    def lineage(self) -> tuple[str, ...]:
        """All generation ids this node's data descends from, ``current`` included."""
        return (*self.history, self.current) if self.current else self.history

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form, for the module database and the heartbeat payload."""
        return {
            "current": self.current,
            "history": list(self.history),
            "status": self.status.value,
            "origin": self.origin.value,
            "interrupted_resync": self.interrupted_resync,
            "full_sync_required": self.full_sync_required,
            "last_role": self.last_role.value if self.last_role is not None else None,
            "serial": self.serial,
        }

    @classmethod
    def from_dict(cls, data: object, source: str = "generation record") -> DataGeneration:
        """Parse :meth:`to_dict`'s form; ``source`` names where it came from in errors.

        Raises ``PeerProtocolError`` naming the field when a value is missing or malformed (a
        peer's heartbeat, or a database row written by an incompatible version).
        """
        if not isinstance(data, dict):
            raise PeerProtocolError(f"{source}: expected an object, got {type(data).__name__}")

        def field(name: str, kind: type) -> Any:
            value = data.get(name)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise PeerProtocolError(
                    f"{source}: field {name!r} must be {kind.__name__}, got {value!r}"
                )
            return value

        history = field("history", list)
        if not all(isinstance(item, str) for item in history):
            raise PeerProtocolError(f"{source}: field 'history' must list generation ids")
        last_role = data.get("last_role")
        try:
            return cls(
                current=field("current", str),
                history=tuple(history[-HISTORY_LIMIT:]),
                status=DataStatus(field("status", str)),
                origin=GenerationOrigin(field("origin", str)),
                interrupted_resync=field("interrupted_resync", bool),
                full_sync_required=field("full_sync_required", bool),
                last_role=None if last_role is None else ModuleState(last_role),
                serial=field("serial", int),
            )
        except ValueError as exc:
            raise PeerProtocolError(f"{source}: {exc}") from None


def new_generation_id(node: str, incarnation: str, serial: int) -> str:
    """A generation id unique across nodes, engine runs and time.

    ``incarnation`` is a random token the engine draws once per start (the core never calls a
    random generator itself), ``serial`` a counter kept in the record.
    """
    return f"{node}.{incarnation}.{serial}"


def compare(local: DataGeneration, peer: DataGeneration) -> SyncVerdict:
    """Compare my generation with my peer's (see :class:`SyncVerdict`)."""
    if not local.has_data or not peer.has_data:
        return SyncVerdict.UNRELATED
    if local.current == peer.current:
        return SyncVerdict.SAME
    if peer.current in local.history:
        return SyncVerdict.LOCAL_AHEAD
    if local.current in peer.history:
        return SyncVerdict.LOCAL_BEHIND
    if set(local.lineage()) & set(peer.lineage()):
        return SyncVerdict.DIVERGED
    return SyncVerdict.UNRELATED


def resync_kind(secondary: DataGeneration, primary: DataGeneration) -> ResyncKind:
    """What ``secondary`` must copy from ``primary`` before it is a Ready SECOND.

    Incremental only when the secondary is simply behind and its files are consistent; anything
    else (it wrote on its own, histories unrelated, resync interrupted, primary forced with
    ``fullsync``) needs a full copy.
    """
    if primary.full_sync_required or secondary.interrupted_resync:
        return ResyncKind.FULL
    verdict = compare(secondary, primary)
    if verdict is SyncVerdict.SAME:
        return ResyncKind.NONE
    if verdict is SyncVerdict.LOCAL_BEHIND:
        return ResyncKind.INCREMENTAL
    return ResyncKind.FULL


def common_ancestor(local: DataGeneration, peer: DataGeneration) -> str:
    """The most recent generation both nodes' data descend from ("" if none is known)."""
    theirs = set(peer.lineage())
    for gen_id in reversed(local.lineage()):
        if gen_id in theirs:
            return gen_id
    return ""


def must_keep_aside(secondary: DataGeneration, primary: DataGeneration) -> bool:
    """True when the secondary holds writes the primary never saw (they must be kept aside).

    That is the case when it is ahead of, diverged from or unrelated to the primary while holding
    data of its own; never when it is simply behind or identical.
    """
    if not secondary.has_data:
        return False
    return compare(secondary, primary) in (
        SyncVerdict.LOCAL_AHEAD,
        SyncVerdict.DIVERGED,
        SyncVerdict.UNRELATED,
    )


def begin_solo_writing(
    gen: DataGeneration,
    node: str,
    incarnation: str,
    origin: GenerationOrigin,
    role: ModuleState,
) -> DataGeneration:
    """The record of a node that starts writing without an up-to-date peer: a new generation.

    Always a new one, even for a node that was already the sole writer: its peer may have copied
    the current generation since (a resync that ended just before the peer left), and two nodes
    holding the same id must hold the same data.
    """
    serial = gen.serial + 1
    history = gen.lineage()[-HISTORY_LIMIT:]
    return replace(
        gen,
        current=new_generation_id(node, incarnation, serial),
        history=history,
        status=DataStatus.UP_TO_DATE,
        origin=origin,
        interrupted_resync=False,
        last_role=role,
        serial=serial,
    )


def paired(gen: DataGeneration, role: ModuleState) -> DataGeneration:
    """The record of a node in a synchronized pair (PRIM or Ready SECOND)."""
    return replace(gen, status=DataStatus.PAIRED, full_sync_required=False, last_role=role)


def resync_started(gen: DataGeneration) -> DataGeneration:
    """The record of a node whose files a resync starts to overwrite."""
    return replace(
        gen, status=DataStatus.OUT_OF_DATE, interrupted_resync=True, last_role=ModuleState.SECOND
    )


def resync_finished(gen: DataGeneration, primary: DataGeneration) -> DataGeneration:
    """The record of a secondary that finished copying ``primary``'s generation."""
    return replace(
        gen,
        current=primary.current,
        history=primary.history[-HISTORY_LIMIT:],
        status=DataStatus.PAIRED,
        origin=GenerationOrigin.RESYNC,
        interrupted_resync=False,
        full_sync_required=False,
        last_role=ModuleState.SECOND,
        serial=max(gen.serial, primary.serial),
    )


def left_pair(gen: DataGeneration) -> DataGeneration:
    """The record of a secondary that leaves its primary (which goes on writing without it)."""
    return replace(gen, status=DataStatus.OUT_OF_DATE, last_role=ModuleState.SECOND)


def forced_primary(gen: DataGeneration, *, full_sync: bool) -> DataGeneration:
    """The record after ``prim`` / ``primforce``: consistent by decree, peer copy full if asked."""
    return replace(
        gen, interrupted_resync=False, full_sync_required=gen.full_sync_required or full_sync
    )
