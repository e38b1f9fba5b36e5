"""The cluster channel: every node says "hello" to every other node on every lan, every pulse.

Three layers, from pure to I/O:

* :func:`plan_channel` turns cluster.xml (a :class:`~hakit.config.cluster.ClusterConfig`) and the
  local node name into a :class:`ChannelPlan`: the local address on each lan and one
  :class:`Route` per (peer, lan) pair the local node shares with a peer.
* :class:`ChannelCore` (sans-I/O) seals the hellos of one pulse and judges incoming datagrams with
  :mod:`hakit.net.auth`, feeding accepted hellos to a :class:`~hakit.net.membership.Membership`.
* :class:`ClusterChannel` is the asyncio transport: UDP sockets on ``<lans port>`` and a pulse task.

Receive path: ``datagram_received`` runs the whole check (framing, HMAC, replay window, membership
update) synchronously in the event-loop callback, timestamped with the monotonic clock on arrival. It
never awaits, queues or takes a lock, so nothing can hold a datagram back except the event loop itself,
which the daemon keeps free of blocking work.

Which address to bind: each lan's local address (``laddr``, else ``addr``) when every one of them is
assigned to this host. This is what lets two nodes share one host and one port (127.0.0.1 and
127.0.0.2 in tests), and it makes replies leave from the address peers know. When some address is not
local (NAT: ``addr`` is the external address and no ``laddr`` was given), the channel binds the
wildcard address of each family instead; in the test lab every node has its own network namespace, so
either way works there.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hakit.config.cluster import ClusterConfig
from hakit.errors import LocalSystemError, NotFoundError
from hakit.net.auth import OpenedMessage, Opener, Rejection, Sealer, counters_dict
from hakit.net.membership import Membership, PeerStatus

log = logging.getLogger(__name__)

HELLO = "hello"
IGNORED = "ignored"
SockAddr = tuple[Any, ...]


@dataclass(frozen=True)
class Route:
    """Where to send ``node``'s hellos on ``lan``: its ``addr`` there (IPv6 brackets removed)."""

    node: str
    lan: str
    host: str


@dataclass(frozen=True)
class ChannelPlan:
    """What the channel of ``local`` does, derived from cluster.xml (see :func:`plan_channel`)."""

    local: str
    port: int
    pulse: float
    lost_after: float
    binds: dict[str, str]
    routes: tuple[Route, ...]
    peers: tuple[str, ...]
    lans: dict[str, dict[str, str]]

    @property
    def lan_names(self) -> tuple[str, ...]:
        """The lans the local node is on."""
        return tuple(self.binds)


def plan_channel(cluster: ClusterConfig, local: str) -> ChannelPlan:
    """The channel plan of node ``local``; :class:`NotFoundError` if it is not a cluster node."""
    names = cluster.node_names()
    if local not in names:
        raise NotFoundError(
            f"this node is called {local!r} but cluster.xml only has {', '.join(names)}: set the "
            "host name (or HAKIT_NODE) to one of them, or add this node to cluster.xml"
        )
    binds: dict[str, str] = {}
    routes: list[Route] = []
    for lan in cluster.lans:
        me = lan.node(local)
        if me is None:
            continue
        binds[lan.name] = _host(me.laddr or me.addr)
        routes.extend(Route(n.name, lan.name, _host(n.addr)) for n in lan.nodes if n.name != local)
    return ChannelPlan(
        local=local,
        port=cluster.port,
        pulse=cluster.pulse,
        lost_after=cluster.slost_count * cluster.pulse,
        binds=binds,
        routes=tuple(routes),
        peers=tuple(n for n in names if n != local),
        lans={node: cluster.addrs_of(node) for node in names},
    )


def _host(addr: str) -> str:
    """``[fe80::1]`` -> ``fe80::1`` (cluster.xml may bracket IPv6 addresses)."""
    return addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr


