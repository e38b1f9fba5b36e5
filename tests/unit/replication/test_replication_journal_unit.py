"""The dirty-zone journal (hakit.replication.journal): what it records, how namespace changes move
the records, group commit, crash replay at every byte, corruption, compaction, and a seeded
model-based test against a plain reference model."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hakit.errors import LocalSystemError, NotFoundError
from hakit.replication import journal as jmod
from hakit.replication.journal import DirtyJournal, Estimate, JournalCorrupt, Plan

ZS = 4096  # a small zone size keeps the numbers readable
HEADER = 32


@pytest.fixture
def jpath(tmp_path: Path) -> Path:
    return tmp_path / "rfs0.journal"


@pytest.fixture
def journal(jpath: Path) -> Iterator[DirtyJournal]:
    j = DirtyJournal.open(jpath, zone_size=ZS)
    yield j
    j.close()


def commit(j: DirtyJournal) -> None:
    asyncio.run(j.commit())


def reopen(j: DirtyJournal) -> DirtyJournal:
    j.close()
    return DirtyJournal.open(j.path, zone_size=j.zone_size)


def as_tuple(plan: Plan) -> tuple[object, ...]:
    return (plan.listings, plan.attrs, plan.files, plan.shrink)


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count fdatasync calls (they still happen)."""
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    return calls


# ---- recording and replay -------------------------------------------------------------------------


def test_new_journal_is_empty_and_has_a_header(jpath: Path) -> None:
    j = DirtyJournal.open(jpath, zone_size=ZS)
    assert j.empty
    assert jpath.read_bytes()[:8] == b"HKJRNL1\n"
    assert j.file_size == HEADER == jpath.stat().st_size
    assert as_tuple(j.plan()) == ([], [], {}, {})
    j.close()


def test_record_commit_reopen_round_trip(journal: DirtyJournal) -> None:
    assert journal.write(b"d/f", 0, 10)
    assert journal.write(b"d/f", 3 * ZS - 1, 2)  # straddles zones 2 and 3
    assert journal.created(b"d/new", is_dir=False)
    assert journal.created(b"d/sub", is_dir=True)
    assert journal.attrs(b"d")
    assert journal.truncate(b"big", 10 * ZS + 5)
    assert journal.whole(b"w")
    assert journal.linked(b"d/f", b"e/link")
    commit(journal)
    expected = Plan(
        listings=[b"d", b"d/sub", b"e"],
        attrs=[b"big", b"d"],
        files={b"big": [10], b"d/f": [0, 2, 3], b"d/new": None, b"w": None},
        shrink={b"big": 10 * ZS + 5},
    )
    assert journal.plan() == expected
    again = reopen(journal)
    assert again.plan() == expected
    assert DirtyJournal.load_readonly(again.path).plan() == expected
    again.close()


def test_plan_orders_parents_first(journal: DirtyJournal) -> None:
    for d in (b"a/b/c", b"a", b"a-b", b"a/b", b""):
        journal.created(d + b"/x" if d else b"x", is_dir=True)
    assert journal.plan().listings[:4] == [b"", b"a", b"a/b", b"a/b/c"]
    listings = journal.plan().listings
    assert listings.index(b"a/b") < listings.index(b"a/b/c/x")


def test_write_to_a_dirty_zone_records_nothing(journal: DirtyJournal, syncs: list[int]) -> None:
    assert journal.write(b"f", 100, 10)
    commit(journal)
    size = journal.file_size
    assert len(syncs) == 1
    assert not journal.write(b"f", 0, ZS)  # same zone 0
    assert not journal.write(b"f", 5, 1)
    assert not journal.write(b"f", 0, 0)  # nothing written
    commit(journal)
    assert journal.file_size == size == journal.path.stat().st_size
    assert len(syncs) == 1  # nothing new: no I/O at all
    assert journal.write(b"f", ZS - 1, 2)  # zone 1 is new even though zone 0 is known
    assert journal.plan().files == {b"f": [0, 1]}


