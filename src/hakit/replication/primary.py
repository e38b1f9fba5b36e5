"""The primary's side of replication: every local mutation streamed to the peer, and full copies.

Theory of operation (docs/design/replication.md §4, §7):

* :class:`ReplicatingSink` is the :class:`~hakit.replication.sink.MutationSink` the pass-through
  filesystem awaits before answering the application. It turns each report into a message and
  places it in the stream *synchronously* (``Sender.submit``), so the stream order is the local
  order, then awaits the acknowledgement. The application's call therefore returns only once the
  peer has the change.
* Whether a mutation must reach the peer depends on the pair: while the peer is **current** (it
  holds everything this node wrote: the connection is up and either the module was paired when it
  came up or a copy ended on it), a request the peer cannot acknowledge makes it out of date. The
  sink then reports ``peer_out_of_date`` (the engine turns it into the core's ``PeerOutOfDate``,
  which starts a new data generation) and holds every such request until the engine answers that
  the new generation is on disk (:meth:`ReplicatingSink.generation_persisted`): no application
  call returns a change the peer lacks before the record saying so is durable, so the peer can
  never be promoted with stale data. While the module is paired but the connection is not up yet
  (a swap, the first seconds), a mutation waits for the connection up to ``sendtimeout``.
* While the peer is not current (this node is ALONE), mutations still go to a connected peer (it
  is being resynchronized: the live stream and the copy share one ordered stream) but its loss
  holds nothing: the peer is out of date already.
* :class:`Copier` sends the whole tree on the peer's request: the namespace (``DIRLIST`` frames,
  one synchronous walk, so no local mutation interleaves), then every regular file's data by
  descriptor (a file renamed meanwhile is copied under its new name; one unlinked is skipped),
  then directory attributes, then ``RESYNC_END``. Each block is read and queued in one step, so a
  concurrent application write is either inside the block or after it in the stream: the replica
  can never keep stale bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hakit.replication import messages as m
from hakit.replication.hashsync import BlockSync
from hakit.replication.journal import DirtyJournal
from hakit.replication.nslog import NamespaceLog
from hakit.replication.sink import MutationSink, NewNode
from hakit.replication.transport import PeerLost, Sender

log = logging.getLogger(__name__)

# notreplicated: ``exclude(path, is_dir)`` (NotReplicatedMatcher); ``only`` rules never exclude a
# directory, hence the second argument.
Exclude = Callable[[bytes, bool], bool]

COPY_BLOCK = 1024 * 1024
COPY_WINDOW = 16  # blocks in flight during a copy (flow control)
INCREMENTAL_PASSES = 5  # the journal is read again for entries renamed during the copy


@dataclass
class Counters:
    """What the primary's replication did (shown as module resources)."""

    ops: int = 0
    bytes: int = 0
    waits: int = 0  # requests that waited for a connection while paired
    out_of_date: int = 0
    copied_files: int = 0
    copied_bytes: int = 0
    excluded: int = 0
    by_op: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    # The copy in progress (reintegration): planned and processed bytes and files.
    resync_kind: str = ""
    resync_total: int = 0
    resync_done: int = 0
    resync_files_total: int = 0
    resync_files_done: int = 0
    resync_started: float = 0.0

    def begin_copy(self, kind: str, total: int, files: int) -> None:
        """A copy starts: ``total`` bytes in ``files`` files to go through."""
        self.resync_kind = kind
        self.resync_total, self.resync_done = total, 0
        self.resync_files_total, self.resync_files_done = files, 0
        self.resync_started = time.monotonic()

    def progress(self) -> dict[str, int]:
        """The copy's progress as resources (empty when no copy ran)."""
        if not self.resync_kind:
            return {}
        elapsed = max(time.monotonic() - self.resync_started, 1e-3)
        rate = int(self.resync_done / elapsed)
        left = max(self.resync_total - self.resync_done, 0)
        return {
            "resync.total_bytes": self.resync_total,
            "resync.done_bytes": min(self.resync_done, self.resync_total),
            "resync.files_total": self.resync_files_total,
            "resync.files_done": self.resync_files_done,
            "resync.rate_bytes_s": rate,
            "resync.eta_s": int(left / rate) if rate else -1,
        }


JournalOp = tuple[str, tuple[object, ...]]


