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

Encoding and decoding are pure; :func:`read_frame` is the one asyncio helper.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass

from hakit.errors import PeerProtocolError

# Big enough for a FUSE write (128 KiB by default, 1 MiB with max_write) plus its header.
MAX_FRAME = 4 * 1024 * 1024

_LENGTH = struct.Struct("!I")
_FIXED = struct.Struct("!BQH")  # type, seq, header_len
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


REQUEST_TYPES = frozenset(t for t in FrameType if 10 <= t < 40)
# Acknowledged only once applied, whatever the async mode: an fsync's ack promises durability.
# RESYNC_END's ack tells the primary the copy is complete on the secondary.
ACK_AFTER_APPLY = frozenset({FrameType.FSYNC, FrameType.RESYNC_END})


class ProtocolError(PeerProtocolError):
    """The peer sent bytes that are not a valid frame; the connection must be closed."""


@dataclass(frozen=True)
class Frame:
    """One message: its type, sequence number, fixed-layout header and bulk payload."""

    type: FrameType
    seq: int = 0
    header: bytes = b""
    payload: bytes = b""


def encode_frame(frame: Frame, limit: int = MAX_FRAME) -> bytes:
    """The bytes of ``frame`` on the stream; ValueError if a field does not fit or it is too big."""
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
    return b"".join(
        (
            _LENGTH.pack(length),
            _FIXED.pack(frame.type, frame.seq, len(frame.header)),
            frame.header,
            frame.payload,
        )
    )


def check_length(length: int, limit: int = MAX_FRAME) -> None:
    """Raise ProtocolError if a frame's announced ``length`` is impossible or over ``limit``."""
    if length < _FIXED.size:
        raise ProtocolError(
            f"frame length {length} is shorter than the {_FIXED.size}-byte type+seq+header_len"
        )
    if length > limit:
        raise ProtocolError(f"frame length {length} is over the {limit}-byte limit")


def decode_body(body: bytes) -> Frame:
    """Decode the bytes after the length field (exactly one frame's worth)."""
    check_length(len(body), max(len(body), _FIXED.size))
    type_byte, seq, header_len = _FIXED.unpack_from(body)
    try:
        frame_type = FrameType(type_byte)
    except ValueError:
        raise ProtocolError(f"unknown frame type {type_byte} (seq {seq})") from None
    end = _FIXED.size + header_len
    if end > len(body):
        raise ProtocolError(
            f"{frame_type.name} frame (seq {seq}): header_len {header_len} runs past the "
            f"{len(body)}-byte frame"
        )
    return Frame(frame_type, seq, bytes(body[_FIXED.size : end]), bytes(body[end:]))


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
