"""The receiver's bulk path over real loopback TCP: large payloads, flow control, the bytes that
arrive with the handshake, stop_reading (drain), malformed frames."""

from __future__ import annotations

import asyncio
import random
import struct
from typing import Any

import pytest

from hakit.replication import handshake, transport
from hakit.replication.transport import AsyncMode, PeerLost, Receiver, Sender
from hakit.replication.wire import Frame, FrameType

from .test_replication_transport_unit import PRIMARY, SECONDARY, Peer, run

MiB = 1024 * 1024


def _payloads(count: int, size: int, seed: int = 5) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(size) for _ in range(count)]


@pytest.mark.parametrize("mode", ["second", "none"])
def test_large_writes_arrive_whole_in_order_as_bytearrays(mode: AsyncMode) -> None:
    payloads = _payloads(6, MiB) + _payloads(3, 70_000, seed=6) + [b"tiny"]

    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        acks = [
            sender.submit(FrameType.WRITE, n.to_bytes(2, "big"), p) for n, p in enumerate(payloads)
        ]
        assert await asyncio.gather(*acks) == list(range(1, len(payloads) + 1))
        one = await sender.send(FrameType.WRITE, b"alone", payloads[0])  # a lone large write
        assert one == len(payloads) + 1
        while len(peer.applied) < len(payloads) + 1:
            await asyncio.sleep(0.01)
        assert [f.payload for f in peer.applied] == [*payloads, payloads[0]]
        assert [f.header for f in peer.applied[:-1]] == [
            n.to_bytes(2, "big") for n in range(len(payloads))
        ]
        assert isinstance(peer.applied[0].payload, bytearray)
        assert isinstance(peer.applied[-2].payload, bytes)  # small: bytes
        assert lost == []

    run(scenario, async_mode=mode)


def test_reading_pauses_while_the_backlog_is_high_and_resumes_below_low(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transport, "BACKLOG_HIGH", 1 * MiB)
    monkeypatch.setattr(transport, "BACKLOG_LOW", 256 * 1024)
    payloads = _payloads(64, 256 * 1024)

    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        peer.gate.clear()
        while peer.receiver._current is None:  # its end of the handshake may still be running
            await asyncio.sleep(0.01)
        connection = peer.receiver._current
        acks = [sender.submit(FrameType.WRITE, b"w", p) for p in payloads]
        deadline = asyncio.get_running_loop().time() + 10
        while not connection._flow_paused:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # reading stays paused: the backlog does not grow past high
        assert not connection._transport.is_reading()  # type: ignore[attr-defined]
        # Over high by at most the frame that crossed it, one large frame being received.
        assert connection._backlog <= 1 * MiB + 2 * 256 * 1024
        assert sender.outstanding > 0
        peer.gate.set()
        await asyncio.gather(*acks)
        while len(peer.applied) < len(payloads):
            await asyncio.sleep(0.01)
        assert [f.payload for f in peer.applied] == payloads
        assert not connection._flow_paused
        assert connection._transport.is_reading()  # type: ignore[attr-defined]
        assert connection._backlog == 0
        assert lost == []

    run(scenario)


