"""Mirror module heartbeats: one authenticated UDP stream per ``<heartbeat>`` LAN, both ways.

Theory of operation
-------------------
Each mirror module engine sends, every ``pulse``, a sealed datagram (kind ``hb``, see
:mod:`hakit.net.auth`) to its peer's address on every heartbeat LAN, carrying what the peer needs to
decide: the module name, the local state and readiness, the data generation, the resource states.
The same payload is sent again at once whenever it changes, so a state change reaches the peer in
one network round trip instead of one pulse. A clean stop is announced with a burst of ``stopping``
beats (a burst carrying ``released``), so the peer takes over at once instead of waiting for the
heartbeat timeout.

Every valid beat is handed to ``on_beat`` with the monotonic time it arrived; deciding that the peer
is lost (no valid beat on ANY LAN for ``timeout``) is the decision core's job, not this module's:
this module only keeps per-LAN "last heard" times for the ``heartbeat.<ident>`` resources.

Why a socket per LAN bound to the node's own address on that LAN: a beat must travel over the LAN it
claims to test, and the receiver must be able to tell which LAN a beat came through.

The receive path does nothing but authenticate and hand over: it runs in the module engine's event
loop, which never waits for scripts (child processes) or replication I/O (another process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hakit.net.auth import OpenedMessage, Opener, Sealer, counters_dict

log = logging.getLogger(__name__)

KIND = "hb"
# How many times a stop announcement is repeated (UDP may drop one), and their spacing.
STOP_BURST = 3
STOP_SPACING = 0.02
# The default heartbeat port of a module: SafeKit's 8888 + (id - 1).
BASE_PORT = 8888


def default_port(module_id: int) -> int:
    """SafeKit's default heartbeat port for module ``module_id``."""
    return BASE_PORT + module_id - 1


@dataclass(frozen=True)
class HeartbeatPath:
    """One ``<heartbeat>``: the LAN, its label, where we listen and where the peer listens."""

    lan: str
    ident: str
    local_addr: str
    peer_addr: str
    port: int
    pulse: float
    timeout: float


@dataclass(frozen=True)
class Beat:
    """A valid heartbeat received from the peer."""

    ident: str
    payload: Mapping[str, Any]
    at: float
    incarnation: int


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, owner: HeartbeatService, path: HeartbeatPath) -> None:
        self.owner = owner
        self.path = path
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.received(self.path, data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable while the peer is down: expected, counted, not fatal.
        self.owner.send_errors += 1


class HeartbeatService:
    """Sends and receives one module's heartbeats on every configured path."""

    def __init__(
        self,
        *,
        module: str,
        local: str,
        peer: str,
        key: bytes,
        incarnation: int,
        paths: list[HeartbeatPath],
        on_beat: Callable[[Beat], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not paths:
            raise ValueError("a mirror module needs at least one heartbeat path")
        self.module = module
        self.peer = peer
        self.paths = paths
        self._sealer = Sealer(key, local, incarnation)
        self._opener = Opener(key, local=local, senders=frozenset({peer}))
        self._on_beat = on_beat
        self._clock = clock
        self._payload: dict[str, Any] = {"module": module}
        self._endpoints: list[_Endpoint] = []
        self._wake = asyncio.Event()
        self.last_heard: dict[str, float] = {}
        self.send_errors = 0
        self.wrong_module = 0

    # --- what the engine calls ------------------------------------------------------------
    def set_payload(self, payload: Mapping[str, Any]) -> None:
        """Carry ``payload`` from now on; send it at once if it differs from the previous one."""
        new = {**payload, "module": self.module}
        if new != self._payload:
            self._payload = new
            self._wake.set()

    async def announce_stop(self, payload: Mapping[str, Any]) -> None:
        """Send ``payload`` as a short burst (UDP may lose one datagram): a clean stop's notice.

        The regular payload is left as it is; the caller sets the next one.
        """
        burst = {**payload, "module": self.module}
        for _ in range(STOP_BURST):
            self._send_all(burst)
            await asyncio.sleep(STOP_SPACING)

    def resources(self, now: float) -> dict[str, str]:
        """``heartbeat.<ident>`` -> up/down, each path judged with its own timeout."""
        out = {}
        for path in self.paths:
            heard = self.last_heard.get(path.ident)
            up = heard is not None and now - heard < path.timeout
            out[f"heartbeat.{path.ident}"] = "up" if up else "down"
        return out

    def counters(self) -> dict[str, int]:
        """Datagram counters (accepted, forged, corrupted, replayed...) plus local errors."""
        return counters_dict(self._opener.counters) | {
            "send_errors": self.send_errors,
            "wrong_module": self.wrong_module,
        }

    # --- transport ------------------------------------------------------------------------
    async def run(self) -> None:
        """Open one socket per path, then send every pulse (or at once on a payload change)."""
        loop = asyncio.get_running_loop()
        try:
            for path in self.paths:
                sock = _bind(path)
                transport, proto = await loop.create_datagram_endpoint(
                    lambda p=path: _Endpoint(self, p),  # type: ignore[misc]
                    sock=sock,
                )
                proto.transport = transport
                self._endpoints.append(proto)
            pulse = min(p.pulse for p in self.paths)
            while True:
                self._send_all()
                self._wake.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation
                # that races with the event being set, and this loop would then never end.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(pulse):
                        await self._wake.wait()
        finally:
            for ep in self._endpoints:
                if ep.transport is not None:
                    ep.transport.close()
            self._endpoints.clear()

    def _send_all(self, payload: Mapping[str, Any] | None = None) -> None:
        # Each path gets its own sealed copy (own sequence number): identical bytes arriving over a
        # second LAN would be dropped as a replay, hiding that this LAN works.
        for ep in self._endpoints:
            if ep.transport is None:
                continue
            body = self._payload if payload is None else payload
            data = self._sealer.seal(KIND, {**body, "lan": ep.path.ident})
            try:
                ep.transport.sendto(data, (ep.path.peer_addr, ep.path.port))
            except OSError:
                self.send_errors += 1

    def received(self, path: HeartbeatPath, data: bytes) -> None:
        """Authenticate one datagram that arrived on ``path`` and hand it to the engine."""
        verdict = self._opener.open(data)
        if not isinstance(verdict, OpenedMessage):
            log.debug(
                "heartbeat dropped on %s: %s (%s)", path.ident, verdict.reason, verdict.detail
            )
            return
        if verdict.kind != KIND or verdict.payload.get("module") != self.module:
            self.wrong_module += 1
            return
        now = self._clock()
        self.last_heard[path.ident] = now
        self._on_beat(Beat(path.ident, verdict.payload, now, verdict.incarnation))


def _bind(path: HeartbeatPath) -> socket.socket:
    """A UDP socket on the node's address of this LAN (any address if that one is not local)."""
    family = socket.AF_INET6 if ":" in path.local_addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Heartbeats are latency critical: ask for the "interactive" TOS class.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
    try:
        sock.bind((path.local_addr, path.port))
    except OSError:
        # NAT (the address peers see is not ours) or a name: listen on every address.
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", path.port))
    sock.setblocking(False)
    return sock
