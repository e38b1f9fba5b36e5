"""Which role a starting mirror node takes, and who yields after a split brain (pure functions).

Both nodes evaluate the same rules on the same facts (their two generation records and settings),
so their answers agree: exactly one of them becomes primary, the other waits for it and joins as
SECOND. Rules, in order:

* peer not running (or module stopped): start ALONE only if this node was the sole writer of its
  data (or, failover on, sees the stopped peer holding the same or older data); else WAIT NotReady
  ("Data may be not uptodate ...") until the peer comes or ``prim`` forces it;
* peer primary: become SECOND, copying what the generations say (keeping aside local writes the
  primary never saw);
* both starting: newer data wins; identical data goes to ``defaultprim``'s node, else to the
  previous primary, else the smaller name; diverged data (split brain) is kept by the node whose
  generation did not start with a SECOND's failover; a node stopped during reintegration never
  wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from hakit.core.generations import (
    DataGeneration,
    DataStatus,
    GenerationOrigin,
    ResyncKind,
    SyncVerdict,
    compare,
    must_keep_aside,
    resync_kind,
)
from hakit.core.mirror_model import MirrorSettings, PeerView, RecordCode, WaitReason
from hakit.core.states import PRIMARY_STATES, ModuleState, Readiness

S = ModuleState
R = Readiness
C = RecordCode


@dataclass(frozen=True)
class RoleChoice:
    """What a starting (WAIT) node should become. ``target`` None: keep waiting — in WAIT
    NotReady for ``wait_reason``, or still probing when ``wait_reason`` is None."""

    target: ModuleState | None
    code: RecordCode
    message: str
    wait_reason: WaitReason | None = None
    resync: ResyncKind = ResyncKind.NONE
    keep_aside: bool = False


def split_brain_yields(
    local: DataGeneration, peer: DataGeneration, settings: MirrorSettings
) -> bool:
    """True if this node gives up its primary role when both nodes are primary.

    First the data decides: a node whose data the peer's history already contains (it wrote
    nothing the peer lacks: a primary that hung while its peer took over) yields, and its peer
    stays, so no acknowledged write of the peer is set aside. Only when both wrote on their own
    (a real split brain) SafeKit's rule applies: the node whose generation began with a SECOND
    taking over yields (it was SECOND before the isolation); if both or neither did, the node with
    the greater name yields, so both nodes reach the same answer. The yielding side's own writes
    are kept aside, never silently dropped.
    """
    verdict = compare(local, peer)
    if verdict is SyncVerdict.LOCAL_BEHIND:
        return True
    if verdict is SyncVerdict.LOCAL_AHEAD:
        return False
    mine = local.origin is GenerationOrigin.FAILOVER
    theirs = peer.origin is GenerationOrigin.FAILOVER
    if mine != theirs:
        return mine
    return settings.local_node > settings.peer_node


def prefers_local_primary(
    local: DataGeneration, peer: DataGeneration, settings: MirrorSettings
) -> bool:
    """With identical data on both nodes, is this node the one to be primary?

    ``defaultprim=<node>`` names it; otherwise the node that was primary before its last stop
    (SafeKit: "the pair returns to its previous roles"); otherwise the smaller node name.
    """
    if settings.defaultprim == settings.local_node:
        return True
    if settings.defaultprim == settings.peer_node:
        return False
    mine = local.last_role in PRIMARY_STATES
    theirs = peer.last_role in PRIMARY_STATES
    if mine != theirs:
        return mine
    return settings.local_node < settings.peer_node


def _block(reason: WaitReason, why: str) -> RoleChoice:
    return RoleChoice(None, C.WAITING, f"{reason.message} ({why})", wait_reason=reason)


def choose_role(
    local: DataGeneration, peer: PeerView, settings: MirrorSettings, *, failover: bool = True
) -> RoleChoice:
    """What a node in WAIT becomes, from its generation and what it sees of its peer.

    With ``failover`` off, a node never becomes primary on its own because its peer stopped: only
    its own "sole writer" record (or ``prim``) lets it start without a running peer.
    """
    if not peer.known or peer.state is S.STOP:
        return _choice_without_peer(local, peer if failover else PeerView())
    if peer.stopping:
        return RoleChoice(None, C.WAITING, f"waiting: the peer is stopping ({peer.describe()})")
    if peer.state in PRIMARY_STATES:
        kind = resync_kind(local, peer.generation)
        aside = must_keep_aside(local, peer.generation)
        extra = "; local changes unknown to the primary are kept aside" if aside else ""
        return RoleChoice(
            S.SECOND,
            C.ENTER_SECOND,
            f"peer is {peer.state}: starting as SECOND ({kind.value} resync{extra})",
            resync=kind,
            keep_aside=aside,
        )
    if peer.state is S.SECOND:
        return RoleChoice(None, C.WAITING, "waiting: the peer is SECOND without a primary")
    return _choice_between_starters(local, peer, settings)


def _choice_without_peer(local: DataGeneration, peer: PeerView) -> RoleChoice:
    seen = "the peer is stopped" if peer.known else "the peer is not running (or not visible)"
    if local.interrupted_resync:
        return _block(WaitReason.INCONSISTENT, seen)
    if local.has_data and local.status is DataStatus.UP_TO_DATE:
        return RoleChoice(S.ALONE, C.ENTER_ALONE, f"{seen}; local data up to date: starting ALONE")
    if (
        peer.known
        and local.has_data
        and compare(local, peer.generation) in (SyncVerdict.SAME, SyncVerdict.LOCAL_AHEAD)
    ):
        return RoleChoice(
            S.ALONE, C.ENTER_ALONE, f"{seen} with the same or older data: starting ALONE"
        )
    return _block(WaitReason.NOT_UPTODATE, seen)


def _wait_for_peer(peer: PeerView, why: str) -> RoleChoice:
    # While the peer is still moving, keep probing; once it is blocked too, block (not forever:
    # blocked nodes re-evaluate on every heartbeat, and the rules give exactly one primary).
    reason = None if peer.readiness is R.TRANSIENT else WaitReason.NOT_UPTODATE
    return RoleChoice(None, C.WAITING, f"waiting for the peer to start as primary: {why}", reason)


def _choice_between_starters(
    local: DataGeneration, peer: PeerView, settings: MirrorSettings
) -> RoleChoice:
    theirs = peer.generation
    if local.interrupted_resync and theirs.interrupted_resync:
        return _block(WaitReason.INCONSISTENT, "both nodes were stopped during reintegration")
    if local.interrupted_resync:
        return _wait_for_peer(peer, "local data inconsistent (stopped during reintegration)")
    if theirs.interrupted_resync and local.has_data:
        return RoleChoice(S.ALONE, C.ENTER_ALONE, "peer data inconsistent: starting ALONE")
    verdict = compare(local, theirs)
    if verdict is SyncVerdict.SAME:
        if prefers_local_primary(local, theirs, settings):
            return RoleChoice(S.PRIM, C.ENTER_PRIM, "both nodes hold the same data: starting PRIM")
        return _wait_for_peer(peer, "same data, the peer is the preferred primary")
    if verdict is SyncVerdict.LOCAL_AHEAD:
        return RoleChoice(
            S.ALONE, C.ENTER_ALONE, "local data newer than the peer's: starting ALONE"
        )
    if verdict is SyncVerdict.LOCAL_BEHIND:
        return _wait_for_peer(peer, "the peer holds newer data")
    if verdict is SyncVerdict.DIVERGED:
        if split_brain_yields(local, theirs, settings):
            return _wait_for_peer(peer, "split brain detected, this node yields")
        return RoleChoice(
            S.ALONE, C.ENTER_ALONE, "split brain detected, the peer yields: starting ALONE"
        )
    if local.has_data and not theirs.has_data:
        return RoleChoice(S.ALONE, C.ENTER_ALONE, "the peer holds no data yet: starting ALONE")
    if theirs.has_data and not local.has_data:
        return _wait_for_peer(peer, "this node holds no data yet")
    if not local.has_data:
        return _block(WaitReason.NOT_UPTODATE, "first start: no node holds data yet")
    return _block(WaitReason.UNRELATED, "the two nodes' data histories have nothing in common")
