"""Keeping divergent files aside before a resync overwrites them.

Theory of operation
-------------------
After a split brain (or when a node that must become secondary holds writes its primary never
saw), the resync makes this node's replicated directories identical to the primary's: whatever was
written here alone would be lost. The mirror automaton therefore emits ``PreserveDivergentData``
right before ``StartResync`` (the application is stopped by then) and :func:`keep_aside` copies
those files, from the directory's *backing* tree (the real directory under the replication mount,
reached through the descriptor the replicator holds), into a set outside every replicated tree
(:func:`hakit.replication.locations.divergent_dir`)::

    <dest>/20261122T061502Z-node1.3.7/     (UTC time, then the generation written alone; 0700)
        KEPT-ASIDE.json                    reason, generation, time, files, bytes, paths
        files/...                          the copies, at their paths relative to the tree

What a copy keeps: content (sparse files stay sparse: only the data ranges that ``SEEK_DATA`` /
``SEEK_HOLE`` report are copied), permission bits, owner, access and modification times, symlinks
(as symlinks), special files, hard links *between the copied names*, and extended attributes (best
effort: a filesystem or namespace that refuses one does not stop the copy). Paths that no longer
exist are skipped and listed as such. Which paths: those the node's own dirty-zone journal names
(:func:`divergent_paths`), or the whole tree when there is no journal to say (a node that
diverged without one, or whose journal is damaged).

The tree is walked one component at a time through directory descriptors opened with
``O_NOFOLLOW``: a symlink inside the replicated tree is copied as a link, never followed, so
nothing outside the tree can be reached through it (a path whose parent is a symlink is skipped).

The set is built as ``<name>.partial`` and renamed when complete, files and directories flushed to
disk first: a set that :func:`list_kept_aside` shows is complete. Any failure (a full disk, most
likely) raises :class:`LocalSystemError` naming the path and removes the partial set, so the caller
can refuse the resync rather than lose data.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hakit.errors import LocalSystemError
from hakit.replication.journal import Plan
from hakit.replication.manifest import display, sort_key

MANIFEST_NAME = "KEPT-ASIDE.json"
FILES_DIR = "files"
PARTIAL_SUFFIX = ".partial"
SET_MODE = 0o700  # kept-aside data may hold anything the application wrote: owner only

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_COPY_CHUNK = 8 * 1024 * 1024
# copy_file_range refuses some pairs of filesystems or files: then plain reads and writes do.
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_T = TypeVar("_T")


@dataclass(frozen=True)
class KeptAside:
    """A set just kept aside: its directory, the names copied (non-directories) and the bytes of
    its regular files (each inode once)."""

    directory: Path
    files: int
    bytes: int

    def describe(self) -> str:
        """The event as the module log reports it (who, what, where, what to do next)."""
        plural = "" if self.files == 1 else "s"
        return (
            f"Divergent data kept aside: {self.files} file{plural} ({self.bytes} bytes) in "
            f"{self.directory}; merge what must be kept into the primary's data, then delete it"
        )


def divergent_paths(plan: Plan) -> list[bytes]:
    """What to keep aside from a node's own dirty-zone journal: the files written while its peer
    did not see them (created, written or truncated). Removed files are gone already, and
    attribute-only changes are not data: neither is kept. Never the root (``b""`` would mean the
    whole tree): the caller passes ``None`` for that."""
    return [path for path in plan.files if path]


@dataclass(frozen=True)
class KeptAsideInfo:
    """One kept-aside set as its ``KEPT-ASIDE.json`` describes it.

    ``error`` is set (and the other fields may be empty) when the manifest cannot be read: the
    set is still listed, since its files are still there.
    """

    directory: Path
    reason: str = ""
    generation: str = ""
    since: str = ""
    source: str = ""
    time: str = ""
    files: int = 0
    bytes: int = 0
    paths: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    error: str | None = None

    @property
    def name(self) -> str:
        """The set's directory name (``<UTC time>-<generation>``)."""
        return self.directory.name

    def to_json(self) -> dict[str, Any]:
        """The set as the API shows it (paths in the manifest's lossless text form)."""
        data: dict[str, Any] = {
            "name": self.name,
            "directory": str(self.directory),
            "reason": self.reason,
            "generation": self.generation,
            "since": self.since,
            "source": self.source,
            "time": self.time,
            "files": self.files,
            "bytes": self.bytes,
            "paths": list(self.paths),
            "skipped": list(self.skipped),
        }
        if self.error is not None:
            data["error"] = self.error
        return data


