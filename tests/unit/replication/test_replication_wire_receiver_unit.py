"""FrameReceiver: cutting a stream into frames in lent buffers, whatever the recv boundaries."""

from __future__ import annotations

import random
import struct

import pytest

from hakit.replication.wire import (
    Frame,
    FrameReceiver,
    FrameType,
    ProtocolError,
    decode_frame,
    encode_frame,
    encode_parts,
)

BIG = 64  # payloads from this size take the large-payload path in these tests

FRAMES = [
    Frame(FrameType.WRITE, 1, b"path\x00", b"small"),
    Frame(FrameType.WRITE, 2, b"big-write", bytes(range(256)) * 2),  # 512 bytes: large
    Frame(FrameType.PING),
    Frame(FrameType.DIRLIST, 3, b"d", b"e" * 200),  # large, not a WRITE
    Frame(FrameType.FSYNC, 4, b"h" * 300),  # large header, no payload
    Frame(FrameType.WRITE, 5, b"", b"x" * BIG),  # exactly the threshold
    Frame(FrameType.WRITE, 6, b"", b"y" * (BIG - 1)),  # just under it
    Frame(FrameType.ACK, 7, b"\x00" * 8),
]
STREAM = b"".join(encode_frame(f) for f in FRAMES)


class Recorder:
    """A FrameReceiver fed from byte chunks as a socket would (recv_into its buffers)."""

    def __init__(self, *, big_payload: int = BIG, read_window: int = 100, limit: int = 20_000):
        self.frames: list[Frame] = []
        self.buffers: list[memoryview] = []
        self.receiver = FrameReceiver(
            self.frames.append, limit, big_payload=big_payload, read_window=read_window
        )

    def recv(self, data: bytes) -> None:
        """Deliver ``data``, in as many recv calls as the lent buffers need."""
        view = memoryview(data)
        while view:
            buffer = self.receiver.get_buffer()
            assert len(buffer) > 0
            self.buffers.append(buffer)
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            view = view[n:]
            self.receiver.received(n)


def _check_frames(got: list[Frame]) -> None:
    assert got == FRAMES
    for frame in got:
        assert isinstance(frame.header, bytes)
        if frame.type is FrameType.WRITE and len(frame.payload) >= BIG:
            assert isinstance(frame.payload, bytearray)
        else:
            assert isinstance(frame.payload, bytes)


def test_frames_split_in_two_at_every_byte_boundary() -> None:
    for cut in range(len(STREAM) + 1):
        rec = Recorder()
        rec.recv(STREAM[:cut])
        rec.recv(STREAM[cut:])
        _check_frames(rec.frames)
        assert rec.receiver.pending == 0


def test_frames_received_one_byte_at_a_time() -> None:
    rec = Recorder()
    for i in range(len(STREAM)):
        rec.recv(STREAM[i : i + 1])
    _check_frames(rec.frames)


def test_random_chunking_and_window_sizes() -> None:
    rng = random.Random(3)
    for _ in range(300):
        rec = Recorder(read_window=rng.randrange(1, 400))
        pos = 0
        while pos < len(STREAM):
            step = rng.randrange(1, 700)
            rec.recv(STREAM[pos : pos + step])
            pos += step
        _check_frames(rec.frames)


def test_a_frame_is_delivered_as_soon_as_its_last_byte_is_in() -> None:
    rec = Recorder()
    data = encode_frame(FRAMES[1])
    rec.recv(data[:-1])
    assert rec.frames == []
    assert rec.receiver.pending == len(data) - 1
    rec.recv(data[-1:])
    assert rec.frames == [FRAMES[1]]


def test_a_large_payload_is_received_into_its_own_buffer_without_copy() -> None:
    frame = Frame(FrameType.WRITE, 9, b"hdr", bytes(random.Random(1).randbytes(10_000)))
    prefix, payload = encode_parts(frame)
    rec = Recorder(read_window=64)
    rec.recv(prefix)  # the sender writes the prefix apart: nothing of the payload is staged
    for start in range(0, len(payload), 999):  # the payload arrives in many chunks
        rec.recv(payload[start : start + 999])
    assert rec.frames == [frame]
    got = rec.frames[0].payload
    assert isinstance(got, bytearray)
    # Every chunk after the prefix went straight into the payload object itself.
    later = rec.buffers[-(len(payload) // 999 + 1) :]
    assert all(buffer.obj is got for buffer in later)


def test_staged_part_of_a_large_payload_is_copied_once_then_reads_go_direct() -> None:
    frame = Frame(FrameType.WRITE, 9, b"hdr", b"z" * 5000)
    data = encode_frame(frame)
    rec = Recorder(read_window=100)
    rec.recv(data)
    assert rec.frames == [frame]
    # One window into the stage, then buffers inside the payload, sized to what is missing.
    assert rec.buffers[1].obj is rec.frames[0].payload
    assert len(rec.buffers[1]) == len(data) - 100


def test_small_frames_many_per_read() -> None:
    frames = [Frame(FrameType.WRITE, n, b"h", b"p" * 10) for n in range(1, 40)]
    data = b"".join(encode_frame(f) for f in frames)
    rec = Recorder(read_window=len(data))
    buffer = rec.receiver.get_buffer()
    buffer[: len(data)] = data
    rec.receiver.received(len(data))
    assert rec.frames == frames


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack("!I", 5), "frame length 5 is shorter than the 11-byte"),
        (struct.pack("!I", 20_001), "frame length 20001 is over the 20000-byte limit"),
        (struct.pack("!IBQH", 11, 255, 3, 0), "unknown frame type 255 \\(seq 3\\)"),
        (
            struct.pack("!IBQH", 13, FrameType.WRITE, 4, 3) + b"ab",
            "WRITE frame \\(seq 4\\): header_len 3 runs past the 13-byte frame",
        ),
    ],
)
def test_malformed_frames_are_refused_after_the_frames_before_them(
    data: bytes, message: str
) -> None:
    rec = Recorder()
    with pytest.raises(ProtocolError, match=message):
        rec.recv(encode_frame(FRAMES[0]) + data)
    assert rec.frames == [FRAMES[0]]


def test_malformed_prefix_is_refused_before_its_body_arrives() -> None:
    rec = Recorder()
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        rec.recv(struct.pack("!IBQH", 1000, 99, 0, 0))


def test_errors_match_decode_frame_on_fuzzed_streams() -> None:
    rng = random.Random(11)
    base = STREAM
    for _ in range(1500):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        rec = Recorder()
        try:
            rec.recv(bytes(data))
        except ProtocolError:
            continue
        # Whatever was accepted re-encodes to a prefix of the stream.
        encoded = b"".join(encode_frame(f) for f in rec.frames)
        assert bytes(data).startswith(encoded)
        for frame in rec.frames:
            assert decode_frame(encode_frame(frame)) == frame


def test_an_exception_from_on_frame_goes_through() -> None:
    def refuse(frame: Frame) -> None:
        raise ProtocolError(f"no {frame.type.name}")

    receiver = FrameReceiver(refuse)
    buffer = receiver.get_buffer()
    data = encode_frame(Frame(FrameType.PING))
    buffer[: len(data)] = data
    with pytest.raises(ProtocolError, match="no PING"):
        receiver.received(len(data))


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        FrameReceiver(lambda frame: None, big_payload=0)
