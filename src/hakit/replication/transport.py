"""The replication connection: a pipelining sender and an in-order receiver over TCP (asyncio).

Theory of operation (docs/design/replication.md §4, §5, §7):

* :class:`Sender` (primary) connects, authenticates (:mod:`handshake`), then numbers every request
  and queues it *synchronously* in :meth:`Sender.send` before its first ``await``, so the stream
  order is the callers' order while any number of callers wait for their acks at once. Frames
  queued during one loop turn leave in one write. Acks are cumulative: ``ACK n`` releases every
  waiter up to ``n``.
* The sender gives up on the peer (every waiter gets :class:`PeerTimeout` or :class:`PeerLost`, and
  ``on_peer_lost(reason)`` is called exactly once) when the oldest unacknowledged request is older
  than ``sendtimeout``, when nothing (not even a ``PONG`` to its idle ``PING``) was heard for
  ``sendtimeout``, when the peer reports an ``ERROR``, or at once on EOF/reset. What to do with the
  already-applied local changes is the caller's business (the sink layer waits for the generation
  persist, §7).
* :class:`Receiver` (secondary) listens, accepts connections that authenticate as the expected
  peer, and hands each request to ``apply`` strictly in stream order (one task). It acknowledges
  on receipt with ``async="second"`` and after ``apply`` with ``async="none"``; frames in
  :data:`wire.ACK_AFTER_APPLY` (``FSYNC``) always after ``apply``, and since acks are cumulative
  nothing after such a frame is acknowledged before it. Acks computed during one loop turn leave
  as one ``ACK``. If ``apply`` raises, the receiver sends ``ERROR`` and closes the connection.

Bulk data path (a 1 MiB WRITE): the sender writes a large payload as its own write, never joined
to the frame's prefix or to other frames (a copy of the whole payload each). After the
handshake the receiver's socket is switched from the StreamReader to a ``BufferedProtocol``
whose buffers come from :class:`wire.FrameReceiver`: small frames are read many per ``recv``, a
large payload is received straight into the bytearray that ``apply`` gets as the frame's
payload. Flow control: reading pauses while the requests received and not applied yet hold more
than ``BACKLOG_HIGH`` bytes and resumes below ``BACKLOG_LOW``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno as errno_codes
import logging
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from hakit.errors import PeerProtocolError
from hakit.replication import handshake
from hakit.replication.handshake import AuthenticationError, PeerInfo
from hakit.replication.wire import (
    ACK_AFTER_APPLY,
    MAX_FRAME,
    REQUEST_TYPES,
    Frame,
    FrameReceiver,
    FrameType,
    ProtocolError,
    encode_frame,
    encode_parts,
    error_frame,
    parse_error,
)

log = logging.getLogger(__name__)

AsyncMode = Literal["second", "none"]

# ACK header: the highest request the receiver has synced to disk (after ``sync``), so that the
# sender knows which acknowledged requests a crash of the receiver could still lose.
_DURABLE = struct.Struct("!Q")
SYNC_INTERVAL = 0.5
# The stream reader's buffer: asyncio pauses the socket whenever more than twice this is buffered;
# with the 64 KiB default a 1 MiB WRITE frame took 8 pause/resume rounds (3.5 ms per MiB on
# loopback, measured), with a frame-sized buffer one read.
STREAM_LIMIT = MAX_FRAME
# Payloads from this size are written on their own (not joined to their prefix or other frames).
SEPARATE_WRITE = 64 * 1024
# The receiver pauses reading while received but unapplied requests hold more than BACKLOG_HIGH
# bytes, and resumes once they hold at most BACKLOG_LOW.
BACKLOG_HIGH = 64 * 1024 * 1024
BACKLOG_LOW = 16 * 1024 * 1024


class PeerLost(PeerProtocolError):
    """The peer cannot acknowledge this request any more (connection broken, error, closed)."""


class PeerTimeout(PeerLost):
    """The peer did not acknowledge (or answer pings) within ``sendtimeout``."""


@dataclass(frozen=True)
class Identity:
    """Who we are and who the peer must be on one replicated directory's connection."""

    key: bytes
    local: str
    peer: str
    module: str
    index: int
    generation: int = 0


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Batcher:
    """Writes the first frame of a loop turn at once (a lone request or ack must not wait a turn:
    that costs every synchronous write a loop iteration on each side) and collects the frames
    queued after it in the same turn, to write them in one go at the end of the turn.

    A payload of at least ``SEPARATE_WRITE`` bytes is written on its own, after what precedes it:
    the transport sends a write at once when its buffer is empty, and joining would copy it."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._chunks: list[bytes] = []
        self._scheduled = False

    def queue(self, data: bytes, payload: bytes = b"") -> None:
        """Queue ``data`` then ``payload`` (a frame's prefix and its payload, or a whole frame)."""
        if self._scheduled:
            self._chunks.append(data)
            if payload:
                self._chunks.append(payload)
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)
        if self._writer.is_closing():
            return
        if len(payload) >= SEPARATE_WRITE:
            self._writer.write(data)
            self._writer.write(payload)
        else:
            self._writer.write(data + payload if payload else data)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._chunks:
            return
        chunks = self._chunks
        self._chunks = []
        if self._writer.is_closing():
            return
        small: list[bytes] = []
        for chunk in chunks:
            if len(chunk) < SEPARATE_WRITE:
                small.append(chunk)
                continue
            if small:
                self._writer.write(small[0] if len(small) == 1 else b"".join(small))
                small = []
            self._writer.write(chunk)
        if small:
            self._writer.write(small[0] if len(small) == 1 else b"".join(small))


