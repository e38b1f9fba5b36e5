"""Which cluster nodes are reachable, from the times their valid datagrams arrived (pure).

A peer is *reachable* when a valid datagram from it arrived on ANY lan less than ``lost_after``
seconds ago (``slost_count × pulse`` of cluster.xml: 10 × 100 ms by default). Time is passed in by the
caller (monotonic seconds), so an NTP step can never make a node look lost, and tests drive it with a
fake clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerStatus:
    """One peer as seen at ``now``: reachability and age of the last datagram, overall and per lan."""

    name: str
    reachable: bool
    last_seen_s: float | None
    lans_last_seen_s: dict[str, float | None]


@dataclass(frozen=True)
class Change:
    """A peer became reachable or unreachable (reported once, by :meth:`Membership.changes`)."""

    node: str
    reachable: bool

    def __str__(self) -> str:
        return f"node {self.node} is {'reachable' if self.reachable else 'unreachable'}"


class Membership:
    """Last valid datagram time per peer and per lan."""

    def __init__(self, peers: Iterable[str], lans: Iterable[str], lost_after: float) -> None:
        if lost_after <= 0:
            raise ValueError(f"lost_after must be positive, not {lost_after}")
        self.lost_after = lost_after
        self._lans = tuple(lans)
        self._seen: dict[str, dict[str, float]] = {peer: {} for peer in peers}
        self._reported: frozenset[str] = frozenset()

    @property
    def peers(self) -> tuple[str, ...]:
        """The peer names, in configuration order."""
        return tuple(self._seen)

    def on_datagram(self, node: str, lan: str, now: float) -> None:
        """Record that a valid datagram from ``node`` arrived on ``lan`` at ``now``."""
        if node not in self._seen:
            raise ValueError(f"{node!r} is not a peer of this membership")
        if lan not in self._lans:
            raise ValueError(f"{lan!r} is not a lan of this membership")
        per_lan = self._seen[node]
        # Keep the latest time: a caller's reordered events must not move time backwards.
        per_lan[lan] = max(now, per_lan.get(lan, now))

    def last_seen(self, node: str) -> float | None:
        """The monotonic time of the last valid datagram from ``node`` on any lan (None: never)."""
        times = self._seen[node].values()
        return max(times) if times else None

    def is_reachable(self, node: str, now: float) -> bool:
        """True when ``node`` sent a valid datagram on any lan within ``lost_after`` before ``now``."""
        last = self.last_seen(node)
        return last is not None and now - last < self.lost_after

    def reachable(self, now: float) -> frozenset[str]:
        """The peers reachable at ``now``."""
        return frozenset(peer for peer in self._seen if self.is_reachable(peer, now))

    def status(self, now: float) -> tuple[PeerStatus, ...]:
        """Every peer's status at ``now``, in configuration order."""
        result = []
        for peer, per_lan in self._seen.items():
            last = self.last_seen(peer)
            result.append(
                PeerStatus(
                    name=peer,
                    reachable=self.is_reachable(peer, now),
                    last_seen_s=None if last is None else max(0.0, now - last),
                    lans_last_seen_s={
                        lan: (None if lan not in per_lan else max(0.0, now - per_lan[lan]))
                        for lan in self._lans
                    },
                )
            )
        return tuple(result)

    def changes(self, now: float) -> list[Change]:
        """Peers whose reachability changed since the previous call (for the log)."""
        current = self.reachable(now)
        gone = sorted(self._reported - current)
        came = sorted(current - self._reported)
        self._reported = current
        return [Change(n, False) for n in gone] + [Change(n, True) for n in came]