def _slow_secondary_handshake(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    """Make the receiver's handshake end ``delay`` s late: the sender's first frames are then in
    its StreamReader's buffer when the connection is switched to the bulk protocol."""
    real = handshake.authenticate

    async def late(*args: Any, **kwargs: Any) -> Any:
        peer = await real(*args, **kwargs)
        if args[7] == "secondary":
            await asyncio.sleep(delay)
        return peer

    monkeypatch.setattr(handshake, "authenticate", late)


def test_frames_sent_with_the_handshake_are_taken_from_the_stream_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow_secondary_handshake(monkeypatch, 0.3)
    fed: list[int] = []
    real_feed = transport._FrameProtocol.feed

    def feed(self: transport._FrameProtocol, data: bytes) -> None:
        fed.append(len(data))
        real_feed(self, data)

    monkeypatch.setattr(transport._FrameProtocol, "feed", feed)
    # Over twice the StreamReader's limit: it pauses the socket, which must be resumed.
    payloads = _payloads(10, MiB) + [b"small"] * 5 + _payloads(2, 100_000)

    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        acks = [sender.submit(FrameType.WRITE, b"h", p) for p in payloads]
        await asyncio.gather(*acks)
        while len(peer.applied) < len(payloads):
            await asyncio.sleep(0.01)
        assert [f.payload for f in peer.applied] == payloads
        assert [f.seq for f in peer.applied] == list(range(1, len(payloads) + 1))
        assert lost == []
        # (the sender takes its socket over too: its own feed is empty)
        assert fed and max(fed) > 2 * transport.STREAM_LIMIT  # the reader had paused the socket

    run(scenario)


def test_frames_then_eof_during_the_handshake_are_all_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _slow_secondary_handshake(monkeypatch, 0.3)

    async def scenario() -> None:
        peer = Peer()
        port = await peer.receiver.start("127.0.0.1", 0)
        try:
            sender = await Sender.connect(
                "127.0.0.1", port, PRIMARY, sendtimeout=10, on_peer_lost=lambda _: None
            )
            acks = [sender.submit(FrameType.WRITE, b"h", bytes([n]) * 100_000) for n in range(3)]
            await asyncio.sleep(0.05)  # written, then the connection closes
            await sender.close()
            for ack in acks:
                with pytest.raises(PeerLost):
                    await ack
            deadline = asyncio.get_running_loop().time() + 10
            while len(peer.applied) < 3:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            assert [f.payload for f in peer.applied] == [bytes([n]) * 100_000 for n in range(3)]
        finally:
            await peer.receiver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_drain_applies_everything_received_then_closes() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        peer.gate.clear()
        for n in range(20):  # async="second": acknowledged on receipt, none applied yet
            await sender.send(FrameType.WRITE, b"h", bytes([n]) * 70_000)
        assert peer.applied == []
        drained = asyncio.create_task(peer.receiver.drain())
        await asyncio.sleep(0.05)
        assert not drained.done()
        peer.gate.set()
        await asyncio.wait_for(drained, 10)
        assert [f.seq for f in peer.applied] == list(range(1, 21))
        assert not peer.receiver.connected
        with pytest.raises(PeerLost):
            while True:  # the receiver closed the connection
                await sender.send(FrameType.WRITE, b"after")

    run(scenario)


def test_a_malformed_frame_ends_the_connection_after_applying_what_came_before() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        await sender.send(FrameType.WRITE, b"ok", b"x" * 100_000)
        sender._writer.write(struct.pack("!IBQH", 11, 250, 2, 0))  # an unknown type
        with pytest.raises(PeerLost):
            await asyncio.wait_for(sender.send(FrameType.WRITE, b"never"), 10)
        assert lost and "closed" in lost[0]
        assert [f.seq for f in peer.applied] == [1]

    run(scenario)


def test_a_gap_in_the_stream_ends_the_connection() -> None:
    async def scenario(peer: Peer, sender: Sender, lost: list[str]) -> None:
        await sender.send(FrameType.WRITE, b"ok")
        from hakit.replication.wire import encode_frame

        sender._writer.write(encode_frame(Frame(FrameType.WRITE, 5, b"gap")))
        with pytest.raises(PeerLost):
            await asyncio.wait_for(sender.send(FrameType.WRITE, b"never"), 10)
        assert [f.seq for f in peer.applied] == [1]

    run(scenario)


def test_receiver_serves_again_after_a_connection_is_replaced() -> None:
    async def scenario() -> None:
        peer = Peer()
        peer.receiver = Receiver(SECONDARY, peer.apply)
        port = await peer.receiver.start("127.0.0.1", 0)
        try:
            for _ in range(3):
                sender = await Sender.connect(
                    "127.0.0.1", port, PRIMARY, sendtimeout=5, on_peer_lost=lambda _: None
                )
                assert await sender.send(FrameType.WRITE, b"h", b"p" * MiB) == 1
                await sender.close()
            assert len(peer.applied) == 3
        finally:
            await peer.receiver.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))