class Sender:
    """The primary's end of one replication connection (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerInfo,
        *,
        sendtimeout: float,
        on_peer_lost: Callable[[str], None],
        ping_interval: float = 1.0,
        on_resync_request: Callable[[str], None] | None = None,
    ) -> None:
        self.peer = peer
        self._on_resync_request = on_resync_request
        # Highest request the peer has on its disk (synced), from the ACKs' header: what a crash
        # of the peer cannot lose. Requests after it are journaled if the peer is lost (issue 5).
        self.durable = 0
        self._on_durable: Callable[[int], None] | None = None
        self._on_need: Callable[[Frame], None] | None = None
        self._writer = writer
        self._batch = _Batcher(writer)
        self._sendtimeout = sendtimeout
        # An idle peer must be pinged several times per sendtimeout, or it would look dead.
        self._ping_interval = min(ping_interval, sendtimeout / 3)
        self._on_peer_lost = on_peer_lost
        self._seq = 0
        # seq -> (sent at, future), in increasing seq order: acks release a prefix.
        self._waiting: collections.OrderedDict[int, tuple[float, asyncio.Future[int]]] = (
            collections.OrderedDict()
        )
        self._loop = asyncio.get_running_loop()
        self._last_heard = self._loop.time()
        self._last_ping = self._loop.time()
        self._lost: PeerLost | None = None
        self._tasks = [asyncio.create_task(self._tick_loop(), name="replication-sender-ticker")]
        # Acks are handled in the loop turn they arrive in (no reader task to wake first): the
        # application's write waits for them.
        self._protocol = _take_over(reader, writer.transport, self._on_frame, self._end_reading)

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        identity: Identity,
        *,
        sendtimeout: float,
        on_peer_lost: Callable[[str], None],
        ping_interval: float = 1.0,
        handshake_timeout: float = 5.0,
        on_resync_request: Callable[[str], None] | None = None,
    ) -> Sender:
        """Connect to the peer's receiver, authenticate, and return the ready sender.

        Raises OSError if the peer is unreachable, AuthenticationError/ProtocolError if the
        handshake is refused (the connection is closed in every case).
        """
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=STREAM_LIMIT), handshake_timeout
        )
        try:
            _nodelay(writer)
            peer = await handshake.authenticate(
                reader,
                writer,
                identity.key,
                identity.local,
                identity.peer,
                identity.module,
                identity.index,
                "primary",
                generation=identity.generation,
                timeout=handshake_timeout,
            )
        except BaseException as exc:
            writer.close()
            if isinstance(exc, asyncio.IncompleteReadError):
                raise PeerLost(
                    f"replication peer {host}:{port} closed the connection during the handshake"
                ) from None
            raise
        return cls(
            reader,
            writer,
            peer,
            sendtimeout=sendtimeout,
            on_peer_lost=on_peer_lost,
            ping_interval=ping_interval,
            on_resync_request=on_resync_request,
        )

    @property
    def outstanding(self) -> int:
        """Requests sent and not acknowledged yet."""
        return len(self._waiting)

    async def send(self, frame_type: FrameType, header: bytes, payload: bytes = b"") -> int:
        """Send one request and wait for its acknowledgement; return its sequence number.

        The request is numbered and queued before the first suspension point, so concurrent
        callers' requests go out in the order they called. Raises PeerTimeout/PeerLost if the
        peer cannot acknowledge it, ValueError for a frame that cannot be encoded.
        """
        return await self.submit(frame_type, header, payload)

    def submit(
        self, frame_type: FrameType, header: bytes, payload: bytes = b""
    ) -> asyncio.Future[int]:
        """Number and queue one request now (synchronously); the future is its acknowledgement.

        For callers that must place a request in the stream at an exact point without awaiting
        (the resync copier reads a block and queues it in one step). Raises PeerLost at once if
        the peer is already lost, ValueError for a frame that cannot be encoded.
        """
        if frame_type not in REQUEST_TYPES:
            raise ValueError(f"{frame_type.name} is not a replication request")
        if self._lost is not None:
            raise self._lost
        prefix, payload = encode_parts(Frame(frame_type, self._seq + 1, header, payload))
        self._seq += 1
        future: asyncio.Future[int] = self._loop.create_future()
        self._waiting[self._seq] = (self._loop.time(), future)
        self._batch.queue(prefix, payload)
        return future

    @property
    def last_seq(self) -> int:
        """The sequence number of the last request submitted."""
        return self._seq

    def on_need(self, callback: Callable[[Frame], None] | None) -> None:
        """Call ``callback(frame)`` for each ``NEED`` frame (block-hash sync); it may raise
        ProtocolError, which makes the peer lost."""
        self._on_need = callback

    def on_durable(self, callback: Callable[[int], None] | None) -> None:
        """Call ``callback(seq)`` whenever the peer reports requests up to ``seq`` durable."""
        self._on_durable = callback

    @property
    def lost(self) -> bool:
        """True once the peer was given up (every later request fails at once)."""
        return self._lost is not None

    @property
    def queued_bytes(self) -> int:
        """Bytes written to the socket's buffer but not sent yet (flow control for bulk copies)."""
        return self._writer.transport.get_write_buffer_size()

    async def close(self) -> None:
        """Close the connection; waiters get PeerLost (``on_peer_lost`` is not called)."""
        self._fail(PeerLost("replication connection closed locally"), report=False)
        await self._shutdown()

    async def _shutdown(self) -> None:
        others = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    def _fail(self, error: PeerLost, *, report: bool = True) -> None:
        """Fail every waiter with ``error``; report the loss once."""
        if self._lost is not None:
            return
        self._lost = error
        self._protocol.end(None)  # no frame is taken any more
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        while self._waiting:
            _, (_, future) = self._waiting.popitem(last=False)
            if not future.done():
                future.set_exception(error)
        self._writer.close()
        if report:
            log.warning("replication peer %s lost: %s", self.peer.node, error)
            self._on_peer_lost(str(error))

    def _release(self, upto: int) -> None:
        while self._waiting:
            seq = next(iter(self._waiting))
            if seq > upto:
                break
            _, future = self._waiting.pop(seq)
            if not future.done():
                future.set_result(seq)

    def _on_frame(self, frame: Frame) -> None:
        """One frame from the receiver, in stream order (ProtocolError: the peer is lost)."""
        self._last_heard = self._loop.time()
        if frame.type is FrameType.ACK:
            if frame.seq > self._seq:
                raise ProtocolError(f"ACK {frame.seq} for a request never sent")
            self._release(frame.seq)
            if len(frame.header) == _DURABLE.size:
                (durable,) = _DURABLE.unpack(frame.header)
                if durable > frame.seq:
                    raise ProtocolError(f"ACK {frame.seq} says #{durable} is durable")
                if durable > self.durable:
                    self.durable = durable
                    if self._on_durable is not None:
                        self._on_durable(durable)
        elif frame.type is FrameType.ERROR:
            code, text = parse_error(frame)
            name = errno_codes.errorcode.get(code, str(code))
            self._protocol.end(None)
            self._fail(
                PeerLost(f"peer {self.peer.node} could not apply #{frame.seq}: {name} {text}")
            )
        elif frame.type is FrameType.PING:
            self._batch.queue(encode_frame(Frame(FrameType.PONG)))
        elif frame.type is FrameType.RESYNC_REQUEST and self._on_resync_request:
            self._on_resync_request(frame.header.decode("utf-8", "replace"))
        elif frame.type is FrameType.NEED and self._on_need is not None:
            self._on_need(frame)
        elif frame.type is not FrameType.PONG:
            raise ProtocolError(f"unexpected {frame.type.name} frame from the receiver")

    def _end_reading(self, reason: BaseException | None) -> None:
        """No more frames will come (called once, by the protocol): the peer is lost."""
        peer = self.peer.node
        if reason is None or self._lost is not None:
            return  # ended locally (close, ERROR)
        if isinstance(reason, asyncio.IncompleteReadError):
            self._fail(PeerLost(f"peer {peer} closed the replication connection"))
        elif isinstance(reason, ProtocolError):
            self._fail(PeerLost(f"peer {peer} broke the replication protocol: {reason}"))
        else:
            self._fail(PeerLost(f"replication connection to {peer} broken: {reason}"))

    async def _tick_loop(self) -> None:
        tick = self._ping_interval / 4
        while self._lost is None:
            await asyncio.sleep(tick)
            now = self._loop.time()
            if self._waiting:
                seq, (sent, _) = next(iter(self._waiting.items()))
                if now - sent > self._sendtimeout:
                    self._fail(
                        PeerTimeout(
                            f"peer {self.peer.node} did not acknowledge #{seq} within "
                            f"sendtimeout {self._sendtimeout:g}s"
                        )
                    )
            elif now - self._last_heard > self._sendtimeout:
                self._fail(
                    PeerTimeout(
                        f"peer {self.peer.node} did not answer for sendtimeout "
                        f"{self._sendtimeout:g}s"
                    )
                )
            elif now - max(self._last_ping, self._last_heard) >= self._ping_interval:
                self._last_ping = now
                self._batch.queue(encode_frame(Frame(FrameType.PING)))


