"""Framing of replication messages on the TCP stream between two replicators.

Theory of operation (docs/design/replication.md §5): the stream is a sequence of frames, big
endian::

    length u32 | type u8 | seq u64 | header_len u16 | header | payload

``length`` counts every byte after itself. ``header`` is the message's fixed-layout struct (paths,
modes, offsets: built by the sender's message codecs), ``payload`` the bulk bytes that need no
parsing (a ``WRITE``'s data, an ``ERROR``'s text), so a large write is never copied into a struct.
``seq`` is the sender's stream position for requests, the highest acknowledged position for
``ACK``, the failed request's position for ``ERROR``, 0 for the handshake and ``PING``/``PONG``.

A frame longer than the agreed limit, shorter than its fixed part, or of an unknown type is a
:class:`ProtocolError`: the peer does not speak this protocol (or the stream is corrupted) and the
connection must be closed; nothing here tries to resynchronize.

Encoding and decoding are pure; :func:`read_frame` is the one asyncio helper. For bulk streams,
:func:`encode_parts` keeps a large payload apart from the bytes before it (the sender writes it
without concatenating), and :class:`FrameReceiver` cuts a stream into frames in buffers it hands
out for ``recv_into`` (an ``asyncio.BufferedProtocol``): a large payload is received straight into
its own buffer, which becomes the frame's payload without any further copy.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from hakit.errors import PeerProtocolError

# Big enough for a FUSE write (128 KiB by default, 1 MiB with max_write) plus its header.
MAX_FRAME = 4 * 1024 * 1024

_LENGTH = struct.Struct("!I")
_FIXED = struct.Struct("!BQH")  # type, seq, header_len
_PREFIX = struct.Struct("!IBQH")  # length, then the fixed part
_ERROR_HEADER = struct.Struct("!I")  # errno
_U64_MAX = 2**64 - 1
_U16_MAX = 2**16 - 1


class FrameType(enum.IntEnum):
    """Every message type of the replication protocol (the ``type`` byte)."""

    # Handshake (§6): the initiator's HELLO, the responder's HELLO_REPLY with its proof, the
    # initiator's HELLO_PROOF. AUTH_FAILED carries the reason a handshake was refused.
    HELLO = 1
    HELLO_REPLY = 2
    HELLO_PROOF = 3
    AUTH_FAILED = 4
    # Requests: each is acknowledged (cumulatively) by ACK.
    CREATE = 10
    MKNOD = 11
    MKDIR = 12
    SYMLINK = 13
    LINK = 14
    UNLINK = 15
    RMDIR = 16
    RENAME = 17
    WRITE = 18
    TRUNCATE = 19
    FALLOCATE = 20
    SETATTR = 21
    SETXATTR = 22
    REMOVEXATTR = 23
    FSYNC = 24
    # Resynchronization (primary -> secondary, in the same ordered stream as live mutations):
    # RESYNC_BEGIN, the tree as DIRLIST frames, the data as WRITE frames, RESYNC_END.
    RESYNC_BEGIN = 25
    DIRLIST = 26
    RESYNC_END = 27
    # Full sync by block hashes: the primary's hashes of one file's blocks; the secondary answers
    # with NEED (control frame) listing the blocks that differ, which the primary then sends.
    HASHES = 28
    # Control.
    ACK = 40
    PING = 41
    PONG = 42
    ERROR = 43
    # Secondary -> primary: "copy your tree to me" (header: the resync kind, UTF-8).
    RESYNC_REQUEST = 44
    # Secondary -> primary: the blocks of a file (named in a HASHES request) that differ here.
    NEED = 45


_TYPES = {int(t): t for t in FrameType}  # faster than FrameType(byte), which is an enum call

REQUEST_TYPES = frozenset(t for t in FrameType if 10 <= t < 40)
# Acknowledged only once applied, whatever the async mode: an fsync's ack promises durability.
# RESYNC_END's ack tells the primary the copy is complete on the secondary.
ACK_AFTER_APPLY = frozenset({FrameType.FSYNC, FrameType.RESYNC_END})


class ProtocolError(PeerProtocolError):
    """The peer sent bytes that are not a valid frame; the connection must be closed."""


@dataclass(frozen=True)
class Frame:
    """One message: its type, sequence number, fixed-layout header and bulk payload.

    A ``WRITE`` frame received by :class:`FrameReceiver` with a payload of at least
    ``big_payload`` bytes carries it as the ``bytearray`` it was received into (no copy): it has
    the buffer protocol, ``len``, slicing and equality with ``bytes``, but is mutable and not
    hashable. Every other frame's payload is ``bytes``.
    """

    type: FrameType
    seq: int = 0
    header: bytes = b""
    payload: bytes = b""


def encode_frame(frame: Frame, limit: int = MAX_FRAME) -> bytes:
    """The bytes of ``frame`` on the stream; ValueError if a field does not fit or it is too big."""
    return encode_prefix(frame, limit) + frame.payload


def encode_parts(frame: Frame, limit: int = MAX_FRAME) -> tuple[bytes, bytes]:
    """``(prefix, payload)``: the stream bytes of ``frame`` in two pieces, so that a large
    payload can be written as it is (the prefix is the length, fixed part and header)."""
    return encode_prefix(frame, limit), frame.payload


def encode_prefix(frame: Frame, limit: int = MAX_FRAME) -> bytes:
    """The stream bytes of ``frame`` before its payload; ValueError as :func:`encode_frame`."""
    if not 0 <= frame.seq <= _U64_MAX:
        raise ValueError(f"{frame.type.name} frame: seq {frame.seq} does not fit in 64 bits")
    if len(frame.header) > _U16_MAX:
        raise ValueError(
            f"{frame.type.name} frame: header of {len(frame.header)} bytes, at most {_U16_MAX}"
        )
    length = _FIXED.size + len(frame.header) + len(frame.payload)
    if length > limit:
        raise ValueError(
            f"{frame.type.name} frame of {length} bytes is over the {limit}-byte limit"
        )
    return _PREFIX.pack(length, frame.type, frame.seq, len(frame.header)) + frame.header


def check_length(length: int, limit: int = MAX_FRAME) -> None:
    """Raise ProtocolError if a frame's announced ``length`` is impossible or over ``limit``."""
    if length < _FIXED.size:
        raise ProtocolError(
            f"frame length {length} is shorter than the {_FIXED.size}-byte type+seq+header_len"
        )
    if length > limit:
        raise ProtocolError(f"frame length {length} is over the {limit}-byte limit")


