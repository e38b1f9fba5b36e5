"""The primary's sink and copier over a real loopback connection, without FUSE.

Tree A is the primary's backing tree, tree B the secondary's (a real Applier behind a real
Receiver). The tests drive :class:`ReplicatingSink` the way the pass-through does (change A, then
report), and check B against A with the independent digest of :mod:`hakit.testing.workloads`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from hakit.replication import messages as m
from hakit.replication.applier import Applier, HashesResult
from hakit.replication.hashsync import BlockSync
from hakit.replication.journal import DirtyJournal
from hakit.replication.nslog import NamespaceLog
from hakit.replication.primary import Copier, Counters, ReplicatingSink, journal_ops
from hakit.replication.sink import NewNode
from hakit.replication.transport import Identity, Receiver, Sender
from hakit.replication.wire import Frame
from hakit.testing.workloads import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    compare_digests,
    digest_lines,
    fallocate,
)

KEY = bytes(range(32))
PRIMARY = Identity(KEY, "node1", "node2", "mirror", 0)
SECONDARY = Identity(KEY, "node2", "node1", "mirror", 0)


def never(path: bytes, is_dir: bool) -> bool:
    return False


class Side:
    """The secondary: a receiver applying into ``root`` (answers HASHES like the replicator)."""

    def __init__(self, root: Path) -> None:
        self.fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        self.applier = Applier(self.fd, in_sync=False)
        self.receiver = Receiver(SECONDARY, self.apply, sync=lambda: None, sync_interval=0.02)
        self.ended = 0

    async def apply(self, frame: Frame) -> None:
        result = self.applier.apply(m.decode(frame))
        if isinstance(result, HashesResult):
            self.receiver.send_control(m.encode_need(result.need(frame.seq)))
        elif result is not None:
            self.ended += 1

    async def close(self) -> None:
        await self.receiver.close()
        self.applier.close()
        os.close(self.fd)


async def connect(side: Side, lost: list[str]) -> tuple[Sender, BlockSync]:
    port = await side.receiver.start("127.0.0.1", 0)
    sender = await Sender.connect(
        "127.0.0.1", port, PRIMARY, sendtimeout=10.0, on_peer_lost=lost.append
    )
    block_sync = BlockSync(sender)
    sender.on_need(lambda frame: block_sync.on_need(m.decode_need(frame)))
    return sender, block_sync


@contextlib.asynccontextmanager
async def copier_to(
    side: Side, source: Path, sink: ReplicatingSink, lost: list[str] | None = None
) -> AsyncIterator[Copier]:
    """A copier from ``source`` to ``side`` over a new connection ``sink`` is attached to; the
    connection and ``side`` are closed afterwards."""
    sender, block_sync = await connect(side, [] if lost is None else lost)
    try:
        sink.attach(sender)
        root = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield Copier(root, sender, never, Counters(), sink=sink, block_sync=block_sync)
        finally:
            os.close(root)
    finally:
        await sender.close()
        await side.close()


def make_sink(
    on_out_of_date: Callable[[str], None],
    *,
    locktimeout: float = 5.0,
    paired: bool = False,
    journal: DirtyJournal | None = None,
    nslog: NamespaceLog | None = None,
) -> ReplicatingSink:
    return ReplicatingSink(
        exclude=never,
        sendtimeout=5.0,
        locktimeout=locktimeout,
        on_out_of_date=on_out_of_date,
        paired=paired,
        journal=journal,
        nslog=nslog,
    )


def identical(a: Path, b: Path) -> list[str]:
    return compare_digests(digest_lines(a), digest_lines(b))


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def mutate(root: Path, rng: random.Random, rounds: int) -> list[tuple[str, tuple[object, ...]]]:
    """Random changes to ``root``; returns the sink calls that report them (in order)."""
    calls: list[tuple[str, tuple[object, ...]]] = []
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for i in range(rounds):
        choice = rng.random()
        if choice < 0.1 and files:
            f = rng.choice(files)
            mode = rng.choice([FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, FALLOC_FL_KEEP_SIZE])
            offset, length = rng.randrange(0, 3 * 1024 * 1024), rng.randrange(1, 300_000)
            fd = os.open(f, os.O_WRONLY)
            fallocate(fd, mode, offset, length)
            os.close(fd)
            rel = os.fsencode(f.relative_to(root))
            calls.append(("fallocate", (1, rel, mode, offset, length, f.stat().st_mtime_ns)))
        elif choice < 0.6 and files:
            f = rng.choice(files)
            offset = rng.randrange(0, 3 * 1024 * 1024)
            data = rng.randbytes(rng.randrange(1, 200_000))
            fd = os.open(f, os.O_WRONLY)
            os.pwrite(fd, data, offset)
            os.close(fd)
            rel = os.fsencode(f.relative_to(root))
            calls.append(("write", (1, rel, offset, data, f.stat().st_mtime_ns)))
        elif choice < 0.75:
            d = root / f"new{i}"
            d.mkdir()
            f = d / "file"
            f.write_bytes(rng.randbytes(rng.randrange(0, 300_000)))
            st_d, st_f = d.stat(), f.stat()
            for path, st, kind in ((d, st_d, "mkdir"), (f, st_f, "create")):
                node = NewNode(
                    os.fsencode(path.relative_to(root)),
                    st.st_mode,
                    st.st_uid,
                    st.st_gid,
                    0,
                    st.st_atime_ns,
                    st.st_mtime_ns,
                    path.parent.stat().st_mtime_ns,
                )
                calls.append((kind, (node,)))
            rel = os.fsencode(f.relative_to(root))
            data = f.read_bytes()
            calls.append(("write", (2, rel, 0, data, st_f.st_mtime_ns)))
            files.append(f)
        elif choice < 0.85 and files:
            f = files.pop(rng.randrange(len(files)))
            target = f.with_name(f.name + ".moved")
            f.rename(target)
            files.append(target)
            old, new = (os.fsencode(p.relative_to(root)) for p in (f, target))
            calls.append(("rename", (old, new, 0, 0, 0)))
        elif files:
            f = files.pop(rng.randrange(len(files)))
            f.unlink()
            calls.append(("unlink", (os.fsencode(f.relative_to(root)), 0)))
    return calls


def dataset(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True)
    for i in range(6):
        (root / ("sub" if i % 2 else ".") / f"f{i}").write_bytes(rng.randbytes(3 * 1024 * 1024))


def test_alone_changes_are_journaled_then_sent_incrementally(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    dataset(a, 1)
    shutil.copytree(a, b, symlinks=True)  # the peer had everything when it left
    journal = DirtyJournal.open(tmp_path / "rfs0.journal", zone_size=64 * 1024)
    nslog = NamespaceLog(tmp_path / "rfs0.journal.ns")

    async def scenario() -> None:
        reported: list[str] = []
        sink = make_sink(reported.append, journal=journal, nslog=nslog)
        # ALONE: every change is journaled (durably) before the call returns.
        calls = mutate(a, random.Random(7), 15)
        for name, args in calls:
            await getattr(sink, name)(*args)
        assert not journal.empty
        modified = 0
        for name, args in calls:
            if name == "write":
                modified += len(args[3])  # type: ignore[arg-type]
            elif name == "fallocate":
                modified += int(args[4])  # type: ignore[call-overload]
        assert {"write", "fallocate", "rename"} <= {name for name, _ in calls}
        # The peer comes back: the copier sends what the journal lists, nothing else.
        side = Side(b)
        lost: list[str] = []
        async with copier_to(side, a, sink, lost) as copier:
            _files, sent = await copier.run_incremental(journal, "incremental", "g2", nslog)
            assert side.ended == 1
            assert sent <= 2 * modified + 6 * 64 * 1024, (sent, modified)
            assert sent < 6 * 3 * 1024 * 1024 / 2, "incremental must not resend the dataset"
            # Progress is recorded once the peer reports the copy durable.
            for _ in range(250):
                if journal.empty:
                    break
                await asyncio.sleep(0.02)
            assert journal.empty, journal.plan()
            await journal.commit()
            assert not lost and not reported

    run(scenario)
    assert identical(a, b) == []
    # The progress survives a reopen (an interrupted reintegration resumes from here).
    journal.close()
    assert DirtyJournal.open(tmp_path / "rfs0.journal").empty


def test_lost_peer_requests_not_yet_durable_are_journaled(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    journal = DirtyJournal.open(tmp_path / "rfs0.journal")
    (a / "f").write_bytes(b"x" * 10)

    async def scenario() -> None:
        reported: list[str] = []
        sink = make_sink(reported.append, journal=journal, paired=True)
        side = Side(b)
        side.receiver = Receiver(SECONDARY, side.apply)  # never syncs: nothing becomes durable
        lost: list[str] = []
        sender, _ = await connect(side, lost)
        sink.attach(sender)
        await sink.write(1, b"f", 0, b"x" * 10, 1)
        assert journal.empty  # acknowledged: not journaled while the peer is current
        await side.receiver.close()  # the peer dies
        while not lost:
            await asyncio.sleep(0.01)
        sink.detach(lost[0])
        await journal.commit()
        await sender.close()
        side.applier.close()
        os.close(side.fd)

    run(scenario)
    plan = journal.plan()
    assert b"f" in plan.files, plan


def test_a_current_peer_lost_holds_requests_until_the_generation_is_persisted(
    tmp_path: Path,
) -> None:
    b = tmp_path / "b"
    b.mkdir()

    async def scenario() -> None:
        reported: list[str] = []
        sink = make_sink(reported.append, locktimeout=30.0, paired=True)
        side = Side(b)
        lost: list[str] = []
        sender, _ = await connect(side, lost)
        sink.attach(sender)
        assert sink.current
        await side.receiver.close()
        while not lost:
            await asyncio.sleep(0.01)
        sink.detach(lost[0])
        write = asyncio.create_task(sink.write(1, b"f", 0, b"y", 1))
        await asyncio.sleep(0.1)
        assert reported and not write.done(), "held until the engine persisted the generation"
        sink.generation_persisted()
        await asyncio.wait_for(write, 5)
        await sender.close()
        await side.close()
        await asyncio.sleep(0.05)  # let the aborted transports finish closing

    run(scenario)


def test_a_file_renamed_during_the_incremental_copy_is_still_copied(tmp_path: Path) -> None:
    # The copy walks the journal while the application keeps renaming: a directory renamed
    # before the copier reached the dirty file in it must not leave the file's zones behind.
    a, b = tmp_path / "a", tmp_path / "b"
    dataset(a, 3)
    shutil.copytree(a, b, symlinks=True)
    journal = DirtyJournal.open(tmp_path / "rfs0.journal", zone_size=64 * 1024)

    async def scenario() -> None:
        sink = make_sink(lambda reason: None, journal=journal)
        # ALONE: writes to every file (the ones in sub/ last in the journal's order).
        for f in [*sorted(a.glob("f*")), *sorted((a / "sub").glob("f*"))]:
            data = random.Random(f.name).randbytes(100_000)
            fd = os.open(f, os.O_WRONLY)
            os.pwrite(fd, data, 1_000_000)
            os.close(fd)
            rel = os.fsencode(f.relative_to(a))
            await sink.write(1, rel, 1_000_000, data, f.stat().st_mtime_ns)
        async with copier_to(Side(b), a, sink) as copier:
            copy = asyncio.create_task(copier.run_incremental(journal, "incremental", "g2"))
            while not sink.copying:
                await asyncio.sleep(0)
            (a / "sub").rename(a / "moved")  # before the copier reached sub/
            await sink.rename(b"sub", b"moved", 0, 0, 0)
            await copy

    run(scenario)
    assert identical(a, b) == []


def test_journal_ops_cover_every_mutation() -> None:
    node = NewNode(b"d/x", 0o100644, 0, 0, 0, 1, 2, 3)
    assert journal_ops(m.Create(node)) == [("created", (b"d/x", False))]
    assert journal_ops(m.Mkdir(node)) == [("created", (b"d/x", True))]
    assert journal_ops(m.Rename(b"a", b"b", m.RENAME_EXCHANGE, 0, 0)) == [
        ("renamed", (b"a", b"b", True))
    ]
    assert journal_ops(m.Write(b"a", 5, 0, b"abc")) == [("write", (b"a", 5, 3))]
    assert journal_ops(m.SetXattr(b"a", b"user.x", b"v")) == [("attrs", (b"a",))]
    assert journal_ops(m.Fallocate(b"a", 0, 7, 9, 0)) == [("write", (b"a", 7, 9))]
    assert journal_ops(m.Fsync(b"a", False)) == []


def test_reiallowedbw_paces_the_copy(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.mkdir()
    (a / "big").write_bytes(os.urandom(4 * 1024 * 1024))
    now = [100.0]

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds  # time passes only while the copier waits

    class Recorder:
        last_seq = 0

        def submit(self, frame_type: object, header: bytes, payload: bytes = b"") -> object:
            self.last_seq += 1
            future = asyncio.get_running_loop().create_future()
            future.set_result(self.last_seq)
            return future

    async def scenario() -> None:
        root = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
        try:
            copier = Copier(
                root,
                Recorder(),  # type: ignore[arg-type]
                never,
                Counters(),
                bandwidth=1024 * 1024,
                clock=lambda: now[0],
                sleep=fake_sleep,
            )
            await copier.run("full", "g")
        finally:
            os.close(root)

    asyncio.run(scenario())
    # 4 MiB at 1 MiB/s: the copier waited for about four seconds of (fake) time.
    assert 3.9 <= now[0] - 100.0 <= 4.1, now[0]


def test_a_fifo_created_while_alone_does_not_block_the_copy(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    journal = DirtyJournal.open(tmp_path / "rfs0.journal", zone_size=64 * 1024)
    nslog = NamespaceLog(tmp_path / "rfs0.journal.ns")

    async def scenario() -> None:
        sink = make_sink(lambda _: None, journal=journal, nslog=nslog)
        os.mkfifo(a / "fifo", 0o640)
        st = (a / "fifo").stat()
        node = NewNode(b"fifo", st.st_mode, 0, 0, 0, st.st_atime_ns, st.st_mtime_ns, 0)
        await sink.mknod(node)
        await sink.chmod(b"fifo", 0o600)
        os.chmod(a / "fifo", 0o600)
        async with copier_to(Side(b), a, sink) as copier:
            # Opening a FIFO for reading would wait for a writer for ever.
            await asyncio.wait_for(copier.run_incremental(journal, "incremental", "g", nslog), 10)

    run(scenario)
    assert (b / "fifo").is_fifo()
    assert identical(a, b) == []


def test_a_connected_peer_gets_nothing_before_its_copy_begins(tmp_path: Path) -> None:
    b = tmp_path / "b"
    b.mkdir()
    journal = DirtyJournal.open(tmp_path / "rfs0.journal")

    async def scenario() -> None:
        sink = make_sink(lambda _: None, journal=journal)
        side = Side(b)
        sender, _ = await connect(side, [])
        try:
            sink.attach(sender)  # not paired: the peer is behind
            await sink.write(1, b"f", 0, b"x", 1)
            assert sender.last_seq == 0, "sent to a peer whose tree is behind"
            assert b"f" in journal.plan().files
            sink.copying = True  # what the copier sets once its namespace step is queued
            await sink.write(1, b"f", 1, b"y", 2)
            assert sender.last_seq == 1
        finally:
            await sender.close()
            await side.close()

    run(scenario)