def keep_aside(
    root_fd: int,
    paths: Iterable[bytes] | None,
    dest: Path,
    *,
    reason: str,
    generation: str,
    since: str = "",
    source: str = "",
    now: datetime | None = None,
) -> KeptAside:
    """Copy ``paths`` (relative to the tree behind ``root_fd``; None: the whole tree) into a new
    set ``<dest>/<UTC time>-<generation>/`` and return it.

    ``reason``, ``generation`` and ``since`` (the last generation shared with the peer) are
    recorded in the set's manifest, with ``source`` (the replicated directory, for humans);
    ``now`` is the time the set is named after (default: the current UTC time). A directory in
    ``paths`` is copied with everything under it; a path under one already listed is copied once.
    Raises :class:`LocalSystemError` naming the path on any failure (the partial set is removed).
    """
    when = (now or datetime.now(UTC)).astimezone(UTC)
    wanted = None if paths is None else _normalise(paths)
    try:
        os.makedirs(dest, mode=SET_MODE, exist_ok=True)
    except OSError as exc:
        raise _error(source, dest, os.fsencode(dest), exc) from None
    final = _new_set_name(dest, when, generation)
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    try:
        os.mkdir(partial, SET_MODE)
    except OSError as exc:
        raise _error(source, dest, os.fsencode(partial), exc) from None
    try:
        copier = _Copier(root_fd, os.fsencode(partial / FILES_DIR), source)
        kept, skipped = copier.copy(wanted)
        _write_manifest(
            partial / MANIFEST_NAME,
            {
                "reason": reason,
                "generation": generation,
                "since": since,
                "source": source,
                "time": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "files": copier.files,
                "bytes": copier.total,
                "paths": [_text(p) if p else "." for p in kept],
                "skipped": [_text(p) for p in skipped],
            },
        )
        _fsync_dir(os.fsencode(partial))
        os.rename(partial, final)
        _fsync_dir(os.fsencode(dest))
    except _CopyFailed as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _error(source, dest, exc.path, exc.cause) from None
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _error(source, dest, os.fsencode(partial), exc) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return KeptAside(final, copier.files, copier.total)


def list_kept_aside(dest: Path) -> list[KeptAsideInfo]:
    """The complete sets in ``dest``, oldest first (none when ``dest`` does not exist).

    A set whose manifest cannot be read is listed with its ``error``; a ``.partial`` set (a copy
    interrupted by a crash) is not a kept-aside set and is left out.
    """
    try:
        names = sorted(os.listdir(dest))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LocalSystemError(
            f"cannot list the kept-aside files in {dest}: {exc.strerror or exc}"
        ) from None
    return [
        _read_info(dest / name)
        for name in names
        if not name.endswith(PARTIAL_SUFFIX) and (dest / name).is_dir()
    ]


# -- naming and manifests -----------------------------------------------------------------------


def _normalise(paths: Iterable[bytes]) -> list[bytes] | None:
    """The paths sorted in tree order without the ones under another; None when one names the
    root (the whole tree)."""
    unique: set[bytes] = set()
    for raw in paths:
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        if b".." in parts:
            raise LocalSystemError(
                f"refusing to keep aside {display(raw)!r}: a path with '..' would leave the "
                "replicated tree (a corrupted dirty-file list?)"
            )
        if not parts:
            return None
        unique.add(b"/".join(parts))
    ordered = sorted(unique, key=sort_key)
    result: list[bytes] = []
    covered: set[bytes] = set()
    for path in ordered:
        parts = path.split(b"/")
        if any(b"/".join(parts[:depth]) in covered for depth in range(1, len(parts))):
            continue
        covered.add(path)
        result.append(path)
    return result


