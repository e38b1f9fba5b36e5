"""Workloads that exercise a replicated directory, and independent checks of what they left.

Run inside a lab node (``python -m hakit.testing.workloads KIND ...``) or imported by tests:

* ``fsx DIR``: fsx-style random operations on one or a few files (writes at random offsets and
  lengths, beyond EOF too so holes appear, truncates up and down by path and by descriptor,
  ``fallocate`` that allocates, keeps the size, punches holes or zeroes ranges, reopens, fsyncs),
  each result checked against an in-memory model of the bytes; a mismatch names the operation
  number, the file and the first differing offset. ``--no-fallocate`` leaves ``fallocate`` out
  (for a file system that refuses it).
* ``fsstress DIR``: namespace churn (create, mkdir, rmdir, unlink, rename over existing targets and
  across directories, link, symlink, mkfifo, chmod, chown, utime, user xattrs, writes, truncates)
  against a model of the tree: every call's outcome, success or the exact errno, is predicted by
  the model, and the whole tree is compared with the model at the end.
* ``records DIR --log FILE``: the durability client. Appends numbered fixed-size records to
  ``DIR/records.log``, fsync after each; only after the fsync returned is the number written (and
  fsynced) to ``--log`` outside the replicated directory. ``check-records DIR --log FILE`` then
  proves every acknowledged record is present and intact (RPO 0).
* ``tree-digest DIR`` / ``tree-compare A B``: a tree comparison written independently of the
  replicator's own manifest code (so a bug there cannot hide itself): type, permission bits, owner,
  size, mtime (non-directories), content hash, symlink target, xattrs, hard-link structure.
* ``bench-io DIR``: the I/O micro-benchmarks of ``bench/replication.py``, printed as JSON.

Every workload is deterministic given ``--seed``: the same seed on the same starting state makes the
same operations and, for fsx and fsstress, the same final tree (modification times aside where the
workload does not set them). fio is not wrapped: :func:`fio_verify_args` gives the command line of a
write-then-verify job for tests to run.

Exit codes: 0 success, 1 the data or the tree differs from what it must be (the message says where),
2 a wrong argument, 4 an unexpected system error.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import hashlib
import json
import os
import random
import stat
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.errors import HakitError, UserConfigError

KiB = 1024
MiB = 1024 * KiB


class WorkloadFailure(HakitError):
    """The file system did something its model says it must not: the message says op and where."""

    exit_code = 1


def _errname(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


# ---------------------------------------------------------------------------------------- fsx


@dataclass
class _FsxFile:
    path: Path
    fd: int
    model: bytearray = field(default_factory=bytearray)


def _first_difference(expected: bytes, got: bytes) -> int:
    for i, (a, b) in enumerate(zip(expected, got, strict=False)):
        if a != b:
            return i
    return min(len(expected), len(got))


def _check_bytes(where: str, base: int, expected: bytes, got: bytes) -> None:
    if expected == got:
        return
    i = _first_difference(expected, got)
    if i >= min(len(expected), len(got)):
        raise WorkloadFailure(
            f"{where}: read {len(got)} bytes at offset {base}, the model has {len(expected)}"
        )
    raise WorkloadFailure(
        f"{where}: offset {base + i}: expected byte 0x{expected[i]:02x}, read 0x{got[i]:02x}"
    )


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    chunks = []
    while length > 0:
        chunk = os.pread(fd, min(length, 4 * MiB), offset)
        if not chunk:
            break
        chunks.append(chunk)
        length, offset = length - len(chunk), offset + len(chunk)
    return b"".join(chunks)


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
FALLOCATE_MODES = {
    "falloc": 0,
    "falloc-keep-size": FALLOC_FL_KEEP_SIZE,
    "punch-hole": FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    "zero-range": FALLOC_FL_ZERO_RANGE,
    "zero-range-keep-size": FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
}
"""fsx's fallocate operations and their ``fallocate(2)`` modes."""

