"""Replication sender and receiver over real loopback TCP."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable

import pytest

from hakit.replication.handshake import AuthenticationError, PeerRefused
from hakit.replication.transport import (
    AsyncMode,
    Identity,
    PeerLost,
    PeerTimeout,
    Receiver,
    Sender,
)
from hakit.replication.wire import Frame, FrameType

KEY = bytes(range(32))
WRONG_KEY_TEXT = "wrong cluster key (check /etc/hakit/cluster.key on both nodes)"
PRIMARY = Identity(KEY, "node1", "node2", "mirror", 0, generation=3)
SECONDARY = Identity(KEY, "node2", "node1", "mirror", 0, generation=3)


class Peer:
    """A receiver with a recording apply that can be paused or made to fail."""

    def __init__(self, async_mode: AsyncMode = "second") -> None:
        self.applied: list[Frame] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on: int | None = None
        self.receiver = Receiver(SECONDARY, self.apply, async_mode=async_mode)

    async def apply(self, frame: Frame) -> None:
        await self.gate.wait()
        if frame.seq == self.fail_on:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.applied.append(frame)


async def _with_pair(
    scenario: Callable[[Peer, Sender, list[str]], Awaitable[None]],
    *,
    async_mode: AsyncMode = "second",
    sendtimeout: float = 10.0,
) -> None:
    peer = Peer(async_mode)
    port = await peer.receiver.start("127.0.0.1", 0)
    lost: list[str] = []
    try:
        sender = await Sender.connect(
            "127.0.0.1", port, PRIMARY, sendtimeout=sendtimeout, on_peer_lost=lost.append
        )
        try:
            await scenario(peer, sender, lost)
        finally:
            await sender.close()
    finally:
        await peer.receiver.close()


def run(scenario: Callable[[Peer, Sender, list[str]], Awaitable[None]], **options: object) -> None:
    """Run ``scenario`` against a fresh receiver and connected sender, bounded in time."""

    async def bounded() -> None:
        await asyncio.wait_for(_with_pair(scenario, **options), 30)  # type: ignore[arg-type]

    asyncio.run(bounded())


@pytest.mark.parametrize("mode", ["second", "none"])
def test_round_trip(mode: AsyncMode) -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        assert sender.peer.node == "node2"
        assert await sender.send(FrameType.WRITE, b"hdr", b"data") == 1
        assert await sender.send(FrameType.FSYNC, b"f") == 2
        assert peer.receiver.peers[0].node == "node1"
        if mode == "none":  # acknowledged after apply: both are applied by now
            assert [f.seq for f in peer.applied] == [1, 2]
        assert peer.applied[0] == Frame(FrameType.WRITE, 1, b"hdr", b"data")
        assert sender.outstanding == 0
        assert lost == []

    run(scenario, async_mode=mode)


@pytest.mark.parametrize("mode", ["second", "none"])
def test_pipelined_requests_from_concurrent_tasks_are_all_acked_in_order(mode: AsyncMode) -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        sent: list[tuple[int, int]] = []  # (task, n) in the order send() was called

        async def writer(task: int) -> list[int]:
            seqs = []
            for n in range(125):
                sent.append((task, n))
                seqs.append(await sender.send(FrameType.WRITE, bytes([task]), n.to_bytes(4, "big")))
            return seqs

        results = await asyncio.gather(*(writer(t) for t in range(8)))
        assert sorted(s for seqs in results for s in seqs) == list(range(1, 1001))
        for seqs in results:
            assert seqs == sorted(seqs)
        while len(peer.applied) < 1000:  # async="second": apply may trail the acks
            await asyncio.sleep(0.01)
        assert [f.seq for f in peer.applied] == list(range(1, 1001))
        got = [(f.header[0], int.from_bytes(f.payload, "big")) for f in peer.applied]
        assert got == sent
        assert lost == []

    run(scenario, async_mode=mode)


def test_fsync_is_acknowledged_only_after_it_is_applied_even_in_async_second() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        await sender.send(FrameType.WRITE, b"w")
        peer.gate.clear()
        write = asyncio.create_task(sender.send(FrameType.WRITE, b"w2"))
        fsync = asyncio.create_task(sender.send(FrameType.FSYNC, b"f"))
        after = asyncio.create_task(sender.send(FrameType.WRITE, b"w3"))
        assert await write == 2  # acknowledged on receipt while apply is paused
        await asyncio.sleep(0.05)
        assert not fsync.done() and not after.done()
        peer.gate.set()
        assert (await fsync, await after) == (3, 4)
        assert [f.seq for f in peer.applied][:3] == [1, 2, 3]

    run(scenario, async_mode="second")


def test_receiver_that_stops_acking_makes_the_sender_time_out_once() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        peer.gate.clear()
        waiters = [asyncio.create_task(sender.send(FrameType.WRITE, b"x")) for _ in range(5)]
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, PeerTimeout) for r in results)
        assert "did not acknowledge #1 within sendtimeout 0.3s" in str(results[0])
        assert len(lost) == 1 and "node2" in lost[0]
        with pytest.raises(PeerTimeout):
            await sender.send(FrameType.WRITE, b"late")
        assert len(lost) == 1
        peer.gate.set()

    run(scenario, async_mode="none", sendtimeout=0.3)


@pytest.mark.parametrize("ping_interval", [0.05, 1.0])
def test_idle_connection_stays_up_with_pings(ping_interval: float) -> None:
    """Pings keep an idle peer alive, also when asked less often than sendtimeout allows."""

    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        await asyncio.sleep(0.5)  # longer than sendtimeout: PONGs keep the peer alive
        assert await sender.send(FrameType.MKDIR, b"d") == 1
        assert lost == []

    async def bounded() -> None:
        peer = Peer()
        port = await peer.receiver.start("127.0.0.1", 0)
        lost: list[str] = []
        sender = await Sender.connect(
            "127.0.0.1",
            port,
            PRIMARY,
            sendtimeout=0.3,
            ping_interval=ping_interval,
            on_peer_lost=lost.append,
        )
        try:
            await scenario(peer, sender, lost)
        finally:
            await sender.close()
            await peer.receiver.close()

    asyncio.run(asyncio.wait_for(bounded(), 30))


def test_connection_reset_fails_waiters_at_once_and_reports_once() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        await sender.send(FrameType.WRITE, b"a")
        peer.gate.clear()
        waiters = [asyncio.create_task(sender.send(FrameType.WRITE, b"x")) for _ in range(3)]
        await asyncio.sleep(0.05)
        await peer.receiver.close()  # aborts the connection: the sender sees EOF/RST
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, PeerLost) and not isinstance(r, PeerTimeout) for r in results)
        assert len(lost) == 1 and "node2" in lost[0]
        with pytest.raises(PeerLost):
            await sender.send(FrameType.WRITE, b"late")

    run(scenario, async_mode="none")


def test_apply_failure_is_reported_to_the_sender_as_an_error() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        peer.fail_on = 2
        await sender.send(FrameType.WRITE, b"a")
        with pytest.raises(PeerLost, match="could not apply #2: ENOSPC"):
            await sender.send(FrameType.WRITE, b"b")
        assert len(lost) == 1 and "No space left on device" in lost[0]

    run(scenario, async_mode="none")


def test_local_close_fails_waiters_without_reporting_a_loss() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        peer.gate.clear()
        waiter = asyncio.create_task(sender.send(FrameType.WRITE, b"x"))
        await asyncio.sleep(0.02)
        await sender.close()
        with pytest.raises(PeerLost, match="closed locally"):
            await waiter
        assert lost == []
        peer.gate.set()

    run(scenario, async_mode="none")


def test_wrong_key_is_refused_on_both_sides_with_the_message() -> None:
    async def scenario() -> None:
        receiver = Receiver(SECONDARY, _never, async_mode="second")
        port = await receiver.start("127.0.0.1", 0)
        try:
            wrong = Identity(bytes(range(1, 33)), "node1", "node2", "mirror", 0)
            with pytest.raises(AuthenticationError) as caught:
                await Sender.connect(
                    "127.0.0.1", port, wrong, sendtimeout=1, on_peer_lost=_unexpected
                )
            assert str(caught.value) == f"peer node2 failed authentication: {WRONG_KEY_TEXT}"
            while not receiver.refusals:
                await asyncio.sleep(0.01)
            assert receiver.refusals == [f"peer node1 refused authentication: {WRONG_KEY_TEXT}"]
        finally:
            await receiver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_only_the_expected_peer_is_accepted() -> None:
    async def scenario() -> None:
        receiver = Receiver(SECONDARY, _never)
        port = await receiver.start("127.0.0.1", 0)
        try:
            stranger = Identity(KEY, "node3", "node2", "mirror", 0)
            with pytest.raises(PeerRefused, match="peer node3 is not the expected peer node1"):
                await Sender.connect(
                    "127.0.0.1", port, stranger, sendtimeout=1, on_peer_lost=_unexpected
                )
            assert receiver.peers == []
            assert "node3 is not the expected peer" in receiver.refusals[0]
        finally:
            await receiver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_reconnecting_peer_replaces_its_old_connection() -> None:
    async def scenario() -> None:
        peer = Peer()
        port = await peer.receiver.start("127.0.0.1", 0)
        lost: list[str] = []
        try:
            first = await Sender.connect(
                "127.0.0.1", port, PRIMARY, sendtimeout=5, on_peer_lost=lost.append
            )
            assert await first.send(FrameType.WRITE, b"1") == 1
            second = await Sender.connect(
                "127.0.0.1", port, PRIMARY, sendtimeout=5, on_peer_lost=lost.append
            )
            assert await second.send(FrameType.WRITE, b"again") == 1
            with pytest.raises(PeerLost):
                while True:  # the old connection was dropped by the receiver
                    await first.send(FrameType.WRITE, b"old")
            await first.close()
            await second.close()
            assert len(lost) == 1
        finally:
            await peer.receiver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _never(frame: Frame) -> None:
    raise AssertionError(f"nothing may be applied, got {frame}")


def _unexpected(reason: str) -> None:
    raise AssertionError(f"no connection, so no loss to report: {reason}")


def test_durable_mark_follows_the_receivers_sync() -> None:
    async def scenario() -> None:
        synced: list[int] = []
        peer = Peer()
        peer.receiver = Receiver(
            SECONDARY, peer.apply, sync=lambda: synced.append(len(peer.applied)), sync_interval=0.01
        )
        port = await peer.receiver.start("127.0.0.1", 0)
        seen: list[int] = []
        sender = await Sender.connect(
            "127.0.0.1", port, PRIMARY, sendtimeout=10.0, on_peer_lost=lambda _: None
        )
        sender.on_durable(seen.append)
        try:
            for _ in range(5):
                await sender.send(FrameType.WRITE, b"h", b"d")
            assert sender.last_seq == 5
            while sender.durable < 5:
                await asyncio.sleep(0.01)
            # Durable only after a sync that ran once those requests were applied.
            assert synced and max(synced) == 5
            assert seen == sorted(seen) and seen[-1] == 5
        finally:
            await sender.close()
            await peer.receiver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_receiver_without_sync_never_claims_durability() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        for _ in range(3):
            await sender.send(FrameType.WRITE, b"h", b"d")
        await asyncio.sleep(0.05)
        assert sender.durable == 0

    run(scenario)