def journal_ops(msg: m.Message) -> list[JournalOp]:
    """The dirty-journal calls that record ``msg`` (what the peer would miss without it)."""
    match msg:
        case m.Create(node=node) | m.Mknod(node=node) | m.Symlink(node=node):
            return [("created", (node.path, False))]
        case m.Mkdir(node=node):
            return [("created", (node.path, True))]
        case m.Link(existing=existing, new=new):
            return [("linked", (existing, new))]
        case m.Unlink(path=path):
            return [("removed", (path, False))]
        case m.Rmdir(path=path):
            return [("removed", (path, True))]
        case m.Rename(old=old, new=new, flags=flags):
            return [("renamed", (old, new, bool(flags & m.RENAME_EXCHANGE)))]
        case m.Write(path=path, offset=offset, data=data):
            return [("write", (path, offset, len(data)))]
        case m.Truncate(path=path, size=size):
            return [("truncate", (path, size))]
        case m.Fallocate(path=path, offset=offset, length=length):
            return [("write", (path, offset, length))]
        case m.SetAttr(path=path) | m.SetXattr(path=path) | m.RemoveXattr(path=path):
            return [("attrs", (path,))]
    return []


_MOVES = (m.Rename, m.Unlink, m.Rmdir)
"""Namespace changes that move or drop journal entries (applied to the journal during a copy)."""


def record(journal: DirtyJournal, ops: list[JournalOp]) -> bool:
    """Apply ``ops`` to the journal; True if something new must be committed."""
    changed = False
    for name, args in ops:
        changed = bool(getattr(journal, name)(*args)) or changed
    return changed


@dataclass
class _Sent:
    """A request the peer acknowledged (or may) but has not reported durable yet."""

    seq: int
    ops: list[JournalOp]  # to journal if the peer is lost before it is durable
    done: Callable[[], None] | None = None  # copy progress to record once durable
    namespace: m.Message | None = None  # for the namespace log, likewise


