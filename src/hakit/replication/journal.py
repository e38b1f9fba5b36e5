"""The dirty-zone journal: what the peer lacks, recorded durably while it is behind (issue 5).

Theory of operation
-------------------
While the peer is not current (this node is ALONE, or the peer is behind), every mutation of the
replicated directory is recorded here *before* the application's call returns: the zones of each
written file and the namespace changes. When the peer comes back, reintegration sends only what
the journal names instead of the whole tree, and it can stop and resume at any point.

* **What is recorded.** For each regular file, the set of dirty zones (``offset // zone_size``), or
  "whole" (a file created while the peer was behind, or explicitly marked): copy it entirely. For a
  file that was truncated, the smallest size it was cut to (``Plan.shrink``). Directories whose
  *listing* changed (an entry was created, removed, renamed or linked in them), and nodes whose
  *attributes* (mode, owner, times, extended attributes, size) changed. Paths are relative bytes,
  ``b""`` being the replicated directory itself, as in :mod:`hakit.replication.sink`.
* **Namespace changes move the records.** A removal forgets everything at and under the path; a
  rename moves everything at and under the old path to the new one (a directory rename is a
  prefix move), dropping what the replaced target had; an exchange swaps both subtrees. The
  journal therefore always names paths as they are *now* on this node.
* **How reintegration reads it** (:meth:`DirtyJournal.plan`). For each directory in ``listings``
  (parents first) the peer's listing is made equal to this node's: extra entries removed, missing
  ones created (a missing regular file is copied whole, a missing directory recursively). For
  each file in ``files``: if ``shrink`` names it, the peer's copy is first truncated to that size
  (the bytes past it are zeros or rewritten here, and only this removes the peer's stale tail);
  then its size is set to the current size and the listed zones are copied (``None``: all of
  it). Then ``attrs``. Each finished item is reported (``done_zone``, ``done_shrink``,
  ``done_file``, ``done_listing``, ``done_attrs``) so an interrupted reintegration resumes where
  it stopped; a lost progress record only means copying something again, which is harmless.
  Known cost: a file renamed while clean reaches the peer as a missing entry of its new parent's
  listing, so it is copied whole.
* **Durability: group commit.** Recording is synchronous and in memory: it returns ``True`` when
  the change was not known yet, and appends an encoded record to an in-process buffer. The caller
  then awaits :meth:`DirtyJournal.commit`, which appends the buffer and ``fdatasync``s once for
  every caller that recorded before it (one flush in flight at a time, in a worker thread so the
  loop keeps serving). A write to an already dirty zone records nothing and needs no commit: the
  hot path of a busy file costs a set lookup. If a flush fails (``EIO``), the journal cannot be
  trusted any more: every later commit raises :class:`LocalSystemError` and the caller falls back
  to a full synchronization.
* **Crash safety.** The journal is append-only and each record carries its length and CRC-32, so a
  crash while appending leaves at most a torn *last* batch: replay drops the torn tail (a bad
  record that reaches the end of the file, or after which only zeros follow, as delayed
  allocation leaves the pages of an append that did not reach the disk) and truncates the file
  there. A bad record followed by other data, or a bad header, is corruption:
  :class:`JournalCorrupt` names the file and offset and the caller falls back to a full
  synchronization. Every record that was part of a completed commit survives,
  because nothing returned to the application before its record was synced.
* **Compaction.** When the file grows beyond 1 MiB and 4 times the size of a fresh snapshot of the
  live state, the next commit rewrites it from memory (temporary file, fsync, rename, fsync of the
  directory), so a long ALONE period rewriting the same zones keeps a small file. Measuring a
  snapshot costs as much as writing one, so it is measured again only once the file has grown
  past 4 times the last measurement: the file stays within 4 times the largest live state seen
  (plus 1 MiB). :meth:`reset` replaces it the same way with an empty journal when the peer holds
  everything again.

Format (little endian)
----------------------
Header, 32 bytes: ``b"HKJRNL1\\n"`` | zone size u32 | journal id (16 random bytes, new at each
reset) | CRC-32 of the previous 28 bytes, u32.

Records: length u32 | CRC-32 u32 | type u8 | fields, where length and CRC cover the type byte and
the fields; a path is a u16 length followed by its bytes, an integer is a u64. Types and fields:

== ============ ================= =========================================================
 1 WRITE        path, first, last zones first..last of the file are dirty
 2 TRUNCATE     path, size        size/attributes dirty, zone of the new end dirty, shrink
 3 CREATED_FILE path              file whole, parent listing dirty
 4 CREATED_DIR  path              its listing and its parent's dirty
 5 REMOVED      path              parent listing dirty; forget at/under path
 6 RENAMED      old, new          both parents' listings dirty; move old subtree over new
 7 EXCHANGED    old, new          both parents' listings dirty; swap the subtrees
 8 LINKED       existing, new     new's parent listing dirty
 9 ATTRS        path              attributes dirty
10 WHOLE        path              copy the file entirely
11 LISTING      path              listing dirty (snapshots)
12 SHRINK       path, size        shrink to at most size (snapshots)
13 FILE         path              the file is dirty with no zone yet (snapshots)
14 DONE_ZONE    path, zone        progress: that zone is on the peer
15 DONE_FILE    path              progress: the whole file is on the peer
16 DONE_LISTING path              progress: the listing is on the peer
17 DONE_ATTRS   path              progress: the attributes are on the peer
18 DONE_SHRINK  path              progress: the peer's copy was truncated
== ============ ================= =========================================================
"""