def test_writes_to_a_whole_file_record_nothing(journal: DirtyJournal) -> None:
    assert journal.created(b"f", is_dir=False)
    assert not journal.write(b"f", 0, 100 * ZS)
    assert not journal.whole(b"f")
    assert journal.plan().files == {b"f": None}


def test_truncate_keeps_the_smallest_size_and_marks_attrs(journal: DirtyJournal) -> None:
    assert journal.truncate(b"f", 5 * ZS)
    assert journal.truncate(b"f", ZS + 1)
    assert not journal.truncate(b"f", ZS + 1)
    assert journal.truncate(b"f", 8 * ZS)  # zone 8 is new; the shrink stays at the smallest
    plan = journal.plan()
    assert plan.files == {b"f": [1, 5, 8]}
    assert plan.shrink == {b"f": ZS + 1}
    assert plan.attrs == [b"f"]
    journal.whole(b"f")  # a whole copy needs no shrink
    assert journal.plan().shrink == {}
    assert not journal.truncate(b"f", 0)  # attributes known, file whole: nothing new
    assert journal.plan().shrink == {}


def test_write_range_covers_every_zone(journal: DirtyJournal) -> None:
    assert journal.write(b"f", ZS // 2, 3 * ZS)
    assert journal.plan().files == {b"f": [0, 1, 2, 3]}


# ---- namespace changes ----------------------------------------------------------------------------


def test_rename_file_moves_its_zones_and_dirties_both_parents(journal: DirtyJournal) -> None:
    journal.write(b"a/f", 0, 1)
    journal.attrs(b"a/f")
    journal.truncate(b"a/f", 3)
    assert journal.renamed(b"a/f", b"b/g")
    plan = journal.plan()
    assert plan.files == {b"b/g": [0]}
    assert plan.attrs == [b"b/g"]
    assert plan.shrink == {b"b/g": 3}
    assert plan.listings == [b"a", b"b"]


def test_rename_directory_is_a_prefix_move(journal: DirtyJournal) -> None:
    journal.write(b"d/x", 0, 1)
    journal.write(b"d/sub/y", ZS, 1)
    journal.created(b"d/sub/new", is_dir=True)
    journal.attrs(b"d")
    journal.write(b"dd/z", 0, 1)  # same prefix bytes, not inside d: must not move
    journal.write(b"d", 0, 1)  # nonsense for a directory, but "d" itself moves too
    journal.renamed(b"d", b"e/d2")
    plan = journal.plan()
    assert plan.files == {b"dd/z": [0], b"e/d2": [0], b"e/d2/sub/y": [1], b"e/d2/x": [0]}
    assert plan.attrs == [b"e/d2"]
    assert plan.listings == [b"", b"e", b"e/d2/sub", b"e/d2/sub/new"]


def test_rename_over_an_existing_target_drops_the_target(journal: DirtyJournal) -> None:
    journal.write(b"src", 0, 1)
    journal.write(b"dst", 5 * ZS, 1)
    journal.attrs(b"dst")
    journal.truncate(b"dst", 7)
    journal.renamed(b"src", b"dst")
    plan = journal.plan()
    assert plan.files == {b"dst": [0]}
    assert plan.attrs == []
    assert plan.shrink == {}


def test_rename_over_a_directory_drops_everything_under_it(journal: DirtyJournal) -> None:
    journal.created(b"t", is_dir=True)
    journal.write(b"t/old", 0, 1)
    journal.done_listing(b"t")
    journal.renamed(b"s", b"t")  # "s" was clean: nothing moves, "t"'s records are gone
    assert journal.plan().files == {}
    assert journal.plan().listings == [b""]


def test_exchange_swaps_both_subtrees(journal: DirtyJournal) -> None:
    journal.write(b"p/a", 0, 1)
    journal.write(b"p/a/in", ZS, 1)  # a is a directory here
    journal.whole(b"q/b")
    journal.attrs(b"q/b")
    assert journal.renamed(b"p/a", b"q/b", exchange=True)
    plan = journal.plan()
    assert plan.files == {b"p/a": None, b"q/b": [0], b"q/b/in": [1]}
    assert plan.attrs == [b"p/a"]
    assert plan.listings == [b"p", b"q"]


def test_removal_forgets_everything_under_the_path(journal: DirtyJournal) -> None:
    journal.created(b"d", is_dir=True)
    journal.write(b"d/f", 0, 1)
    journal.created(b"d/e", is_dir=True)
    journal.attrs(b"d/e/g")
    journal.write(b"d2", 0, 1)
    journal.done_listing(b"")
    assert journal.removed(b"d", is_dir=True)
    plan = journal.plan()
    assert plan.files == {b"d2": [0]}
    assert plan.attrs == []
    assert plan.listings == [b""]
    assert journal.removed(b"d2", is_dir=False)
    assert not journal.removed(b"d2", is_dir=False)  # nothing new: no record
    assert journal.plan().files == {}


def test_link_dirties_the_new_parent(journal: DirtyJournal) -> None:
    assert journal.linked(b"a/f", b"b/c/g")
    assert not journal.linked(b"x", b"b/c/h")
    assert journal.plan().listings == [b"b/c"]


# ---- progress ---------------------------------------------------------------------------------------


def test_done_items_are_gone_after_reopen(journal: DirtyJournal) -> None:
    journal.write(b"f", 0, 3 * ZS)
    journal.truncate(b"f", 1)
    journal.whole(b"g")
    journal.created(b"d", is_dir=True)
    journal.attrs(b"d")
    commit(journal)
    journal.done_shrink(b"f")
    journal.done_zone(b"f", 1)
    journal.done_zone(b"f", 9)  # unknown: ignored
    journal.done_file(b"g")
    journal.done_listing(b"d")
    journal.done_attrs(b"d")
    commit(journal)
    j = reopen(journal)
    assert j.plan() == Plan(
        listings=[b""], attrs=[b"f"], files={b"f": [0, 2]}, shrink={}
    )  # "f" stays until done_file (its size)
    j.done_zone(b"f", 0)
    j.done_zone(b"f", 2)
    assert j.plan().files == {b"f": []}
    j.done_file(b"f")
    j.done_attrs(b"f")
    j.done_listing(b"")
    assert j.empty
    commit(j)
    j = reopen(j)
    assert j.empty
    j.close()


def test_reset_empties_the_journal_atomically(journal: DirtyJournal) -> None:
    journal.write(b"f", 0, 1)
    commit(journal)
    old_id = journal.journal_id
    journal.write(b"g", 0, 1)  # recorded, not committed: reset makes it moot
    journal.reset()
    assert journal.empty
    assert journal.journal_id != old_id
    assert journal.path.stat().st_size == HEADER
    assert not list(journal.path.parent.glob("*.tmp"))
    commit(journal)  # nothing to wait for
    journal.write(b"h", 0, 1)
    commit(journal)
    j = reopen(journal)
    assert j.plan().files == {b"h": [0]}
    assert j.journal_id != old_id
    j.close()


def test_estimate(journal: DirtyJournal) -> None:
    journal.write(b"f", 0, 3 * ZS)
    journal.whole(b"w")
    journal.whole(b"gone")
    journal.attrs(b"f")
    assert journal.estimate() == Estimate(
        files=3, zones=3, bytes=3 * ZS, listings=0, attrs=1, whole_unknown=True
    )
    sizes = {b"w": 12345}
    est = journal.estimate(sizes.get)
    assert est.bytes == 3 * ZS + 12345
    assert est.whole_unknown  # "gone" has no size
    sizes[b"gone"] = 1
    assert not journal.estimate(sizes.get).whole_unknown


# ---- durability -----------------------------------------------------------------------------------


def test_concurrent_writers_share_one_flush(journal: DirtyJournal, syncs: list[int]) -> None:
    writers = 50

    async def writer(i: int) -> None:
        assert journal.write(b"f", i * ZS, 1)
        await journal.commit()

    async def main() -> None:
        await asyncio.gather(*(writer(i) for i in range(writers)))

    asyncio.run(main())
    assert 1 <= len(syncs) < writers
    j = reopen(journal)
    assert j.plan().files == {b"f": list(range(writers))}
    j.close()


def test_a_record_made_during_a_flush_waits_for_the_next(
    journal: DirtyJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()
    sizes_at_sync: list[int] = []
    real = os.fdatasync

    def blocking(fd: int) -> None:
        sizes_at_sync.append(os.fstat(fd).st_size)
        entered.set()
        release.wait()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", blocking)

    async def main() -> None:
        journal.write(b"f", 0, 1)
        first = asyncio.create_task(journal.commit())
        await asyncio.to_thread(entered.wait)  # the first flush is inside fdatasync
        journal.write(b"f", ZS, 1)
        second = asyncio.create_task(journal.commit())
        await asyncio.sleep(0)
        release.set()
        await first
        await second

    asyncio.run(main())
    assert len(sizes_at_sync) == 2
    assert sizes_at_sync[0] < sizes_at_sync[1]  # the second record was not in the first flush


def test_a_cancelled_committer_does_not_cancel_the_shared_flush(
    journal: DirtyJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered = threading.Event()
    release = threading.Event()
    real = os.fdatasync

    def blocking(fd: int) -> None:
        entered.set()
        release.wait()
        real(fd)

    monkeypatch.setattr(os, "fdatasync", blocking)

    async def main() -> None:
        journal.write(b"f", 0, 1)
        a = asyncio.create_task(journal.commit())
        b = asyncio.create_task(journal.commit())
        await asyncio.to_thread(entered.wait)
        a.cancel()
        release.set()
        await b
        with pytest.raises(asyncio.CancelledError):
            await a

    asyncio.run(main())
    j = reopen(journal)
    assert j.plan().files == {b"f": [0]}
    j.close()


def test_a_failed_sync_poisons_the_journal(
    journal: DirtyJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    journal.write(b"f", 0, 1)
    with pytest.raises(LocalSystemError, match=r"rfs0\.journal.*full synchronization"):
        commit(journal)
    monkeypatch.undo()
    journal.write(b"f", ZS, 1)
    with pytest.raises(LocalSystemError, match="no longer be trusted"):
        commit(journal)


# ---- crashes and corruption -----------------------------------------------------------------------


def _committed_then_one_more(jpath: Path) -> tuple[bytes, bytes, Plan]:
    """A journal with some committed records, then the bytes after one more record."""
    j = DirtyJournal.open(jpath, zone_size=ZS)
    j.write(b"dir/file", 0, 2 * ZS)
    j.created(b"dir/sub", is_dir=True)
    j.renamed(b"dir/file", b"dir/sub/moved")
    commit(j)
    before = jpath.read_bytes()
    plan = j.plan()
    j.renamed(b"dir/sub", b"other", exchange=True)
    commit(j)
    j.close()
    return before, jpath.read_bytes(), plan


def test_a_torn_last_record_is_dropped_at_every_byte(jpath: Path, tmp_path: Path) -> None:
    before, after, plan_before = _committed_then_one_more(jpath)
    assert len(after) > len(before)
    for cut in range(len(before), len(after)):
        for tail in (b"", bytes(len(after) - cut)):  # cut short, or zeros (delayed allocation)
            crashed = tmp_path / "crashed.journal"
            crashed.write_bytes(after[:cut] + tail)
            ro = DirtyJournal.load_readonly(crashed)
            assert ro.plan() == plan_before
            assert crashed.stat().st_size == cut + len(tail)  # read-only: untouched
            j = DirtyJournal.open(crashed, zone_size=ZS)
            assert j.plan() == plan_before, cut
            assert crashed.read_bytes() == before  # truncated to the last good record
            j.close()


def test_a_torn_batch_keeps_a_prefix_of_its_records(jpath: Path, tmp_path: Path) -> None:
    j = DirtyJournal.open(jpath, zone_size=ZS)
    sizes = [j.file_size]
    plans = [j.plan()]
    for i in range(5):
        j.write(b"f%d" % i, i * ZS, 1)
        commit(j)
        sizes.append(j.file_size)
        plans.append(j.plan())
    j.close()
    data = jpath.read_bytes()
    for cut in range(HEADER, len(data) + 1):
        # Cut short, or the rest zero-filled (several records of one unsynced append). The
        # records kept are those whose bytes are all intact (a zero-fill may match real zeros).
        for tail in (b"", bytes(len(data) - cut)):
            crashed = tmp_path / "crashed.journal"
            damaged = data[:cut] + tail
            crashed.write_bytes(damaged)
            kept = max(i for i, end in enumerate(sizes) if damaged[:end] == data[:end])
            assert DirtyJournal.load_readonly(crashed).plan() == plans[kept], cut


def test_a_bad_record_in_the_middle_is_corruption(jpath: Path) -> None:
    _, data, _ = _committed_then_one_more(jpath)
    damaged = bytearray(data)
    damaged[HEADER + 10] ^= 0xFF  # inside the first record's fields
    jpath.write_bytes(bytes(damaged))
    with pytest.raises(JournalCorrupt, match=f"{jpath}: offset {HEADER}: record checksum"):
        DirtyJournal.open(jpath, zone_size=ZS)
    with pytest.raises(JournalCorrupt, match=f"offset {HEADER}"):
        DirtyJournal.load_readonly(jpath)
    assert jpath.read_bytes() == bytes(damaged)  # never "repaired" by truncation


def test_an_impossible_length_in_the_middle_is_corruption(jpath: Path) -> None:
    _, data, _ = _committed_then_one_more(jpath)
    damaged = data[:HEADER] + b"\0\0\0\0" + data[HEADER + 4 :]
    jpath.write_bytes(damaged)
    with pytest.raises(JournalCorrupt, match="impossible record length 0"):
        DirtyJournal.open(jpath, zone_size=ZS)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d[:20],  # cut inside the header
        lambda d: b"NOTJRNL\n" + d[8:],
        lambda d: d[:9] + bytes([d[9] ^ 1]) + d[10:],  # zone size changed: header CRC
    ],
    ids=["short", "magic", "crc"],
)
def test_a_bad_header_is_corruption(jpath: Path, mangle: Callable[[bytes], bytes]) -> None:
    DirtyJournal.open(jpath, zone_size=ZS).close()
    jpath.write_bytes(mangle(jpath.read_bytes()))
    with pytest.raises(JournalCorrupt, match=f"{jpath}: offset 0"):
        DirtyJournal.open(jpath, zone_size=ZS)


def test_load_readonly_of_a_missing_journal(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"missing\.journal"):
        DirtyJournal.load_readonly(tmp_path / "missing.journal")


def test_a_readonly_journal_cannot_record(jpath: Path) -> None:
    DirtyJournal.open(jpath).close()
    ro = DirtyJournal.load_readonly(jpath)
    with pytest.raises(LocalSystemError, match="read-only"):
        ro.write(b"f", 0, 1)


def test_reopening_with_another_zone_size_converts_the_zones(jpath: Path) -> None:
    j = DirtyJournal.open(jpath, zone_size=4 * ZS)
    j.write(b"f", 4 * ZS, 1)  # zone 1 of 4 ZS = zones 4..7 of ZS
    commit(j)
    j.close()
    j = DirtyJournal.open(jpath, zone_size=ZS)
    assert j.zone_size == ZS
    assert j.plan().files == {b"f": [4, 5, 6, 7]}
    j.close()
    assert DirtyJournal.load_readonly(jpath).plan().files == {b"f": [4, 5, 6, 7]}
    j = DirtyJournal.open(jpath, zone_size=8 * ZS)  # to larger zones: zone 0 covers it
    assert j.plan().files == {b"f": [0]}
    j.close()


# ---- compaction -----------------------------------------------------------------------------------


def test_compaction_keeps_the_same_state(jpath: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jmod, "COMPACT_MIN_BYTES", 4096)
    j = DirtyJournal.open(jpath, zone_size=ZS)
    j.write(b"keep", 0, 3 * ZS)
    j.created(b"d", is_dir=True)
    j.truncate(b"keep", 5)
    j.whole(b"w")
    j.done_listing(b"")
    commit(j)
    largest = 0
    for round_ in range(200):  # churn: zones dirtied and cleaned again
        j.write(b"churn", round_ * ZS, 1)
        j.done_zone(b"churn", round_)
        commit(j)
        largest = max(largest, j.file_size)
    plan = j.plan()
    # 200 rounds appended over 10 KiB of records: only rewrites keep it under the threshold.
    assert largest <= 4096
    assert j.file_size == jpath.stat().st_size
    assert not list(jpath.parent.glob("*.tmp"))
    j = reopen(j)
    assert j.plan() == plan
    assert plan.files == {b"churn": [], b"keep": [0, 1, 2], b"w": None}
    assert plan.shrink == {b"keep": 5}
    j.close()


# ---- model-based ----------------------------------------------------------------------------------

NAMES = [b"a", b"b", b"c"]


def _paths() -> list[bytes]:
    out: list[bytes] = []
    level = [b""]
    for _ in range(3):
        level = [(p + b"/" if p else b"") + n for p in level for n in NAMES]
        out += level
    return out


def _under(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top + b"/")


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


@dataclass
class Model:
    """The reference: plain sets of what is dirty, every namespace change a generic remap."""

    zone_size: int
    zones: set[tuple[bytes, int]] = field(default_factory=set)
    files: set[bytes] = field(default_factory=set)  # dirty files, zones or whole
    whole: set[bytes] = field(default_factory=set)
    shrink: dict[bytes, int] = field(default_factory=dict)
    listings: set[bytes] = field(default_factory=set)
    attrs: set[bytes] = field(default_factory=set)

    def remap(self, f: Callable[[bytes], bytes | None]) -> None:
        self.zones = {(q, z) for p, z in self.zones if (q := f(p)) is not None}
        self.files = {q for p in self.files if (q := f(p)) is not None}
        self.whole = {q for p in self.whole if (q := f(p)) is not None}
        self.shrink = {q: s for p, s in self.shrink.items() if (q := f(p)) is not None}
        self.listings = {q for p in self.listings if (q := f(p)) is not None}
        self.attrs = {q for p in self.attrs if (q := f(p)) is not None}

    def write(self, path: bytes, offset: int, length: int) -> None:
        if length > 0 and path not in self.whole:
            self.files.add(path)
            for z in range(offset // self.zone_size, (offset + length - 1) // self.zone_size + 1):
                self.zones.add((path, z))

    def truncate(self, path: bytes, size: int) -> None:
        self.attrs.add(path)
        self.write(path, size - size % self.zone_size, 1)
        if path not in self.whole:
            self.shrink[path] = min(self.shrink.get(path, size), size)

    def set_whole(self, path: bytes) -> None:
        self.files.add(path)
        self.whole.add(path)
        self.zones = {(p, z) for p, z in self.zones if p != path}
        self.shrink.pop(path, None)

    def created(self, path: bytes, is_dir: bool) -> None:
        self.listings.add(_parent(path))
        if is_dir:
            self.listings.add(path)
        else:
            self.set_whole(path)

    def removed(self, path: bytes) -> None:
        self.listings.add(_parent(path))
        self.remap(lambda p: None if _under(p, path) else p)

    def renamed(self, old: bytes, new: bytes, exchange: bool) -> None:
        self.listings |= {_parent(old), _parent(new)}

        def f(p: bytes) -> bytes | None:
            if _under(p, old):
                return new + p[len(old) :]
            if _under(p, new):
                return old + p[len(new) :] if exchange else None
            return p

        self.remap(f)

    def done_zone(self, path: bytes, zone: int) -> None:
        self.zones.discard((path, zone))

    def done_file(self, path: bytes) -> None:
        self.files.discard(path)
        self.whole.discard(path)
        self.zones = {(p, z) for p, z in self.zones if p != path}
        self.shrink.pop(path, None)

    def plan(self) -> tuple[object, ...]:
        files = {
            p: None if p in self.whole else sorted(z for q, z in self.zones if q == p)
            for p in self.files
        }
        return (
            sorted(self.listings, key=lambda p: p.split(b"/")),
            sorted(self.attrs, key=lambda p: p.split(b"/")),
            dict(sorted(files.items(), key=lambda kv: kv[0].split(b"/"))),
            self.shrink,
        )


def _random_step(rng: random.Random, j: DirtyJournal, model: Model, paths: list[bytes]) -> str:
    op = rng.choice(
        ["write"] * 6
        + ["truncate", "created", "removed", "renamed", "linked", "attrs", "whole"]
        + ["done_zone"] * 3
        + ["done_file", "done_listing", "done_attrs", "done_shrink"]
    )
    p = rng.choice(paths)
    if op == "write":
        offset, length = rng.randrange(0, 8 * ZS), rng.choice([0, 1, 100, ZS, 3 * ZS])
        j.write(p, offset, length)
        model.write(p, offset, length)
    elif op == "truncate":
        size = rng.randrange(0, 8 * ZS)
        j.truncate(p, size)
        model.truncate(p, size)
    elif op == "created":
        is_dir = rng.random() < 0.4
        j.created(p, is_dir)
        model.created(p, is_dir)
    elif op == "removed":
        j.removed(p, rng.random() < 0.5)
        model.removed(p)
    elif op == "renamed":
        q = rng.choice([x for x in paths if not _under(x, p) and not _under(p, x)] or [p])
        if q == p:
            return op
        exchange = rng.random() < 0.3
        j.renamed(p, q, exchange=exchange)
        model.renamed(p, q, exchange)
    elif op == "linked":
        q = rng.choice(paths)
        j.linked(q, p)
        model.listings.add(_parent(p))
    elif op == "attrs":
        j.attrs(p)
        model.attrs.add(p)
    elif op == "whole":
        j.whole(p)
        model.set_whole(p)
    elif op == "done_zone":
        dirty = sorted(model.zones)
        if dirty:
            path, zone = rng.choice(dirty)
            j.done_zone(path, zone)
            model.done_zone(path, zone)
    elif op == "done_file":
        j.done_file(p)
        model.done_file(p)
    elif op == "done_listing":
        q = rng.choice(sorted(model.listings) or [p])
        j.done_listing(q)
        model.listings.discard(q)
    elif op == "done_attrs":
        j.done_attrs(p)
        model.attrs.discard(p)
    elif op == "done_shrink":
        j.done_shrink(p)
        model.shrink.pop(p, None)
    return op


def _expected_index(plan: Plan) -> dict[bytes, int]:
    """Per directory, how many recorded paths lie strictly inside it (the journal's index)."""
    known = set(plan.files) | set(plan.shrink) | set(plan.listings) | set(plan.attrs)
    below: dict[bytes, int] = {}
    for path in known:
        while path:
            path = _parent(path)
            below[path] = below.get(path, 0) + 1
    return below


@pytest.mark.parametrize("seed", range(6))
def test_model_based_random_operations(
    seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jmod, "COMPACT_MIN_BYTES", 2048)  # compactions happen along the way
    rng = random.Random(seed)
    paths = _paths()
    jpath = tmp_path / f"model{seed}.journal"
    j = DirtyJournal.open(jpath, zone_size=ZS)
    model = Model(ZS)
    for step in range(600):
        op = _random_step(rng, j, model, paths)
        assert as_tuple(j.plan()) == model.plan(), f"seed {seed} step {step} after {op}"
        assert j._state.below == _expected_index(j.plan()), f"seed {seed} step {step} index"
        assert j.empty == (not any(model.plan()))
        if rng.random() < 0.3:
            commit(j)
        if rng.random() < 0.05:
            commit(j)
            j = reopen(j)
            assert as_tuple(j.plan()) == model.plan(), f"seed {seed} step {step} after reopen"
    commit(j)
    j = reopen(j)
    assert as_tuple(j.plan()) == model.plan()
    j.close()


def test_a_reset_during_a_compaction_wins(jpath: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jmod, "COMPACT_MIN_BYTES", 1024)
    j = DirtyJournal.open(jpath, zone_size=ZS)
    for i in range(40):  # ~2 KiB of records that cancel out: the next commit compacts
        j.write(b"f", i * ZS, 1)
        j.done_zone(b"f", i)
    entered = threading.Event()
    release = threading.Event()
    real = os.fsync

    def blocking(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread() and not entered.is_set():
            entered.set()  # the compaction's temporary file is written, not yet renamed
            release.wait()
        real(fd)

    monkeypatch.setattr(os, "fsync", blocking)

    async def main() -> None:
        flush = asyncio.create_task(j.commit())
        await asyncio.to_thread(entered.wait)
        j.reset()
        assert j.write(b"after", 0, 1)
        release.set()
        await flush
        await j.commit()

    asyncio.run(main())
    assert j.plan().files == {b"after": [0]}
    assert not list(jpath.parent.glob("*.tmp"))  # the stale snapshot was thrown away
    j = reopen(j)
    assert j.plan().files == {b"after": [0]}
    j.close()


def test_open_removes_temporary_files_left_by_a_crash(jpath: Path) -> None:
    DirtyJournal.open(jpath).close()
    stale = jpath.with_name(jpath.name + ".abc123.tmp")
    stale.write_bytes(b"half a snapshot")
    other = jpath.with_name("other.journal.abc.tmp")  # another directory's journal: kept
    other.write_bytes(b"")
    DirtyJournal.open(jpath).close()
    assert not stale.exists()
    assert other.exists()


def test_invalid_arguments_change_nothing(journal: DirtyJournal) -> None:
    with pytest.raises(ValueError, match="negative write offset"):
        journal.write(b"f", -1, 10)
    with pytest.raises(ValueError, match="negative size"):
        journal.truncate(b"f", -1)
    with pytest.raises(ValueError, match="path longer"):
        journal.created(b"x" * 70000, is_dir=False)
    assert journal.empty
    commit(journal)
    assert journal.file_size == HEADER


def test_a_closed_journal_refuses_to_record(journal: DirtyJournal) -> None:
    journal.close()
    with pytest.raises(LocalSystemError, match="is closed"):
        journal.attrs(b"f")


def test_a_clean_close_keeps_what_was_recorded(jpath: Path) -> None:
    j = DirtyJournal.open(jpath, zone_size=ZS)
    j.write(b"f", 0, 2 * ZS)
    commit(j)
    j.done_zone(b"f", 0)  # progress, not committed
    j.attrs(b"g")
    j.close()
    j = DirtyJournal.open(jpath, zone_size=ZS)
    assert j.plan() == Plan(listings=[], attrs=[b"g"], files={b"f": [1]}, shrink={})
    j.close()