class ReplicatingSink(MutationSink):
    """Sends every mutation to the peer and waits for its acknowledgement (module docstring)."""

    def __init__(
        self,
        *,
        exclude: Exclude,
        sendtimeout: float,
        locktimeout: float,
        on_out_of_date: Callable[[str], None],
        paired: bool = False,
        journal: DirtyJournal | None = None,
        nslog: NamespaceLog | None = None,
    ) -> None:
        self.journal = journal
        self.nslog = nslog
        self._sent: collections.deque[_Sent] = collections.deque()
        self._exclude = exclude
        self._sendtimeout = sendtimeout
        self._locktimeout = locktimeout
        self._on_out_of_date = on_out_of_date
        self.paired = paired
        self.sender: Sender | None = None
        self.current = False  # the peer holds everything written here (see the docstring)
        # A copy to the connected peer has begun: from then on mutations go to it in the same
        # stream. Before (connected, not current, no copy yet), they are journaled as if alone:
        # applied now to a peer whose tree is behind, they could land in the wrong places.
        self.copying = False
        self._connected = asyncio.Event()
        self._held: asyncio.Event | None = None  # set once the new generation is persisted
        self.counters = Counters()

    @property
    def flushes_remotely(self) -> bool:
        """An ``fsync`` now waits for the peer's flush (it is connected and gets the stream)."""
        return self.sender is not None and (self.current or self.copying)

    # ---- the pair, as the replicator sees it ---------------------------------------------------

    def attach(self, sender: Sender) -> None:
        """A connection to the peer is up. If the module is paired, the peer is current now (the
        pair's generation is the same on both sides and nothing was written since: writes wait
        for the connection while paired)."""
        self.sender = sender
        self.current = self.paired
        self._sent.clear()
        sender.on_durable(self._durable)
        self._connected.set()

    def detach(self, reason: str) -> None:
        """The connection is gone. A current peer misses what comes next: out of date. What it
        had not made durable is journaled (it may be lost with the peer's memory)."""
        self.sender = None
        self.copying = False
        self._connected.clear()
        if self.journal is not None:
            for sent in self._sent:
                record(self.journal, sent.ops)
                if sent.namespace is not None and self.nslog is not None:
                    self.nslog.append(sent.namespace)
        self._sent.clear()
        if self.current:
            self.current = False
            self._peer_out_of_date(reason)
        elif self.journal is not None:
            asyncio.get_running_loop().create_task(self._commit())

    async def _commit(self) -> None:
        """Make the journal and the namespace log durable."""
        if self.nslog is not None:
            await self.nslog.commit()
        if self.journal is not None:
            await self.journal.commit()

    def track(
        self,
        seq: int,
        ops: list[JournalOp],
        done: Callable[[], None] | None,
        namespace: m.Message | None = None,
    ) -> None:
        """Remember request ``seq`` until the peer reports it durable (journal only)."""
        if self.journal is not None:
            self._sent.append(_Sent(seq, ops, done, namespace))

    def _durable(self, upto: int) -> None:
        while self._sent and self._sent[0].seq <= upto:
            sent = self._sent.popleft()
            if sent.done is not None:
                sent.done()

    def set_paired(self, paired: bool) -> None:
        """The engine's view of the pair changed (PRIM: paired; ALONE: not)."""
        self.paired = paired
        if not paired:
            self.current = False
        elif self.sender is not None and not self.sender.lost:
            # Paired with a live connection: the engine paired us because the peer ended a copy
            # on this connection (or had our generation when it came up).
            self.current = True

    def copy_ended(self) -> None:
        """A full copy ended on the current connection: the peer holds everything."""
        if self.sender is not None and not self.sender.lost:
            self.current = True

    def generation_persisted(self) -> None:
        """The engine stored the new generation: release the held requests. The pair is over
        (the engine pairs the module again once the peer has caught up)."""
        self.paired = False
        if self._held is not None:
            self._held.set()
            self._held = None

    def _peer_out_of_date(self, reason: str) -> None:
        self.counters.out_of_date += 1
        if self._held is None:
            self._held = asyncio.Event()
        log.warning(
            "replication: peer out of date (%s): holding requests until the new "
            "generation is persisted",
            reason,
        )
        asyncio.get_running_loop().create_task(self._report(reason))

    async def _report(self, reason: str) -> None:
        # The journal first (what the peer lacks is on disk), then the engine's new generation;
        # only its answer releases the held requests.
        await self._commit()
        self._on_out_of_date(reason)

    async def _hold(self) -> None:
        held = self._held
        if held is None:
            return
        try:
            async with asyncio.timeout(self._locktimeout):
                await held.wait()
        except TimeoutError:
            log.error(
                "replication: the engine did not confirm the new data generation within "
                "locktimeout %gs: releasing the application's requests anyway",
                self._locktimeout,
            )
            self.generation_persisted()

    # ---- sending ---------------------------------------------------------------------------------

    async def _send(self, msg: m.Message, *paths: bytes | None) -> None:
        if any(p is None for p in paths):
            return  # an unlinked open file: nothing on the peer can be reached through it
        if any(self._excluded(p) for p in paths if p is not None):
            self.counters.excluded += 1
            return
        if self._held is not None:
            # A loss is being recorded: nothing may pass before the record is durable.
            await self._hold()
        sender = self.sender
        if sender is None and self.paired:
            sender = await self._wait_connection()
        if sender is None or not (self.current or self.copying):
            # ALONE, or the peer is behind and its copy has not begun: what it will need is
            # journaled before answering.
            await self._journal_now(msg)
            return
        frame_type, header, payload = m.encode(msg)
        try:
            ack = sender.submit(frame_type, header, payload)
        except PeerLost:
            ack = None
        else:
            ops = journal_ops(msg) if self.journal else []
            self.track(sender.last_seq, ops, None, msg if NamespaceLog.wanted(msg) else None)
            if self.copying and not self.current and isinstance(msg, _MOVES):
                # The copy still walks the journal: its entries must follow renames and
                # removals made meanwhile, or a renamed file's dirty zones are never copied.
                assert self.journal is not None
                record(self.journal, ops)
        self.counters.ops += 1
        self.counters.bytes += len(header) + len(payload)
        self.counters.by_op[frame_type.name] += 1
        if ack is not None:
            try:
                await ack
                return
            except PeerLost:
                pass
        # The peer could not acknowledge: if it was current, detach() (called by the sender's
        # on_peer_lost) reported it; wait for the record before answering.
        await asyncio.sleep(0)
        await self._journal_now(msg)
        await self._hold()

    async def _journal_now(self, msg: m.Message) -> None:
        if self.journal is None:
            return
        changed = record(self.journal, journal_ops(msg))
        if self.nslog is not None and NamespaceLog.wanted(msg):
            self.nslog.append(msg)
            changed = True
        if changed:
            await self._commit()

    def _excluded(self, path: bytes) -> bool:
        # Whether the path names a directory is not known here: a path is left out only if it
        # is left out either way (an ``only`` rule never excludes a directory).
        return self._exclude(path, False) and self._exclude(path, True)

    async def _wait_connection(self) -> Sender | None:
        self.counters.waits += 1
        try:
            async with asyncio.timeout(self._sendtimeout):
                await self._connected.wait()
        except TimeoutError:
            if self.paired and self.sender is None:
                self.current = False
                self._peer_out_of_date(
                    f"no replication connection to the peer within sendtimeout "
                    f"{self._sendtimeout:g}s"
                )
                self.paired = False
                await self._hold()
            return self.sender
        return self.sender

    async def create(self, node: NewNode) -> None:
        """Send CREATE."""
        await self._send(m.Create(node), node.path)

    async def mknod(self, node: NewNode) -> None:
        """Send MKNOD."""
        await self._send(m.Mknod(node), node.path)

    async def mkdir(self, node: NewNode) -> None:
        """Send MKDIR."""
        await self._send(m.Mkdir(node), node.path)

    async def symlink(self, node: NewNode, target: bytes) -> None:
        """Send SYMLINK."""
        await self._send(m.Symlink(node, target), node.path)

    async def link(self, existing: bytes, new: bytes, parent_mtime_ns: int) -> None:
        """Send LINK."""
        await self._send(m.Link(existing, new, parent_mtime_ns), existing, new)

    async def unlink(self, path: bytes, parent_mtime_ns: int) -> None:
        """Send UNLINK."""
        await self._send(m.Unlink(path, parent_mtime_ns), path)

    async def rmdir(self, path: bytes, parent_mtime_ns: int) -> None:
        """Send RMDIR."""
        await self._send(m.Rmdir(path, parent_mtime_ns), path)

    async def rename(
        self, old: bytes, new: bytes, flags: int, old_parent_mtime_ns: int, new_parent_mtime_ns: int
    ) -> None:
        """Send RENAME (a rename across the notreplicated boundary is logged, see below)."""
        old_out, new_out = self._excluded(old), self._excluded(new)
        if old_out != new_out:
            # SafeKit does not replicate such renames either; the peer keeps (or lacks) the
            # entry until the next full resynchronization. Said loudly, never silently.
            log.warning(
                "replication: rename %r -> %r crosses the notreplicated boundary: not replicated",
                old,
                new,
            )
            if not new_out:
                self.counters.excluded += 1
            return
        await self._send(
            m.Rename(old, new, flags, old_parent_mtime_ns, new_parent_mtime_ns), old, new
        )

    async def write(
        self, ino: int, path: bytes | None, offset: int, data: bytes, mtime_ns: int
    ) -> None:
        """Send WRITE."""
        await self._send(m.Write(path or b"", offset, mtime_ns, data), path)

    async def truncate(self, ino: int, path: bytes | None, size: int, mtime_ns: int) -> None:
        """Send TRUNCATE."""
        await self._send(m.Truncate(path or b"", size, mtime_ns), path)

    async def fallocate(
        self, ino: int, path: bytes | None, mode: int, offset: int, length: int, mtime_ns: int
    ) -> None:
        """Send FALLOCATE."""
        await self._send(m.Fallocate(path or b"", mode, offset, length, mtime_ns), path)

    async def chmod(self, path: bytes | None, mode: int) -> None:
        """Send SETATTR (mode)."""
        await self._send(m.SetAttr(path or b"", mode=mode), path)

    async def chown(self, path: bytes | None, uid: int, gid: int) -> None:
        """Send SETATTR (owner)."""
        await self._send(m.SetAttr(path or b"", uid=uid, gid=gid), path)

    async def utimens(self, path: bytes | None, atime_ns: int, mtime_ns: int) -> None:
        """Send SETATTR (times)."""
        await self._send(m.SetAttr(path or b"", atime_ns=atime_ns, mtime_ns=mtime_ns), path)

    async def setxattr(self, path: bytes | None, name: bytes, value: bytes) -> None:
        """Send SETXATTR."""
        await self._send(m.SetXattr(path or b"", name, value), path)

    async def removexattr(self, path: bytes | None, name: bytes) -> None:
        """Send REMOVEXATTR."""
        await self._send(m.RemoveXattr(path or b"", name), path)

    async def survivor(self, removed: bytes, survivor: bytes) -> None:
        """A hard-linked file lost the name the journal may know it by: while the peer gets
        nothing (alone, or before its copy), the journal copies it whole under its survivor."""
        if self.journal is None or self.current or self.copying:
            return
        if self._excluded(survivor):
            return
        if self.journal.whole(survivor):
            await self._commit()

    async def fsync(self, ino: int, path: bytes | None, datasync: bool) -> None:
        """Send FSYNC (acknowledged after the peer's own flush)."""
        await self._send(m.Fsync(path or b"", datasync), path)


