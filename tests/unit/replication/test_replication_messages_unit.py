"""Replication message codecs: round trips of every message, located errors, path validation."""

from __future__ import annotations

import dataclasses
import random
import stat
import struct

import pytest

from hakit.replication import wire
from hakit.replication.messages import (
    DIGEST_SIZE,
    Create,
    DirEntry,
    DirListing,
    Fallocate,
    Fsync,
    Hashes,
    Link,
    Message,
    Mkdir,
    Mknod,
    Need,
    RemoveXattr,
    Rename,
    ResyncBegin,
    ResyncEnd,
    Rmdir,
    SetAttr,
    SetXattr,
    Symlink,
    Truncate,
    Unlink,
    Write,
    block_count,
    check_relative,
    decode,
    decode_need,
    dirlisting_frames,
    encode,
    encode_need,
    entries_of,
    frame_type_of,
)
from hakit.replication.sink import NewNode
from hakit.replication.wire import Frame, FrameType, ProtocolError

U32 = 2**32 - 1
U64 = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
LONG_NAME = b"\xff" * 255
LONG_PATH = b"/".join([b"d" * 250] * 16)  # 4,015 bytes, about PATH_MAX

NODE = NewNode(b"dir/f\xff", 0o104755, 1000, 1000, 0, -5, 1_700_000_000_123_456_789, I64_MAX)
EDGE_NODE = NewNode(LONG_PATH, U32, U32, U32, U64, I64_MIN, I64_MAX, I64_MIN)

ENTRIES = (
    DirEntry(b"f", stat.S_IFREG | 0o644, 1000, 1000, 0, 12, 1, 2),
    DirEntry(LONG_NAME, stat.S_IFREG | 0o6755, U32, U32, 0, U64, I64_MIN, I64_MAX),
    DirEntry(b"l", stat.S_IFLNK | 0o777, 0, 0, 0, 3, 0, 0, target=b"/abs/\xfftarget"),
    DirEntry(b"h", stat.S_IFREG | 0o644, 0, 0, 0, 12, 1, 2, link_to=b"sub/f"),
    DirEntry(b"dev", stat.S_IFCHR | 0o600, 0, 0, U64, 0, 0, 0),
)

SAMPLES: list[Message] = [
    Create(NODE),
    Create(EDGE_NODE),
    Mknod(dataclasses.replace(NODE, mode=stat.S_IFCHR | 0o600, rdev=0x0103)),
    Mkdir(NODE),
    Symlink(NODE, b"../target"),
    Symlink(NODE, b"\xff" * 4095),
    Link(b"a", b"b/c", 7),
    Link(LONG_PATH, LONG_NAME, I64_MIN),
    Unlink(b"a", 0),
    Unlink(LONG_NAME, -1),
    Rmdir(b"a/b", I64_MAX),
    Rename(b"a", b"b", 0, 1, 2),
    Rename(b"a", b"b", 1, I64_MIN, I64_MAX),
    Rename(b"x/y", b"z", 2, 3, 4),
    Write(b"f", 0, 0, b""),
    Write(b"f", U64, I64_MIN, b"\x00\xff" * 70000),
    Truncate(b"f", 0, 5),
    Truncate(b"f", U64, -5),
    Fallocate(b"f", 0x03, 4096, 8192, 9),
    Fallocate(b"f", U32, U64, U64, I64_MAX),
    SetAttr(b""),
    SetAttr(b"f", mode=0o4755),
    SetAttr(b"f", uid=0, gid=U32),
    SetAttr(b"f", atime_ns=I64_MIN, mtime_ns=0),
    SetAttr(b"f", 0, 0, 0, 0, 0),
    SetAttr(LONG_PATH, U32, U32, U32, I64_MAX, I64_MIN),
    SetXattr(b"", b"user.x", b""),
    SetXattr(b"f", b"trusted.\xff", b"\x00" * 65536),
    RemoveXattr(b"f", b"user.x"),
    Fsync(b"", True),
    Fsync(b"f", False),
    ResyncBegin("full", "17"),
    ResyncBegin("", "é" * 100),
    DirListing(b"", 0o40755, 0, 0, (), False),
    DirListing(b"sub/\xff", 0o42775, 1000, U32, ENTRIES, True),
    ResyncEnd("full", 0, 0),
    ResyncEnd("zones", U64, U64),
    Hashes(b"f", 1, 0, ()),
    Hashes(b"d/f", 4096, 8193, (b"\x00" * 16, b"\xff" * 16, bytes(range(16)))),
    Hashes(LONG_PATH, U32, U32 + 1, (b"a" * 16, b"b" * 16)),
]