class ChannelCore:
    """The channel without I/O: seals hellos, judges datagrams, keeps the membership."""

    def __init__(self, plan: ChannelPlan, key: bytes, incarnation: int) -> None:
        self.plan = plan
        self.sealer = Sealer(key, plan.local, incarnation)
        self.opener = Opener(key, local=plan.local, senders=frozenset(plan.peers))
        self.membership = Membership(plan.peers, plan.lan_names, plan.lost_after)
        self.ignored = 0
        # Which lans each peer shares with us: a hello claiming another lan is ignored.
        self._shared = {(r.node, r.lan) for r in plan.routes}

    def hellos(self) -> list[tuple[Route, bytes]]:
        """The datagrams of one pulse: one sealed hello per route."""
        return [(r, self.sealer.seal(HELLO, {"lan": r.lan})) for r in self.plan.routes]

    def receive(self, data: bytes, now: float) -> OpenedMessage | Rejection:
        """Judge one datagram that arrived at ``now`` (monotonic); accepted hellos count as seen."""
        verdict = self.opener.open(data)
        if isinstance(verdict, OpenedMessage):
            lan = verdict.payload.get("lan")
            if (
                verdict.kind == HELLO
                and isinstance(lan, str)
                and (verdict.sender, lan) in self._shared
            ):
                self.membership.on_datagram(verdict.sender, lan, now)
            else:
                # Authentic but not understood: a peer with another cluster.xml or a newer hakit.
                self.ignored += 1
                log.debug("ignored %s datagram from %s: %s", verdict.kind, verdict.sender, lan)
        return verdict

    def counters(self) -> dict[str, int]:
        """Datagram counters: accepted and every drop reason, plus authentic-but-ignored."""
        counts = counters_dict(self.opener.counters)
        counts[IGNORED] = self.ignored
        return counts

    def status(self, now: float) -> tuple[PeerStatus, ...]:
        """Every peer's reachability at ``now``."""
        return self.membership.status(now)


class DropReporter:
    """Turns dropped datagrams into at most one warning per reason per ``interval`` seconds.

    Every drop is counted anyway (the API shows the counters); the log must say that something is
    wrong (a forger, a node with another key) without letting a flood of junk flood the log too.
    """

    def __init__(self, clock: Callable[[], float], interval: float = 60.0) -> None:
        self._clock = clock
        self._interval = interval
        self._last: dict[str, float] = {}
        self._pending: Counter[str] = Counter()

    def dropped(self, rejection: Rejection, source: str) -> None:
        """Count one drop from ``source``; log a warning if this reason has been quiet long enough."""
        reason = rejection.reason.value
        self._pending[reason] += 1
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            return
        count, self._pending[reason] = self._pending[reason], 0
        self._last[reason] = now
        log.warning(
            "cluster channel: dropped %d %s datagram(s) (last from %s: %s)%s",
            count,
            reason,
            source,
            rejection.detail,
            " -- every node needs the same cluster.key" if reason == "forged" else "",
        )


class _Endpoint(asyncio.DatagramProtocol):
    """One bound UDP socket; hands every datagram straight to the core (no queue, no await)."""

    def __init__(self, core: ChannelCore, clock: Callable[[], float], drops: DropReporter) -> None:
        self._core = core
        self._clock = clock
        self._drops = drops

    def datagram_received(self, data: bytes, addr: SockAddr) -> None:
        verdict = self._core.receive(data, self._clock())
        if isinstance(verdict, Rejection):
            self._drops.dropped(verdict, str(addr[0]))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a stopped peer lands here on Linux: expected, not an error.
        log.debug("cluster channel socket error: %s", exc)


