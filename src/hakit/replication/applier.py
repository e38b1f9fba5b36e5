"""The secondary side: apply replication messages to the backing directory, exactly.

Theory of operation (docs/design/replication.md §4, §8): the receiver hands every decoded message,
in stream order, to :meth:`Applier.apply`. Each one reproduces on the secondary's backing tree what
the primary's pass-through did on its own: same content, holes, mode (setuid/setgid included),
owner, nanosecond times, symlink targets, hard links and extended attributes, and the parent
directory's mtime after a namespace change, so ``rfsverify`` finds the two trees identical.

Everything is relative to ``root_fd`` (the directory opened before the read-only mount hid it)
with ``*at()`` calls; the last component of a path is never followed (``O_NOFOLLOW``, ``lchown``,
``AT_SYMLINK_NOFOLLOW``, ``O_PATH`` descriptors for chmod and xattrs through ``/proc/self/fd``).
Intermediate components are trusted: paths come from the authenticated primary, are checked by
:func:`hakit.replication.messages.check_relative`, and name directories on both sides.

Order of attribute changes on a new node: chown first, then chmod (chown clears setuid/setgid,
so the mode is set after it), then times (chown and chmod change only ctime).

Writes reuse open descriptors: an LRU of ``O_WRONLY`` descriptors by path, dropped entirely on any
namespace change (a path could now name another file) and on :meth:`Applier.close`.

Resynchronization: ``RESYNC_BEGIN`` marks the tree as not in sync; each directory's listing
(possibly split into several ``DIRLIST`` frames) then makes that directory hold exactly the listed
names with the listed types, owners, modes, sizes and times (the data comes afterwards as
``WRITE`` frames, extended attributes as ``SETXATTR``, directory times as ``SETATTR``; a listing
carries no attributes, so those of a node kept from before stay until the primary sends its own).
While not in sync, errors that only mean "this part of the tree is not what the primary had"
(ENOENT, EEXIST, ENOTEMPTY, ENOTDIR, EISDIR, ELOOP) are tolerated and counted: the resync rewrites
that part anyway. ``RESYNC_END`` marks the tree in sync again. Any other failure raises
``OSError``; the receiver then reports ``ERROR`` and the primary marks this node out of date.

Block-hash sync (:mod:`hakit.replication.hashsync`): a ``HASHES`` request is answered, not just
applied: :meth:`Applier.apply` returns a :class:`HashesResult` with the blocks whose content
differs here (read with ``O_NOATIME``, a block at a time, holes not read), which the caller sends
back as ``NEED``. A file that cannot be read as a regular file (missing, replaced by another kind
of node while out of sync) needs every block: the primary's ``WRITE`` frames then meet the usual
rules.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass

from hakit.replication import hashsync
from hakit.replication.messages import (
    NAMESPACE_MESSAGES,
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
    frame_type_of,
)
from hakit.replication.passthrough import (
    _check,
    _fchown_empty,
    _libc,
    _proc,
    _renameat2,
    _utimens_empty,
)
from hakit.replication.sink import NewNode
from hakit.replication.wire import ProtocolError

log = logging.getLogger("hakit.replication")

TOLERATED_ERRNOS = frozenset(
    {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}
)
"""Errors ignored while a resync is running: the tree is known to differ, the resync fixes it."""

WRITE_CACHE_SIZE = 64

_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO where a file is expected fails (ENXIO) instead of blocking the receiver.
_O_WRITE = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_USER_XATTR = b"user."
_O_HASH = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class HashesResult:
    """What applying a ``HASHES`` request found: the indexes of ``path``'s blocks that differ
    here (increasing), to be sent back as ``NEED``."""

    path: bytes
    blocks: tuple[int, ...]

    def need(self, seq: int) -> Need:
        """The answer to the ``HASHES`` request ``seq``."""
        return Need(seq, self.path, self.blocks)


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


class Applier:
    """Applies messages to the tree under ``root_fd`` (owned by the caller, never closed here).

    ``in_sync``: False between ``RESYNC_BEGIN`` and ``RESYNC_END`` (settable: a node that starts
    out of date). ``tolerated`` counts the errors ignored because of it. ``counters`` holds the
    number of messages applied per frame type name (``"WRITE"``...) and ``"bytes"`` (data written)."""

    def __init__(
        self,
        root_fd: int,
        *,
        in_sync: bool = True,
        exclude: Callable[[bytes, bool], bool] | None = None,
    ) -> None:
        self._root = root_fd
        # notreplicated paths (``exclude(path, is_dir)``): the primary lists none of them, and a
        # listing must not remove this node's own (they are not replicated, not "extra").
        self._exclude = exclude
        self.in_sync = in_sync
        self.tolerated = 0
        self.counters: dict[str, int] = collections.defaultdict(int)
        self._writers: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        # A directory listing split over several DIRLIST frames, gathered until the last one.
        self._listing: DirListing | None = None
        self._listing_entries: list[DirEntry] = []
        # Inodes with several local names that a listing has already given to one listed name
        # during this resync: another listed name (not a hard link to it) must get its own file.
        self._claimed: set[tuple[int, int]] = set()
        self._links_listed = True

    # ---- public ----------------------------------------------------------------------------------

    def apply(self, msg: Message) -> ResyncEnd | HashesResult | None:
        """Apply one message; the ``ResyncEnd`` itself once the resync it ends is applied, the
        :class:`HashesResult` of a ``Hashes`` request (always one: the primary waits for it).

        Raises OSError if the change cannot be made (except the tolerated errors while not in
        sync), ProtocolError if the message makes no sense in the stream (a listing interrupted)."""
        if isinstance(msg, (*NAMESPACE_MESSAGES, ResyncBegin, ResyncEnd)):
            self._drop_writers()
        try:
            result = self._dispatch(msg)
        except OSError as exc:
            if self.in_sync or exc.errno not in TOLERATED_ERRNOS:
                if exc.filename is not None:
                    raise
                # The ctypes calls (renameat2, fchownat, utimensat, fallocate) name no file.
                raise OSError(
                    exc.errno, f"{exc.strerror} ({frame_type_of(msg).name} {_where(msg)})"
                ) from exc
            self.tolerated += 1
            log.debug("replication resync: tolerated while out of sync: %r: %s", msg, exc)
            return None
        self.counters[frame_type_of(msg).name] += 1
        return result

    def close(self) -> None:
        """Close the cached write descriptors (the root descriptor stays the caller's)."""
        self._drop_writers()

    # ---- dispatch --------------------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> ResyncEnd | HashesResult | None:
        if isinstance(msg, Create):
            self._create(msg.node)
        elif isinstance(msg, Mknod):
            os.mknod(msg.node.path, msg.node.mode, msg.node.rdev, dir_fd=self._root)
            self._finish_new(msg.node)
        elif isinstance(msg, Mkdir):
            os.mkdir(msg.node.path, 0o700, dir_fd=self._root)
            self._finish_new(msg.node)
        elif isinstance(msg, Symlink):
            os.symlink(msg.target, msg.node.path, dir_fd=self._root)
            self._finish_new(msg.node)
        elif isinstance(msg, Link):
            os.link(
                msg.existing,
                msg.new,
                src_dir_fd=self._root,
                dst_dir_fd=self._root,
                follow_symlinks=False,
            )
            self._set_dir_mtime(_parent(msg.new), msg.parent_mtime_ns)
        elif isinstance(msg, Unlink):
            os.unlink(msg.path, dir_fd=self._root)
            self._set_dir_mtime(_parent(msg.path), msg.parent_mtime_ns)
        elif isinstance(msg, Rmdir):
            os.rmdir(msg.path, dir_fd=self._root)
            self._set_dir_mtime(_parent(msg.path), msg.parent_mtime_ns)
        elif isinstance(msg, Rename):
            _renameat2(self._root, msg.old, self._root, msg.new, msg.flags)
            self._set_dir_mtime(_parent(msg.old), msg.old_parent_mtime_ns)
            self._set_dir_mtime(_parent(msg.new), msg.new_parent_mtime_ns)
        else:
            return self._dispatch_data(msg)
        return None

    def _dispatch_data(self, msg: Message) -> ResyncEnd | HashesResult | None:
        if isinstance(msg, Hashes):
            return self._hashes(msg)
        if isinstance(msg, Write):
            fd = self._writer(msg.path)
            _pwrite_all(fd, msg.data, msg.offset)
            _utimens_empty(fd, None, msg.mtime_ns)
            self.counters["bytes"] += len(msg.data)
        elif isinstance(msg, Truncate):
            fd = self._writer(msg.path)
            os.ftruncate(fd, msg.size)
            _utimens_empty(fd, None, msg.mtime_ns)
        elif isinstance(msg, Fallocate):
            fd = self._writer(msg.path)
            _fallocate(fd, msg.mode, msg.offset, msg.length)
            _utimens_empty(fd, None, msg.mtime_ns)
        elif isinstance(msg, SetAttr):
            self._setattr(msg)
        elif isinstance(msg, SetXattr | RemoveXattr):
            self._xattr(msg)
        elif isinstance(msg, Fsync):
            self._fsync(msg.path, msg.datasync)
        elif isinstance(msg, ResyncBegin):
            log.info("replication resync %s (generation %s) begins", msg.kind, msg.generation)
            self.in_sync = False
            self._claimed.clear()
            # A full copy lists every name of every inode (link_to says which are links): it
            # decides the link structure. An incremental copy lists only some directories and
            # replays the links first: local hard links are then kept as they are.
            self._links_listed = msg.kind != "incremental"
            self._listing = None
            self._listing_entries = []
        elif isinstance(msg, DirListing):
            self._dirlisting(msg)
        elif isinstance(msg, ResyncEnd):
            if self._listing is not None:
                raise ProtocolError(
                    f"RESYNC_END while the listing of {self._listing.path!r} still expects "
                    "DIRLIST frames (the last one has more=0)"
                )
            self.in_sync = True
            self._claimed.clear()
            log.info(
                "replication resync %s done: %d files, %d bytes", msg.kind, msg.files, msg.bytes
            )
            return msg
        return None

    # ---- namespace -------------------------------------------------------------------------------

    def _create(self, node: NewNode) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(node.path, flags, 0o600, dir_fd=self._root)
        try:
            os.fchown(fd, node.uid, node.gid)
            os.fchmod(fd, stat.S_IMODE(node.mode))
            os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
        finally:
            os.close(fd)
        self._set_dir_mtime(_parent(node.path), node.parent_mtime_ns)

    def _finish_new(self, node: NewNode) -> None:
        """Owner, mode and times of a node just created by path, then its parent's mtime."""
        fd = os.open(node.path, _O_PATH, dir_fd=self._root)
        try:
            _set_attrs(fd, node.mode, node.uid, node.gid, node.atime_ns, node.mtime_ns)
        finally:
            os.close(fd)
        self._set_dir_mtime(_parent(node.path), node.parent_mtime_ns)

    def _set_dir_mtime(self, path: bytes, mtime_ns: int) -> None:
        """The directory's mtime as the primary reported it; its atime is left alone."""
        if not path:
            _utimens_empty(self._root, None, mtime_ns)
            return
        fd = os.open(path, _O_PATH | os.O_DIRECTORY, dir_fd=self._root)
        try:
            _utimens_empty(fd, None, mtime_ns)
        finally:
            os.close(fd)

    # ---- data and attributes ---------------------------------------------------------------------

    def _writer(self, path: bytes) -> int:
        fd = self._writers.get(path)
        if fd is not None:
            self._writers.move_to_end(path)
            return fd
        fd = os.open(path, _O_WRITE, dir_fd=self._root)
        self._writers[path] = fd
        if len(self._writers) > WRITE_CACHE_SIZE:
            _, oldest = self._writers.popitem(last=False)
            os.close(oldest)
        return fd

    def _drop_writers(self) -> None:
        while self._writers:
            _, fd = self._writers.popitem()
            os.close(fd)

    def _open_path(self, path: bytes) -> int:
        """An O_PATH descriptor on ``path`` itself (a symlink is not followed); b"" is the root."""
        return os.open(path or b".", _O_PATH, dir_fd=self._root)

    def _setattr(self, msg: SetAttr) -> None:
        fd = self._open_path(msg.path)
        try:
            if msg.uid is not None or msg.gid is not None:
                # -1 leaves that id unchanged (fchownat's convention).
                _fchown_empty(
                    fd, -1 if msg.uid is None else msg.uid, -1 if msg.gid is None else msg.gid
                )
            if msg.mode is not None and not stat.S_ISLNK(os.stat(fd).st_mode):
                os.chmod(_proc(fd), stat.S_IMODE(msg.mode))  # after chown: keeps setuid/setgid
            if msg.atime_ns is not None or msg.mtime_ns is not None:
                _utimens_empty(fd, msg.atime_ns, msg.mtime_ns)
        finally:
            os.close(fd)

    def _xattr(self, msg: SetXattr | RemoveXattr) -> None:
        fd = self._open_path(msg.path)
        try:
            if msg.name.startswith(_USER_XATTR) and stat.S_ISLNK(os.stat(fd).st_mode):
                # Linux refuses user.* on symlinks (EPERM), so the primary cannot have one either.
                log.debug("replication: skip %r on symlink %r", msg.name, msg.path)
                return
            # /proc/self/fd/N of an O_PATH descriptor leads to the object itself, even a symlink.
            if isinstance(msg, SetXattr):
                os.setxattr(_proc(fd), msg.name, msg.value)
            else:
                os.removexattr(_proc(fd), msg.name)
        finally:
            os.close(fd)

    def _fsync(self, path: bytes, datasync: bool) -> None:
        sync = os.fdatasync if datasync else os.fsync
        if not path:
            sync(self._root)
            return
        writer = self._writers.get(path)
        if writer is not None:  # the file the writes before this flush went to
            sync(writer)
            return
        fd = os.open(
            path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=self._root
        )
        try:
            sync(fd)
        finally:
            os.close(fd)

    def _hashes(self, msg: Hashes) -> HashesResult:
        """The blocks of ``msg.path`` that differ from the primary's digests."""
        every = HashesResult(msg.path, tuple(range(len(msg.digests))))
        try:
            try:
                fd = os.open(msg.path, _O_HASH | os.O_NOATIME, dir_fd=self._root)
            except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER
                fd = os.open(msg.path, _O_HASH, dir_fd=self._root)
        except OSError as exc:
            if exc.errno in TOLERATED_ERRNOS or exc.errno == errno.ENXIO:  # ENXIO: a FIFO
                log.debug("replication: %r cannot be compared (%s): every block needed", msg, exc)
                return every
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return every
            return HashesResult(msg.path, hashsync.differing_blocks(fd, msg))
        finally:
            os.close(fd)

    # ---- resync: directory listings --------------------------------------------------------------

    def _dirlisting(self, msg: DirListing) -> None:
        if self._listing is not None and self._listing.path != msg.path:
            raise ProtocolError(
                f"DIRLIST of {msg.path!r} while the listing of {self._listing.path!r} still "
                "expects frames (the last one has more=0)"
            )
        if self._listing is None:
            self._listing = msg
            self._listing_entries = []
        self._listing_entries.extend(msg.entries)
        if msg.more:
            return
        self._listing = None
        entries, self._listing_entries = self._listing_entries, []
        self._reconcile(msg, entries)

    def _reconcile(self, listing: DirListing, entries: list[DirEntry]) -> None:
        """Make directory ``listing.path`` hold exactly ``entries``."""
        wanted: dict[bytes, DirEntry] = {}
        for entry in entries:
            if entry.name in wanted:
                raise ProtocolError(f"DIRLIST of {listing.path!r} lists {entry.name!r} twice")
            wanted[entry.name] = entry
        dfd = self._ensure_dir(listing)
        try:
            for name in os.listdir(dfd):
                raw = os.fsencode(name)
                if raw not in wanted and not self._excluded(dfd, listing.path, raw):
                    _remove(dfd, raw)
            for entry in entries:
                self._reconcile_entry(dfd, listing.path, entry)
        finally:
            os.close(dfd)

    def _excluded(self, dfd: int, dir_path: bytes, name: bytes) -> bool:
        if self._exclude is None:
            return False
        path = name if dir_path == b"" else dir_path + b"/" + name
        try:
            is_dir = stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
        except FileNotFoundError:
            return False
        return self._exclude(path, is_dir)

    def _ensure_dir(self, listing: DirListing) -> int:
        """Open directory ``listing.path`` (made like ``mkdir -p``), its mode and owner fixed."""
        parts = listing.path.split(b"/") if listing.path else []
        dfd = os.dup(self._root)
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                try:
                    st: os.stat_result | None = os.stat(part, dir_fd=dfd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    _remove(dfd, part)
                    st = None
                if st is None:
                    # Intermediate directories get their own listings (mode, owner) later.
                    os.mkdir(part, 0o700 if last else 0o755, dir_fd=dfd)
                child = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
                )
                os.close(dfd)
                dfd = child
            os.fchown(dfd, listing.uid, listing.gid)
            os.fchmod(dfd, stat.S_IMODE(listing.mode))
        except BaseException:
            os.close(dfd)
            raise
        return dfd

    def _reconcile_entry(self, dfd: int, dir_path: bytes, entry: DirEntry) -> None:
        name = entry.name
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if entry.link_to is not None:
            self._reconcile_link(dfd, entry.link_to, name, st)
            return
        kind = stat.S_IFMT(entry.mode)
        if st is not None and not self._reusable(dfd, st, entry):
            _remove(dfd, name)
            st = None
        if st is not None and stat.S_ISREG(kind) and st.st_nlink > 1:
            self._claimed.add((st.st_dev, st.st_ino))
        if stat.S_ISREG(kind):
            self._reconcile_file(dfd, entry, create=st is None)
            return
        if st is None:
            if stat.S_ISDIR(kind):
                os.mkdir(name, 0o700, dir_fd=dfd)
            elif stat.S_ISLNK(kind):
                os.symlink(entry.target, name, dir_fd=dfd)
            else:
                os.mknod(name, entry.mode, entry.rdev, dir_fd=dfd)
        fd = os.open(name, _O_PATH, dir_fd=dfd)
        try:
            if stat.S_ISDIR(kind):  # its times come later (SETATTR), after its own content
                _set_attrs(fd, entry.mode, entry.uid, entry.gid, None, None)
            else:
                _set_attrs(fd, entry.mode, entry.uid, entry.gid, entry.atime_ns, entry.mtime_ns)
        finally:
            os.close(fd)
        log.debug("replication resync: %r/%r reconciled", dir_path, name)

    def _reusable(self, dfd: int, st: os.stat_result, entry: DirEntry) -> bool:
        """Whether the existing local node can become ``entry`` without being recreated."""
        kind = stat.S_IFMT(entry.mode)
        if stat.S_IFMT(st.st_mode) != kind:
            return False
        if stat.S_ISLNK(kind):
            return os.readlink(entry.name, dir_fd=dfd) == entry.target
        if stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
            return st.st_rdev == entry.rdev
        if stat.S_ISREG(kind) and st.st_nlink > 1 and self._links_listed:
            # Another listed name already took this inode: this name needs a file of its own.
            return (st.st_dev, st.st_ino) not in self._claimed
        return True

    def _reconcile_file(self, dfd: int, entry: DirEntry, *, create: bool) -> None:
        flags = _O_WRITE | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(entry.name, flags, 0o600, dir_fd=dfd)
        try:
            if os.fstat(fd).st_size != entry.size:
                os.ftruncate(fd, entry.size)
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, stat.S_IMODE(entry.mode))
            os.utime(fd, ns=(entry.atime_ns, entry.mtime_ns))
        finally:
            os.close(fd)

    def _reconcile_link(
        self, dfd: int, link_to: bytes, name: bytes, st: os.stat_result | None
    ) -> None:
        """``name`` must be a hard link to ``link_to`` (an earlier-listed name)."""
        source = os.stat(link_to, dir_fd=self._root, follow_symlinks=False)
        if st is not None and (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino):
            return
        if st is not None:
            _remove(dfd, name)
        os.link(link_to, name, src_dir_fd=self._root, dst_dir_fd=dfd, follow_symlinks=False)