_libc = ctypes.CDLL(None, use_errno=True)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` (Python's ``os.posix_fallocate`` has no mode); OSError on failure."""
    if _libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"fallocate(mode={mode:#x}, {offset}, {length}): {os.strerror(code)}")


def fsx(
    directory: Path,
    *,
    seed: int = 1,
    ops: int = 2000,
    files: int = 1,
    max_len: int = 256 * KiB,
    max_io: int = 64 * KiB,
    log: Path | None = None,
    fallocate: bool = True,
) -> dict[str, int]:
    """Random file operations on ``files`` files ``DIR/fsx.<i>``, each checked against a model.

    Writes start anywhere below ``max_len`` (so past EOF: holes), truncates go up or down, reads
    compare with the model, ``fallocate`` (unless ``fallocate`` is False) allocates (growing the
    file or not), punches holes and zeroes ranges, fsync and reopen happen sometimes; every
    operation also checks the size. The files are recreated empty first. Returns counts per
    operation kind; raises WorkloadFailure naming the op number, file and offset on the first
    mismatch. ``log`` gets one line per operation (to replay a failure by hand).
    """
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    handles = []
    for i in range(files):
        path = directory / f"fsx.{i}"
        handles.append(_FsxFile(path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)))
    kinds = ["write", "read", "truncate", "ftruncate", "fsync", "reopen", "open-trunc"]
    weights = [40, 25, 8, 8, 8, 5, 1]
    if fallocate:
        kinds += list(FALLOCATE_MODES)
        weights += [2] * len(FALLOCATE_MODES)
    counts = dict.fromkeys(kinds, 0)
    out = log.open("w") if log is not None else None
    try:
        for n in range(ops):
            f = handles[rng.randrange(files)]
            kind = rng.choices(kinds, weights)[0]
            counts[kind] += 1
            where = f"fsx op {n} ({kind}) on {f.path}"
            detail = _fsx_op(rng, f, kind, max_len, max_io, where)
            if out is not None:
                out.write(f"{n} {kind} {f.path.name} {detail}\n")
            size = os.fstat(f.fd).st_size
            if size != len(f.model):
                raise WorkloadFailure(f"{where}: size {size}, the model says {len(f.model)}")
        for i, f in enumerate(handles):
            got = _pread_all(f.fd, len(f.model) + 1, 0)
            _check_bytes(f"fsx final check of {f.path} (file {i})", 0, bytes(f.model), got)
    finally:
        for f in handles:
            os.close(f.fd)
        if out is not None:
            out.close()
    return counts


def _fsx_op(
    rng: random.Random, f: _FsxFile, kind: str, max_len: int, max_io: int, where: str
) -> str:
    """Perform one fsx operation on ``f`` and its model; return its parameters for the log."""
    if kind == "write":
        off, length = rng.randrange(max_len), rng.randrange(1, max_io + 1)
        data = rng.randbytes(length)
        _pwrite_all(f.fd, data, off)
        if off > len(f.model):
            f.model.extend(bytes(off - len(f.model)))  # the hole reads as zeros
        f.model[off : off + length] = data
        return f"off={off} len={length}"
    if kind == "read":
        off = rng.randrange(len(f.model) + max_io // 4 + 1)
        length = rng.randrange(1, max_io + 1)
        _check_bytes(where, off, bytes(f.model[off : off + length]), _pread_all(f.fd, length, off))
        return f"off={off} len={length}"
    if kind in ("truncate", "ftruncate"):
        size = rng.randrange(max_len + 1)
        if kind == "truncate":
            os.truncate(f.path, size)
        else:
            os.ftruncate(f.fd, size)
        if size < len(f.model):
            del f.model[size:]
        else:
            f.model.extend(bytes(size - len(f.model)))
        return f"size={size}"
    if kind in FALLOCATE_MODES:
        mode = FALLOCATE_MODES[kind]
        off, length = rng.randrange(max_len), rng.randrange(1, max_io + 1)
        fallocate(f.fd, mode, off, length)
        end = off + length if mode & FALLOC_FL_KEEP_SIZE == 0 else len(f.model)
        if end > len(f.model):
            f.model.extend(bytes(end - len(f.model)))  # allocated space reads as zeros
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            stop = min(off + length, len(f.model))
            if off < stop:
                f.model[off:stop] = bytes(stop - off)
        return f"off={off} len={length} mode={mode:#x}"
    if kind == "fsync":
        os.fsync(f.fd)
        return ""
    # reopen / open-trunc: a fresh descriptor must see the same bytes (or none after O_TRUNC).
    os.close(f.fd)
    flags = os.O_RDWR | (os.O_TRUNC if kind == "open-trunc" else 0)
    f.fd = os.open(f.path, flags)
    if kind == "open-trunc":
        f.model.clear()
    return ""


# ----------------------------------------------------------------------------------- fsstress

FILE, DIR, SYMLINK, FIFO = "file", "dir", "symlink", "fifo"
NAMES = tuple(f"n{i}" for i in range(10))  # a small pool: targets often exist (EEXIST, replace)
MAX_DEPTH = 4
FILE_MODES = (0o600, 0o640, 0o644, 0o664, 0o666, 0o700, 0o755)
DIR_MODES = (0o700, 0o750, 0o755, 0o775, 0o777, 0o1777)
OWNERS = (0, 1000, 1001)
XATTR_NAMES = ("user.a", "user.b", "user.c")
MTIME_BASE = 1_600_000_000 * 10**9


@dataclass(eq=False)
class _Node:
    """One inode of the model; hard links are several paths holding the same node."""

    kind: str
    mode: int
    uid: int
    gid: int
    data: bytearray = field(default_factory=bytearray)
    target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    mtime_ns: int | None = None  # known only after a utime, until the next write or truncate


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


class _Stress:
    """The model of the tree and the operations on it (see :func:`fsstress`)."""

    def __init__(self, root: Path, rng: random.Random, xattrs: bool) -> None:
        self.root = root
        self.rng = rng
        self.xattrs = xattrs
        self.root_can_chown = os.geteuid() == 0
        st = os.lstat(root)
        self.root_node = _Node(DIR, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        self.paths: dict[str, _Node] = {}
        self.expected_errors = 0
        self.n = 0

    # -- model queries
    def node(self, path: str) -> _Node:
        return self.root_node if path == "" else self.paths[path]

    def real(self, path: str) -> str:
        return os.path.join(self.root, path)

    def children(self, path: str) -> list[str]:
        prefix = f"{path}/" if path else ""
        return [p for p in self.paths if p.startswith(prefix) and "/" not in p[len(prefix) :]]

    def dirs(self, max_depth: int = 99) -> list[str]:
        found = ["", *(p for p, n in self.paths.items() if n.kind == DIR)]
        return sorted(d for d in found if (d.count("/") + 1 if d else 0) < max_depth)

    def of_kind(self, *kinds: str) -> list[str]:
        return sorted(p for p, n in self.paths.items() if n.kind in kinds)

    def new_path(self) -> str:
        return _join(self.rng.choice(self.dirs(MAX_DEPTH)), self.rng.choice(NAMES))

    def any_path(self) -> str | None:
        return self.rng.choice(sorted(self.paths)) if self.paths else None

    def new_node(self, kind: str, mode: int, parent: str) -> _Node:
        # A set-group-ID directory gives new entries its group (and new directories its bit).
        pnode = self.node(parent)
        gid = pnode.gid if pnode.mode & stat.S_ISGID else os.getegid()
        return _Node(kind, mode, os.geteuid(), gid)

    # -- running one call against the model's prediction
    def attempt(self, what: str, expected: set[int] | None, call: Callable[[], object]) -> bool:
        """Run ``call``; True if it succeeded as predicted, False if it failed as predicted."""
        try:
            call()
        except OSError as exc:
            if expected and exc.errno in expected:
                self.expected_errors += 1
                return False
            want = "success" if not expected else " or ".join(map(_errname, sorted(expected)))
            raise WorkloadFailure(
                f"fsstress op {self.n}: {what}: {_errname(exc.errno)} ({exc.strerror}), "
                f"the model expected {want}"
            ) from None
        if expected:
            raise WorkloadFailure(
                f"fsstress op {self.n}: {what}: succeeded, the model expected "
                + " or ".join(map(_errname, sorted(expected)))
            )
        return True

    # -- operations (each picks its arguments from the model, predicts, calls, updates)
    def op_create(self) -> None:
        path, mode = self.new_path(), self.rng.choice(FILE_MODES)
        data = self.rng.randbytes(self.rng.choice((0, 1, 100, 4096, 70000)))
        expected = {errno.EEXIST} if path in self.paths else None

        def call() -> None:
            fd = os.open(self.real(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
            try:
                os.fchmod(fd, mode)  # whatever the umask
                _pwrite_all(fd, data, 0)
            finally:
                os.close(fd)

        if self.attempt(f"create {path}", expected, call):
            node = self.new_node(FILE, mode, _parent(path))
            node.data[:] = data
            self.paths[path] = node

    def op_mkdir(self) -> None:
        path, mode = self.new_path(), self.rng.choice(DIR_MODES)
        expected = {errno.EEXIST} if path in self.paths else None

        def call() -> None:
            os.mkdir(self.real(path), mode)
            os.chmod(self.real(path), mode)

        if self.attempt(f"mkdir {path}", expected, call):
            self.paths[path] = self.new_node(DIR, mode, _parent(path))

    def op_mkfifo(self) -> None:
        path, mode = self.new_path(), self.rng.choice(FILE_MODES)
        expected = {errno.EEXIST} if path in self.paths else None

        def call() -> None:
            os.mkfifo(self.real(path), mode)
            os.chmod(self.real(path), mode)

        if self.attempt(f"mkfifo {path}", expected, call):
            self.paths[path] = self.new_node(FIFO, mode, _parent(path))

    def op_symlink(self) -> None:
        path = self.new_path()
        # Targets: a sibling name (may dangle), an absolute path outside, a long relative one.
        target = self.rng.choice((self.rng.choice(NAMES), "/nonexistent/x", "../" * 3 + "t" * 40))
        expected = {errno.EEXIST} if path in self.paths else None
        if self.attempt(
            f"symlink {path} -> {target}", expected, lambda: os.symlink(target, self.real(path))
        ):
            node = self.new_node(SYMLINK, 0o777, _parent(path))
            node.target = target
            self.paths[path] = node

    def op_link(self) -> None:
        candidates = self.of_kind(FILE, SYMLINK, FIFO)
        use_dir = self.rng.random() < 0.1 and self.of_kind(DIR)
        if not candidates and not use_dir:
            return
        src = self.rng.choice(self.of_kind(DIR) if use_dir else candidates)
        dst = self.new_path()
        expected = None
        if dst in self.paths:
            expected = {errno.EEXIST}  # the new name is looked up before the source's type
        elif self.paths[src].kind == DIR:
            expected = {errno.EPERM}
        if self.attempt(
            f"link {src} {dst}",
            expected,
            lambda: os.link(self.real(src), self.real(dst), follow_symlinks=False),
        ):
            self.paths[dst] = self.paths[src]

    def op_unlink(self) -> None:
        if self.rng.random() < 0.15:
            path = self.new_path()
            if path in self.paths:
                return
            expected: set[int] | None = {errno.ENOENT}
        else:
            picked = self.any_path()
            if picked is None:
                return
            path = picked
            expected = {errno.EISDIR} if self.paths[path].kind == DIR else None
        if self.attempt(f"unlink {path}", expected, lambda: os.unlink(self.real(path))):
            del self.paths[path]

    def op_rmdir(self) -> None:
        pool = self.of_kind(DIR) if self.rng.random() < 0.8 else sorted(self.paths)
        if not pool:
            return
        path = self.rng.choice(pool)
        expected: set[int] | None = None
        if self.paths[path].kind != DIR:
            expected = {errno.ENOTDIR}
        elif self.children(path):
            expected = {errno.ENOTEMPTY, errno.EEXIST}
        if self.attempt(f"rmdir {path}", expected, lambda: os.rmdir(self.real(path))):
            del self.paths[path]

    def op_rename(self) -> None:
        src = self.any_path()
        if src is None:
            return
        dst = self.new_path()
        snode, dnode = self.paths[src], self.paths.get(dst)
        expected: set[int] | None = None
        if dst == src or dnode is snode:
            pass  # same entry, or two links to one inode: rename does nothing and succeeds
        elif snode.kind == DIR and dst.startswith(src + "/"):
            expected = {errno.EINVAL}  # a directory into itself
        elif src.startswith(dst + "/"):
            expected = {errno.ENOTEMPTY, errno.EEXIST}  # over its own ancestor (checked first)
        elif dnode is not None and snode.kind == DIR:
            if dnode.kind != DIR:
                expected = {errno.ENOTDIR}
            elif self.children(dst):
                expected = {errno.ENOTEMPTY, errno.EEXIST}
        elif dnode is not None and dnode.kind == DIR:
            expected = {errno.EISDIR}
        if not self.attempt(
            f"rename {src} {dst}", expected, lambda: os.rename(self.real(src), self.real(dst))
        ):
            return
        if dst == src or dnode is snode:
            return
        self.paths.pop(dst, None)
        moved = {p: n for p, n in self.paths.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del self.paths[p]
        for p, n in moved.items():
            self.paths[dst + p[len(src) :]] = n

    def op_write(self) -> None:
        files = self.of_kind(FILE)
        if not files:
            return
        path = self.rng.choice(files)
        node = self.paths[path]
        off = self.rng.randrange(len(node.data) + 8192)
        data = self.rng.randbytes(self.rng.randrange(1, 20000))

        def call() -> None:
            fd = os.open(self.real(path), os.O_WRONLY)
            try:
                _pwrite_all(fd, data, off)
            finally:
                os.close(fd)

        self.attempt(f"write {path} off={off} len={len(data)}", None, call)
        if off > len(node.data):
            node.data.extend(bytes(off - len(node.data)))
        node.data[off : off + len(data)] = data
        node.mtime_ns = None

    def op_truncate(self) -> None:
        files = self.of_kind(FILE)
        if not files:
            return
        path = self.rng.choice(files)
        node = self.paths[path]
        size = self.rng.randrange(len(node.data) * 2 + 4097)
        self.attempt(f"truncate {path} {size}", None, lambda: os.truncate(self.real(path), size))
        if size < len(node.data):
            del node.data[size:]
        else:
            node.data.extend(bytes(size - len(node.data)))
        node.mtime_ns = None

    def op_read(self) -> None:
        files = self.of_kind(FILE)
        if not files:
            return
        path = self.rng.choice(files)
        got = Path(self.real(path)).read_bytes()
        _check_bytes(f"fsstress op {self.n}: read {path}", 0, bytes(self.paths[path].data), got)

    def op_chmod(self) -> None:
        pool = self.of_kind(FILE, DIR, FIFO)
        if not pool:
            return
        path = self.rng.choice(pool)
        node = self.paths[path]
        mode = self.rng.choice(DIR_MODES if node.kind == DIR else FILE_MODES)
        self.attempt(f"chmod {path} {mode:o}", None, lambda: os.chmod(self.real(path), mode))
        node.mode = mode

    def op_chown(self) -> None:
        path = self.any_path()
        if path is None or not self.root_can_chown:
            return
        uid, gid = self.rng.choice(OWNERS), self.rng.choice(OWNERS)
        self.attempt(
            f"chown {path} {uid}:{gid}",
            None,
            lambda: os.chown(self.real(path), uid, gid, follow_symlinks=False),
        )
        node = self.paths[path]
        node.uid, node.gid = uid, gid

    def op_utime(self) -> None:
        pool = self.of_kind(FILE, SYMLINK, FIFO)
        if not pool:
            return
        path = self.rng.choice(pool)
        mtime = MTIME_BASE + self.rng.randrange(10**15)
        self.attempt(
            f"utime {path} {mtime}",
            None,
            lambda: os.utime(self.real(path), ns=(mtime, mtime), follow_symlinks=False),
        )
        self.paths[path].mtime_ns = mtime

    def op_setxattr(self) -> None:
        pool = self.of_kind(FILE, DIR)
        if not pool or not self.xattrs:
            return
        path, name = self.rng.choice(pool), self.rng.choice(XATTR_NAMES)
        value = self.rng.randbytes(self.rng.randrange(1, 64))
        self.attempt(
            f"setxattr {path} {name}",
            None,
            lambda: os.setxattr(self.real(path), name, value, follow_symlinks=False),
        )
        self.paths[path].xattrs[name] = value

    def op_removexattr(self) -> None:
        pool = self.of_kind(FILE, DIR)
        if not pool or not self.xattrs:
            return
        path, name = self.rng.choice(pool), self.rng.choice(XATTR_NAMES)
        node = self.paths[path]
        expected = None if name in node.xattrs else {errno.ENODATA}
        if self.attempt(
            f"removexattr {path} {name}",
            expected,
            lambda: os.removexattr(self.real(path), name, follow_symlinks=False),
        ):
            del node.xattrs[name]

    # -- the final comparison of the real tree with the model
    def verify(self) -> None:
        """Compare the tree on disk with the model; WorkloadFailure naming the first difference."""
        found: dict[str, os.stat_result] = {}

        def walk(rel: str) -> None:
            for entry in sorted(os.scandir(self.real(rel)), key=lambda e: e.name):
                path = _join(rel, entry.name)
                found[path] = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    walk(path)

        walk("")
        extra, missing = sorted(set(found) - set(self.paths)), sorted(set(self.paths) - set(found))
        if extra or missing:
            raise WorkloadFailure(
                f"fsstress final check in {self.root}: not in the model {extra[:10]}, "
                f"missing {missing[:10]}"
            )
        inode_of: dict[int, int] = {}  # id(model node) -> st_ino
        names: dict[int, int] = {}
        for node in self.paths.values():
            names[id(node)] = names.get(id(node), 0) + 1
        for path, st in found.items():
            node = self.paths[path]
            self._verify_entry(path, node, st, names[id(node)])
            if inode_of.setdefault(id(node), st.st_ino) != st.st_ino:
                raise WorkloadFailure(f"fsstress final check: {path} should be a hard link")
        if len(set(inode_of.values())) != len(inode_of):
            raise WorkloadFailure("fsstress final check: two unrelated names share an inode")

    def _verify_entry(self, path: str, node: _Node, st: os.stat_result, links: int) -> None:
        kind = _kind(st.st_mode)
        problems = []
        if kind != node.kind:
            problems.append(f"type {kind}, model {node.kind}")
        elif kind != SYMLINK and stat.S_IMODE(st.st_mode) != node.mode:
            problems.append(f"mode {stat.S_IMODE(st.st_mode):o}, model {node.mode:o}")
        if (st.st_uid, st.st_gid) != (node.uid, node.gid):
            problems.append(f"owner {st.st_uid}:{st.st_gid}, model {node.uid}:{node.gid}")
        if kind != DIR and st.st_nlink != links:
            problems.append(f"{st.st_nlink} links, model {links}")
        if node.mtime_ns is not None and st.st_mtime_ns != node.mtime_ns:
            problems.append(f"mtime {st.st_mtime_ns}, model {node.mtime_ns}")
        if kind == SYMLINK and node.kind == SYMLINK and os.readlink(self.real(path)) != node.target:
            problems.append(f"target {os.readlink(self.real(path))!r}, model {node.target!r}")
        if kind == FILE and node.kind == FILE:
            _check_bytes(
                f"fsstress final check of {path}",
                0,
                bytes(node.data),
                Path(self.real(path)).read_bytes(),
            )
        if kind in (FILE, DIR) and self.xattrs:
            real = _xattrs(self.real(path), prefix="user.")
            if real != node.xattrs:
                problems.append(f"xattrs {sorted(real)}, model {sorted(node.xattrs)}")
        if problems:
            raise WorkloadFailure(f"fsstress final check of {path}: " + "; ".join(problems))


def _supports_user_xattrs(directory: Path) -> bool:
    try:
        os.setxattr(directory, "user.hakit-probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    os.removexattr(directory, "user.hakit-probe")
    return True


def fsstress(directory: Path, *, seed: int = 1, ops: int = 2000) -> dict[str, int]:
    """Namespace churn in ``directory`` (created if absent; must be empty) checked against a model.

    Each call's outcome (success, or the errno the model predicts: EEXIST, ENOENT, ENOTEMPTY,
    EISDIR, ENOTDIR, EINVAL, EPERM, ENODATA) is checked, reads compare content, and the whole tree
    is compared with the model at the end. chown runs only as root (to uids/gids 0, 1000, 1001);
    xattr operations only where the file system stores ``user.*`` attributes. Returns counts.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise UserConfigError(
            f"fsstress needs an empty directory: {directory} has entries (use a fresh subdirectory)"
        )
    model = _Stress(directory, random.Random(seed), _supports_user_xattrs(directory))
    table: list[tuple[Callable[[], None], int]] = [
        (model.op_create, 14),
        (model.op_mkdir, 6),
        (model.op_mkfifo, 2),
        (model.op_symlink, 4),
        (model.op_link, 5),
        (model.op_unlink, 7),
        (model.op_rmdir, 4),
        (model.op_rename, 12),
        (model.op_write, 12),
        (model.op_truncate, 5),
        (model.op_read, 5),
        (model.op_chmod, 5),
        (model.op_chown, 4),
        (model.op_utime, 4),
        (model.op_setxattr, 5),
        (model.op_removexattr, 2),
    ]
    calls, weights = [c for c, _ in table], [w for _, w in table]
    for n in range(ops):
        model.n = n
        model.rng.choices(calls, weights)[0]()
    model.verify()
    kinds = [n.kind for n in model.paths.values()]
    return {
        "ops": ops,
        "expected_errors": model.expected_errors,
        "entries": len(model.paths),
        **{f"{k}s": kinds.count(k) for k in (FILE, DIR, SYMLINK, FIFO)},
    }


# ------------------------------------------------------------------------------------ records

RECORDS_FILE = "records.log"
RECORD_SIZE = 512


def record_bytes(number: int, size: int = RECORD_SIZE) -> bytes:
    """Record ``number``: its number, then a filler derived from it, then a newline."""
    head = f"record {number:012d} ".encode()
    filler = hashlib.sha256(head).hexdigest().encode()
    body = (head + filler * (size // len(filler) + 1))[: size - 1]
    return body + b"\n"


def records(directory: Path, log: Path, *, ops: int | None = None, size: int = RECORD_SIZE) -> int:
    """Append records to ``DIR/records.log`` (fsync each), confirming each number in ``log``.

    A number reaches ``log`` (fsynced) only after the record's fsync returned: ``log`` is the list
    of writes the application was told are durable. Continues after the last complete record if
    the file exists (a torn tail is cut, as a real application would). Stops after ``ops`` records
    (None: until killed). Returns the number of records appended.
    """
    path = directory / RECORDS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        existing = os.fstat(fd).st_size
        if existing % size:
            os.ftruncate(fd, existing - existing % size)
        number, done = existing // size, 0
        while ops is None or done < ops:
            data = record_bytes(number, size)
            if os.write(fd, data) != size:
                raise WorkloadFailure(f"records: short write of record {number} to {path}")
            os.fsync(fd)
            os.write(logfd, f"{number}\n".encode())
            os.fsync(logfd)
            number, done = number + 1, done + 1
    finally:
        os.close(fd)
        os.close(logfd)
    return done


@dataclass(frozen=True)
class RecordsCheck:
    """What ``check-records`` found: confirmed numbers, and those missing or damaged."""

    confirmed: int
    present: int
    missing: tuple[int, ...]
    corrupt: tuple[int, ...]

    @property
    def ok(self) -> bool:
        """True when every confirmed record is present and intact."""
        return not self.missing and not self.corrupt


def check_records(directory: Path, log: Path, *, size: int = RECORD_SIZE) -> RecordsCheck:
    """Check that every number confirmed in ``log`` is intact in ``DIR/records.log``.

    A last log line without its newline is ignored: the client died while confirming it.
    """
    text = log.read_bytes()
    lines = text.split(b"\n")[:-1]  # the part after the last newline is unconfirmed
    try:
        numbers = [int(line) for line in lines]
    except ValueError:
        raise WorkloadFailure(f"check-records: {log} is not a list of record numbers") from None
    path = directory / RECORDS_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return RecordsCheck(len(numbers), 0, tuple(numbers), ())
    try:
        present = os.fstat(fd).st_size // size
        missing, corrupt = [], []
        for number in numbers:
            if number >= present:
                missing.append(number)
            elif os.pread(fd, size, number * size) != record_bytes(number, size):
                corrupt.append(number)
    finally:
        os.close(fd)
    return RecordsCheck(len(numbers), present, tuple(missing), tuple(corrupt))


# -------------------------------------------------------------------------------- tree digest


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    return {stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "sock"}.get(
        stat.S_IFMT(mode), "unknown"
    )


def _xattrs(path: str, prefix: str = "") -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in sorted(names)
        if n.startswith(prefix)
    }


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> list[dict[str, Any]]:
    """One entry per path under ``root`` (``"."`` is root itself), in a stable order.

    Fields: path, type, mode (permission bits), uid, gid, xattrs (name -> hex value); for
    non-directories size, mtime_ns and nlink; sha256 of regular files; symlink target; and ``link``,
    the first path (in this order) of the same inode when a non-directory has other names in the
    tree: the hard-link structure, comparable across machines where inode numbers differ.
    """
    entries: list[dict[str, Any]] = []
    first_name: dict[tuple[int, int], str] = {}

    def add(rel: str, st: os.stat_result) -> None:
        full = os.path.join(root, rel)
        kind = _kind(st.st_mode)
        entry: dict[str, Any] = {
            "path": rel,
            "type": kind,
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
        if kind != DIR:
            entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns, nlink=st.st_nlink)
            if st.st_nlink > 1:
                entry["link"] = first_name.setdefault((st.st_dev, st.st_ino), rel)
        if kind == FILE:
            entry["sha256"] = _sha256(full)
        elif kind == SYMLINK:
            entry["target"] = os.readlink(full)
        xattrs = _xattrs(full)
        if xattrs:
            entry["xattrs"] = {k: v.hex() for k, v in xattrs.items()}
        entries.append(entry)

    def walk(rel: str) -> None:
        for dirent in sorted(os.scandir(os.path.join(root, rel)), key=lambda e: e.name):
            path = os.path.join(rel, dirent.name) if rel != "." else dirent.name
            st = dirent.stat(follow_symlinks=False)
            add(path, st)
            if stat.S_ISDIR(st.st_mode):
                walk(path)

    add(".", os.lstat(root))
    walk(".")
    return entries


def digest_lines(root: Path) -> list[str]:
    """:func:`tree_digest` as JSON lines (what ``tree-digest DIR`` prints)."""
    return [json.dumps(e, sort_keys=True) for e in tree_digest(root)]


def _load(lines: Iterable[str | Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        if isinstance(line, str):
            if not line.strip():
                continue
            entry = dict(json.loads(line))
        else:
            entry = dict(line)
        out[str(entry["path"])] = entry
    return out


def compare_digests(
    a_lines: Iterable[str | Mapping[str, Any]],
    b_lines: Iterable[str | Mapping[str, Any]],
    *,
    ignore: Sequence[str] = (),
    names: tuple[str, str] = ("A", "B"),
) -> list[str]:
    """Differences between two digests (JSON lines or entries), one readable line each.

    ``ignore`` names fields not to compare (e.g. ``("mtime_ns",)``); an empty list means the
    trees are identical.
    """
    a, b = _load(a_lines), _load(b_lines)
    diffs = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            diffs.append(f"only in {names[0]}: {path} ({a[path]['type']})")
            continue
        if path not in a:
            diffs.append(f"only in {names[1]}: {path} ({b[path]['type']})")
            continue
        for key in sorted((set(a[path]) | set(b[path])) - {"path", *ignore}):
            va, vb = a[path].get(key), b[path].get(key)
            if va != vb:
                if key == "mode" and isinstance(va, int) and isinstance(vb, int):
                    va, vb = f"{va:o}", f"{vb:o}"
                diffs.append(f"{path}: {key} {va} ({names[0]}) != {vb} ({names[1]})")
    return diffs


def tree_compare(a: Path, b: Path, *, ignore: Sequence[str] = ()) -> list[str]:
    """Differences between the trees ``a`` and ``b`` (empty: identical)."""
    return compare_digests(tree_digest(a), tree_digest(b), ignore=ignore, names=(str(a), str(b)))


# -------------------------------------------------------------------------------------- fio


def fio_verify_args(
    directory: Path,
    size: str | int,
    seed: int,
    *,
    run_id: int | None = None,
    verify_only: bool = False,
) -> list[str]:
    """The fio command line of a random-write job on ``DIR/fio-verify.<seed>`` that then verifies.

    ``seed`` fixes the offsets' order; ``run_id`` (default: derived from ``seed``) goes into every
    block with the block's offset (``verify_pattern=0x<run_id>%o``), behind fio's header (offset,
    sequence number, header crc). ``verify=pattern`` compares those exact bytes. Measured with fio
    3.33: with ``verify=crc32c`` the pattern is only checksummed, not compared, so a block left by
    an earlier run (another run id) verifies; with ``verify=pattern`` it fails. Give each write
    round a new ``run_id`` and verify with the latest one to catch stale blocks.

    ``size`` is fio's (``"64m"``) or bytes. ``verify_only``: write nothing, read the whole file a
    job with the same arguments wrote and check every block, opening it read-only (so it also runs
    on a secondary, whose replicated directory refuses writes). Output is fio's JSON; the exit
    status is 0 only if every block verified (stderr names the offset of the first bad one).
    """
    rid = ((seed * 0x9E3779B1 + 0x1234567) if run_id is None else run_id) & 0xFFFFFFFF
    return [
        "fio",
        f"--name=hakit-verify-{seed}",
        f"--directory={directory}",
        f"--filename=fio-verify.{seed}",
        f"--size={size}",
        # Verifying reads sequentially: a write job opens the file read-write even with
        # verify_only, which a read-only directory refuses.
        "--rw=read" if verify_only else "--rw=randwrite",
        "--bs=4k",
        "--ioengine=psync",
        "--iodepth=1",
        "--fsync_on_close=1",
        f"--randseed={seed}",
        "--verify=pattern",
        f"--verify_pattern=0x{rid:08x}%o",
        "--verify_fatal=1",
        "--verify_dump=0",
        "--verify_state_save=0",  # else fio leaves a state file in the working directory
        "--do_verify=1",
        "--output-format=json",
        *(["--verify_only=1", "--readonly"] if verify_only else []),
    ]


# -------------------------------------------------------------------------------- bench-io


def bench_io(
    directory: Path,
    *,
    seed: int = 1,
    seq_mib: int = 256,
    rand_ops: int = 4000,
    rand_file_mib: int = 64,
    fsync_ops: int = 1000,
    meta_files: int = 1000,
) -> dict[str, float]:
    """I/O micro-benchmarks in ``directory`` (files removed afterwards).

    ``seq_mib_s``: 1 MiB writes of ``seq_mib`` MiB then fsync; ``rand4k_iops``: 4 KiB writes at
    random aligned offsets of a ``rand_file_mib`` MiB file (written and fsynced first, not timed);
    ``fsync4k_p50_us``/``p99``: 4 KiB write + fsync latency; ``meta_ops_s``: create, rename and
    unlink of ``meta_files`` files, three operations each.
    """
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    results: dict[str, float] = {}

    block = rng.randbytes(MiB)
    path = directory / "bench-seq"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for i in range(seq_mib):
        _pwrite_all(fd, block, i * MiB)
    os.fsync(fd)
    os.close(fd)
    results["seq_mib_s"] = seq_mib / (time.perf_counter() - t0)
    os.unlink(path)

    path = directory / "bench-rand"
    size = rand_file_mib * MiB
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    for i in range(rand_file_mib):
        _pwrite_all(fd, block, i * MiB)
    os.fsync(fd)
    small = rng.randbytes(4 * KiB)
    offsets = [rng.randrange(size // (4 * KiB)) * 4 * KiB for _ in range(rand_ops)]
    t0 = time.perf_counter()
    for off in offsets:
        os.pwrite(fd, small, off)
    results["rand4k_iops"] = rand_ops / (time.perf_counter() - t0)
    os.close(fd)
    os.unlink(path)

    path = directory / "bench-fsync"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    latencies = []
    for i in range(fsync_ops):
        t0 = time.perf_counter()
        os.pwrite(fd, small, i * 4 * KiB)
        os.fsync(fd)
        latencies.append(time.perf_counter() - t0)
    os.close(fd)
    os.unlink(path)
    q = statistics.quantiles(latencies, n=100)
    results["fsync4k_p50_us"] = q[49] * 1e6
    results["fsync4k_p99_us"] = q[98] * 1e6

    sub = directory / "bench-meta"
    sub.mkdir()
    t0 = time.perf_counter()
    for i in range(meta_files):
        os.close(os.open(sub / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(meta_files):
        os.rename(sub / f"f{i}", sub / f"g{i}")
    for i in range(meta_files):
        os.unlink(sub / f"g{i}")
    results["meta_ops_s"] = 3 * meta_files / (time.perf_counter() - t0)
    sub.rmdir()
    return results


# -------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hakit.testing.workloads",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="kind", required=True)

    def add(name: str, help_text: str, ops: int | None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("dir", type=Path)
        p.add_argument("--seed", type=int, default=1)
        p.add_argument("--ops", type=int, default=ops)
        p.add_argument("--log", type=Path, help="the op log (fsx) or confirmed numbers (records)")
        return p

    p = add("fsx", "random I/O on a few files, checked against a model", 2000)
    p.add_argument("--files", type=int, default=1)
    p.add_argument("--no-fallocate", action="store_true", help="leave fallocate out")
    add("fsstress", "namespace churn checked against a model", 2000)
    for name, text in (
        ("records", "append fsynced records, confirm their numbers in --log"),
        ("check-records", "every number in --log must be intact in DIR/records.log"),
    ):
        add(name, text, None).add_argument("--size", type=int, default=RECORD_SIZE)
    sub.add_parser("tree-digest", help="print the tree digest as JSON lines").add_argument(
        "dir", type=Path
    )
    p = sub.add_parser("tree-compare", help="compare two trees; exit 1 if they differ")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--ignore", default="", help="comma-separated fields not to compare")
    p = add("bench-io", "I/O micro-benchmarks, printed as JSON", None)
    for opt, default in (
        ("--seq-mib", 256),
        ("--rand-ops", 4000),
        ("--rand-file-mib", 64),
        ("--fsync-ops", 1000),
        ("--meta-files", 1000),
    ):
        p.add_argument(opt, type=int, default=default)
    return parser


def _run(ns: argparse.Namespace) -> int:
    if ns.kind == "fsx":
        counts = fsx(
            ns.dir,
            seed=ns.seed,
            ops=ns.ops,
            files=ns.files,
            log=ns.log,
            fallocate=not ns.no_fallocate,
        )
        print(json.dumps(counts))
    elif ns.kind == "fsstress":
        print(json.dumps(fsstress(ns.dir, seed=ns.seed, ops=ns.ops)))
    elif ns.kind in ("records", "check-records"):
        if ns.log is None:
            raise UserConfigError(f"{ns.kind} needs --log FILE (outside the replicated directory)")
        if ns.kind == "records":
            print(json.dumps({"appended": records(ns.dir, ns.log, ops=ns.ops, size=ns.size)}))
            return 0
        result = check_records(ns.dir, ns.log, size=ns.size)
        print(json.dumps(result.__dict__))
        if not result.ok:
            print(
                f"check-records: {len(result.missing)} confirmed records missing "
                f"{list(result.missing)[:50]}, {len(result.corrupt)} damaged "
                f"{list(result.corrupt)[:50]} in {ns.dir / RECORDS_FILE}",
                file=sys.stderr,
            )
            return 1
    elif ns.kind == "tree-digest":
        for line in digest_lines(ns.dir):
            print(line)
    elif ns.kind == "tree-compare":
        diffs = tree_compare(ns.a, ns.b, ignore=[f for f in ns.ignore.split(",") if f])
        for line in diffs:
            print(line)
        return 1 if diffs else 0
    else:  # bench-io
        print(
            json.dumps(
                bench_io(
                    ns.dir,
                    seed=ns.seed,
                    seq_mib=ns.seq_mib,
                    rand_ops=ns.rand_ops,
                    rand_file_mib=ns.rand_file_mib,
                    fsync_ops=ns.fsync_ops,
                    meta_files=ns.meta_files,
                )
            )
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (see the module docstring)."""
    ns = _parser().parse_args(argv)
    try:
        return _run(ns)
    except HakitError as exc:
        print(f"workloads {ns.kind}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"workloads {ns.kind}: unexpected system error: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