class ClusterChannel:
    """The asyncio cluster channel of one node: bind with :meth:`open`, then :meth:`run` it."""

    def __init__(
        self,
        plan: ChannelPlan,
        key: bytes,
        incarnation: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.core = ChannelCore(plan, key, incarnation)
        self.clock = clock
        # Bound sockets, keyed by local IP (per-lan binding) or by address family (wildcard).
        self._transports: dict[str | int, asyncio.DatagramTransport] = {}
        self._lan_transport: dict[str, asyncio.DatagramTransport] = {}
        self._routes: list[tuple[Route, asyncio.DatagramTransport, SockAddr]] = []
        self.bound: list[tuple[str, int]] = []
        self._drops = DropReporter(clock)

    async def open(self) -> None:
        """Resolve addresses and bind the sockets (:class:`LocalSystemError` if that fails)."""
        loop = asyncio.get_running_loop()
        local = {lan: await _resolve(host, self.plan.port) for lan, host in self.plan.binds.items()}
        per_lan = all(addr is not None for addr in local.values())
        if per_lan:
            try:
                for lan, addr in local.items():
                    assert addr is not None
                    family, ip = addr[0], str(addr[1][0])
                    if ip not in self._transports:
                        self._transports[ip] = await self._bind(loop, family, ip)
                    self._lan_transport[lan] = self._transports[ip]
            except OSError as exc:
                self.close()
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise self._bind_error(exc) from None
                per_lan = False
        for route in self.plan.routes:
            dest = await _resolve(route.host, self.plan.port)
            if dest is None:
                log.warning(
                    "cluster channel: cannot resolve %s (node %s on lan %s); no hello sent there",
                    route.host,
                    route.node,
                    route.lan,
                )
                continue
            family, sockaddr = dest
            if per_lan:
                transport = self._lan_transport[route.lan]
                if transport.get_extra_info("socket").family != family:
                    log.warning(
                        "cluster channel: %s (node %s) is not of the address family of lan %s",
                        route.host,
                        route.node,
                        route.lan,
                    )
                    continue
            else:
                if family not in self._transports:
                    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
                    try:
                        self._transports[family] = await self._bind(loop, family, wildcard)
                    except OSError as exc:
                        self.close()
                        raise self._bind_error(exc) from None
                transport = self._transports[family]
            self._routes.append((route, transport, sockaddr))
        log.info(
            "cluster channel of %s listening on %s (UDP), pulse %.0f ms, lost after %.1f s",
            self.plan.local,
            ", ".join(f"{h}:{p}" for h, p in self.bound) or "nothing (no lan)",
            self.plan.pulse * 1000,
            self.plan.lost_after,
        )

    async def _bind(
        self, loop: asyncio.AbstractEventLoop, family: int, host: str
    ) -> asyncio.DatagramTransport:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # One socket per family: keep the IPv6 wildcard off IPv4 so both can coexist.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, self.plan.port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Endpoint(self.core, self.clock, self._drops), sock=sock
        )
        self.bound.append((host, self.plan.port))
        return transport

    def _bind_error(self, exc: OSError) -> LocalSystemError:
        return LocalSystemError(
            f"cannot bind the cluster channel to UDP port {self.plan.port} "
            f"({', '.join(sorted(set(self.plan.binds.values())))}): {exc.strerror or exc} "
            "(is another hakitd running? is <lans port> free?)"
        )

    def send_hellos(self) -> None:
        """Send one pulse of hellos (non-blocking: UDP sends are buffered by the loop)."""
        datagrams = dict(self.core.hellos())
        for route, transport, sockaddr in self._routes:
            transport.sendto(datagrams[route], sockaddr)

    async def run(self) -> None:
        """Send hellos every pulse and log reachability changes, until cancelled."""
        loop = asyncio.get_running_loop()
        pulse = self.plan.pulse
        next_at = loop.time()
        while True:
            self.send_hellos()
            for change in self.core.membership.changes(self.clock()):
                log.info("cluster: %s", change)
            # Absolute schedule: a late wake-up does not shift every later pulse; if the loop was
            # held up for several pulses, skip the missed ones instead of sending a burst.
            next_at += pulse
            now = loop.time()
            if next_at < now:
                next_at = now + pulse - (now - next_at) % pulse
            await asyncio.sleep(next_at - now)

    def close(self) -> None:
        """Close every socket (idempotent)."""
        for transport in set(self._transports.values()):
            transport.close()
        self._transports.clear()
        self._lan_transport.clear()
        self._routes.clear()
        self.bound.clear()

    def status(self) -> tuple[PeerStatus, ...]:
        """Every peer's reachability now."""
        return self.core.status(self.clock())

    def counters(self) -> dict[str, int]:
        """Datagram counters (see :meth:`ChannelCore.counters`)."""
        return self.core.counters()


async def _resolve(host: str, port: int) -> tuple[int, SockAddr] | None:
    """(family, sockaddr) of ``host`` for UDP, or None if it does not resolve.

    Goes through the loop's resolver (a thread), so a slow DNS never blocks the event loop.
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return None
    family, _, _, _, sockaddr = infos[0]
    return int(family), sockaddr