from __future__ import annotations

import asyncio
import enum
import glob
import logging
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hakit.errors import LocalSystemError, NotFoundError

log = logging.getLogger(__name__)

MAGIC = b"HKJRNL1\n"
DEFAULT_ZONE_SIZE = 1 << 20
COMPACT_MIN_BYTES = 1 << 20  # never compact a file smaller than this
COMPACT_RATIO = 4  # compact when the file is this many times larger than a fresh snapshot

_HEADER = struct.Struct("<8sI16sI")  # magic, zone size, journal id, CRC-32 of the first three
_FRAME = struct.Struct("<II")  # length of type + fields, CRC-32 of type + fields
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
_MAX_PATH = 0xFFFF
_MAX_BODY = 1 + 2 * (2 + _MAX_PATH) + 2 * 8  # the largest record a writer can produce
_TMP_SUFFIX = ".tmp"


class JournalCorrupt(LocalSystemError):
    """The journal file cannot be trusted (bad header, or a bad record before the end)."""


class _Rec(enum.IntEnum):
    WRITE = 1
    TRUNCATE = 2
    CREATED_FILE = 3
    CREATED_DIR = 4
    REMOVED = 5
    RENAMED = 6
    EXCHANGED = 7
    LINKED = 8
    ATTRS = 9
    WHOLE = 10
    LISTING = 11
    SHRINK = 12
    FILE = 13
    DONE_ZONE = 14
    DONE_FILE = 15
    DONE_LISTING = 16
    DONE_ATTRS = 17
    DONE_SHRINK = 18


# Field layout of each record type: "p" a path, "i" a u64.
_FIELDS: dict[_Rec, str] = {
    _Rec.WRITE: "pii",
    _Rec.TRUNCATE: "pi",
    _Rec.CREATED_FILE: "p",
    _Rec.CREATED_DIR: "p",
    _Rec.REMOVED: "p",
    _Rec.RENAMED: "pp",
    _Rec.EXCHANGED: "pp",
    _Rec.LINKED: "pp",
    _Rec.ATTRS: "p",
    _Rec.WHOLE: "p",
    _Rec.LISTING: "p",
    _Rec.SHRINK: "pi",
    _Rec.FILE: "p",
    _Rec.DONE_ZONE: "pi",
    _Rec.DONE_FILE: "p",
    _Rec.DONE_LISTING: "p",
    _Rec.DONE_ATTRS: "p",
    _Rec.DONE_SHRINK: "p",
}

Field = bytes | int


