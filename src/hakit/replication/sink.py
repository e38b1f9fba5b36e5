"""The narrow interface through which the pass-through filesystem reports every mutation.

Theory of operation: the filesystem applies each mutating request to the backing directory first;
only if that succeeded does it await the matching :class:`MutationSink` method, and only when that
returns does the application's system call return. The replication sender implements the sink:
with it, "the call returned" means "the peer acknowledged". Nothing the application sees as done
is missing from the sink's stream.

Ordering contract: sink methods are *called* (their coroutine started) in the order the mutations
were applied locally, with no suspension point in between: the filesystem runs on one asyncio loop
and does ``syscall(); await sink.m(...)``. An implementation that assigns its stream position
before its first ``await`` therefore sends mutations in exactly the local order, while many calls
can be awaiting their acknowledgements at once (pipelining). ``fsync`` is reported when the
application asks for it, after every mutation that preceded its ``fsync()`` call (which is all
POSIX asks); the local flush runs meanwhile (in a worker thread) or just before (inline), and the
call returns once both the local flush and the sink's ``fsync`` are done.

Paths are relative to the replicated directory, as bytes (file names are bytes on Linux),
``b""`` being the directory itself. ``ino`` identifies a file for ordering (the filesystem's inode
number: stable while the file is known, shared by hard links). Data operations carry
``path=None`` when the file has no name any more (written after it was unlinked while open):
nothing on the peer can be reached through it.

A sink must not raise for peer trouble: the sender itself turns a peer that stops acknowledging
into ``PeerOutOfDate`` and goes on alone. If a sink method raises anyway, the filesystem logs it and
fails the application's call with ``EIO`` (the local change is already made).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import IO


@dataclass(frozen=True)
class NewNode:
    """What the peer needs to recreate a new directory entry exactly (after local creation)."""

    path: bytes
    mode: int  # file type and permission bits, as created (umask already applied)
    uid: int
    gid: int
    rdev: int  # device number for mknod, else 0
    atime_ns: int
    mtime_ns: int
    parent_mtime_ns: int  # the parent directory's mtime after the creation


class MutationSink(abc.ABC):
    """Receives every mutation applied through the filesystem, awaited before the call returns."""

    @property
    def flushes_remotely(self) -> bool:
        """True while ``fsync`` waits for a flush elsewhere (the peer's): the filesystem then
        runs its local flush at the same time, in a worker thread. False by default: the local
        flush runs inline (a thread hand-off costs more than it saves when nothing is waited)."""
        return False

    @abc.abstractmethod
    async def create(self, node: NewNode) -> None:
        """A regular file was created (empty) with ``node``'s mode and owner."""

    @abc.abstractmethod
    async def mknod(self, node: NewNode) -> None:
        """A special file (FIFO, socket, device) or an empty regular file was created."""

    @abc.abstractmethod
    async def mkdir(self, node: NewNode) -> None:
        """A directory was created."""

    @abc.abstractmethod
    async def symlink(self, node: NewNode, target: bytes) -> None:
        """A symbolic link to ``target`` was created."""

    @abc.abstractmethod
    async def link(self, existing: bytes, new: bytes, parent_mtime_ns: int) -> None:
        """A hard link ``new`` to the file ``existing`` was created."""

    @abc.abstractmethod
    async def unlink(self, path: bytes, parent_mtime_ns: int) -> None:
        """A non-directory entry was removed."""

    @abc.abstractmethod
    async def rmdir(self, path: bytes, parent_mtime_ns: int) -> None:
        """An empty directory was removed."""

    @abc.abstractmethod
    async def rename(
        self, old: bytes, new: bytes, flags: int, old_parent_mtime_ns: int, new_parent_mtime_ns: int
    ) -> None:
        """``old`` was renamed to ``new`` (``flags``: 0, ``RENAME_NOREPLACE`` or ``RENAME_EXCHANGE``)."""

    @abc.abstractmethod
    async def write(
        self, ino: int, path: bytes | None, offset: int, data: bytes, mtime_ns: int
    ) -> None:
        """``data`` was written at ``offset``; the file's mtime is now ``mtime_ns``."""

    @abc.abstractmethod
    async def truncate(self, ino: int, path: bytes | None, size: int, mtime_ns: int) -> None:
        """The file's size was set to ``size`` (shrunk, or extended with a hole)."""

    @abc.abstractmethod
    async def fallocate(
        self, ino: int, path: bytes | None, mode: int, offset: int, length: int, mtime_ns: int
    ) -> None:
        """``fallocate(2)`` with ``mode`` (0, ``FALLOC_FL_KEEP_SIZE``, ``PUNCH_HOLE``,
        ``ZERO_RANGE``...) was applied to ``length`` bytes at ``offset``."""

    @abc.abstractmethod
    async def chmod(self, path: bytes | None, mode: int) -> None:
        """Permission bits are now ``mode`` (``& 0o7777``)."""

    @abc.abstractmethod
    async def chown(self, path: bytes | None, uid: int, gid: int) -> None:
        """Owner and group are now ``uid``/``gid`` (both given, as they are after the change)."""

    @abc.abstractmethod
    async def utimens(self, path: bytes | None, atime_ns: int, mtime_ns: int) -> None:
        """Access and modification times are now these (both given, after the change)."""

    @abc.abstractmethod
    async def setxattr(self, path: bytes | None, name: bytes, value: bytes) -> None:
        """Extended attribute ``name`` was set to ``value``."""

    @abc.abstractmethod
    async def removexattr(self, path: bytes | None, name: bytes) -> None:
        """Extended attribute ``name`` was removed."""

    @abc.abstractmethod
    async def fsync(self, ino: int, path: bytes | None, datasync: bool) -> None:
        """The application asked for durability of this file or directory (flushed locally at the
        same time, or already)."""

    async def survivor(self, removed: bytes, survivor: bytes) -> None:  # noqa: B027
        """Reported after an ``unlink`` (or a rename over a target) removed the name ``removed``
        of a file that lives on as ``survivor`` (a hard link): whatever was recorded about the
        file by its removed name now concerns the survivor. Nothing to do by default."""


class NullSink(MutationSink):
    """Reports go nowhere: a plain pass-through (benchmarks, the module stopped, no peer)."""

    async def create(self, node: NewNode) -> None:
        """Nothing to do."""

    async def mknod(self, node: NewNode) -> None:
        """Nothing to do."""

    async def mkdir(self, node: NewNode) -> None:
        """Nothing to do."""

    async def symlink(self, node: NewNode, target: bytes) -> None:
        """Nothing to do."""

    async def link(self, existing: bytes, new: bytes, parent_mtime_ns: int) -> None:
        """Nothing to do."""

    async def unlink(self, path: bytes, parent_mtime_ns: int) -> None:
        """Nothing to do."""

    async def rmdir(self, path: bytes, parent_mtime_ns: int) -> None:
        """Nothing to do."""

    async def rename(
        self, old: bytes, new: bytes, flags: int, old_parent_mtime_ns: int, new_parent_mtime_ns: int
    ) -> None:
        """Nothing to do."""

    async def write(
        self, ino: int, path: bytes | None, offset: int, data: bytes, mtime_ns: int
    ) -> None:
        """Nothing to do."""

    async def truncate(self, ino: int, path: bytes | None, size: int, mtime_ns: int) -> None:
        """Nothing to do."""

    async def fallocate(
        self, ino: int, path: bytes | None, mode: int, offset: int, length: int, mtime_ns: int
    ) -> None:
        """Nothing to do."""

    async def chmod(self, path: bytes | None, mode: int) -> None:
        """Nothing to do."""

    async def chown(self, path: bytes | None, uid: int, gid: int) -> None:
        """Nothing to do."""

    async def utimens(self, path: bytes | None, atime_ns: int, mtime_ns: int) -> None:
        """Nothing to do."""

    async def setxattr(self, path: bytes | None, name: bytes, value: bytes) -> None:
        """Nothing to do."""

    async def removexattr(self, path: bytes | None, name: bytes) -> None:
        """Nothing to do."""

    async def fsync(self, ino: int, path: bytes | None, datasync: bool) -> None:
        """Nothing to do."""


@dataclass(frozen=True)
class Mutation:
    """One recorded report: the sink method's name and its arguments (data kept as its length
    and a prefix, so long write streams stay small in memory)."""

    op: str
    args: tuple[object, ...]


class RecordingSink(MutationSink):
    """Keeps every report in order in ``mutations`` (tests; the replication protocol's fakes).

    Writes are recorded as ``(ino, path, offset, len(data))``: tests compare what was written
    through the backing files, not through this list. With ``journal``, each report is also
    appended to that file as one JSON line (``{"op": ..., "args": [...]}``, bytes as text), flushed
    before the call returns, so a test can follow a filesystem running in another process."""

    def __init__(self, journal: IO[str] | None = None) -> None:
        self.mutations: list[Mutation] = []
        self._journal = journal

    def _add(self, op: str, *args: object) -> None:
        self.mutations.append(Mutation(op, args))
        if self._journal is not None:
            self._journal.write(json.dumps({"op": op, "args": [_jsonable(a) for a in args]}) + "\n")
            self._journal.flush()

    def ops(self) -> list[str]:
        """The operation names in order."""
        return [m.op for m in self.mutations]

    async def create(self, node: NewNode) -> None:
        """Record it."""
        self._add("create", node)

    async def mknod(self, node: NewNode) -> None:
        """Record it."""
        self._add("mknod", node)

    async def mkdir(self, node: NewNode) -> None:
        """Record it."""
        self._add("mkdir", node)

    async def symlink(self, node: NewNode, target: bytes) -> None:
        """Record it."""
        self._add("symlink", node, target)

    async def link(self, existing: bytes, new: bytes, parent_mtime_ns: int) -> None:
        """Record it."""
        self._add("link", existing, new)

    async def unlink(self, path: bytes, parent_mtime_ns: int) -> None:
        """Record it."""
        self._add("unlink", path)

    async def rmdir(self, path: bytes, parent_mtime_ns: int) -> None:
        """Record it."""
        self._add("rmdir", path)

    async def rename(
        self, old: bytes, new: bytes, flags: int, old_parent_mtime_ns: int, new_parent_mtime_ns: int
    ) -> None:
        """Record it."""
        self._add("rename", old, new, flags)

    async def write(
        self, ino: int, path: bytes | None, offset: int, data: bytes, mtime_ns: int
    ) -> None:
        """Record it (length only)."""
        self._add("write", ino, path, offset, len(data))

    async def truncate(self, ino: int, path: bytes | None, size: int, mtime_ns: int) -> None:
        """Record it."""
        self._add("truncate", ino, path, size)

    async def fallocate(
        self, ino: int, path: bytes | None, mode: int, offset: int, length: int, mtime_ns: int
    ) -> None:
        """Record it."""
        self._add("fallocate", ino, path, mode, offset, length)

    async def chmod(self, path: bytes | None, mode: int) -> None:
        """Record it."""
        self._add("chmod", path, mode)

    async def chown(self, path: bytes | None, uid: int, gid: int) -> None:
        """Record it."""
        self._add("chown", path, uid, gid)

    async def utimens(self, path: bytes | None, atime_ns: int, mtime_ns: int) -> None:
        """Record it."""
        self._add("utimens", path, atime_ns, mtime_ns)

    async def setxattr(self, path: bytes | None, name: bytes, value: bytes) -> None:
        """Record it."""
        self._add("setxattr", path, name, value)

    async def removexattr(self, path: bytes | None, name: bytes) -> None:
        """Record it."""
        self._add("removexattr", path, name)

    async def fsync(self, ino: int, path: bytes | None, datasync: bool) -> None:
        """Record it."""
        self._add("fsync", ino, path, datasync)

    async def survivor(self, removed: bytes, survivor: bytes) -> None:
        """Record it."""
        self._add("survivor", removed, survivor)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, NewNode):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    return value