def _where(msg: Message) -> str:
    """The path(s) a message is about, for error messages."""
    if isinstance(msg, Create | Mknod | Mkdir | Symlink):
        return repr(msg.node.path)
    if isinstance(msg, Link):
        return f"{msg.existing!r} -> {msg.new!r}"
    if isinstance(msg, Rename):
        return f"{msg.old!r} -> {msg.new!r}"
    if isinstance(msg, ResyncBegin | ResyncEnd):
        return msg.kind
    return repr(msg.path)


def _set_attrs(
    fd: int, mode: int, uid: int, gid: int, atime_ns: int | None, mtime_ns: int | None
) -> None:
    """Owner, then mode (not for symlinks), then times of the object O_PATH ``fd`` refers to."""
    _fchown_empty(fd, uid, gid)
    if not stat.S_ISLNK(mode):
        os.chmod(_proc(fd), stat.S_IMODE(mode))
    if atime_ns is not None or mtime_ns is not None:
        _utimens_empty(fd, atime_ns, mtime_ns)


def _remove(dfd: int, name: bytes) -> None:
    """Remove ``name`` in ``dfd``: a directory with everything under it, never following links."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(os.fsdecode(name), dir_fd=dfd)
    else:
        os.unlink(name, dir_fd=dfd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    result = _libc.fallocate(fd, mode, ctypes.c_int64(offset), ctypes.c_int64(length))
    if result != 0 and ctypes.get_errno() == errno.EOPNOTSUPP:
        if mode == 0:
            os.posix_fallocate(fd, offset, length)  # glibc writes zeros where it cannot allocate
            return
        if mode == hashsync.PUNCH_HOLE:
            # The block-hash sync zeroes ranges this way; the same bytes, only not sparse.
            _write_zeros(fd, offset, min(offset + length, os.fstat(fd).st_size))
            return
    _check(result, "fallocate")


def _write_zeros(fd: int, start: int, end: int) -> None:
    zeros = bytes(min(max(end - start, 0), hashsync.WRITE_CHUNK))
    while start < end:
        step = min(end - start, len(zeros))
        _pwrite_all(fd, zeros[:step], start)
        start += step
