"""Manifests of replicated trees: what ``hakit rfsverify`` compares between the two nodes.

Theory of operation
-------------------
A *manifest* is the stream of :class:`Entry` records of one tree, one per file, directory, symlink
or special file, in a deterministic order: a depth-first walk that visits the names of each
directory sorted as bytes. So two nodes walking the same tree produce the same sequence, and
comparing them is a merge of two sorted streams (:func:`diff_manifests`) in constant memory, however
large the trees: neither side is ever held whole in memory, and the walk lists one directory at a
time.

The order is the order of the paths' *component tuples* (:func:`sort_key`): ``a``, ``a/b``,
``a-c``; plain byte order of the whole path would put ``a-c`` before ``a/b`` (``-`` < ``/``), which
no depth-first walk produces.

What an entry records, and why:

* type, permission bits (07777), owner, mtime (nanoseconds), symlink target, device number, the
  SHA-256 of a regular file's content and a digest of its ``user.*``/``security.*`` extended
  attributes: what replication must reproduce. Access times are not recorded: reading a file
  changes them, and the verification itself reads every file.
* hard links without inode numbers (they differ between nodes): the second and later names of an
  inode carry ``link`` = the first name of that inode in walk order. A broken or extra hard link
  shows as a ``link`` difference on the later name. The link count itself is kept for display but
  not compared: a name outside the replicated tree counts too.
* directory sizes are not recorded (they depend on the filesystem, not on the content).

Serialisation (:func:`encode_stream`, :func:`decode_stream`) is JSON lines. Paths and symlink
targets are bytes on Linux and need not be UTF-8: they are written as text decoded from UTF-8 with
``surrogateescape`` (a non-UTF-8 byte becomes a lone surrogate, escaped ``\\udcXX`` by JSON), which
reads back to the very same bytes. A stream ends with a trailer line (``{"end": {...}}``) so that a
truncated stream is never taken for a complete one, or with ``{"error": "..."}`` when the walk
failed after the answer had started.

:class:`NotReplicatedMatcher` decides which paths of a replicated directory its
``<notreplicated>`` rules exclude; the walk, the replicator and the resync share it.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.config.model import NotReplicated
from hakit.errors import HakitError, LocalSystemError, PeerProtocolError, UserConfigError

CHUNK = 1024 * 1024  # content is hashed in 1 MiB reads
BATCH = 256  # entries per chunk of the encoded stream (one thread hop each in the API)
XATTR_NAMESPACES = (b"user.", b"security.")
MODE_BITS = 0o7777

ExcludeEntry = Callable[[bytes, bool], bool]
"""``exclude(relative_path, is_dir) -> True`` leaves that entry (and a directory's subtree) out."""


class FileType(enum.StrEnum):
    """What kind of filesystem object an entry is."""

    DIR = "dir"
    FILE = "file"
    SYMLINK = "symlink"
    FIFO = "fifo"
    SOCKET = "socket"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"

    @classmethod
    def of(cls, st_mode: int) -> FileType:
        """The type of an ``lstat`` result's ``st_mode``."""
        for test, kind in _TYPE_TESTS:
            if test(st_mode):
                return kind
        raise ValueError(f"unknown file type in st_mode {st_mode:o}")


_TYPE_TESTS: tuple[tuple[Callable[[int], bool], FileType], ...] = (
    (stat.S_ISREG, FileType.FILE),
    (stat.S_ISDIR, FileType.DIR),
    (stat.S_ISLNK, FileType.SYMLINK),
    (stat.S_ISFIFO, FileType.FIFO),
    (stat.S_ISSOCK, FileType.SOCKET),
    (stat.S_ISCHR, FileType.CHARDEV),
    (stat.S_ISBLK, FileType.BLOCKDEV),
)


@dataclass(frozen=True)
class Entry:
    """One object of a tree. ``path`` is relative to the tree's root, ``b""`` for the root itself.

    ``size`` is 0 for directories; ``sha256`` is set for regular files only, ``target`` for
    symlinks only, ``rdev`` is non-zero for devices only; ``link`` is the first name of the same
    inode for the second and later names of a hard-linked file; ``xattrs`` is a digest of the
    ``user.*`` and ``security.*`` extended attributes, None when there are none.
    """

    path: bytes
    type: FileType
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    nlink: int = 1
    link: bytes | None = None
    target: bytes | None = None
    rdev: int = 0
    sha256: str | None = None
    xattrs: str | None = None

    @property
    def display_path(self) -> str:
        """The path for humans (``.`` for the root; undecodable bytes as ``\\xNN``)."""
        return display(self.path) if self.path else "."

    def to_json(self) -> dict[str, Any]:
        """The entry as a JSON object (optional fields left out when unset)."""
        data: dict[str, Any] = {
            "path": _text(self.path),
            "type": self.type.value,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "nlink": self.nlink,
        }
        if self.link is not None:
            data["link"] = _text(self.link)
        if self.target is not None:
            data["target"] = _text(self.target)
        if self.rdev:
            data["rdev"] = self.rdev
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        if self.xattrs is not None:
            data["xattrs"] = self.xattrs
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """The entry of :meth:`to_json`'s object (KeyError/ValueError/TypeError if malformed)."""
        link, target = data.get("link"), data.get("target")
        return cls(
            path=_bytes(data["path"]),
            type=FileType(data["type"]),
            mode=int(data["mode"]),
            uid=int(data["uid"]),
            gid=int(data["gid"]),
            size=int(data["size"]),
            mtime_ns=int(data["mtime_ns"]),
            nlink=int(data.get("nlink", 1)),
            link=None if link is None else _bytes(link),
            target=None if target is None else _bytes(target),
            rdev=int(data.get("rdev", 0)),
            sha256=data.get("sha256"),
            xattrs=data.get("xattrs"),
        )


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _bytes(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    return text.encode("utf-8", "surrogateescape")


def display(raw: bytes) -> str:
    """A path or target for humans: UTF-8, any other byte shown as ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


def sort_key(path: bytes) -> tuple[bytes, ...]:
    """The order of manifests: by path components, the root (``b""``) first."""
    return tuple(path.split(b"/")) if path else ()


# -- walking a tree ----------------------------------------------------------------------------


def walk_manifest(root: str | Path, *, exclude: ExcludeEntry | None = None) -> Iterator[Entry]:
    """Stream the entries of the tree at ``root`` in manifest order (:func:`sort_key`).

    Symlinks are recorded, never followed (``root`` itself may be one: it is resolved, since a
    replicated directory may be reached through a link). ``exclude(path, is_dir)`` is asked about
    every entry whose parent is included; an excluded directory is not entered. An entry that
    vanishes while the tree is walked is skipped (the tree is live); any other error raises
    :class:`LocalSystemError` naming the path.
    """
    base = os.fsencode(root)
    try:
        st = os.stat(base)
    except OSError as exc:
        raise LocalSystemError(
            f"cannot read the tree to verify at {display(base)}: {exc.strerror or exc}"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise LocalSystemError(f"{display(base)} is not a directory: nothing to verify")
    links = _LinkGroups()
    yield _entry(base, b"", st, links)
    # One list of the not yet visited names of each directory on the current path.
    stack: list[tuple[bytes, Iterator[bytes]]] = [(b"", iter(_names(base, b"")))]
    while stack:
        parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        rel = parent + b"/" + name if parent else name
        full = base + b"/" + rel
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise _walk_error(full, exc) from None
        is_dir = stat.S_ISDIR(st.st_mode)
        if exclude is not None and exclude(rel, is_dir):
            continue
        try:
            entry = _entry(full, rel, st, links)
        except FileNotFoundError:
            continue
        yield entry
        if is_dir:
            stack.append((rel, iter(_names(base, rel))))


def _names(base: bytes, rel: bytes) -> list[bytes]:
    """The sorted names of one directory (the only listing held in memory at a time)."""
    path = base + b"/" + rel if rel else base
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _walk_error(path, exc) from None


def _walk_error(path: bytes, exc: OSError) -> LocalSystemError:
    return LocalSystemError(
        f"cannot read {display(path)} while building its manifest: {exc.strerror or exc}"
    )


class _LinkGroups:
    """First name of each hard-linked inode, forgotten once all its links have been seen."""

    def __init__(self) -> None:
        self._first: dict[tuple[int, int], tuple[bytes, int]] = {}

    def link_of(self, rel: bytes, st: os.stat_result) -> bytes | None:
        key = (st.st_dev, st.st_ino)
        seen = self._first.get(key)
        if seen is None:
            self._first[key] = (rel, st.st_nlink - 1)
            return None
        first, remaining = seen
        if remaining <= 1:
            del self._first[key]  # every link seen: bounded memory on trees full of hard links
        else:
            self._first[key] = (first, remaining - 1)
        return first


def _entry(full: bytes, rel: bytes, st: os.stat_result, links: _LinkGroups) -> Entry:
    kind = FileType.of(st.st_mode)
    link = target = digest = None
    size = st.st_size
    if kind is FileType.FILE:
        digest = _content_sha256(full)
        if st.st_nlink > 1:
            link = links.link_of(rel, st)
    elif kind is FileType.SYMLINK:
        target = _readlink(full)
    elif kind is FileType.DIR:
        size = 0
    return Entry(
        path=rel,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        mtime_ns=st.st_mtime_ns,
        nlink=st.st_nlink,
        link=link,
        target=target,
        rdev=st.st_rdev if kind in (FileType.CHARDEV, FileType.BLOCKDEV) else 0,
        sha256=digest,
        xattrs=_xattrs_digest(full, follow=not rel),
    )


def _readlink(full: bytes) -> bytes:
    try:
        return os.readlink(full)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _walk_error(full, exc) from None


def _content_sha256(full: bytes) -> str:
    """SHA-256 of a regular file, read in :data:`CHUNK` pieces without updating its atime."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        try:
            fd = os.open(full, flags | getattr(os, "O_NOATIME", 0))
        except PermissionError:
            fd = os.open(full, flags)  # O_NOATIME needs ownership or CAP_FOWNER
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _walk_error(full, exc) from None
    digest = hashlib.sha256()
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
    except OSError as exc:
        raise _walk_error(full, exc) from None
    finally:
        os.close(fd)
    return digest.hexdigest()


def _xattrs_digest(full: bytes, *, follow: bool) -> str | None:
    """Digest of the ``user.*`` and ``security.*`` attributes (names and values), None if none."""
    try:
        names = sorted(
            raw
            for raw in (os.fsencode(n) for n in os.listxattr(full, follow_symlinks=follow))
            if raw.startswith(XATTR_NAMESPACES)
        )
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOSYS):
            return None  # a filesystem without extended attributes: nothing to compare
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(exc.errno, exc.strerror, full) from None
        raise _walk_error(full, exc) from None
    if not names:
        return None
    digest = hashlib.sha256()
    for name in names:
        try:
            value = os.getxattr(full, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue  # removed since it was listed
            raise _walk_error(full, exc) from None
        # Length prefixes: ("ab", "c") and ("a", "bc") must not hash alike.
        for part in (name, value):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


# -- <notreplicated> ---------------------------------------------------------------------------


class NotReplicatedMatcher:
    """Which paths of a replicated directory its ``<notreplicated>`` rules leave out.

    Paths are relative to the replicated directory, as bytes, without a leading ``/``:

    * ``path="rel/dir"`` excludes that path and everything under it (a prefix match on whole
      components: ``logs`` excludes ``logs`` and ``logs/a``, not ``logs2``);
    * ``regexpath="re"`` excludes the paths whose relative path matches ``re`` as a whole
      (:func:`re.fullmatch`; a directory that matches takes its subtree with it);
    * ``regexpath="!re"`` (``only``) keeps only the files that match: any non-directory that matches
      no ``only`` rule is excluded. Directories are never excluded by ``only`` rules, since they may
      hold files that match (they stay, possibly empty).

    An exclusion wins over an ``only`` match. Calling the matcher (``matcher(path)``, or
    ``matcher(path, is_dir=True)`` for a directory) answers for any path: it checks the ancestors
    too, so a file under an excluded directory is excluded. Without ``is_dir`` a path is taken for a
    non-directory, which only matters with ``only`` rules: pass ``is_dir=True`` when creating or
    copying a directory, or it is left out. :meth:`excludes_entry` is the cheaper test for a walk
    that never enters excluded directories (the :data:`ExcludeEntry` of :func:`walk_manifest`).
    Regexes are compiled when the matcher is built (:class:`UserConfigError` naming the rule).
    """

    def __init__(self, rules: Iterable[NotReplicated]) -> None:
        self._prefixes: list[bytes] = []
        self._excluding: list[re.Pattern[str]] = []
        self._only: list[re.Pattern[str]] = []
        for rule in rules:
            if rule.path is not None:
                prefix = _bytes(rule.path.strip("/"))
                while prefix.startswith(b"./"):
                    prefix = prefix[2:]
                if prefix and prefix != b".":
                    self._prefixes.append(prefix)
            elif rule.regexpath is not None:
                try:
                    pattern = re.compile(rule.regexpath)
                except re.error as exc:
                    raise UserConfigError(
                        f"<notreplicated regexpath={rule.regexpath!r}>: invalid regex: {exc}"
                    ) from None
                (self._only if rule.only else self._excluding).append(pattern)

    def __bool__(self) -> bool:
        """True when there is at least one rule."""
        return bool(self._prefixes or self._excluding or self._only)

    def __call__(self, path: bytes, is_dir: bool = False) -> bool:
        """True when ``path`` is not replicated (itself, or one of its parent directories)."""
        path = path.strip(b"/")
        if not path:
            return False
        parts = path.split(b"/")
        for depth in range(1, len(parts)):
            if self._excluded(b"/".join(parts[:depth]), is_dir=True):
                return True
        return self._excluded(path, is_dir=is_dir)

    def excludes_entry(self, path: bytes, is_dir: bool) -> bool:
        """True when ``path`` itself is not replicated, its parent directories being replicated."""
        return bool(path) and self._excluded(path, is_dir=is_dir)

    def _excluded(self, path: bytes, *, is_dir: bool) -> bool:
        if any(path == p or path.startswith(p + b"/") for p in self._prefixes):
            return True
        text = _text(path)
        if any(p.fullmatch(text) for p in self._excluding):
            return True
        return bool(self._only) and not is_dir and not any(p.fullmatch(text) for p in self._only)


# -- comparing ---------------------------------------------------------------------------------


class DiffKind(enum.StrEnum):
    """What differs at a path."""

    MISSING_ON_A = "missing_on_a"
    MISSING_ON_B = "missing_on_b"
    TYPE = "type"
    SIZE = "size"
    CONTENT = "content"
    MODE = "mode"
    OWNER = "owner"
    MTIME = "mtime"
    LINK = "link"
    TARGET = "target"
    DEVICE = "device"
    XATTRS = "xattrs"


@dataclass(frozen=True)
class Difference:
    """One difference at ``path``: ``a`` and ``b`` are each side's value (JSON-ready: str/int)."""

    path: bytes
    what: DiffKind
    a: str | int | None
    b: str | int | None

    @property
    def display_path(self) -> str:
        """The path for humans (``.`` for the root)."""
        return display(self.path) if self.path else "."

    def to_json(self) -> dict[str, Any]:
        """The difference as a JSON object (path in the manifest's lossless text form)."""
        return {"path": _text(self.path), "what": self.what.value, "a": self.a, "b": self.b}


def diff_manifests(
    a: Iterable[Entry], b: Iterable[Entry], *, ignore_dir_mtime: bool = False
) -> Iterator[Difference]:
    """The differences between two manifests, merged in manifest order (constant memory).

    A path on one side only gives ``missing_on_a``/``missing_on_b`` (``a``/``b`` = the type present).
    A type change gives one ``type`` difference and nothing else for that path; otherwise each
    differing attribute gives its own difference (``content`` only when the sizes agree: a ``size``
    difference already says the content differs). Directory mtimes are compared unless
    ``ignore_dir_mtime``. Raises :class:`PeerProtocolError` when a stream is out of order.
    """
    ita, itb = _ordered(a, "a"), _ordered(b, "b")
    ea, eb = next(ita, None), next(itb, None)
    while ea is not None or eb is not None:
        if eb is None or (ea is not None and sort_key(ea.path) < sort_key(eb.path)):
            assert ea is not None
            yield Difference(ea.path, DiffKind.MISSING_ON_B, ea.type.value, None)
            ea = next(ita, None)
        elif ea is None or sort_key(eb.path) < sort_key(ea.path):
            yield Difference(eb.path, DiffKind.MISSING_ON_A, None, eb.type.value)
            eb = next(itb, None)
        else:
            yield from compare_entries(ea, eb, ignore_dir_mtime=ignore_dir_mtime)
            ea, eb = next(ita, None), next(itb, None)


def _ordered(entries: Iterable[Entry], side: str) -> Iterator[Entry]:
    previous: tuple[bytes, ...] | None = None
    for entry in entries:
        key = sort_key(entry.path)
        if previous is not None and key <= previous:
            raise PeerProtocolError(
                f"manifest {side} is not in manifest order at {entry.display_path!r} "
                "(a hakit of another version, or a bug)"
            )
        previous = key
        yield entry


def compare_entries(a: Entry, b: Entry, *, ignore_dir_mtime: bool = False) -> Iterator[Difference]:
    """The differences between two entries of the same path."""
    path = a.path
    if a.type is not b.type:
        yield Difference(path, DiffKind.TYPE, a.type.value, b.type.value)
        return
    if a.type is FileType.FILE and a.size != b.size:
        yield Difference(path, DiffKind.SIZE, a.size, b.size)
    elif a.sha256 != b.sha256:
        yield Difference(path, DiffKind.CONTENT, a.sha256, b.sha256)
    if a.mode != b.mode:
        yield Difference(path, DiffKind.MODE, f"{a.mode:04o}", f"{b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        yield Difference(path, DiffKind.OWNER, f"{a.uid}:{a.gid}", f"{b.uid}:{b.gid}")
    if a.mtime_ns != b.mtime_ns and not (ignore_dir_mtime and a.type is FileType.DIR):
        yield Difference(path, DiffKind.MTIME, a.mtime_ns, b.mtime_ns)
    if a.link != b.link:
        yield Difference(path, DiffKind.LINK, _opt_text(a.link), _opt_text(b.link))
    if a.target != b.target:
        yield Difference(path, DiffKind.TARGET, _opt_text(a.target), _opt_text(b.target))
    if a.rdev != b.rdev:
        yield Difference(path, DiffKind.DEVICE, _device(a.rdev), _device(b.rdev))
    if a.xattrs != b.xattrs:
        yield Difference(path, DiffKind.XATTRS, a.xattrs, b.xattrs)


def _opt_text(raw: bytes | None) -> str | None:
    return None if raw is None else _text(raw)


def _device(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


# -- the wire form -----------------------------------------------------------------------------


@dataclass
class ManifestTotals:
    """What a manifest stream held: entries and the bytes of its regular files."""

    entries: int = 0
    bytes: int = 0

    def add(self, entry: Entry) -> None:
        """Count one entry."""
        self.entries += 1
        if entry.type is FileType.FILE:
            self.bytes += entry.size


def encode_line(entry: Entry) -> bytes:
    """One entry as a JSON line (ASCII only: non-UTF-8 bytes travel as ``\\udcXX`` escapes)."""
    return json.dumps(entry.to_json(), separators=(",", ":")).encode("ascii") + b"\n"


def encode_stream(entries: Iterable[Entry], batch: int = BATCH) -> Iterator[bytes]:
    """The JSON-lines stream of ``entries`` in chunks of ``batch`` lines, then the trailer.

    The trailer is ``{"end": {"entries": N, "bytes": X}}``; when producing the entries fails
    (:class:`hakit.errors.HakitError` or :class:`OSError`), the stream ends with
    ``{"error": "<message>"}`` instead, since an HTTP status can no longer be changed by then.
    """
    totals = ManifestTotals()
    lines: list[bytes] = []
    try:
        for entry in entries:
            totals.add(entry)
            lines.append(encode_line(entry))
            if len(lines) >= batch:
                yield b"".join(lines)
                lines.clear()
    except (HakitError, OSError) as exc:
        lines.append(json.dumps({"error": str(exc)}).encode("ascii") + b"\n")
        yield b"".join(lines)
        return
    trailer = {"end": {"entries": totals.entries, "bytes": totals.bytes}}
    lines.append(json.dumps(trailer).encode("ascii") + b"\n")
    yield b"".join(lines)


def decode_stream(
    lines: Iterable[bytes | str], source: str, totals: ManifestTotals | None = None
) -> Iterator[Entry]:
    """The entries of an :func:`encode_stream` stream; ``source`` names it in errors.

    Raises :class:`PeerProtocolError` on a malformed line, on an ``error`` trailer (with the
    producer's message), on a stream that ends without its trailer, or when the trailer's counts
    disagree with what was read. ``totals``, when given, counts what was read.
    """
    totals = totals if totals is not None else ManifestTotals()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            if "error" in data:
                raise PeerProtocolError(f"{source}: the manifest failed: {data['error']}")
            if "end" in data:
                _check_trailer(data["end"], totals, source)
                return
            entry = Entry.from_json(data)
        except PeerProtocolError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise PeerProtocolError(
                f"{source}: malformed manifest line {number}: {exc}: {str(line)[:120]}"
            ) from None
        totals.add(entry)
        yield entry
    raise PeerProtocolError(
        f"{source}: the manifest stream ended after {totals.entries} entries without its trailer "
        "(connection lost, or the daemon stopped)"
    )


def _check_trailer(end: Any, totals: ManifestTotals, source: str) -> None:
    if not isinstance(end, dict) or (end.get("entries"), end.get("bytes")) != (
        totals.entries,
        totals.bytes,
    ):
        raise PeerProtocolError(
            f"{source}: the manifest trailer {end!r} does not match what was received "
            f"({totals.entries} entries, {totals.bytes} bytes)"
        )
