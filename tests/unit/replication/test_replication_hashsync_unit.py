"""Block-hash full sync over a real loopback connection: primary BlockSync, secondary Applier.

Each test builds a primary file and the secondary's copy in temporary directories, runs
:meth:`BlockSync.sync_file` through a real authenticated Sender/Receiver pair (the receiver applies
with a real :class:`Applier` and answers HASHES with NEED as the replicator does), then checks what
crossed the wire and that both files end identical.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hakit.replication import messages as m
from hakit.replication.applier import Applier, HashesResult
from hakit.replication.hashsync import (
    MAX_DIGESTS,
    PUNCH_HOLE,
    BlockSync,
    block_digests,
    block_size_for,
    differing_blocks,
)
from hakit.replication.transport import AsyncMode, Identity, PeerLost, Receiver, Sender
from hakit.replication.wire import Frame, FrameType, ProtocolError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the applier sets owners: needs root")

KEY = bytes(range(32))
PRIMARY = Identity(KEY, "node1", "node2", "mirror", 0)
SECONDARY = Identity(KEY, "node2", "node1", "mirror", 0)
KIB = 1024
MIB = 1024 * KIB
BLOCK = 256 * KIB
SIZE = 8 * MIB


@dataclass
class Pair:
    """A secondary tree with its receiver and applier, a primary tree with its sender."""

    primary: Path
    secondary: Path
    applier: Applier
    receiver: Receiver
    sender: Sender
    block_sync: BlockSync
    frames: list[Frame] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def of_type(self, frame_type: FrameType) -> list[Frame]:
        return [f for f in self.frames if f.type is frame_type]

    @property
    def write_bytes(self) -> int:
        return sum(len(f.payload) for f in self.of_type(FrameType.WRITE))

    @property
    def wire_bytes(self) -> int:
        return sum(len(f.header) + len(f.payload) for f in self.frames)

    async def settle(self) -> None:
        """Wait until the secondary applied everything the primary sent (async="second" acks
        on receipt)."""
        while (self.frames[-1].seq if self.frames else 0) < self.sender.last_seq:
            await asyncio.sleep(0.005)

    async def sync(
        self, name: str = "f", path_of: Callable[[int], bytes | None] | None = None
    ) -> int | None:
        fd = os.open(self.primary / name, os.O_RDONLY)
        try:
            sent = await self.block_sync.sync_file(fd, path_of or (lambda _fd: name.encode()))
        finally:
            os.close(fd)
        await self.settle()
        return sent

    def identical(self, name: str = "f") -> bool:
        return (self.primary / name).read_bytes() == (self.secondary / name).read_bytes()


Answer = Callable[[Pair, Frame, HashesResult], None]


def _answer_need(pair: Pair, frame: Frame, result: HashesResult) -> None:
    """What the replicator does with a HASHES result: send the NEED back."""
    pair.receiver.send_control(m.encode_need(result.need(frame.seq)))


async def _with_pair(
    tmp: Path,
    scenario: Callable[[Pair], Awaitable[None]],
    *,
    async_mode: AsyncMode,
    answer: Answer,
    **options: int,
) -> None:
    primary, secondary = tmp / "primary", tmp / "secondary"
    primary.mkdir()
    secondary.mkdir()
    root_fd = os.open(secondary, os.O_RDONLY | os.O_DIRECTORY)
    applier = Applier(root_fd, in_sync=False)  # a full sync runs while out of sync
    pair: Pair | None = None

    async def apply(frame: Frame) -> None:
        assert pair is not None
        pair.frames.append(frame)
        result = applier.apply(m.decode(frame))
        if isinstance(result, HashesResult):
            answer(pair, frame, result)

    receiver = Receiver(SECONDARY, apply, async_mode=async_mode)
    port = await receiver.start("127.0.0.1", 0)
    lost: list[str] = []

    def peer_lost(reason: str) -> None:
        lost.append(reason)
        if pair is not None:
            pair.block_sync.peer_lost(reason)

    try:
        sender = await Sender.connect(
            "127.0.0.1", port, PRIMARY, sendtimeout=10.0, on_peer_lost=peer_lost
        )
        sync = BlockSync(sender, **options)
        sender.on_need(lambda frame: sync.on_need(m.decode_need(frame)))
        pair = Pair(primary, secondary, applier, receiver, sender, sync, lost=lost)
        try:
            await scenario(pair)
        finally:
            await sender.close()
    finally:
        await receiver.close()
        applier.close()
        os.close(root_fd)


def run(
    tmp: Path,
    scenario: Callable[[Pair], Awaitable[None]],
    *,
    async_mode: AsyncMode = "none",
    answer: Answer = _answer_need,
    **options: int,
) -> None:
    """Run ``scenario`` on a fresh connected pair, bounded in time."""

    async def bounded() -> None:
        await asyncio.wait_for(
            _with_pair(tmp, scenario, async_mode=async_mode, answer=answer, **options), 60
        )

    asyncio.run(bounded())


def _random(size: int, seed: int = 1) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


# ---- what crosses the wire -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["second", "none"])
def test_identical_files_send_less_than_one_percent(tmp_path: Path, mode: AsyncMode) -> None:
    async def scenario(pair: Pair) -> None:
        data = _random(SIZE)
        (pair.primary / "f").write_bytes(data)
        (pair.secondary / "f").write_bytes(data)
        assert await pair.sync() == 0
        assert pair.write_bytes == 0
        assert pair.wire_bytes < SIZE / 100  # 32 digests of 16 bytes, a TRUNCATE
        assert [f.type for f in pair.frames] == [FrameType.HASHES, FrameType.TRUNCATE]
        assert (
            pair.block_sync.files,
            pair.block_sync.blocks_matched,
            pair.block_sync.blocks_sent,
        ) == (1, 32, 0)
        assert pair.block_sync.digest_bytes == 32 * m.DIGEST_SIZE
        assert pair.identical() and pair.lost == []

    run(tmp_path, scenario, async_mode=mode)


@pytest.mark.parametrize("mode", ["second", "none"])
def test_one_changed_block_in_the_middle_is_the_only_one_sent(
    tmp_path: Path, mode: AsyncMode
) -> None:
    async def scenario(pair: Pair) -> None:
        data = bytearray(_random(SIZE))
        (pair.secondary / "f").write_bytes(data)
        data[13 * BLOCK + 1000] ^= 0xFF
        (pair.primary / "f").write_bytes(data)
        assert await pair.sync() == BLOCK
        writes = [m.decode(f) for f in pair.of_type(FrameType.WRITE)]
        assert writes == [
            m.Write(
                b"f",
                13 * BLOCK,
                os.stat(pair.primary / "f").st_mtime_ns,
                bytes(data[13 * BLOCK : 14 * BLOCK]),
            )
        ]
        assert (
            pair.block_sync.blocks_matched,
            pair.block_sync.blocks_sent,
            pair.block_sync.bytes_sent,
        ) == (
            31,
            1,
            BLOCK,
        )
        assert pair.identical()

    run(tmp_path, scenario, async_mode=mode)


def test_a_longer_secondary_file_is_cut_without_data(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = _random(SIZE)
        (pair.primary / "f").write_bytes(data)
        (pair.secondary / "f").write_bytes(data + _random(3 * MIB + 5, seed=2))
        assert await pair.sync() == 0
        truncate = m.decode(pair.of_type(FrameType.TRUNCATE)[0])
        assert isinstance(truncate, m.Truncate) and truncate.size == SIZE
        assert pair.identical()

    run(tmp_path, scenario)


def test_a_shorter_secondary_file_gets_the_blocks_it_lacks(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = _random(SIZE + 1000)  # a short last block
        (pair.primary / "f").write_bytes(data)
        (pair.secondary / "f").write_bytes(data[: 20 * BLOCK + 10])  # block 20 only partly
        assert await pair.sync() == len(data) - 20 * BLOCK
        offsets = [m.decode(f).offset for f in pair.of_type(FrameType.WRITE)]  # type: ignore[union-attr]
        assert offsets == [i * BLOCK for i in range(20, 33)]
        assert pair.identical()

    run(tmp_path, scenario)


def test_a_missing_secondary_file_gets_every_block(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = _random(SIZE)
        (pair.primary / "f").write_bytes(data)
        assert await pair.sync() == SIZE
        # Out of sync, the writes to a name the listing did not create are tolerated.
        assert pair.applier.tolerated == len(pair.of_type(FrameType.WRITE)) + 1
        assert not (pair.secondary / "f").exists() and pair.lost == []

    run(tmp_path, scenario)


def test_a_sparse_primary_file_punches_holes_instead_of_sending_zeros(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        with open(pair.primary / "f", "wb") as f:
            f.truncate(SIZE)
            f.seek(3 * BLOCK)
            f.write(_random(BLOCK, seed=3))
            f.seek(20 * BLOCK + 5)
            f.write(b"tail of a sparse file")
        (pair.secondary / "f").write_bytes(_random(SIZE, seed=4))
        assert await pair.sync() == 2 * BLOCK  # the two blocks holding data, whole
        punched = [m.decode(f) for f in pair.of_type(FrameType.FALLOCATE)]
        assert len(punched) == 30
        assert all(isinstance(p, m.Fallocate) and p.mode == PUNCH_HOLE for p in punched)
        assert pair.identical()
        assert os.stat(pair.secondary / "f").st_blocks * 512 <= 4 * BLOCK  # still sparse

    run(tmp_path, scenario)


def test_sparse_files_on_both_sides_match_without_reading(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        for side in (pair.primary, pair.secondary):
            with open(side / "f", "wb") as f:
                f.truncate(64 * MIB)  # the listing creates files like this
        assert await pair.sync() == 0
        assert pair.wire_bytes < 64 * MIB / 10000
        assert pair.identical()

    run(tmp_path, scenario)


def test_small_files_are_compared_by_4k_blocks(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = _random(2 * BLOCK - 1)
        (pair.primary / "f").write_bytes(data)
        (pair.secondary / "f").write_bytes(data[:8192] + b"x" + data[8193:])
        assert await pair.sync() == 4096  # the one differing 4 KiB block
        assert pair.identical()

    run(tmp_path, scenario)


def test_identical_small_files_send_no_data(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = _random(3000)
        (pair.primary / "f").write_bytes(data)
        (pair.secondary / "f").write_bytes(data)
        assert await pair.sync() == 0
        assert pair.write_bytes == 0

    run(tmp_path, scenario)


def test_empty_files_are_left_to_the_caller(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        (pair.primary / "f").write_bytes(b"")
        assert await pair.sync() is None
        assert pair.sender.last_seq == 0  # nothing was sent

    run(tmp_path, scenario)


def test_a_huge_file_gets_bigger_blocks_and_frames_that_fit(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = bytearray(_random(SIZE))
        (pair.secondary / "f").write_bytes(data)
        data[5 * MIB] ^= 1
        (pair.primary / "f").write_bytes(data)
        assert await pair.sync() == 2 * MIB  # 4 digests at most: blocks of 2 MiB
        hashes = m.decode(pair.of_type(FrameType.HASHES)[0])
        assert isinstance(hashes, m.Hashes) and hashes.block_size == 2 * MIB
        writes = pair.of_type(FrameType.WRITE)
        assert [len(f.payload) for f in writes] == [MIB, MIB]  # WRITE_CHUNK at most
        assert pair.identical()

    run(tmp_path, scenario, max_digests=4)


def test_block_size_for_keeps_the_digests_within_a_frame() -> None:
    assert block_size_for(SIZE, BLOCK, 32) == BLOCK
    assert block_size_for(SIZE + 1, BLOCK, 32) == 2 * BLOCK
    assert block_size_for(SIZE, BLOCK, 5) == 7 * BLOCK
    one_tib = block_size_for(2**40)  # still one frame of digests
    assert one_tib == 17 * BLOCK
    assert m.block_count(2**40, one_tib) <= MAX_DIGESTS < m.block_count(2**40, 16 * BLOCK)


# ---- flow control, concurrent changes ------------------------------------------------------------


class CountingSender:
    """Forwards to the real sender and records how many of its requests were unacknowledged."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._futures: list[asyncio.Future[int]] = []
        self.unacked: list[int] = []

    def submit(
        self, frame_type: FrameType, header: bytes, payload: bytes = b""
    ) -> asyncio.Future[int]:
        future = self._sender.submit(frame_type, header, payload)
        self._futures.append(future)
        self.unacked.append(sum(not f.done() for f in self._futures))
        return future

    @property
    def last_seq(self) -> int:
        return self._sender.last_seq