def _new_set_name(dest: Path, when: datetime, generation: str) -> Path:
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    base = f"{stamp}-{_UNSAFE_NAME.sub('_', generation) or 'none'}"
    candidate, serial = dest / base, 1
    # Two directories of one module kept aside in the same second share a base name.
    while candidate.exists() or candidate.with_name(candidate.name + PARTIAL_SUFFIX).exists():
        serial += 1
        candidate = dest / f"{base}-{serial}"
    return candidate


def _write_manifest(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(text.encode("ascii"))
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_info(directory: Path) -> KeptAsideInfo:
    manifest = directory / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text(encoding="ascii"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return KeptAsideInfo(
            directory=directory,
            reason=str(data.get("reason", "")),
            generation=str(data.get("generation", "")),
            since=str(data.get("since", "")),
            source=str(data.get("source", "")),
            time=str(data.get("time", "")),
            files=int(data.get("files", 0)),
            bytes=int(data.get("bytes", 0)),
            paths=tuple(str(p) for p in data.get("paths", [])),
            skipped=tuple(str(p) for p in data.get("skipped", [])),
        )
    except OSError as exc:
        return KeptAsideInfo(directory, error=f"cannot read {manifest}: {exc.strerror or exc}")
    except (ValueError, TypeError) as exc:
        return KeptAsideInfo(directory, error=f"{manifest} is malformed: {exc}")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _error(source: str, dest: Path, path: bytes, exc: OSError) -> LocalSystemError:
    what = (
        f"cannot keep aside the divergent files of {source or 'a replicated directory'} in {dest}"
    )
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalSystemError(
            f"{what}: no space left while writing {display(path)}: free space on that "
            "filesystem (old kept-aside sets can go once examined), then restart the module"
        )
    return LocalSystemError(f"{what}: {display(path)}: {exc.strerror or exc}")


def _fsync_dir(path: bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- copying ------------------------------------------------------------------------------------


class _CopyFailed(Exception):
    """An OSError while copying, with the path (source or copy) it happened on."""

    def __init__(self, path: bytes, cause: OSError) -> None:
        super().__init__(path, cause)
        self.path = path
        self.cause = cause


class _Vanished(Exception):
    """The source entry is gone (or is no longer what it was): skip it."""


@dataclass
class _DirFixup:
    """A copied directory's permission bits and times, set once nothing is written into it."""

    path: bytes
    mode: int
    atime_ns: int
    mtime_ns: int


@dataclass
class _Copier:
    """One copy of entries of the tree behind ``root_fd`` into ``target`` (a new directory)."""

    root_fd: int
    target: bytes
    source: str
    files: int = 0
    total: int = 0
    _links: dict[tuple[int, int], bytes] = field(default_factory=dict)
    _fixups: list[_DirFixup] = field(default_factory=list)
    _made: set[bytes] = field(default_factory=set)

    def copy(self, wanted: list[bytes] | None) -> tuple[list[bytes], list[bytes]]:
        """Copy ``wanted`` (None: everything); return the paths kept and the paths skipped."""
        self._make_dir(self.root_fd, b"", self.target)
        if wanted is None:
            for name in self._names(self.root_fd, b""):
                with contextlib.suppress(_Vanished):
                    self._copy_entry(self.root_fd, name, name)
            kept: list[bytes] = [b""]
            skipped: list[bytes] = []
        else:
            kept, skipped = [], []
            for rel in wanted:
                (kept if self._copy_path(rel) else skipped).append(rel)
        self._finish_dirs()
        return kept, skipped

    def _copy_path(self, rel: bytes) -> bool:
        """Copy one listed path, creating its parent directories as the tree has them."""
        parts = rel.split(b"/")
        with contextlib.ExitStack() as opened:
            parent = self.root_fd
            for depth in range(1, len(parts)):
                prefix = b"/".join(parts[:depth])
                try:
                    fd = os.open(parts[depth - 1], _DIR_FLAGS, dir_fd=parent)
                except (FileNotFoundError, NotADirectoryError):
                    return False
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        return False  # a symlink in the tree: never followed
                    raise _CopyFailed(self._src(prefix), exc) from None
                opened.callback(os.close, fd)
                if prefix not in self._made:
                    self._make_dir(fd, prefix, self._dst(prefix))
                parent = fd
            try:
                self._copy_entry(parent, parts[-1], rel)
            except _Vanished:
                return False
        return True

    def _copy_entry(self, dir_fd: int, name: bytes, rel: bytes) -> None:
        """Copy the entry ``name`` of the directory ``dir_fd`` (at ``rel`` in the tree)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise _Vanished from None
        except OSError as exc:
            raise _CopyFailed(self._src(rel), exc) from None
        dst = self._dst(rel)
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1 and key in self._links:
            self._guard(dst, lambda: os.link(self._links[key], dst, follow_symlinks=False))
            self.files += 1
            return
        if stat.S_ISDIR(st.st_mode):
            self._copy_dir(dir_fd, name, rel)
            return
        if stat.S_ISREG(st.st_mode):
            self._copy_file(dir_fd, name, rel, st)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
            except FileNotFoundError:
                raise _Vanished from None
            except OSError as exc:
                raise _CopyFailed(self._src(rel), exc) from None
            self._guard(dst, lambda: os.symlink(target, dst))
            self._set_owner(dst, st)
            self._copy_xattrs(_proc_path(dir_fd, name), dst)
            self._guard(dst, lambda: _set_times(dst, st))
        else:
            # FIFOs, sockets and devices: recreated, never opened (a FIFO would block).
            self._guard(dst, lambda: os.mknod(dst, stat.S_IFMT(st.st_mode) | 0o600, st.st_rdev))
            self._set_owner(dst, st)
            self._guard(dst, lambda: os.chmod(dst, stat.S_IMODE(st.st_mode)))
            self._copy_xattrs(_proc_path(dir_fd, name), dst)
            self._guard(dst, lambda: _set_times(dst, st))
        self.files += 1
        if st.st_nlink > 1:
            self._links[key] = dst

    def _copy_dir(self, dir_fd: int, name: bytes, rel: bytes) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise _Vanished from None
        except OSError as exc:
            raise _CopyFailed(self._src(rel), exc) from None
        try:
            self._make_dir(fd, rel, self._dst(rel))
            for child in self._names(fd, rel):
                with contextlib.suppress(_Vanished):
                    self._copy_entry(fd, child, rel + b"/" + child)
        finally:
            os.close(fd)

    def _copy_file(self, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result) -> None:
        src = self._open_source(dir_fd, name, rel)
        try:
            now = os.fstat(src)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise _Vanished  # replaced since it was looked at: copy what is there now
            dst = self._dst(rel)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            out = self._guard(dst, lambda: os.open(dst, flags, 0o600))
            try:
                _copy_sparse(src, out, now.st_size, self._src(rel), dst)
                self._set_owner(out, now, dst)
                self._guard(dst, lambda: os.chmod(out, stat.S_IMODE(now.st_mode)))
                self._copy_xattrs(src, out, dst)
                self._guard(dst, lambda: os.utime(out, ns=(now.st_atime_ns, now.st_mtime_ns)))
                self._guard(dst, lambda: os.fsync(out))
            finally:
                os.close(out)
        finally:
            os.close(src)
        self.total += now.st_size

    def _open_source(self, dir_fd: int, name: bytes, rel: bytes) -> int:
        try:
            try:
                return os.open(name, _FILE_FLAGS | os.O_NOATIME, dir_fd=dir_fd)
            except PermissionError:
                return os.open(name, _FILE_FLAGS, dir_fd=dir_fd)  # O_NOATIME: owner or root only
        except FileNotFoundError:
            raise _Vanished from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _Vanished from None  # became a symlink since it was looked at
            raise _CopyFailed(self._src(rel), exc) from None

    def _make_dir(self, fd: int, rel: bytes, dst: bytes) -> None:
        """Create the copy of directory ``rel`` (open as ``fd``); its mode and times come last."""
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise _CopyFailed(self._src(rel), exc) from None
        self._guard(dst, lambda: os.mkdir(dst, 0o700))
        self._set_owner(dst, st)
        self._copy_xattrs(fd, dst)
        self._made.add(rel)
        self._fixups.append(
            _DirFixup(dst, stat.S_IMODE(st.st_mode), st.st_atime_ns, st.st_mtime_ns)
        )

    def _finish_dirs(self) -> None:
        # Writing into a directory changes its mtime, and a read-only mode would stop the copy of
        # its content (for a non-root caller): both are set once everything is in place.
        for fix in self._fixups:
            try:
                os.chmod(fix.path, fix.mode)
                os.utime(fix.path, ns=(fix.atime_ns, fix.mtime_ns))
                _fsync_dir(fix.path)
            except OSError as exc:
                raise _CopyFailed(fix.path, exc) from None

    def _names(self, fd: int, rel: bytes) -> list[bytes]:
        try:
            return sorted(os.fsencode(n) for n in os.listdir(fd))
        except OSError as exc:
            raise _CopyFailed(self._src(rel), exc) from None

    def _set_owner(self, target: int | bytes, st: os.stat_result, shown: bytes = b"") -> None:
        try:
            if isinstance(target, int):
                os.fchown(target, st.st_uid, st.st_gid)
            else:
                os.chown(target, st.st_uid, st.st_gid, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.EPERM and os.geteuid() != 0:
                return  # not root: the copy keeps the caller's ownership (the data matters more)
            raise _CopyFailed(shown or _as_bytes(target), exc) from None

    def _copy_xattrs(self, src: int | bytes, dst: int | bytes, shown: bytes = b"") -> None:
        """Best effort: extended attributes a filesystem or namespace refuses are left out."""
        try:
            if isinstance(src, int):
                names = os.listxattr(src)
            else:
                names = os.listxattr(src, follow_symlinks=False)
        except OSError:
            return
        for attr in names:
            with contextlib.suppress(OSError):
                if isinstance(src, int):
                    value = os.getxattr(src, attr)
                else:
                    value = os.getxattr(src, attr, follow_symlinks=False)
                if isinstance(dst, int):
                    os.setxattr(dst, attr, value)
                else:
                    os.setxattr(dst, attr, value, follow_symlinks=False)

    def _guard(self, path: bytes, operation: Callable[[], _T]) -> _T:
        try:
            return operation()
        except OSError as exc:
            raise _CopyFailed(path, exc) from None

    def _src(self, rel: bytes) -> bytes:
        base = os.fsencode(self.source) if self.source else b"<replicated directory>"
        return base + b"/" + rel if rel else base

    def _dst(self, rel: bytes) -> bytes:
        return self.target + b"/" + rel if rel else self.target


def _as_bytes(target: int | bytes) -> bytes:
    return target if isinstance(target, bytes) else f"<fd {target}>".encode()


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    """A path reaching ``name`` in ``dir_fd`` without following it (for xattrs of symlinks and
    special files, which cannot be opened)."""
    return f"/proc/self/fd/{dir_fd}/".encode() + name


def _set_times(path: bytes, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` data ranges of a file, holes left out (a filesystem that does not
    track holes reports the whole file as data)."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return  # only a hole until the end
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def _copy_sparse(src: int, dst: int, size: int, src_path: bytes, dst_path: bytes) -> None:
    """Copy ``size`` bytes of ``src`` to ``dst`` at the same offsets, holes kept as holes."""
    use_copy_range = True
    try:
        ranges = list(_data_ranges(src, size))
    except OSError as exc:
        raise _CopyFailed(src_path, exc) from None
    for start, end in ranges:
        offset = start
        while offset < end:
            count = min(end - offset, _COPY_CHUNK)
            try:
                if use_copy_range:
                    try:
                        done = os.copy_file_range(src, dst, count, offset, offset)
                    except OSError as exc:
                        if exc.errno not in _NO_COPY_RANGE:
                            raise
                        use_copy_range = False
                        continue
                else:
                    chunk = os.pread(src, count, offset)
                    done = os.pwrite(dst, chunk, offset) if chunk else 0
            except OSError as exc:
                # A write that fails is the copy's (a full disk); a read that fails, the source's.
                raise _CopyFailed(
                    dst_path if exc.errno in _WRITE_ERRORS else src_path, exc
                ) from None
            if done == 0:
                break  # the file shrank while being copied
            offset += done
    try:
        os.ftruncate(dst, size)  # a hole at the end, or a file that shrank: the size stays
    except OSError as exc:
        raise _CopyFailed(dst_path, exc) from None


_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
