"""A fake datagram network for deterministic tests of anything that talks UDP.

Endpoints attach a receive callback to an address ``(host, port)``. ``send`` puts a datagram in
flight with a delay (plus seeded jitter); it can be dropped or duplicated at random (seeded RNG, so a
failing test replays exactly) or because the two hosts are partitioned. Time is a
:class:`~hakit.testing.clock.FakeClock`: :meth:`FakeNetwork.run_until` advances it and delivers
every datagram that is due, in order, letting callbacks send more.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hakit.testing.clock import FakeClock

Address = tuple[str, int]
Receiver = Callable[[bytes, Address], None]


@dataclass(order=True)
class _InFlight:
    deliver_at: float
    order: int
    src: Address = field(compare=False)
    dst: Address = field(compare=False)
    data: bytes = field(compare=False)


class FakeNetwork:
    """Delivers datagrams between attached endpoints, with delay, loss, duplication, partitions."""

    def __init__(
        self,
        clock: FakeClock,
        *,
        seed: int = 0,
        delay: float = 0.001,
        jitter: float = 0.0,
        drop: float = 0.0,
        duplicate: float = 0.0,
    ) -> None:
        self.clock = clock
        self.delay = delay
        self.jitter = jitter
        self.drop = drop
        self.duplicate = duplicate
        self._rng = random.Random(seed)
        self._receivers: dict[Address, Receiver] = {}
        self._queue: list[_InFlight] = []
        self._order = 0
        self._cut: set[frozenset[str]] = set()
        self._down: set[str] = set()
        self.sent = 0
        self.delivered = 0
        self.lost = 0
        # Every datagram sent, as (src, dst, data): tests replay captured traffic from here.
        self.captured: list[tuple[Address, Address, bytes]] = []

    def attach(self, address: Address, receive: Receiver) -> None:
        """Deliver datagrams sent to ``address`` to ``receive(data, source)``."""
        if address in self._receivers:
            raise ValueError(f"{address} is already attached")
        self._receivers[address] = receive

    def detach(self, address: Address) -> None:
        """Stop delivering to ``address`` (datagrams to it are then lost)."""
        self._receivers.pop(address, None)

    def partition(self, host_a: str, host_b: str) -> None:
        """Drop every datagram between the two hosts (both directions) until :meth:`heal`."""
        self._cut.add(frozenset((host_a, host_b)))

    def heal(self, host_a: str | None = None, host_b: str | None = None) -> None:
        """Undo one partition, or every partition when called without hosts."""
        if host_a is None or host_b is None:
            self._cut.clear()
        else:
            self._cut.discard(frozenset((host_a, host_b)))

    def set_down(self, host: str, down: bool = True) -> None:
        """A host that is down neither sends nor receives (a power cut, a frozen machine)."""
        if down:
            self._down.add(host)
        else:
            self._down.discard(host)

    def send(self, src: Address, dst: Address, data: bytes) -> None:
        """Put ``data`` in flight from ``src`` to ``dst`` (it may be lost, like UDP)."""
        self.sent += 1
        self.captured.append((src, dst, data))
        if src[0] in self._down or frozenset((src[0], dst[0])) in self._cut:
            self.lost += 1
            return
        if self._rng.random() < self.drop:
            self.lost += 1
            return
        copies = 2 if self._rng.random() < self.duplicate else 1
        for _ in range(copies):
            self.inject(src, dst, data, delay=self.delay + self._rng.uniform(0, self.jitter))

    def inject(self, src: Address, dst: Address, data: bytes, *, delay: float = 0.0) -> None:
        """Deliver ``data`` after ``delay`` whatever the loss settings (a test's raw socket)."""
        self._order += 1
        heapq.heappush(self._queue, _InFlight(self.clock.now + delay, self._order, src, dst, data))

    def deliver_due(self) -> int:
        """Deliver every datagram due at the current time; return how many were delivered."""
        count = 0
        while self._queue and self._queue[0].deliver_at <= self.clock.now:
            item = heapq.heappop(self._queue)
            receive = self._receivers.get(item.dst)
            if receive is None or item.dst[0] in self._down:
                self.lost += 1
                continue
            self.delivered += 1
            count += 1
            receive(item.data, item.src)
        return count

    def run_until(
        self, when: float, *, tick: Callable[[float], None] | None = None, step: float = 0.001
    ) -> None:
        """Advance the clock to ``when`` in ``step``s, calling ``tick(now)`` and delivering."""
        while self.clock.now < when:
            self.clock.advance(min(step, when - self.clock.now))
            if tick is not None:
                tick(self.clock.now)
            self.deliver_due()