Apply = Callable[[Frame], Awaitable[None]]


class _FrameProtocol(asyncio.BufferedProtocol):
    """Either end's socket protocol after the handshake: ``recv_into`` the buffers of a
    :class:`FrameReceiver`. Write-side events and the connection's loss are passed on to the
    StreamReaderProtocol it replaced, so the StreamWriter (acks, drain, wait_closed) still works."""

    def __init__(
        self,
        frames: FrameReceiver,
        stream_protocol: asyncio.BaseProtocol,
        on_end: Callable[[BaseException | None], None],
    ) -> None:
        self._frames = frames
        self._stream_protocol = stream_protocol
        self._on_end = on_end
        self.ended = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if self.ended:
            return
        try:
            self._frames.received(nbytes)
        except ProtocolError as exc:
            self.end(exc)

    def eof_received(self) -> bool:
        self.end(asyncio.IncompleteReadError(b"", None))
        return True  # keep the transport open: acks and ERROR may still have to leave

    def connection_lost(self, exc: Exception | None) -> None:
        self.end(exc if exc is not None else asyncio.IncompleteReadError(b"", None))
        self._stream_protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._stream_protocol.pause_writing()

    def resume_writing(self) -> None:
        self._stream_protocol.resume_writing()

    def feed(self, data: bytes) -> None:
        """Take ``data`` as if received from the socket (what the StreamReader held)."""
        view = memoryview(data)
        while view and not self.ended:
            buffer = self._frames.get_buffer()
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            view = view[n:]
            self.buffer_updated(n)

    def end(self, reason: BaseException | None) -> None:
        """Stop taking frames (``reason``: why; None when the receiver stops reading)."""
        if self.ended:
            return
        self.ended = True
        self._on_end(reason)