def _frame(msg: Message, seq: int = 9) -> Frame:
    frame_type, header, payload = encode(msg)
    return Frame(frame_type, seq, header, payload)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_the_wire(msg: Message) -> None:
    frame = _frame(msg)
    assert frame.type is frame_type_of(msg)
    assert decode(wire.decode_frame(wire.encode_frame(frame))) == msg


def test_every_request_type_has_a_message() -> None:
    assert {frame_type_of(m) for m in SAMPLES} == wire.REQUEST_TYPES


def test_bulk_data_goes_in_the_payload() -> None:
    _, header, payload = encode(Write(b"f", 1, 2, b"data" * 100))
    assert payload == b"data" * 100
    assert len(header) < 32
    _, _, payload = encode(SetXattr(b"f", b"user.k", b"value"))
    assert payload == b"value"
    _, header, payload = encode(DirListing(b"d", 0o40755, 0, 0, ENTRIES, False))
    assert len(header) < 32 and len(payload) > 255
    digests = tuple(bytes([i]) * DIGEST_SIZE for i in range(40))
    _, header, payload = encode(Hashes(b"f", 256, 40 * 256, digests))
    assert payload == b"".join(digests)
    assert len(header) < 32


def test_setattr_absent_fields_stay_absent() -> None:
    decoded = decode(_frame(SetAttr(b"f", gid=0)))
    assert decoded == SetAttr(b"f", None, None, 0, None, None)


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        (Write(b"f", -1, 0, b""), "offset"),
        (Write(b"f", 0, 2**63, b""), "mtime_ns"),
        (Truncate(b"f", U64 + 1, 0), "size"),
        (SetAttr(b"f", mode=U32 + 1), "mode"),
        (Create(dataclasses.replace(NODE, uid=-1)), "uid"),
        (Link(b"p" * 65536, b"n", 0), "existing"),
        (Rename(b"a", b"b", U32 + 1, 0, 0), "flags"),
        (DirListing(b"d", 0, 0, 0, (dataclasses.replace(ENTRIES[0], size=-1),), False), "size"),
        (Hashes(b"f", 0, 0, ()), "block_size 0"),
        (Hashes(b"f", U32 + 1, 1, (b"x" * 16,)), "block_size"),
        (Hashes(b"f", 2, 5, (b"x" * 16,) * 2), "2 digests for 5 bytes in blocks of 2, expected 3"),
        (Hashes(b"f", 2, 2, (b"x" * 15,)), r"digests\[0\] is 15 bytes long, not 16"),
    ],
)
def test_encode_names_the_field_that_does_not_fit(msg: Message, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        encode(msg)


# ---- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [b"", b"a", b"a/b", b"\xff/.x/..y/x..", b"...", LONG_PATH])
def test_relative_paths_accepted(path: bytes) -> None:
    check_relative(path)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (b"/etc/passwd", "absolute"),
        (b"/", "absolute"),
        (b"..", "'..'"),
        (b"a/../../b", "'..'"),
        (b"a/..", "'..'"),
        (b".", "'.'"),
        (b"a/./b", "'.'"),
        (b"a//b", "empty component"),
        (b"a/", "empty component"),
        (b"a\0b", "NUL"),
    ],
)
def test_bad_paths_refused(path: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        check_relative(path)


def _with_path(frame_type: FrameType, path: bytes, rest: bytes) -> Frame:
    return Frame(frame_type, 31, struct.pack("!H", len(path)) + path + rest)


@pytest.mark.parametrize(
    "frame",
    [
        _with_path(FrameType.UNLINK, b"../x", struct.pack("!q", 0)),
        _with_path(FrameType.WRITE, b"/etc/shadow", struct.pack("!Qq", 0, 0)),
        _with_path(FrameType.SETATTR, b"a//b", struct.pack("!BIIIqq", 0, 0, 0, 0, 0, 0)),
        _with_path(FrameType.FSYNC, b"a/./b", b"\x00"),
    ],
    ids=lambda f: f.type.name,
)
def test_decode_refuses_escaping_paths_naming_the_frame_and_field(frame: Frame) -> None:
    with pytest.raises(
        ProtocolError, match=rf"{frame.type.name} frame \(seq 31\), header field path"
    ):
        decode(frame)


@pytest.mark.parametrize(
    "msg",
    [
        Unlink(b"", 0),
        Rmdir(b"", 0),
        Create(dataclasses.replace(NODE, path=b"")),
        Write(b"", 0, 0, b"x"),
        Rename(b"a", b"", 0, 0, 0),
    ],
    ids=lambda m: type(m).__name__,
)
def test_the_directory_itself_cannot_be_an_entry(msg: Message) -> None:
    with pytest.raises(ProtocolError, match="not the directory itself"):
        decode(_frame(msg))


def test_link_to_and_entry_names_are_checked() -> None:
    bad_link = DirListing(b"d", 0, 0, 0, (dataclasses.replace(ENTRIES[0], link_to=b"../x"),), False)
    with pytest.raises(ProtocolError, match=r"payload field entries\[0\]\.link_to"):
        decode(_frame(bad_link))
    for name in (b"a/b", b"..", b".", b"", b"a\0"):
        entries = (ENTRIES[0], dataclasses.replace(ENTRIES[0], name=name))
        with pytest.raises(ProtocolError, match=r"entries\[1\]\.name"):
            decode(_frame(DirListing(b"d", 0, 0, 0, entries, False)))


def test_semantic_field_checks() -> None:
    frame = _frame(Rename(b"a", b"b", 4, 0, 0))
    with pytest.raises(ProtocolError, match=r"RENAME frame.*flags: 4 is not"):
        decode(frame)
    frame = _frame(Fsync(b"f", True))
    with pytest.raises(ProtocolError, match="datasync: 2 is not a boolean"):
        decode(dataclasses.replace(frame, header=frame.header[:-1] + b"\x02"))
    frame = _frame(SetAttr(b"f", mode=1))
    bad = bytearray(frame.header)
    bad[3] = 0x80  # the "which" byte after the 1-byte path
    with pytest.raises(ProtocolError, match="which: unknown bits 0x80"):
        decode(dataclasses.replace(frame, header=bytes(bad)))
    with pytest.raises(ProtocolError, match="symlink target is empty"):
        decode(_frame(Symlink(NODE, b"")))
    with pytest.raises(ProtocolError, match="kind: not UTF-8"):
        decode(Frame(FrameType.RESYNC_BEGIN, 1, b"\x00\x01\xff\x00\x00"))
    with pytest.raises(ProtocolError, match="unexpected 1-byte payload"):
        decode(dataclasses.replace(_frame(Unlink(b"a", 0)), payload=b"x"))
    with pytest.raises(ProtocolError, match=r"PING frame.*not a replication request"):
        decode(Frame(FrameType.PING, 1))


# ---- truncated and garbled frames ----------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_of_the_header_is_a_located_protocol_error(msg: Message) -> None:
    frame = _frame(msg)
    for cut in range(len(frame.header)):
        with pytest.raises(ProtocolError, match=rf"{frame.type.name} frame \(seq 9\)"):
            decode(dataclasses.replace(frame, header=frame.header[:cut]))
    with pytest.raises(ProtocolError, match="1 unexpected bytes after the last header field"):
        decode(dataclasses.replace(frame, header=frame.header + b"\x00"))


def test_truncated_listing_payload() -> None:
    frame = _frame(DirListing(b"d", 0, 0, 0, ENTRIES, False))
    for cut in range(1, len(frame.payload)):
        try:
            decoded = decode(dataclasses.replace(frame, payload=frame.payload[:cut]))
        except ProtocolError as exc:
            assert "DIRLIST frame (seq 9), payload field entries[" in str(exc)
        else:  # a cut exactly between entries is a shorter valid listing
            assert isinstance(decoded, DirListing)
            assert decoded.entries == ENTRIES[: len(decoded.entries)]


def test_fuzzed_frames_only_ever_raise_protocol_error() -> None:
    rng = random.Random(20261122)
    valid = [_frame(m) for m in SAMPLES]
    decoded = 0
    for _ in range(20000):
        frame = rng.choice(valid)
        header, payload = bytearray(frame.header), bytearray(frame.payload[:300])
        for _ in range(rng.randint(1, 4)):
            target = header if (rng.random() < 0.8 or not payload) else payload
            if not target:
                continue
            action = rng.random()
            pos = rng.randrange(len(target))
            if action < 0.5:
                target[pos] = rng.randrange(256)
            elif action < 0.75:
                del target[pos:]
            else:
                target[pos:pos] = rng.randbytes(rng.randint(1, 8))
        frame_type = rng.choice(list(wire.REQUEST_TYPES)) if rng.random() < 0.1 else frame.type
        try:
            message = decode(Frame(frame_type, frame.seq, bytes(header), bytes(payload)))
        except ProtocolError:
            continue
        decoded += 1
        # Whatever decodes is a valid message: it encodes back to the same frame.
        assert encode(message) == (frame_type, bytes(header), bytes(payload))
    assert decoded > 0


# ---- block-hash sync: HASHES and its answer NEED -------------------------------------------------


def test_hashes_counts_blocks_with_a_short_last_one() -> None:
    assert [block_count(size, 4) for size in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_hashes_payload_must_hold_exactly_the_digests_of_its_size() -> None:
    frame = _frame(Hashes(b"f", 4, 9, (b"a" * 16, b"b" * 16, b"c" * 16)))
    for payload in (frame.payload[:-1], frame.payload[:-16], frame.payload + b"d" * 16, b""):
        with pytest.raises(
            ProtocolError, match=r"HASHES frame \(seq 9\), payload: .* 9 bytes in blocks of 4"
        ):
            decode(dataclasses.replace(frame, payload=payload))
    zero_block = bytearray(frame.header)
    zero_block[3:7] = b"\x00" * 4  # block_size, after the 1-byte path
    with pytest.raises(ProtocolError, match="block_size: 0"):
        decode(dataclasses.replace(frame, header=bytes(zero_block)))
    with pytest.raises(ProtocolError, match="not the directory itself"):
        decode(_frame(Hashes(b"", 1, 0, ())))
    with pytest.raises(ProtocolError, match=r"HASHES frame \(seq 31\), header field path"):
        decode(_with_path(FrameType.HASHES, b"../x", struct.pack("!IQ", 1, 0)))


NEEDS = [
    Need(7, b"f", ()),
    Need(U64, b"dir/\xff", (0, 1, 5, U32)),
    Need(1, LONG_PATH, tuple(range(0, 300000, 3))),
]


@pytest.mark.parametrize("need", NEEDS, ids=lambda n: f"{len(n.blocks)}-blocks")
def test_need_round_trip_through_the_wire(need: Need) -> None:
    frame = encode_need(need)
    assert frame.type is FrameType.NEED
    assert frame.seq == need.seq
    assert len(frame.payload) == 4 * len(need.blocks)
    assert decode_need(wire.decode_frame(wire.encode_frame(frame))) == need


def test_need_is_a_control_frame_not_a_request() -> None:
    assert FrameType.NEED not in wire.REQUEST_TYPES
    with pytest.raises(ProtocolError, match=r"NEED frame .* not a replication request"):
        decode(encode_need(NEEDS[1]))
    with pytest.raises(ProtocolError, match=r"ACK frame \(seq 3\) is not a NEED frame"):
        decode_need(Frame(FrameType.ACK, 3))


@pytest.mark.parametrize(
    ("need", "why"),
    [
        (Need(1, b"f", (3, 2)), r"blocks\[1\] = 2 after 3"),
        (Need(1, b"f", (2, 2)), r"blocks\[1\] = 2 after 2"),
        (Need(1, b"f", (U32 + 1,)), r"blocks\[0\] = 4294967296 does not fit"),
        (Need(1, b"f", (-1,)), r"blocks\[0\] = -1 does not fit"),
        (Need(-1, b"f", ()), "seq -1"),
        (Need(1, b"p" * 65536, ()), "path is 65536 bytes long"),
    ],
)
def test_encode_need_refuses_what_it_cannot_carry(need: Need, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        encode_need(need)


def test_malformed_need_frames_are_located_protocol_errors() -> None:
    good = encode_need(Need(12, b"f", (1, 4, 9)))
    cases = [
        (dataclasses.replace(good, payload=good.payload[:-1]), "11 bytes is not a whole number"),
        (
            dataclasses.replace(good, payload=good.payload[4:8] + good.payload[:4]),
            r"NEED frame \(seq 12\), payload field blocks\[1\]: 1 after 4",
        ),
        (
            dataclasses.replace(good, header=good.header[:2]),
            r"NEED frame \(seq 12\), header field path",
        ),
        (dataclasses.replace(good, header=good.header + b"x"), "1 unexpected bytes after the last"),
        (Frame(FrameType.NEED, 12, b"\x00\x02.."), "'..'"),
        (Frame(FrameType.NEED, 12, b"\x00\x00"), "not the directory itself"),
    ]
    for frame, why in cases:
        with pytest.raises(ProtocolError, match=why):
            decode_need(frame)


# ---- listings split into frames ------------------------------------------------------------------


def _entries(count: int) -> list[DirEntry]:
    return [
        DirEntry(f"name-{i:05d}".encode() * 3, stat.S_IFREG | 0o644, i, i, 0, i, i, i)
        for i in range(count)
    ]


def test_dirlisting_frames_split_to_fit_and_keep_order() -> None:
    entries = _entries(2000)
    listings = dirlisting_frames(b"big/dir", 0o40700, 5, 6, entries, limit=4096)
    assert len(listings) > 20
    assert [m.more for m in listings] == [True] * (len(listings) - 1) + [False]
    assert all((m.path, m.mode, m.uid, m.gid) == (b"big/dir", 0o40700, 5, 6) for m in listings)
    assert list(entries_of(listings)) == entries
    for listing in listings:
        frame_type, header, payload = encode(listing)
        assert len(header) + len(payload) <= 4096
        wire.encode_frame(Frame(frame_type, 1, header, payload))
        assert decode(Frame(frame_type, 1, header, payload)) == listing


def test_dirlisting_frames_default_limit_fits_max_frame() -> None:
    entries = [
        DirEntry(
            LONG_NAME[:-5] + f"{i:05d}".encode(),
            stat.S_IFLNK | 0o777,
            0,
            0,
            0,
            0,
            0,
            0,
            target=b"t" * 4095,
        )
        for i in range(3000)
    ]  # about 13 MiB of listing: far over the 64 KiB a header could hold
    listings = dirlisting_frames(b"", 0o40755, 0, 0, entries)
    assert len(listings) == 4
    for listing in listings:
        frame_type, header, payload = encode(listing)
        data = wire.encode_frame(Frame(frame_type, 1, header, payload))
        assert len(data) <= wire.MAX_FRAME
        assert decode(wire.decode_frame(data)) == listing


def test_empty_directory_is_one_listing() -> None:
    assert dirlisting_frames(b"e", 0o40755, 0, 0, []) == [
        DirListing(b"e", 0o40755, 0, 0, (), False)
    ]


def test_an_entry_bigger_than_the_limit_is_refused() -> None:
    huge = DirEntry(b"x", stat.S_IFLNK, 0, 0, 0, 0, 0, 0, target=b"t" * 5000)
    with pytest.raises(ValueError, match="entry b'x' needs"):
        dirlisting_frames(b"", 0, 0, 0, [huge], limit=4096)