@dataclass(frozen=True)
class Plan:
    """What reintegration must send, as of the moment :meth:`DirtyJournal.plan` was called.

    ``listings``: directories whose listing must be re-sent, parents first. ``attrs``: nodes whose
    attributes must be re-sent. ``files``: per file, its dirty zone indexes in ascending order, or
    ``None`` to copy it whole. ``shrink``: for some files of ``files``, the size the peer's copy
    must be truncated to before the zones are copied (see the module docstring)."""

    listings: list[bytes]
    attrs: list[bytes]
    files: dict[bytes, list[int] | None]
    shrink: dict[bytes, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Estimate:
    """How much reintegration would send. ``bytes`` counts dirty zones at the zone size and whole
    files at their current size; ``whole_unknown`` says some whole files could not be sized (no
    ``size_of`` given, or the file is gone) and count as 0."""

    files: int
    zones: int
    bytes: int
    listings: int
    attrs: int
    whole_unknown: bool = False


def _parent(path: bytes) -> bytes | None:
    if not path:
        return None  # the replicated directory itself: its parent is not replicated
    cut = path.rfind(b"/")
    return b"" if cut < 0 else path[:cut]


def _moved(path: bytes, old: bytes, new: bytes) -> bytes:
    """``path`` (at or under ``old``) renamed to live at or under ``new``."""
    if not old:
        return new + b"/" + path if path else new
    return new + path[len(old) :]


@dataclass
class _Entry:
    """Everything recorded about one path (moved as a unit by renames)."""

    in_files: bool
    zones: set[int] | None
    shrink: int | None
    listing: bool
    attrs: bool


def path_sort_key(path: bytes) -> list[bytes]:
    """Order paths component by component: a directory sorts before everything inside it."""
    return path.split(b"/")


class _State:
    """The journal's content in memory, and the pure operations on it (no I/O).

    Each operation returns whether the state changed: a record is written only then, and replay
    applies the same operations in the same order, so the state after replay equals the state
    before the crash, up to the last record written.

    ``below`` counts, for each directory, the known paths (named by any of the four tables)
    strictly inside it, so removing or renaming a node that has nothing recorded underneath (an
    ``rm -rf`` removes the leaves first) touches only its own entries instead of scanning every
    path the journal knows."""

    def __init__(self, zone_size: int) -> None:
        self.zone_size = zone_size
        self.files: dict[bytes, set[int] | None] = {}  # None: copy the file whole
        self.shrink: dict[bytes, int] = {}
        self.listings: set[bytes] = set()
        self.attrs: set[bytes] = set()
        self.below: dict[bytes, int] = {}

    def empty(self) -> bool:
        return not (self.files or self.shrink or self.listings or self.attrs)

    # ---- the subtree index ----------------------------------------------------------------------

    def _known(self, path: bytes) -> bool:
        return (
            path in self.files or path in self.shrink or path in self.listings or path in self.attrs
        )

    def _index(self, path: bytes, delta: int) -> None:
        parent = _parent(path)
        while parent is not None:
            count = self.below.get(parent, 0) + delta
            if count:
                self.below[parent] = count
            else:
                del self.below[parent]
            parent = _parent(parent)

    def _added(self, path: bytes, was_known: bool) -> None:
        if not was_known:
            self._index(path, +1)

    def _removed(self, path: bytes) -> None:
        if not self._known(path):
            self._index(path, -1)

    # ---- additions ------------------------------------------------------------------------------

    def add_zones(self, path: bytes, first: int, last: int) -> bool:
        if path in self.files:
            zones = self.files[path]
            if zones is None:
                return False  # whole already
            if first == last:
                if first in zones:
                    return False  # the hot path: a rewrite of a dirty zone
                zones.add(first)
                return True
            before = len(zones)
            zones.update(range(first, last + 1))
            return len(zones) != before
        was_known = self._known(path)
        self.files[path] = set(range(first, last + 1))
        self._added(path, was_known)
        return True

    def add_file(self, path: bytes) -> bool:
        if path in self.files:
            return False
        was_known = self._known(path)
        self.files[path] = set()
        self._added(path, was_known)
        return True

    def add_whole(self, path: bytes) -> bool:
        # A whole copy replaces the peer's file entirely: no shrink needed (the path stays known).
        shrunk = self.shrink.pop(path, None) is not None
        if path in self.files and self.files[path] is None:
            return shrunk  # never both: add_shrink refuses a whole file
        was_known = shrunk or self._known(path)
        self.files[path] = None
        self._added(path, was_known)
        return True

    def add_shrink(self, path: bytes, size: int) -> bool:
        if path in self.files and self.files[path] is None:
            return False
        known = self.shrink.get(path)
        if known is not None and known <= size:
            return False
        was_known = self._known(path)
        self.shrink[path] = size
        self._added(path, was_known)
        return True

    def add_listing(self, path: bytes | None) -> bool:
        if path is None or path in self.listings:
            return False
        was_known = self._known(path)
        self.listings.add(path)
        self._added(path, was_known)
        return True

    def add_attrs(self, path: bytes) -> bool:
        if path in self.attrs:
            return False
        was_known = self._known(path)
        self.attrs.add(path)
        self._added(path, was_known)
        return True

    # ---- operations -----------------------------------------------------------------------------

    def truncate(self, path: bytes, size: int) -> bool:
        zone = size // self.zone_size
        changed = self.add_attrs(path)
        changed = self.add_zones(path, zone, zone) or changed
        return self.add_shrink(path, size) or changed

    def created(self, path: bytes, is_dir: bool) -> bool:
        changed = self.add_listing(_parent(path))
        if is_dir:
            return self.add_listing(path) or changed
        return self.add_whole(path) or changed

    def removed(self, path: bytes) -> bool:
        changed = self.add_listing(_parent(path))
        return bool(self._take(self._subtree(path))) or changed

    def renamed(self, old: bytes, new: bytes) -> bool:
        changed = self.add_listing(_parent(old))
        changed = self.add_listing(_parent(new)) or changed
        if old == new:
            return changed
        changed = bool(self._take(self._subtree(new))) or changed  # the replaced target
        return self._move({old: new}) or changed

    def exchanged(self, old: bytes, new: bytes) -> bool:
        changed = self.add_listing(_parent(old))
        changed = self.add_listing(_parent(new)) or changed
        if old == new:
            return changed
        return self._move({old: new, new: old}) or changed

    def linked(self, new: bytes) -> bool:
        return self.add_listing(_parent(new))

    # ---- progress -------------------------------------------------------------------------------

    def done_zone(self, path: bytes, zone: int) -> bool:
        zones = self.files.get(path)
        if zones is None or zone not in zones:
            return False
        zones.discard(zone)  # the file stays known: its size still has to be set
        return True

    def done_file(self, path: bytes) -> bool:
        if path not in self.files and path not in self.shrink:
            return False
        self.files.pop(path, None)
        self.shrink.pop(path, None)
        self._removed(path)
        return True

    def done_listing(self, path: bytes) -> bool:
        if path not in self.listings:
            return False
        self.listings.discard(path)
        self._removed(path)
        return True

    def done_attrs(self, path: bytes) -> bool:
        if path not in self.attrs:
            return False
        self.attrs.discard(path)
        self._removed(path)
        return True

    def done_shrink(self, path: bytes) -> bool:
        if path not in self.shrink:
            return False
        del self.shrink[path]
        self._removed(path)
        return True

    # ---- subtree moves --------------------------------------------------------------------------

    def _subtree(self, top: bytes) -> set[bytes]:
        """The known paths at or under ``top``."""
        found = {top} if self._known(top) else set()
        if self.below.get(top):
            prefix = top + b"/" if top else b""
            for table in (self.files, self.shrink, self.listings, self.attrs):
                found.update(k for k in table if k.startswith(prefix))
        return found

    def _take(self, paths: Iterable[bytes]) -> dict[bytes, _Entry]:
        """Remove every record of ``paths``; return them."""
        taken: dict[bytes, _Entry] = {}
        for path in paths:
            taken[path] = _Entry(
                in_files=path in self.files,
                zones=self.files.pop(path, None),
                shrink=self.shrink.pop(path, None),
                listing=path in self.listings,
                attrs=path in self.attrs,
            )
            self.listings.discard(path)
            self.attrs.discard(path)
            self._index(path, -1)
        return taken

    def _put(self, path: bytes, entry: _Entry) -> None:
        was_known = self._known(path)
        if entry.in_files:
            self.files[path] = entry.zones
        if entry.shrink is not None:
            self.shrink[path] = entry.shrink
        if entry.listing:
            self.listings.add(path)
        if entry.attrs:
            self.attrs.add(path)
        self._added(path, was_known)

    def _move(self, moves: dict[bytes, bytes]) -> bool:
        """Rename every path at or under a key of ``moves`` to live under its value, all at once
        (an exchange is ``{a: b, b: a}``)."""
        taken = {old: self._take(self._subtree(old)) for old in moves}
        for old, entries in taken.items():
            for path, entry in entries.items():
                self._put(_moved(path, old, moves[old]), entry)
        return any(taken.values())

    def rezone(self, new_size: int) -> None:
        """Express the dirty zones in another zone size (covering at least the same bytes)."""
        old_size, self.zone_size = self.zone_size, new_size
        for path, zones in self.files.items():
            if zones:
                self.files[path] = {
                    z
                    for old in zones
                    for z in range(
                        old * old_size // new_size, ((old + 1) * old_size - 1) // new_size + 1
                    )
                }

    # ---- replay ---------------------------------------------------------------------------------

    def apply(self, rec: _Rec, fields: list[Field]) -> bool:
        """Apply one decoded record (replay)."""
        p = fields[0]
        assert isinstance(p, bytes)
        q = fields[1] if len(fields) > 1 else b""
        r = fields[2] if len(fields) > 2 else 0
        match rec:
            case _Rec.WRITE:
                assert isinstance(q, int) and isinstance(r, int)
                return self.add_zones(p, q, r)
            case _Rec.TRUNCATE:
                assert isinstance(q, int)
                return self.truncate(p, q)
            case _Rec.CREATED_FILE | _Rec.CREATED_DIR:
                return self.created(p, rec is _Rec.CREATED_DIR)
            case _Rec.REMOVED:
                return self.removed(p)
            case _Rec.RENAMED | _Rec.EXCHANGED | _Rec.LINKED:
                assert isinstance(q, bytes)
                if rec is _Rec.LINKED:
                    return self.linked(q)
                return self.renamed(p, q) if rec is _Rec.RENAMED else self.exchanged(p, q)
            case _Rec.ATTRS:
                return self.add_attrs(p)
            case _Rec.WHOLE:
                return self.add_whole(p)
            case _Rec.LISTING:
                return self.add_listing(p)
            case _Rec.SHRINK:
                assert isinstance(q, int)
                return self.add_shrink(p, q)
            case _Rec.FILE:
                return self.add_file(p)
            case _Rec.DONE_ZONE:
                assert isinstance(q, int)
                return self.done_zone(p, q)
            case _Rec.DONE_FILE:
                return self.done_file(p)
            case _Rec.DONE_LISTING:
                return self.done_listing(p)
            case _Rec.DONE_ATTRS:
                return self.done_attrs(p)
            case _Rec.DONE_SHRINK:
                return self.done_shrink(p)
        raise AssertionError(rec)  # pragma: no cover - the match is exhaustive

    def snapshot_records(self) -> Iterable[bytes]:
        """Records that rebuild this state from an empty journal (compaction)."""
        for path, zones in self.files.items():
            if zones is None:
                yield _encode(_Rec.WHOLE, path)
            elif not zones:
                yield _encode(_Rec.FILE, path)
            else:
                for first, last in _runs(sorted(zones)):
                    yield _encode(_Rec.WRITE, path, first, last)
        for path, size in self.shrink.items():
            yield _encode(_Rec.SHRINK, path, size)
        for path in self.listings:
            yield _encode(_Rec.LISTING, path)
        for path in self.attrs:
            yield _encode(_Rec.ATTRS, path)


def _runs(zones: list[int]) -> Iterable[tuple[int, int]]:
    """Consecutive runs of sorted zone indexes, as (first, last) pairs."""
    start = prev = zones[0]
    for z in zones[1:]:
        if z != prev + 1:
            yield start, prev
            start = z
        prev = z
    yield start, prev


# ---- encoding -----------------------------------------------------------------------------------


def _encode(rec: _Rec, *fields: Field) -> bytes:
    parts = [bytes((rec,))]
    for kind, value in zip(_FIELDS[rec], fields, strict=True):
        if kind == "p":
            assert isinstance(value, bytes)
            if len(value) > _MAX_PATH:
                raise ValueError(f"journal: path longer than {_MAX_PATH} bytes: {value[:64]!r}...")
            parts += (_U16.pack(len(value)), value)
        else:
            assert isinstance(value, int)
            parts.append(_U64.pack(value))
    body = b"".join(parts)
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def _decode_body(body: bytes) -> tuple[_Rec, list[Field]] | None:
    """The record in ``body`` (type + fields), or None if it does not parse exactly."""
    try:
        rec = _Rec(body[0])
    except ValueError:
        return None
    fields: list[Field] = []
    pos = 1
    for kind in _FIELDS[rec]:
        if kind == "p":
            if pos + 2 > len(body):
                return None
            (n,) = _U16.unpack_from(body, pos)
            pos += 2
            if pos + n > len(body):
                return None
            fields.append(body[pos : pos + n])
            pos += n
        else:
            if pos + 8 > len(body):
                return None
            fields.append(_U64.unpack_from(body, pos)[0])
            pos += 8
    return (rec, fields) if pos == len(body) else None


def _header(zone_size: int, journal_id: bytes) -> bytes:
    head = _HEADER.pack(MAGIC, zone_size, journal_id, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


@dataclass
class _Replayed:
    state: _State
    journal_id: bytes
    good_end: int  # offset just past the last good record
    size: int  # the file's size as read


def _replay(path: Path, data: bytes) -> _Replayed:
    """Parse a journal file's bytes; a torn tail is reported by ``good_end < size``."""
    if len(data) < _HEADER.size:
        raise JournalCorrupt(
            f"dirty-zone journal {path}: offset 0: header truncated ({len(data)} of "
            f"{_HEADER.size} bytes); the peer needs a full synchronization"
        )
    magic, zone_size, journal_id, crc = _HEADER.unpack_from(data)
    if magic != MAGIC or crc != zlib.crc32(data[: _HEADER.size - 4]) or zone_size == 0:
        raise JournalCorrupt(
            f"dirty-zone journal {path}: offset 0: bad header (not a hakit journal, or damaged); "
            "the peer needs a full synchronization"
        )
    state = _State(zone_size)
    pos = _HEADER.size
    while pos < len(data):
        problem = _read_record(data, pos, state)
        if problem is None:
            (length,) = struct.unpack_from("<I", data, pos)
            pos += _FRAME.size + length
            continue
        if _torn(data, pos):
            break
        raise JournalCorrupt(
            f"dirty-zone journal {path}: offset {pos}: {problem} and more data follows; "
            "the peer needs a full synchronization"
        )
    return _Replayed(state, journal_id, pos, len(data))


def _read_record(data: bytes, pos: int, state: _State) -> str | None:
    """Apply the record at ``pos``; return why it is bad, or None."""
    if pos + _FRAME.size > len(data):
        return "record frame cut short"
    length, crc = _FRAME.unpack_from(data, pos)
    if not 1 <= length <= _MAX_BODY:
        return f"impossible record length {length}"
    body = data[pos + _FRAME.size : pos + _FRAME.size + length]
    if len(body) < length:
        return "record cut short"
    if zlib.crc32(body) != crc:
        return "record checksum mismatch"
    decoded = _decode_body(body)
    if decoded is None:
        return f"record of unknown type {body[0]} or bad fields"
    state.apply(*decoded)
    return None


def _torn(data: bytes, pos: int) -> bool:
    """Whether the bad record at ``pos`` is what a crash while appending leaves: it reaches the
    end of the file, or nothing but zeros follows it (delayed allocation zero-fills the pages of
    an unsynced append that did not reach the disk, from some point to the end)."""
    if pos + _FRAME.size > len(data):
        return True
    (length,) = struct.unpack_from("<I", data, pos)
    end = pos + _FRAME.size + (length if 1 <= length <= _MAX_BODY else 0)
    return end >= len(data) or len(data.rstrip(b"\0")) <= end


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, content: bytes) -> Path:
    """Write ``content`` to a new temporary file next to ``path`` and fsync it. Each call gets its
    own name: a reset may write one while a compaction is writing another."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=_TMP_SUFFIX)
    tmp = Path(name)
    try:
        _write_all(fd, content)
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    return tmp


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _append_and_sync(fd: int, data: bytes) -> None:
    _write_all(fd, data)
    os.fdatasync(fd)


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


def _retrieve_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class DirtyJournal:
    """The dirty-zone journal of one replicated directory (see the module docstring).

    Use :meth:`open` (read-write, one process) or :meth:`load_readonly` (estimates from another
    process). Recording methods are synchronous; await :meth:`commit` before answering the
    application whenever one of them returned ``True``."""

    def __init__(
        self,
        path: Path,
        state: _State,
        journal_id: bytes,
        fd: int | None,
        size: int,
        zone_size: int,
    ) -> None:
        self.path = path
        self._state = state
        self._id = journal_id
        self._fd = fd  # None: read-only
        self._size = size  # bytes in the file (appended and synced)
        self._requested_zone_size = zone_size
        self._buffer = bytearray()
        self._recorded = 0  # records placed in the buffer so far
        self._durable = 0  # records known durable
        self._flush_task: asyncio.Task[None] | None = None
        self._retired: list[int] = []  # descriptors a running flush may still use
        self._generation = 0  # bumped by reset: a compaction started before must not install
        self._snapshot_hint = size  # a snapshot's size when last measured (compaction trigger)
        self._failed: LocalSystemError | None = None
        self._closed = False

    # ---- opening --------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, zone_size: int = DEFAULT_ZONE_SIZE) -> DirtyJournal:
        """Open (creating it if missing) and replay the journal at ``path``.

        A torn last record is dropped and the file truncated after the last good one. Raises
        :class:`JournalCorrupt` for a bad header or a bad record followed by more data. A journal
        written with another zone size is converted to ``zone_size``."""
        if not 0 < zone_size < 1 << 32:
            raise ValueError(f"journal zone size must be in 1..2**32-1, not {zone_size}")
        path = Path(path)
        try:
            for stale in path.parent.glob(glob.escape(path.name) + ".*" + _TMP_SUFFIX):
                stale.unlink()  # a rewrite interrupted by a crash: the journal itself is intact
            if not path.exists():
                tmp = _write_temp(path, _header(zone_size, os.urandom(16)))
                os.rename(tmp, path)
                _fsync_dir(path.parent)
            data = path.read_bytes()
        except OSError as exc:
            raise LocalSystemError(f"dirty-zone journal {path}: cannot open: {exc}") from exc
        replayed = _replay(path, data)
        try:
            if replayed.good_end < replayed.size:
                log.warning(
                    "dirty-zone journal %s: dropping a torn last record (%d bytes at offset %d) "
                    "left by a crash while appending",
                    path,
                    replayed.size - replayed.good_end,
                    replayed.good_end,
                )
                os.truncate(path, replayed.good_end)
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            state = replayed.state
            size = replayed.good_end
            if state.zone_size != zone_size:
                log.info(
                    "dirty-zone journal %s: converting zones from %d to %d bytes",
                    path,
                    state.zone_size,
                    zone_size,
                )
                state.rezone(zone_size)
                content = _header(zone_size, replayed.journal_id) + b"".join(
                    state.snapshot_records()
                )
                os.rename(_write_temp(path, content), path)
                _fsync_dir(path.parent)
                size = len(content)
            fd = _open_append(path)
        except OSError as exc:
            raise LocalSystemError(f"dirty-zone journal {path}: cannot open: {exc}") from exc
        return cls(path, state, replayed.journal_id, fd, size, zone_size)

    @classmethod
    def load_readonly(cls, path: Path) -> DirtyJournal:
        """Replay the journal at ``path`` without changing the file (a torn tail is ignored).

        Raises :class:`NotFoundError` if it does not exist, :class:`JournalCorrupt` if damaged."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise NotFoundError(f"dirty-zone journal {path} does not exist") from exc
        except OSError as exc:
            raise LocalSystemError(f"dirty-zone journal {path}: cannot read: {exc}") from exc
        replayed = _replay(path, data)
        state = replayed.state
        return cls(path, state, replayed.journal_id, None, replayed.good_end, state.zone_size)

    # ---- properties -----------------------------------------------------------------------------

    @property
    def zone_size(self) -> int:
        """Bytes per zone."""
        return self._state.zone_size

    @property
    def journal_id(self) -> bytes:
        """16 random bytes identifying this journal's content since its creation or last reset."""
        return self._id

    @property
    def empty(self) -> bool:
        """Whether nothing is dirty (the peer holds everything this journal knows of)."""
        return self._state.empty()

    @property
    def file_size(self) -> int:
        """Bytes of the journal file (committed records)."""
        return self._size

    # ---- recording ------------------------------------------------------------------------------

    def _record(self, changed: bool, rec: _Rec, *fields: Field) -> bool:
        if changed:
            self._buffer += _encode(rec, *fields)
            self._recorded += 1
        return changed

    def _writable(self, *paths: bytes) -> None:
        """Refuse to record on a closed or read-only journal, or a path the format cannot hold
        (checked before the state changes, so memory and file never disagree)."""
        for path in paths:
            if len(path) > _MAX_PATH:
                raise ValueError(f"journal: path longer than {_MAX_PATH} bytes: {path[:64]!r}...")
        if self._closed:
            raise LocalSystemError(f"dirty-zone journal {self.path} is closed")
        if self._fd is None:
            raise LocalSystemError(
                f"dirty-zone journal {self.path} was loaded read-only: it cannot record"
            )

    def write(self, path: bytes, offset: int, length: int) -> bool:
        """``length`` bytes were written at ``offset`` of the file ``path``."""
        if length <= 0:
            return False
        if offset < 0:
            raise ValueError(f"journal: negative write offset {offset} for {path!r}")
        self._writable(path)
        zs = self._state.zone_size
        first, last = offset // zs, (offset + length - 1) // zs
        return self._record(self._state.add_zones(path, first, last), _Rec.WRITE, path, first, last)

    def truncate(self, path: bytes, size: int) -> bool:
        """The file's size was set to ``size``: size and attributes dirty, and the zone holding the
        new end; the peer's copy must be cut to the smallest such size (``Plan.shrink``)."""
        if size < 0:
            raise ValueError(f"journal: negative size {size} for {path!r}")
        self._writable(path)
        return self._record(self._state.truncate(path, size), _Rec.TRUNCATE, path, size)

    def created(self, path: bytes, is_dir: bool) -> bool:
        """A node was created: a file is copied whole, a directory's listing is dirty, and so is
        the parent's listing. (Symlinks and special files are "files": recreated entirely.)"""
        self._writable(path)
        rec = _Rec.CREATED_DIR if is_dir else _Rec.CREATED_FILE
        return self._record(self._state.created(path, is_dir), rec, path)

    def removed(self, path: bytes, is_dir: bool) -> bool:
        """A node was removed: its parent's listing is dirty; what was known at or under it is
        forgotten. (``is_dir`` is accepted for symmetry; the effect is the same.)"""
        self._writable(path)
        return self._record(self._state.removed(path), _Rec.REMOVED, path)

    def renamed(self, old: bytes, new: bytes, exchange: bool = False) -> bool:
        """``old`` was renamed to ``new``: both parents' listings are dirty and what was known at
        or under ``old`` now lives at or under ``new`` (what ``new`` had is dropped: it was
        replaced). With ``exchange`` the two subtrees swap instead."""
        self._writable(old, new)
        if exchange:
            return self._record(self._state.exchanged(old, new), _Rec.EXCHANGED, old, new)
        return self._record(self._state.renamed(old, new), _Rec.RENAMED, old, new)

    def linked(self, existing: bytes, new: bytes) -> bool:
        """A hard link ``new`` to ``existing`` was made: ``new``'s parent listing is dirty."""
        self._writable(existing, new)
        return self._record(self._state.linked(new), _Rec.LINKED, existing, new)

    def attrs(self, path: bytes) -> bool:
        """Mode, owner, times or extended attributes of ``path`` changed."""
        self._writable(path)
        return self._record(self._state.add_attrs(path), _Rec.ATTRS, path)

    def whole(self, path: bytes) -> bool:
        """The file ``path`` must be copied entirely."""
        self._writable(path)
        return self._record(self._state.add_whole(path), _Rec.WHOLE, path)

    # ---- progress -------------------------------------------------------------------------------

    def done_zone(self, path: bytes, zone: int) -> None:
        """Zone ``zone`` of ``path`` is on the peer. The file stays in the plan (its size) until
        :meth:`done_file`."""
        self._writable(path)
        if zone < 0:
            return  # never dirty
        self._record(self._state.done_zone(path, zone), _Rec.DONE_ZONE, path, zone)

    def done_file(self, path: bytes) -> None:
        """The file ``path`` is entirely on the peer (zones, shrink and size)."""
        self._writable(path)
        self._record(self._state.done_file(path), _Rec.DONE_FILE, path)

    def done_shrink(self, path: bytes) -> None:
        """The peer's copy of ``path`` was truncated to ``Plan.shrink[path]``. Report it before
        any of the file's zones: truncating again after a zone was copied would lose it."""
        self._writable(path)
        self._record(self._state.done_shrink(path), _Rec.DONE_SHRINK, path)

    def done_listing(self, path: bytes) -> None:
        """The listing of the directory ``path`` is on the peer."""
        self._writable(path)
        self._record(self._state.done_listing(path), _Rec.DONE_LISTING, path)

    def done_attrs(self, path: bytes) -> None:
        """The attributes of ``path`` are on the peer."""
        self._writable(path)
        self._record(self._state.done_attrs(path), _Rec.DONE_ATTRS, path)

    # ---- reading --------------------------------------------------------------------------------

    def plan(self) -> Plan:
        """A snapshot of what reintegration must send (later recording does not change it)."""
        st = self._state
        return Plan(
            listings=sorted(st.listings, key=path_sort_key),
            attrs=sorted(st.attrs, key=path_sort_key),
            files={
                p: None if st.files[p] is None else sorted(st.files[p] or ())
                for p in sorted(st.files, key=path_sort_key)
            },
            shrink=dict(st.shrink),
        )

    def estimate(self, size_of: Callable[[bytes], int | None] | None = None) -> Estimate:
        """How much reintegration would send; ``size_of(path)`` gives a whole file's current size
        (None if it is gone)."""
        st = self._state
        zones = 0
        whole_bytes = 0
        unknown = False
        for path, dirty in st.files.items():
            if dirty is not None:
                zones += len(dirty)
                continue
            size = size_of(path) if size_of is not None else None
            if size is None:
                unknown = True
            else:
                whole_bytes += size
        return Estimate(
            files=len(st.files),
            zones=zones,
            bytes=zones * st.zone_size + whole_bytes,
            listings=len(st.listings),
            attrs=len(st.attrs),
            whole_unknown=unknown,
        )

    # ---- durability -----------------------------------------------------------------------------

    async def commit(self) -> None:
        """Make every record placed before this call durable (group commit, see the module
        docstring). Raises :class:`LocalSystemError` if the file cannot be written or synced:
        the journal is then unusable and the peer needs a full synchronization."""
        target = self._recorded
        while self._durable < target:
            if self._failed is not None:
                raise self._failed
            self._writable()
            if self._flush_task is None:
                self._flush_task = asyncio.get_running_loop().create_task(self._flush())
                # A flush whose every waiter was cancelled must not warn about its result.
                self._flush_task.add_done_callback(_retrieve_result)
            # Shielded: a cancelled caller must not cancel the flush the others share.
            await asyncio.shield(self._flush_task)

    async def _flush(self) -> None:
        try:
            data = bytes(self._buffer)
            self._buffer.clear()
            seq = self._recorded
            fd = self._fd
            if fd is None:
                raise LocalSystemError(
                    f"dirty-zone journal {self.path} was closed while committing"
                )
            if self._should_compact(len(data)):
                await self._compact()
            elif data:
                await asyncio.to_thread(_append_and_sync, fd, data)
                if fd == self._fd:
                    self._size += len(data)
            self._durable = max(self._durable, seq)
        except OSError as exc:
            self._failed = LocalSystemError(
                f"dirty-zone journal {self.path}: cannot append or sync ({exc}): it can no "
                "longer be trusted; the peer needs a full synchronization"
            )
            raise self._failed from exc
        finally:
            self._flush_task = None
            for old in self._retired:
                os.close(old)
            self._retired.clear()

    def _should_compact(self, pending: int) -> bool:
        total = self._size + pending
        if total <= max(COMPACT_MIN_BYTES, COMPACT_RATIO * self._snapshot_hint):
            return False
        snapshot = _HEADER.size + sum(len(r) for r in self._state.snapshot_records())
        self._snapshot_hint = snapshot
        return total > COMPACT_RATIO * snapshot

    async def _compact(self) -> None:
        """Rewrite the file from memory; the buffer's records are in that state already."""
        content = _header(self._state.zone_size, self._id) + b"".join(
            self._state.snapshot_records()
        )
        generation = self._generation
        tmp = await asyncio.to_thread(_write_temp, self.path, content)
        if generation != self._generation or self._closed:
            os.unlink(tmp)  # reset (or close) came meanwhile: its file is the newer truth
            return
        os.rename(tmp, self.path)
        self._swap_fd(_open_append(self.path))
        self._size = self._snapshot_hint = len(content)
        await asyncio.to_thread(_fsync_dir, self.path.parent)
        log.info("dirty-zone journal %s: compacted to %d bytes", self.path, len(content))

    def _swap_fd(self, fd: int) -> None:
        old, self._fd = self._fd, fd
        if old is not None:
            self._retire(old)

    def _retire(self, fd: int) -> None:
        if self._flush_task is not None:
            self._retired.append(fd)  # a flush thread may be writing through it
        else:
            os.close(fd)

    def reset(self) -> None:
        """Empty the journal (the peer holds everything again): the file is replaced atomically
        by one with a fresh header and a new journal id."""
        self._writable()
        self._state = _State(self._requested_zone_size)
        self._buffer.clear()
        self._durable = self._recorded  # what was recorded before is on the peer now
        self._id = os.urandom(16)
        self._generation += 1
        header = _header(self._requested_zone_size, self._id)
        try:
            os.rename(_write_temp(self.path, header), self.path)
            _fsync_dir(self.path.parent)
            self._swap_fd(_open_append(self.path))
        except OSError as exc:
            self._failed = LocalSystemError(
                f"dirty-zone journal {self.path}: cannot reset ({exc}); the peer needs a full "
                "synchronization"
            )
            raise self._failed from exc
        self._size = self._snapshot_hint = len(header)

    def close(self) -> None:
        """Release the file, first writing and syncing what was recorded but not committed (so
        progress survives a clean stop). While a commit is in flight this is skipped (appending
        now could overtake that batch): await :meth:`commit` before closing to keep everything."""
        if self._closed:
            return
        self._closed = True
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._buffer and self._flush_task is None and self._failed is None:
            try:
                _append_and_sync(fd, bytes(self._buffer))
            except OSError as exc:
                log.error(
                    "dirty-zone journal %s: records not committed before close are lost (%s); "
                    "they are re-copied or the peer gets a full synchronization",
                    self.path,
                    exc,
                )
            self._buffer.clear()
        self._retire(fd)