def _take_over(
    reader: asyncio.StreamReader,
    transport: asyncio.BaseTransport,
    on_frame: Callable[[Frame], None],
    on_end: Callable[[BaseException | None], None],
) -> _FrameProtocol:
    """Switch the socket from the handshake's StreamReader to a :class:`_FrameProtocol` that
    calls ``on_frame`` for each frame, in the loop turn it arrives in; bytes the reader already
    holds (frames sent right after the handshake) are cut first."""
    protocol = _FrameProtocol(FrameReceiver(on_frame, MAX_FRAME), transport.get_protocol(), on_end)
    transport.set_protocol(protocol)
    # StreamReader has no public way to take what it holds without waiting for more: take its
    # buffer (a bytearray in every CPython asyncio) and empty it.
    held: bytearray = reader._buffer  # type: ignore[attr-defined]
    protocol.feed(bytes(held))
    held.clear()
    if protocol.ended:
        return protocol
    if reader.exception() is not None:
        protocol.end(reader.exception())
    elif reader.at_eof() or transport.is_closing():
        protocol.end(asyncio.IncompleteReadError(b"", None))
    elif isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
        transport.resume_reading()  # the StreamReader had paused it (its buffer was full)
    return protocol


class _Connection:
    """One authenticated connection on the receiver: read, apply in order, acknowledge."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: PeerInfo,
        apply: Apply,
        async_mode: AsyncMode,
        sync: Callable[[], None] | None = None,
        sync_interval: float = SYNC_INTERVAL,
        *,
        backlog_high: int | None = None,
        backlog_low: int | None = None,
    ) -> None:
        self._sync = sync
        self._sync_interval = sync_interval
        self._durable = 0
        self.peer = peer
        self._writer = writer
        self._transport = writer.transport
        self._batch = _Batcher(writer)
        self._apply = apply
        self._async_mode = async_mode
        # None ends the queue: what was received before the connection ended is still applied
        # (with async="second" it was acknowledged already).
        self._queue: asyncio.Queue[Frame | None] = asyncio.Queue()
        self._received = 0  # highest seq read
        self._applied = 0  # highest seq applied
        self._barriers: collections.deque[int] = collections.deque()  # unapplied ack-after-apply
        self._acked = 0
        self._ack_scheduled = False
        # Flow control: bytes of the requests received and not applied yet.
        self._backlog = 0
        self._backlog_high = BACKLOG_HIGH if backlog_high is None else backlog_high
        self._backlog_low = BACKLOG_LOW if backlog_low is None else backlog_low
        self._flow_paused = False
        self._stopped = False
        # Done when no more frames will be read (peer gone, protocol error, stop_reading).
        self._reading_ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._protocol = _take_over(reader, self._transport, self._on_frame, self._end_reading)

    async def run(self) -> None:
        """Serve until the peer goes away or breaks the protocol, or ``apply`` fails."""
        applier = asyncio.create_task(self._apply_loop(), name="replication-receiver-apply")
        syncer = asyncio.create_task(self._sync_loop(), name="replication-receiver-sync")
        try:
            await asyncio.wait((applier, self._reading_ended), return_when=asyncio.FIRST_COMPLETED)
            if self._reading_ended.done() and not applier.done():
                # The stream ended (peer gone, or stop_reading): apply what was received.
                self._queue.put_nowait(None)
                await applier
        finally:
            self._protocol.end(None)
            for task in (applier, syncer):
                task.cancel()
            await asyncio.gather(applier, syncer, return_exceptions=True)
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()

    def send_control(self, frame: Frame) -> None:
        """Queue a control frame to the sender (e.g. RESYNC_REQUEST)."""
        self._batch.queue(encode_frame(frame))

    def stop_reading(self) -> None:
        """Stop reading from the peer; what was received is still applied before run() ends."""
        self._stopped = True
        self._pause()
        self._protocol.end(None)

    def abort(self) -> None:
        """Drop the connection at once (reset), e.g. when the peer reconnected."""
        transport = self._writer.transport
        transport.abort()

    def _pause(self) -> None:
        transport = self._transport
        if isinstance(transport, asyncio.ReadTransport) and not transport.is_closing():
            transport.pause_reading()

    def _end_reading(self, reason: BaseException | None) -> None:
        """No more frames will be taken (called once, by the protocol)."""
        peer = self.peer.node
        if isinstance(reason, asyncio.IncompleteReadError):
            log.info("replication peer %s closed the connection", peer)
        elif isinstance(reason, ProtocolError):
            log.warning("replication peer %s broke the protocol: %s", peer, reason)
        elif reason is not None:
            log.warning("replication connection from %s broken: %s", peer, reason)
        self._pause()
        if not self._reading_ended.done():
            self._reading_ended.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        """One frame received, in stream order (called by the FrameReceiver)."""
        if frame.type is FrameType.PING:
            self._batch.queue(encode_frame(Frame(FrameType.PONG)))
        elif frame.type is FrameType.PONG:
            pass
        elif frame.type in REQUEST_TYPES:
            if frame.seq != self._received + 1:
                raise ProtocolError(
                    f"request #{frame.seq} after #{self._received} (a gap in the stream)"
                )
            self._received = frame.seq
            # async="none" acknowledges after applying, except HASHES: its answer is
            # the NEED, and hashing a large file must not look like a dead peer.
            if frame.type in ACK_AFTER_APPLY or (
                self._async_mode == "none" and frame.type is not FrameType.HASHES
            ):
                self._barriers.append(frame.seq)
            self._backlog += len(frame.header) + len(frame.payload)
            if self._backlog > self._backlog_high and not self._flow_paused:
                self._flow_paused = True
                self._pause()
            self._queue.put_nowait(frame)
            self._schedule_ack()
        else:
            raise ProtocolError(f"unexpected {frame.type.name} frame from the sender")

    def _applied_bytes(self, frame: Frame) -> None:
        self._backlog -= len(frame.header) + len(frame.payload)
        if self._flow_paused and self._backlog <= self._backlog_low:
            self._flow_paused = False
            transport = self._transport
            if (
                not self._stopped
                and not self._protocol.ended
                and isinstance(transport, asyncio.ReadTransport)
                and not transport.is_closing()
            ):
                transport.resume_reading()

    async def _apply_loop(self) -> None:
        while True:
            frame = await self._queue.get()
            if frame is None:
                return
            try:
                await self._apply(frame)
            except Exception as exc:  # the peer is out of date: tell it, and stop
                code = exc.errno if isinstance(exc, OSError) and exc.errno else errno_codes.EIO
                log.error(
                    "replication: cannot apply %s #%d from %s: %s",
                    frame.type.name,
                    frame.seq,
                    self.peer.node,
                    exc,
                )
                self._batch.queue(encode_frame(error_frame(frame.seq, code, str(exc))))
                await asyncio.sleep(0)  # let the batch leave before the connection closes
                return
            self._applied = frame.seq
            self._applied_bytes(frame)
            if self._barriers and self._barriers[0] == frame.seq:
                self._barriers.popleft()
            self._schedule_ack()

    async def _sync_loop(self) -> None:
        """Make what was applied durable every ``sync_interval`` and tell the sender."""
        if self._sync is None:
            return
        while True:
            await asyncio.sleep(self._sync_interval)
            target = self._applied
            if target <= self._durable:
                continue
            await asyncio.to_thread(self._sync)
            self._durable = target
            self._batch.queue(
                encode_frame(Frame(FrameType.ACK, self._acked, _DURABLE.pack(self._durable)))
            )

    def _ackable(self) -> int:
        """The highest seq every request up to which may be acknowledged."""
        if self._barriers:
            return max(self._applied, self._barriers[0] - 1)
        return self._received

    def _schedule_ack(self) -> None:
        """Acknowledge what may be: at once if no ACK left during this loop turn (the primary's
        application is waiting for it; with async="second" it leaves before the request is
        applied), else once at the end of the turn, for everything received meanwhile."""
        if self._ack_scheduled:
            return
        self._send_ack()
        self._ack_scheduled = True
        asyncio.get_running_loop().call_soon(self._end_of_turn_ack)

    def _end_of_turn_ack(self) -> None:
        self._ack_scheduled = False
        self._send_ack()

    def _send_ack(self) -> None:
        upto = self._ackable()
        if upto > self._acked:
            self._acked = upto
            durable = _DURABLE.pack(self._durable)
            self._batch.queue(encode_frame(Frame(FrameType.ACK, upto, durable)))


class Receiver:
    """The secondary's end: listens, authenticates the expected peer, applies its requests.

    One connection is served at a time: a new authenticated connection from the peer (it
    reconnected) replaces the old one. ``refusals`` keeps the reason of each refused handshake
    (its count is the design's counter).
    """

    def __init__(
        self,
        identity: Identity,
        apply: Apply,
        *,
        async_mode: AsyncMode = "second",
        handshake_timeout: float = 5.0,
        sync: Callable[[], None] | None = None,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        self._sync = sync
        self._sync_interval = sync_interval
        self._identity = identity
        self._apply = apply
        self._async_mode = async_mode
        self._handshake_timeout = handshake_timeout
        self._server: asyncio.Server | None = None
        self._current: _Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refusals: list[str] = []
        self.peers: list[PeerInfo] = []
        self.on_connected: Callable[[PeerInfo], None] | None = None
        self.on_disconnected: Callable[[PeerInfo], None] | None = None

    @property
    def connected(self) -> bool:
        """True while an authenticated peer connection is being served."""
        return self._current is not None

    def send_control(self, frame: Frame) -> bool:
        """Queue a control frame to the connected primary; False if none is connected."""
        if self._current is None:
            return False
        self._current.send_control(frame)
        return True

    def request_resync(self, kind: str) -> bool:
        """Ask the connected primary to copy its tree to us; False if no peer is connected."""
        if self._current is None:
            return False
        self._current.send_control(Frame(FrameType.RESYNC_REQUEST, 0, kind.encode()))
        return True

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); return the port."""
        self._server = await asyncio.start_server(self._accept, host, port, limit=STREAM_LIMIT)
        return int(self._server.sockets[0].getsockname()[1])

    async def drain(self) -> None:
        """Stop listening and reading, apply every request already received, then close.

        Used when this node stops being secondary (failover, stop): with async="second" the
        primary was told those requests arrived, so they must reach the disk."""
        if self._server is not None:
            self._server.close()
        if self._current is not None:
            self._current.stop_reading()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.close()

    async def close(self) -> None:
        """Stop listening and drop the current connection."""
        if self._server is not None:
            self._server.close()
        if self._current is not None:
            self._current.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer), name="replication-receiver")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        where = f"{address[0]}:{address[1]}" if address else "?"
        ident = self._identity
        try:
            _nodelay(writer)
            peer = await handshake.authenticate(
                reader,
                writer,
                ident.key,
                ident.local,
                ident.peer,
                ident.module,
                ident.index,
                "secondary",
                generation=ident.generation,
                timeout=self._handshake_timeout,
            )
        except (AuthenticationError, ProtocolError, TimeoutError) as exc:
            reason = str(exc) or "handshake timed out"
            self.refusals.append(reason)
            log.warning("replication peer %s refused: %s", where, reason)
            writer.close()
            return
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            log.info("replication connection from %s ended during the handshake: %s", where, exc)
            writer.close()
            return
        except BaseException:  # cancelled (the receiver closes) mid-handshake
            writer.close()
            raise
        self.peers.append(peer)
        if self._current is not None:
            log.info("replication peer %s reconnected: dropping its old connection", peer.node)
            self._current.abort()
        connection = _Connection(
            reader,
            writer,
            peer,
            self._apply,
            self._async_mode,
            sync=self._sync,
            sync_interval=self._sync_interval,
        )
        self._current = connection
        if self.on_connected is not None:
            self.on_connected(peer)
        try:
            await connection.run()
        finally:
            if self._current is connection:
                self._current = None
                if self.on_disconnected is not None:
                    self.on_disconnected(peer)