# ---- full copy -----------------------------------------------------------------------------------


def _proc(fd: int) -> bytes:
    return f"/proc/self/fd/{fd}".encode()


class Copier:
    """Copies the whole tree under ``root_fd`` to the peer through ``sender`` (module docstring)."""

    def __init__(
        self,
        root_fd: int,
        sender: Sender,
        exclude: Exclude,
        counters: Counters,
        *,
        sink: ReplicatingSink | None = None,
        block_sync: BlockSync | None = None,
        window: int = COPY_WINDOW,
        bandwidth: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._window_size = window
        # reiallowedbw: bytes per second the copy may use (None: unlimited).
        self._bandwidth = bandwidth
        self._clock = clock
        self._sleep = sleep
        self._paced_bytes = 0
        self._paced_since = clock()
        self._root = root_fd
        self._sender = sender
        self._exclude = exclude
        self._counters = counters
        self._sink = sink
        self._block_sync = block_sync
        self._prefix = os.readlink(_proc(root_fd))
        self._inflight: collections.deque[asyncio.Future[int]] = collections.deque()

    def _streaming(self) -> None:
        """From now on the application's requests go to the peer (after what was queued)."""
        if self._sink is not None:
            self._sink.copying = True

    def _submit(self, msg: m.Message, done: Callable[[], None] | None = None) -> None:
        """Queue ``msg`` now; ``done`` runs once the peer reports it durable (copy progress)."""
        frame_type, header, payload = m.encode(msg)
        self._inflight.append(self._sender.submit(frame_type, header, payload))
        if done is not None and self._sink is not None:
            self._sink.track(self._sender.last_seq, [], done)

    async def _window(self, sent: int = 0) -> None:
        """Flow control: at most ``window`` blocks unacknowledged, at most ``bandwidth`` bytes per
        second; lets the application's requests run in between."""
        while len(self._inflight) > self._window_size:
            await self._inflight.popleft()
        if self._bandwidth and sent:
            self._paced_bytes += sent
            ahead = self._paced_bytes / self._bandwidth - (self._clock() - self._paced_since)
            if ahead > 0:
                await self._sleep(ahead)
                return
        await asyncio.sleep(0)

    def _path_of(self, fd: int) -> bytes | None:
        """The current path of the file open as ``fd`` relative to the root, None if unlinked."""
        full = os.readlink(_proc(fd))
        if not full.startswith(self._prefix + b"/"):
            return None
        path = full[len(self._prefix) + 1 :]
        if path.endswith(b" (deleted)"):
            try:
                st = os.stat(path[: -len(b" (deleted)")], dir_fd=self._root, follow_symlinks=False)
            except OSError:
                return None
            if (st.st_dev, st.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                return None
            path = path[: -len(b" (deleted)")]
        return path

    def _replicated_path_of(self, fd: int) -> bytes | None:
        """``_path_of``, None for a file now under a notreplicated path."""
        path = self._path_of(fd)
        return None if path is None or self._exclude(path, False) else path

    async def run(self, kind: str, generation: str) -> tuple[int, int]:
        """Send the tree; return (files, bytes) copied. Raises PeerLost if the peer goes away."""
        started = time.monotonic()
        self._submit(m.ResyncBegin(kind, generation))
        files = self._send_namespace()  # one synchronous step: no mutation interleaves
        self._streaming()
        sizes = [os.fstat(fd).st_size for fd in files]
        self._counters.begin_copy(kind, sum(sizes), len(files))
        copied = 0
        try:
            for fd, size in zip(files, sizes, strict=True):
                copied += await self._copy_file(fd)
                self._counters.copied_files += 1
                self._counters.resync_done += size
                self._counters.resync_files_done += 1
        finally:
            for fd in files:
                os.close(fd)
        self._send_directory_attributes()
        self._submit(m.ResyncEnd(kind, len(files), copied))
        while self._inflight:
            await self._inflight.popleft()
        log.info(
            "replication: full copy sent: %d files, %d bytes in %.1f s",
            len(files),
            copied,
            time.monotonic() - started,
        )
        return len(files), copied

    def _send_namespace(self) -> list[int]:
        """DIRLIST frames for every directory; an O_PATH descriptor per regular file's inode."""
        files: list[int] = []
        seen: dict[tuple[int, int], bytes] = {}
        pending: list[tuple[bytes, int]] = [(b"", os.dup(self._root))]
        while pending:
            rel, dfd = pending.pop()
            try:
                self._send_listing_of(rel, dfd, seen, files, pending)
            finally:
                os.close(dfd)
        return files

    def _send_listing_of(
        self,
        rel: bytes,
        dfd: int,
        seen: dict[tuple[int, int], bytes],
        files: list[int] | None,
        pending: list[tuple[bytes, int]] | None,
        done: Callable[[], None] | None = None,
    ) -> None:
        """The DIRLIST frames of directory ``rel`` (open as ``dfd``). With ``files``/``pending``
        (a full copy) regular files' descriptors and subdirectories are collected too."""
        dst = os.fstat(dfd)
        entries: list[m.DirEntry] = []
        with os.scandir(dfd) as it:
            names = sorted(os.fsencode(e.name) for e in it)
        for name in names:
            path = name if rel == b"" else rel + b"/" + name
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if self._exclude(path, stat.S_ISDIR(st.st_mode)):
                continue
            target = b""
            link_to: bytes | None = None
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(name, dir_fd=dfd)
            elif stat.S_ISDIR(st.st_mode) and pending is not None:
                flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                pending.append((path, os.open(name, flags, dir_fd=dfd)))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    link_to = seen[key]
                else:
                    seen[key] = path
                    if files is not None:
                        files.append(os.open(name, os.O_PATH | os.O_NOFOLLOW, dir_fd=dfd))
            entries.append(
                m.DirEntry(
                    name=name,
                    mode=st.st_mode,
                    uid=st.st_uid,
                    gid=st.st_gid,
                    rdev=st.st_rdev,
                    size=st.st_size,
                    atime_ns=st.st_atime_ns,
                    mtime_ns=st.st_mtime_ns,
                    target=target,
                    link_to=link_to,
                )
            )
        listings = m.dirlisting_frames(rel, dst.st_mode, dst.st_uid, dst.st_gid, tuple(entries))
        for i, listing in enumerate(listings):
            self._submit(listing, done if i == len(listings) - 1 else None)

    # ---- incremental copy (issue 5): what the dirty-zone journal says --------------------------

    async def run_incremental(
        self,
        journal: DirtyJournal,
        kind: str,
        generation: str,
        nslog: NamespaceLog | None = None,
    ) -> tuple[int, int]:
        """Send what ``journal`` lists (docs/design/reintegration.md §3); (files, bytes).

        The namespace log is replayed first: the peer's tree goes through the same creations,
        renames and removals (a renamed file keeps its content there), then the listings."""
        started = time.monotonic()
        self._submit(m.ResyncBegin(kind, generation))
        # The namespace changes the peer missed, in one synchronous step (no application
        # request interleaves), then the application's requests stream to the peer too.
        for msg in nslog.messages() if nslog is not None else ():
            self._submit(msg)
        self._streaming()
        estimate = journal.estimate(self._size_of)
        self._counters.begin_copy(kind, estimate.bytes, estimate.files)
        sent: set[tuple[bytes, int | None]] = set()
        listed: set[bytes] = set()
        files = copied = 0
        for _ in range(INCREMENTAL_PASSES):
            plan = journal.plan()
            progress = False
            for rel in plan.listings:
                if rel not in listed and self._send_journaled_listing(rel, journal):
                    listed.add(rel)
                    progress = True
            for rel in plan.attrs:
                if (rel, -1) not in sent and self._send_journaled_attrs(rel, journal):
                    sent.add((rel, -1))
                    progress = True
            for rel, zones in plan.files.items():
                todo = None if zones is None else [z for z in zones if (rel, z) not in sent]
                if (zones is None and (rel, None) in sent) or todo == []:
                    continue
                n = await self._copy_journaled(rel, todo, journal, plan.shrink.get(rel))
                # Progress recorded so far (durable on the peer) reaches the disk too: an
                # interrupted reintegration resumes from there.
                await journal.commit()
                if n is not None:
                    files += 1
                    copied += n
                    self._counters.resync_done += n
                    self._counters.resync_files_done += 1
                    progress = True
                    sent.update([(rel, None)] if todo is None else [(rel, z) for z in todo])
            if not progress:
                break
        # Directory times last (listings and file changes inside moved them), deepest first.
        for rel in sorted(listed, key=lambda p: -p.count(b"/")):
            self._send_directory_times(rel)
        self._submit(m.ResyncEnd(kind, files, copied))
        while self._inflight:
            await self._inflight.popleft()
        log.info(
            "replication: incremental copy sent: %d files, %d bytes, %d listings in %.1f s",
            files,
            copied,
            len(listed),
            time.monotonic() - started,
        )
        return files, copied

    def _size_of(self, rel: bytes) -> int | None:
        try:
            return os.stat(rel, dir_fd=self._root, follow_symlinks=False).st_size
        except OSError:
            return None

    def _open_dir(self, rel: bytes) -> int | None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        try:
            return os.open(rel, flags, dir_fd=self._root) if rel else os.dup(self._root)
        except OSError:
            return None  # removed or renamed since: its parent's listing says so

    def _send_journaled_listing(self, rel: bytes, journal: DirtyJournal) -> bool:
        dfd = self._open_dir(rel)
        if dfd is None:
            return False
        try:
            self._send_listing_of(rel, dfd, {}, None, None, lambda: journal.done_listing(rel))
        finally:
            os.close(dfd)
        return True

    def _send_journaled_attrs(self, rel: bytes, journal: DirtyJournal) -> bool:
        try:
            fd = os.open(rel or ".", os.O_PATH | os.O_NOFOLLOW, dir_fd=self._root)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            # Only files and directories are opened (a FIFO's open would wait for a writer);
            # Linux allows user extended attributes on nothing else anyway.
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                with contextlib.suppress(OSError):
                    rfd = os.open(_proc(fd), os.O_RDONLY | os.O_NOATIME | os.O_NONBLOCK)
                    try:
                        self._send_xattrs(rfd, rel)
                    finally:
                        os.close(rfd)
            self._submit(
                m.SetAttr(
                    rel,
                    mode=None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode),
                    uid=st.st_uid,
                    gid=st.st_gid,
                    atime_ns=st.st_atime_ns,
                    mtime_ns=st.st_mtime_ns,
                ),
                lambda: journal.done_attrs(rel),
            )
        finally:
            os.close(fd)
        return True

    async def _copy_journaled(
        self, rel: bytes, zones: list[int] | None, journal: DirtyJournal, shrink: int | None
    ) -> int | None:
        """Copy the zones (None: all) of file ``rel``; None if it is not there any more."""
        try:
            # O_NONBLOCK: if the name is now a FIFO, opening it must not wait for a writer.
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME | os.O_NONBLOCK
            fd = os.open(rel, flags, dir_fd=self._root)
        except OSError:
            return None  # renamed (the journal moved its entry) or removed since
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            path = self._path_of(fd)
            if path is None:
                return None
            if zones is None:
                # The whole file: the peer's copy is emptied first, so nothing of an older
                # content survives in what are holes here; the data read afterwards includes
                # every write the application made before the read, the later ones follow.
                self._submit(m.Truncate(path, 0, os.fstat(fd).st_mtime_ns))
                return await self._copy_open_file(fd, lambda p: journal.done_file(p))
            sent = 0
            zone_size = journal.zone_size
            if shrink is not None:
                # The file was cut shorter while the peer was away: cut the peer's copy first,
                # so bytes beyond it that were not rewritten come back as zeros, as here. The cut
                # also removes what the application wrote past it during this copy (already on
                # the peer): so everything past it is copied again, read after the cut.
                st = os.fstat(fd)
                self._submit(
                    m.Truncate(path, shrink, st.st_mtime_ns), lambda: journal.done_shrink(rel)
                )
                tail = range(shrink // zone_size, -(-st.st_size // zone_size))
                zones = sorted(set(zones).union(tail))
            for zone in zones:
                path = self._path_of(fd)
                if path is None or self._exclude(path, False):
                    return sent
                data = os.pread(fd, zone_size, zone * zone_size)
                st = os.fstat(fd)
                done = _done_zone(journal, path, zone)
                if data:
                    self._submit(m.Write(path, zone * zone_size, st.st_mtime_ns, data), done)
                    sent += len(data)
                    self._counters.copied_bytes += len(data)
                else:
                    done()  # beyond the end now: the final size below covers it
                await self._window(len(data))
            path = self._path_of(fd)
            if path is not None:
                self._finish_file(fd, path, functools.partial(journal.done_file, path))
            return sent
        finally:
            os.close(fd)

    def _send_directory_times(self, rel: bytes) -> None:
        dfd = self._open_dir(rel)
        if dfd is None:
            return
        try:
            st = os.fstat(dfd)
            self._submit(m.SetAttr(rel, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns))
        finally:
            os.close(dfd)

    async def _copy_file(self, opath_fd: int) -> int:
        """Send one file (by its O_PATH descriptor) of a full copy."""
        try:
            # Reopening through /proc: the O_PATH descriptor is a regular file (not a symlink).
            fd = os.open(_proc(opath_fd), os.O_RDONLY | os.O_NOATIME)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP):
                return 0
            raise
        try:
            if self._block_sync is not None:
                sent = await self._block_sync.sync_file(fd, self._replicated_path_of)
                if sent is not None:
                    path = self._path_of(fd)
                    if path is not None and not self._exclude(path, False):
                        self._finish_file(fd, path)
                    self._counters.copied_bytes += sent
                    return sent
            return await self._copy_open_file(fd)
        finally:
            os.close(fd)

    async def _copy_open_file(self, fd: int, done: Callable[[bytes], None] | None = None) -> int:
        """Send one open file's data ranges (holes skipped), then its size and times."""
        sent = 0
        offset = 0
        while True:
            # Read and queue in one step (module docstring), path taken now: a rename
            # since the last block was sent before this block.
            path = self._path_of(fd)
            if path is None or self._exclude(path, False):
                return sent
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                start = -1  # no data after offset
            data = os.pread(fd, COPY_BLOCK, start) if start >= 0 else b""
            if not data:
                self._finish_file(fd, path, None if done is None else functools.partial(done, path))
                return sent
            st = os.fstat(fd)
            self._submit(m.Write(path, start, st.st_mtime_ns, data))
            sent += len(data)
            self._counters.copied_bytes += len(data)
            offset = start + len(data)
            await self._window(len(data))

    def _finish_file(self, fd: int, path: bytes, done: Callable[[], None] | None = None) -> None:
        """The file's final size, extended attributes and times (after its last block)."""
        st = os.fstat(fd)
        self._submit(m.Truncate(path, st.st_size, st.st_mtime_ns))
        self._send_xattrs(fd, path)
        self._submit(m.SetAttr(path, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns), done)

    def _send_xattrs(self, fd: int, path: bytes) -> None:
        try:
            names = os.listxattr(fd)
        except OSError:
            return  # a file system without extended attributes
        for name in names:
            try:
                value = os.getxattr(fd, name)
            except OSError:
                continue  # removed meanwhile: its REMOVEXATTR is in the stream
            self._submit(m.SetXattr(path, os.fsencode(name), value))

    def _send_directory_attributes(self) -> None:
        """Every directory's mode, owner and times, children first (one synchronous walk: the
        times are those of this moment, and later changes follow in the stream)."""
        self._directory_attributes(b"", os.dup(self._root))

    def _directory_attributes(self, rel: bytes, dfd: int) -> None:
        try:
            with os.scandir(dfd) as it:
                subdirs = sorted(os.fsencode(e.name) for e in it if e.is_dir(follow_symlinks=False))
            for name in subdirs:
                path = name if rel == b"" else rel + b"/" + name
                if self._exclude(path, True):
                    continue
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dfd)
                except OSError:
                    continue  # removed meanwhile: its RMDIR is in the stream
                self._directory_attributes(path, child)
            st = os.fstat(dfd)
            self._send_xattrs(dfd, rel)
            self._submit(
                m.SetAttr(
                    rel,
                    mode=stat.S_IMODE(st.st_mode),
                    uid=st.st_uid,
                    gid=st.st_gid,
                    atime_ns=st.st_atime_ns,
                    mtime_ns=st.st_mtime_ns,
                )
            )
        finally:
            os.close(dfd)


def _done_zone(journal: DirtyJournal, path: bytes, zone: int) -> Callable[[], None]:
    return lambda: journal.done_zone(path, zone)