def _frame_type(type_byte: int, seq: int) -> FrameType:
    frame_type = _TYPES.get(type_byte)
    if frame_type is None:
        raise ProtocolError(f"unknown frame type {type_byte} (seq {seq})")
    return frame_type


def _header_past_frame(frame_type: FrameType, seq: int, header_len: int, length: int) -> str:
    return (
        f"{frame_type.name} frame (seq {seq}): header_len {header_len} runs past the "
        f"{length}-byte frame"
    )


def decode_body(body: bytes | bytearray | memoryview) -> Frame:
    """Decode the bytes after the length field (exactly one frame's worth)."""
    check_length(len(body), max(len(body), _FIXED.size))
    type_byte, seq, header_len = _FIXED.unpack_from(body)
    frame_type = _frame_type(type_byte, seq)
    end = _FIXED.size + header_len
    if end > len(body):
        raise ProtocolError(_header_past_frame(frame_type, seq, header_len, len(body)))
    if isinstance(body, bytes) and end == len(body):  # no payload: slicing bytes copies anyway
        return Frame(frame_type, seq, body[_FIXED.size :])
    view = memoryview(body)
    return Frame(frame_type, seq, bytes(view[_FIXED.size : end]), bytes(view[end:]))


def split_frame(buffer: bytes, limit: int = MAX_FRAME, start: int = 0) -> tuple[Frame, int] | None:
    """The frame at ``start`` in ``buffer`` and where it ends, or None if it is not complete yet.

    A truncated buffer is not an error here (more bytes may come); an impossible length or a
    malformed frame is.
    """
    if len(buffer) - start < _LENGTH.size:
        return None
    (length,) = _LENGTH.unpack_from(buffer, start)
    check_length(length, limit)
    end = start + _LENGTH.size + length
    if len(buffer) < end:
        return None
    return decode_body(buffer[start + _LENGTH.size : end]), end