def test_at_most_window_blocks_are_unacknowledged(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        counting = CountingSender(pair.sender)
        sync = BlockSync(counting, window=3)
        pair.sender.on_need(lambda frame: sync.on_need(m.decode_need(frame)))
        (pair.primary / "f").write_bytes(_random(SIZE))
        (pair.secondary / "f").write_bytes(_random(SIZE, seed=9))
        fd = os.open(pair.primary / "f", os.O_RDONLY)
        try:
            assert await sync.sync_file(fd, lambda _fd: b"f") == SIZE
        finally:
            os.close(fd)
        await pair.settle()
        assert max(counting.unacked) == 3  # the window was used, never exceeded
        assert len(counting.unacked) == 1 + 32 + 1
        assert pair.identical()

    run(tmp_path, scenario)


def test_writes_and_a_rename_during_the_sync_end_identical(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        data = bytearray(_random(SIZE))
        (pair.secondary / "f").write_bytes(data)
        for index in (2, 9, 30):
            data[index * BLOCK] ^= 1
        (pair.primary / "f").write_bytes(data)
        calls = 0
        name = b"f"

        def path_of(fd: int) -> bytes:
            nonlocal calls, name
            calls += 1
            if calls == 3:  # after the NEED, between two needed blocks: the application acts
                # A write to a block that matched, streamed as the replicating sink does.
                os.pwrite(fd_w, b"new data", 20 * BLOCK)
                mtime = os.fstat(fd_w).st_mtime_ns
                pair.sender.submit(*m.encode(m.Write(name, 20 * BLOCK, mtime, b"new data")))
                # A rename: the later blocks go to the new name.
                os.rename(pair.primary / "f", pair.primary / "g")
                pair.sender.submit(*m.encode(m.Rename(b"f", b"g", 0, 0, 0)))
                name = b"g"
                # Growth the stream did not carry: the data past the hashed size is sent anyway.
                os.pwrite(fd_w, b"appended" * 1000, SIZE + MIB)
            return name

        fd_w = os.open(pair.primary / "f", os.O_WRONLY)
        try:
            await pair.sync(path_of=path_of)
        finally:
            os.close(fd_w)
        writes = [m.decode(f) for f in pair.of_type(FrameType.WRITE)]
        assert [(w.path, w.offset) for w in writes if isinstance(w, m.Write)] == [
            (b"f", 2 * BLOCK),  # before the application acted
            (b"f", 20 * BLOCK),  # the application's write
            (b"g", 9 * BLOCK),  # renamed: the new name
            (b"g", 30 * BLOCK),
            (b"g", SIZE + MIB),  # the growth, after the last needed block
        ]
        assert pair.identical("g")
        assert os.path.getsize(pair.secondary / "g") == SIZE + MIB + 8000

    run(tmp_path, scenario)


@pytest.mark.parametrize("mode", ["second", "none"])
def test_application_writes_all_along_the_sync_end_identical(
    tmp_path: Path, mode: AsyncMode
) -> None:
    async def scenario(pair: Pair) -> None:
        import random

        rng = random.Random(11)
        data = bytearray(_random(SIZE))
        (pair.secondary / "f").write_bytes(data)
        for index in range(0, 32, 5):
            data[index * BLOCK + 17] ^= 1
        (pair.primary / "f").write_bytes(data)
        fd_w = os.open(pair.primary / "f", os.O_WRONLY)
        done = asyncio.Event()
        writes = 0

        async def application() -> None:
            # Writes while the primary hashes (in a thread), waits for the NEED and sends
            # blocks, each applied locally then queued as the replicating sink does, which
            # returns once the peer acknowledged.
            nonlocal writes
            while not done.is_set():
                offset = rng.randrange(SIZE + MIB)
                chunk = rng.randbytes(rng.randrange(1, 3 * BLOCK))
                os.pwrite(fd_w, chunk, offset)
                mtime = os.fstat(fd_w).st_mtime_ns
                ack = pair.sender.submit(*m.encode(m.Write(b"f", offset, mtime, chunk)))
                writes += 1
                await ack  # the application's call returns once the peer has it

        task = asyncio.create_task(application())
        try:
            await pair.sync()
        finally:
            done.set()
            await task
            os.close(fd_w)
        await pair.settle()
        assert writes > 0
        assert pair.identical()

    run(tmp_path, scenario, async_mode=mode)


def test_a_file_unlinked_during_the_sync_stops_it(tmp_path: Path) -> None:
    async def scenario(pair: Pair) -> None:
        (pair.primary / "f").write_bytes(_random(SIZE))
        (pair.secondary / "f").write_bytes(_random(SIZE, seed=5))
        calls = 0

        def path_of(_fd: int) -> bytes | None:
            nonlocal calls
            calls += 1
            return b"f" if calls <= 3 else None

        assert await pair.sync(path_of=path_of) == 2 * BLOCK
        assert pair.of_type(FrameType.TRUNCATE) == []

    run(tmp_path, scenario)


# ---- the peer goes away or misbehaves ------------------------------------------------------------


def test_a_need_that_never_comes_fails_with_peer_lost(tmp_path: Path) -> None:
    asked = asyncio.Event()

    def silent(pair: Pair, frame: Frame, result: HashesResult) -> None:
        asked.set()  # never answers

    async def scenario(pair: Pair) -> None:
        (pair.primary / "f").write_bytes(_random(SIZE))
        task = asyncio.create_task(pair.sync())
        await asyncio.wait_for(asked.wait(), 10)
        await pair.receiver.close()
        with pytest.raises(PeerLost, match="closed the replication connection"):
            await task
        with pytest.raises(PeerLost):  # and every later file at once
            await pair.sync()

    run(tmp_path, scenario, async_mode="second", answer=silent)


@pytest.mark.parametrize("mode", ["second", "none"])
@pytest.mark.parametrize(
    ("need", "why"),
    [
        (lambda seq: m.Need(seq, b"other", ()), "names b'other'"),
        (lambda seq: m.Need(seq, b"f", (31, 32)), "asks for block 32, the file has 32"),
        (lambda seq: m.Need(seq + 5, b"f", ()), "answers no HASHES request"),
    ],
)
def test_a_need_that_does_not_fit_its_hashes_is_a_protocol_error(
    tmp_path: Path, mode: AsyncMode, need: Callable[[int], m.Need], why: str
) -> None:
    def wrong(pair: Pair, frame: Frame, result: HashesResult) -> None:
        pair.receiver.send_control(m.encode_need(need(frame.seq)))

    async def scenario(pair: Pair) -> None:
        (pair.primary / "f").write_bytes(_random(SIZE))
        with pytest.raises(PeerLost, match=f"broke the replication protocol: .*{why}"):
            await pair.sync()

    run(tmp_path, scenario, async_mode=mode, answer=wrong)


class NoSender:
    """A connection nothing is sent on."""

    last_seq = 0

    def submit(
        self, frame_type: FrameType, header: bytes, payload: bytes = b""
    ) -> asyncio.Future[int]:
        raise AssertionError("nothing may be sent")


def test_on_need_refuses_a_need_nobody_asked_for() -> None:
    sync = BlockSync(NoSender())
    with pytest.raises(ProtocolError, match=r"NEED #4 for b'f' answers no HASHES request"):
        sync.on_need(m.Need(4, b"f", ()))


# ---- the digests themselves ----------------------------------------------------------------------


def test_digests_of_holes_equal_digests_of_written_zeros(tmp_path: Path) -> None:
    hole, zeros = tmp_path / "hole", tmp_path / "zeros"
    with open(hole, "wb") as f:
        f.truncate(3 * BLOCK + 7)
    zeros.write_bytes(bytes(3 * BLOCK + 7))
    digests = []
    for path in (hole, zeros):
        fd = os.open(path, os.O_RDONLY)
        try:
            digests.append(block_digests(fd, BLOCK, 3 * BLOCK + 7, 0, 4))
            hashes = m.Hashes(b"x", BLOCK, 3 * BLOCK + 7, tuple(digests[0]))
            assert differing_blocks(fd, hashes) == ()
        finally:
            os.close(fd)
    assert digests[0] == digests[1]
    assert len(set(digests[0])) == 2  # full blocks alike, the short last one not
