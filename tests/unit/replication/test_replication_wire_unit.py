"""Replication framing: round trips, every truncation, bad lengths, unknown types."""

from __future__ import annotations

import asyncio
import random
import struct

import pytest

from hakit.errors import PeerProtocolError
from hakit.replication.wire import (
    MAX_FRAME,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_frame,
    parse_error,
    read_frame,
    split_frame,
)

SAMPLES = [
    Frame(FrameType.PING),
    Frame(FrameType.ACK, 2**64 - 1),
    Frame(FrameType.WRITE, 7, b"\x00\x01path\xff", b"data" * 1000),
    Frame(FrameType.FSYNC, 8, b"h" * 65535, b""),
    Frame(FrameType.CREATE, 1, b"", b"\x00"),
]


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.type.name)
def test_encode_decode_round_trip(frame: Frame) -> None:
    data = encode_frame(frame)
    assert decode_frame(data) == frame
    assert split_frame(data + b"next") == (frame, len(data))


def test_layout_is_length_type_seq_header_len_big_endian() -> None:
    data = encode_frame(Frame(FrameType.WRITE, 0x0102030405060708, b"HD", b"PAY"))
    assert data == struct.pack("!IBQH", 11 + 2 + 3, 18, 0x0102030405060708, 2) + b"HDPAY"


@pytest.mark.parametrize("frame", SAMPLES[:3], ids=lambda f: f.type.name)
def test_every_truncation_is_incomplete_for_the_stream_and_an_error_for_decode(
    frame: Frame,
) -> None:
    data = encode_frame(frame)
    for cut in range(len(data)):
        assert split_frame(data[:cut]) is None
        with pytest.raises(ProtocolError, match="truncated frame"):
            decode_frame(data[:cut])


def test_trailing_bytes_are_refused_by_decode() -> None:
    with pytest.raises(ProtocolError, match="3 bytes after the PING frame"):
        decode_frame(encode_frame(Frame(FrameType.PING)) + b"abc")


def test_lengths_shorter_than_the_fixed_part_or_over_the_limit_are_refused() -> None:
    for length in (0, 1, 10):
        with pytest.raises(ProtocolError, match=f"frame length {length} is shorter"):
            split_frame(struct.pack("!I", length) + b"\x00" * 20)
    with pytest.raises(ProtocolError, match="over the 100-byte limit"):
        split_frame(struct.pack("!I", 101), limit=100)
    with pytest.raises(ProtocolError, match=f"over the {MAX_FRAME}-byte limit"):
        split_frame(struct.pack("!I", 2**32 - 1))


def test_header_len_running_past_the_frame_is_refused() -> None:
    body = struct.pack("!BQH", FrameType.WRITE, 5, 10) + b"short"
    with pytest.raises(ProtocolError, match="WRITE frame \\(seq 5\\): header_len 10 runs past"):
        decode_frame(struct.pack("!I", len(body)) + body)


def test_unknown_type_is_refused_with_its_number() -> None:
    body = struct.pack("!BQH", 99, 3, 0)
    with pytest.raises(ProtocolError, match="unknown frame type 99 \\(seq 3\\)"):
        decode_frame(struct.pack("!I", len(body)) + body)
    assert issubclass(ProtocolError, PeerProtocolError)


def test_encode_refuses_what_cannot_be_represented() -> None:
    with pytest.raises(ValueError, match="seq -1"):
        encode_frame(Frame(FrameType.WRITE, -1))
    with pytest.raises(ValueError, match="header of 65536 bytes"):
        encode_frame(Frame(FrameType.WRITE, 1, b"x" * 65536))
    with pytest.raises(ValueError, match="over the 50-byte limit"):
        encode_frame(Frame(FrameType.WRITE, 1, b"", b"x" * 50), limit=50)


def test_decoder_cuts_a_stream_at_any_chunk_boundaries() -> None:
    rng = random.Random(4)
    frames = [
        Frame(
            FrameType.WRITE, i, rng.randbytes(rng.randrange(20)), rng.randbytes(rng.randrange(300))
        )
        for i in range(1, 60)
    ]
    stream = b"".join(encode_frame(f) for f in frames)
    for _ in range(20):
        decoder = FrameDecoder()
        got: list[Frame] = []
        pos = 0
        while pos < len(stream):
            step = rng.randrange(1, 200)
            got += decoder.feed(stream[pos : pos + step])
            pos += step
        assert got == frames
        assert decoder.pending == 0


def test_decoder_refuses_garbage() -> None:
    with pytest.raises(ProtocolError, match="unknown frame type 255"):
        FrameDecoder().feed(struct.pack("!IBQH", 11, 255, 0, 0))


def test_fuzzed_bytes_never_raise_anything_but_protocol_error() -> None:
    rng = random.Random(7)
    base = encode_frame(Frame(FrameType.RENAME, 3, b"old\x00new", b"x" * 40))
    for _ in range(2000):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            frame = decode_frame(bytes(data))
        except ProtocolError:
            continue
        assert encode_frame(frame) == bytes(data)


def test_error_frame_round_trip_and_misuse() -> None:
    frame = decode_frame(encode_frame(error_frame(12, 28, "No space left on device: d/f")))
    assert frame.seq == 12
    assert parse_error(frame) == (28, "No space left on device: d/f")
    with pytest.raises(ProtocolError, match="PING frame \\(seq 0\\) is not a well-formed ERROR"):
        parse_error(Frame(FrameType.PING))


def test_read_frame_from_a_stream_and_its_end() -> None:
    async def scenario() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(encode_frame(SAMPLES[2]) + encode_frame(SAMPLES[0])[:5])
        reader.feed_eof()
        assert await read_frame(reader) == SAMPLES[2]
        with pytest.raises(asyncio.IncompleteReadError):
            await read_frame(reader)
        bad = asyncio.StreamReader()
        bad.feed_data(struct.pack("!I", MAX_FRAME + 1))
        with pytest.raises(ProtocolError, match="over the"):
            await read_frame(bad)

    asyncio.run(scenario())