def decode_frame(data: bytes, limit: int = MAX_FRAME) -> Frame:
    """Decode ``data`` holding exactly one frame; truncated or trailing bytes are a ProtocolError."""
    split = split_frame(data, limit)
    if split is None:
        raise ProtocolError(f"truncated frame: {len(data)} bytes, {_describe_need(data)}")
    frame, used = split
    if used != len(data):
        raise ProtocolError(f"{len(data) - used} bytes after the {frame.type.name} frame")
    return frame


def _describe_need(data: bytes) -> str:
    if len(data) < _LENGTH.size:
        return f"the length field alone needs {_LENGTH.size}"
    (length,) = _LENGTH.unpack_from(data)
    return f"the length field says {_LENGTH.size + length}"


class FrameDecoder:
    """Cuts a byte stream into frames, whatever the chunk boundaries (for protocol handlers)."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames now complete, in order."""
        self._buffer += data
        buffer = bytes(self._buffer)
        frames: list[Frame] = []
        pos = 0
        while (split := split_frame(buffer, self._limit, pos)) is not None:
            frame, pos = split
            frames.append(frame)
        del self._buffer[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received that do not form a complete frame yet."""
        return len(self._buffer)


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> Frame:
    """Read one frame; ``asyncio.IncompleteReadError`` if the stream ends, even mid-frame."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    check_length(length, limit)
    return decode_body(await reader.readexactly(length))


# FrameReceiver: payloads of at least BIG_PAYLOAD bytes are received into a buffer of their own;
# smaller frames are cut out of a staging buffer read in windows of READ_WINDOW bytes. The stage
# holds any incomplete small frame (prefix with the largest header, payload under BIG_PAYLOAD)
# plus a window.
BIG_PAYLOAD = 64 * 1024
READ_WINDOW = 64 * 1024
_PREFIX_MAX = _PREFIX.size + _U16_MAX
STAGE_SIZE = _PREFIX_MAX + BIG_PAYLOAD + READ_WINDOW


class FrameReceiver:
    """Cuts a stream into frames in the buffers it lends (``recv_into``), with few copies.

    The owner loops: ``buf = get_buffer()``, receive up to ``len(buf)`` bytes into it, then
    ``received(n)``. Complete frames are passed to ``on_frame`` in stream order as soon as their
    last byte is in. Small frames are read many at a time into a staging buffer and copied out
    (header and payload, each once). A frame whose payload has at least ``big_payload`` bytes gets
    a ``bytearray`` of exactly the payload's length once its prefix is in: what of the payload
    was already staged is copied into it (at most one read window), and every later read goes
    straight into it, so the payload is received once and never copied again (``WRITE``: the
    bytearray is the frame's payload; other types, rare, get ``bytes`` of it).

    ``received`` raises ProtocolError (with the same messages as :func:`read_frame`) for a
    malformed frame, after delivering every frame before it, and lets whatever ``on_frame``
    raises through; the receiver is unusable afterwards.
    """

    def __init__(
        self,
        on_frame: Callable[[Frame], None],
        limit: int = MAX_FRAME,
        *,
        big_payload: int = BIG_PAYLOAD,
        read_window: int = READ_WINDOW,
    ) -> None:
        if big_payload < 1 or read_window < 1:
            raise ValueError("big_payload and read_window must be positive")
        self._on_frame = on_frame
        self._limit = limit
        self._big_payload = big_payload
        self._window = read_window
        self._stage = bytearray(_PREFIX_MAX + big_payload + read_window)
        self._view = memoryview(self._stage)
        self._start = 0  # first byte not cut into a frame yet
        self._end = 0  # end of the received bytes
        # The large payload being received, its memoryview, bytes in, and its frame's fields.
        self._big: bytearray | None = None
        self._big_view = memoryview(b"")
        self._big_filled = 0
        self._big_head: tuple[FrameType, int, bytes] = (FrameType.WRITE, 0, b"")

    @property
    def pending(self) -> int:
        """Bytes received that do not form a complete frame yet."""
        if self._big is not None:
            return _PREFIX.size + len(self._big_head[2]) + self._big_filled
        return self._end - self._start

    def get_buffer(self) -> memoryview:
        """Where the next received bytes must go (never empty)."""
        if self._big is not None:
            return self._big_view[self._big_filled :]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._stage) - self._end < self._window:
            # Move the incomplete frame (smaller than the stage minus a window) to the front.
            pending = self._end - self._start
            self._stage[:pending] = self._view[self._start : self._end].tobytes()
            self._start, self._end = 0, pending
        return self._view[self._end : self._end + self._window]

    def received(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last buffer from :meth:`get_buffer`."""
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                self._deliver_big()
            return
        self._end += nbytes
        self._cut()

    def _deliver_big(self) -> None:
        frame_type, seq, header = self._big_head
        payload = cast(bytes, self._big)  # see Frame: a WRITE payload may be a bytearray
        if frame_type is not FrameType.WRITE:
            payload = bytes(payload)
        self._big = None
        self._big_view = memoryview(b"")
        self._on_frame(Frame(frame_type, seq, header, payload))

    def _cut(self) -> None:
        view = self._view
        stage = self._stage
        while True:
            start = self._start
            available = self._end - start
            if available < _LENGTH.size:
                return
            (length,) = _LENGTH.unpack_from(stage, start)
            check_length(length, self._limit)
            if available < _PREFIX.size:
                return
            _, type_byte, seq, header_len = _PREFIX.unpack_from(stage, start)
            frame_type = _frame_type(type_byte, seq)
            payload_len = length - _FIXED.size - header_len
            if payload_len < 0:
                raise ProtocolError(_header_past_frame(frame_type, seq, header_len, length))
            header_end = start + _PREFIX.size + header_len
            if payload_len >= self._big_payload:
                if self._end < header_end:
                    return
                header = view[start + _PREFIX.size : header_end].tobytes()
                big = bytearray(payload_len)
                staged = min(self._end - header_end, payload_len)
                if staged:
                    big[:staged] = view[header_end : header_end + staged]
                self._start = header_end + staged
                self._big = big
                self._big_view = memoryview(big)
                self._big_filled = staged
                self._big_head = (frame_type, seq, header)
                if staged < payload_len:
                    return  # the stage is empty: the next reads go into ``big``
                self._deliver_big()
                continue
            end = header_end + payload_len
            if self._end < end:
                return
            self._start = end
            self._on_frame(
                Frame(
                    frame_type,
                    seq,
                    view[start + _PREFIX.size : header_end].tobytes(),
                    view[header_end:end].tobytes(),
                )
            )


def error_frame(seq: int, errno: int, text: str) -> Frame:
    """An ``ERROR`` frame: request ``seq`` could not be applied (``errno``, human ``text``)."""
    return Frame(FrameType.ERROR, seq, _ERROR_HEADER.pack(errno), text.encode("utf-8", "replace"))


def parse_error(frame: Frame) -> tuple[int, str]:
    """The ``(errno, text)`` of an ``ERROR`` frame."""
    if frame.type is not FrameType.ERROR or len(frame.header) != _ERROR_HEADER.size:
        raise ProtocolError(
            f"{frame.type.name} frame (seq {frame.seq}) is not a well-formed ERROR frame"
        )
    (errno,) = _ERROR_HEADER.unpack(frame.header)
    return errno, frame.payload.decode("utf-8", "replace")
