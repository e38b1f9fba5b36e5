"""Full synchronization by block hashes (issue 5): only the blocks that differ cross the network.

Theory of operation (docs/design/replication.md, issue 5): a full copy (first start, unrelated
histories, after a primary crash) first makes the secondary's tree hold the primary's names with
the primary's sizes (``DIRLIST``). Then, instead of sending every file's data, the primary's
:class:`BlockSync` sends per file::

    primary                                          secondary
    HASHES(path, block_size, size, digests)  ──▶    digests of its own blocks (Applier)
                                              ◀──   NEED(seq of the HASHES, differing blocks)
    WRITE / FALLOCATE(punch) for those blocks ──▶
    the data past ``size`` if the file grew   ──▶
    TRUNCATE(current size, mtime)             ──▶

A digest is blake2b (16 bytes) of a block's content; a block wholly inside a hole is the digest of
zeros without reading it (``SEEK_DATA``), so sparse files and the files a listing just created
(holes to the listed size) cost no reading. Two identical trees exchange one digest per 256 KiB
block (0.006% of the data) and one round trip per file.

Why the replica ends identical although the application keeps writing: everything the
application changes is placed in the same ordered stream as these messages (the replicating sink
submits each change synchronously after applying it locally). A block's digest is of its content
at the moment it was read; a change made after that reaches the secondary either before the
``HASHES`` (then the secondary's digest includes it: if it now equals the primary's older digest,
the change covered exactly the bytes that differed, and both sides hold the same block) or after
it (the secondary applies it after comparing). This holds even for a block read while a write
to it was being made (a worker thread hashes, so the application is not stalled for the seconds
a large file takes): what the block holds outside that write is the old content either way. A
needed block is read and queued in one step (no ``await`` between them, as
:class:`~hakit.replication.primary.Copier` does), with the file's path and mtime of that moment.

The secondary hashes its blocks while applying ``HASHES`` (``Applier.apply``); for a large file
that takes seconds, so the caller should apply that message in a worker thread to keep
acknowledging and answering pings.

Files smaller than two blocks are hashed by 4 KiB blocks (:data:`SMALL_BLOCK_SIZE`): one round
trip each, but identical trees of small files then exchange digests only; an empty file is left to
the caller (:meth:`BlockSync.sync_file` returns None: there is nothing to compare). A file so large that its digests would not fit a frame gets a
larger block (a multiple of the configured one, :func:`block_size_for`); a needed block is sent in
``WRITE`` frames of at most :data:`WRITE_CHUNK` bytes, so any block size fits the frame limit.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import hashlib
import logging
import os
from collections.abc import Callable
from typing import Protocol

from hakit.replication import messages as m
from hakit.replication import wire
from hakit.replication.transport import PeerLost
from hakit.replication.wire import FrameType, ProtocolError

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 256 * 1024
SMALL_BLOCK_SIZE = 4096
"""The block size for files smaller than two default blocks."""
WINDOW = 16
"""Blocks (frames) of one file sent and not acknowledged yet, at most (flow control)."""
WRITE_CHUNK = 1024 * 1024
"""Largest WRITE payload; also the read size when hashing a block."""
MAX_DIGESTS = (wire.MAX_FRAME - 128 * 1024) // m.DIGEST_SIZE
"""Digests of one HASHES frame, at most (room left for the header with a 64 KiB path)."""
# Blocks hashed per worker-thread call (4 MiB at the default block size).
HASH_SLICE = 16

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
"""The FALLOCATE mode that zeroes a range on the secondary without sending zeros."""

PathOf = Callable[[int], bytes | None]


class Submitter(Protocol):
    """What BlockSync needs of :class:`~hakit.replication.transport.Sender`."""

    def submit(
        self, frame_type: FrameType, header: bytes, payload: bytes = b""
    ) -> asyncio.Future[int]:
        """Number and queue one request now; the future is its acknowledgement (its seq)."""
        ...

    @property
    def last_seq(self) -> int:
        """The sequence number of the last request submitted."""
        ...


# ---- digests (both sides) ------------------------------------------------------------------------


def digest(data: bytes) -> bytes:
    """The digest of one block's content, as ``HASHES`` carries it."""
    return hashlib.blake2b(data, digest_size=m.DIGEST_SIZE).digest()


@functools.lru_cache(maxsize=8)
def _zero_digest(length: int) -> bytes:
    """The digest of ``length`` zero bytes (a block in a hole), computed once per length."""
    hasher = hashlib.blake2b(digest_size=m.DIGEST_SIZE)
    full, rest = divmod(length, WRITE_CHUNK)
    zeros = bytes(WRITE_CHUNK if full else rest)
    for _ in range(full):
        hasher.update(zeros)
    hasher.update(zeros[:rest])
    return hasher.digest()


def _data_from(fd: int, offset: int) -> int | None:
    """Where the next data at or after ``offset`` starts; None if only a hole (or EOF) follows."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            return None
        if exc.errno == errno.EINVAL:  # a file system without SEEK_DATA: all data
            return offset
        raise


def block_range(index: int, block_size: int, size: int) -> tuple[int, int]:
    """Bytes ``[start, end)`` of block ``index`` of a ``size``-byte file."""
    start = index * block_size
    return start, min(start + block_size, size)


def _hash_block(fd: int, start: int, end: int) -> tuple[bytes, int]:
    """The digest of bytes ``[start, end)`` of ``fd`` as they are now, and how many were there.

    A block wholly in a hole is not read. The count is short if the file ends inside the block."""
    data_at = _data_from(fd, start)
    if data_at is None or data_at >= end:
        size = os.fstat(fd).st_size
        present = max(0, min(end, size) - start)
        return _zero_digest(present), present
    hasher = hashlib.blake2b(digest_size=m.DIGEST_SIZE)
    offset = start
    while offset < end:
        chunk = os.pread(fd, min(WRITE_CHUNK, end - offset), offset)
        if not chunk:
            break
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.digest(), offset - start


def block_digests(fd: int, block_size: int, size: int, first: int, stop: int) -> list[bytes]:
    """Digests of blocks ``first`` to ``stop - 1`` of the file ``fd`` taken as ``size`` bytes.

    A block is hashed over what the file holds of it now (fewer bytes if it became shorter)."""
    return [
        _hash_block(fd, *block_range(index, block_size, size))[0] for index in range(first, stop)
    ]


def differing_blocks(fd: int, hashes: m.Hashes) -> tuple[int, ...]:
    """The secondary's side: indexes of the blocks of ``hashes`` whose content differs in ``fd``.

    A block the local file does not hold entirely (it is shorter) differs."""
    local_size = os.fstat(fd).st_size
    needed: list[int] = []
    for index, remote in enumerate(hashes.digests):
        start, end = block_range(index, hashes.block_size, hashes.size)
        if end > local_size:
            needed.append(index)
            continue
        local, present = _hash_block(fd, start, end)
        if present != end - start or local != remote:
            needed.append(index)
    return tuple(needed)


def block_size_for(
    size: int, block_size: int = DEFAULT_BLOCK_SIZE, max_digests: int = MAX_DIGESTS
) -> int:
    """The block size for a ``size``-byte file: ``block_size``, or the smallest multiple of it
    that keeps the digests within one frame (``max_digests``)."""
    count = m.block_count(size, block_size)
    if count <= max_digests:
        return block_size
    return block_size * m.block_count(count, max_digests)


# ---- primary side --------------------------------------------------------------------------------


class BlockSync:
    """Sends files to the peer by block hashes (module docstring) through ``sender``.

    One instance per connection: :meth:`on_need` must receive every ``NEED`` frame the peer
    sends on it (decoded), and :meth:`peer_lost` be called when the connection is lost or closed.
    Counters: ``files`` synced, ``blocks_matched`` (not sent), ``blocks_sent``, ``bytes_sent``
    (WRITE data), ``digest_bytes`` (HASHES payloads)."""

    def __init__(
        self,
        sender: Submitter,
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        window: int = WINDOW,
        max_digests: int = MAX_DIGESTS,
    ) -> None:
        if block_size < 1 or window < 1:
            raise ValueError(f"BlockSync: block_size {block_size} and window {window} must be >= 1")
        self._sender = sender
        self._block_size = block_size
        self._window = window
        self._max_digests = max_digests
        # HASHES requests waiting for their NEED, by seq (registered as they are submitted: with
        # async="none" the NEED leaves the secondary before the HASHES' ack).
        self._waiting: dict[int, tuple[m.Hashes, asyncio.Future[m.Need]]] = {}
        self._lost: PeerLost | None = None
        self.files = 0
        self.blocks_matched = 0
        self.blocks_sent = 0
        self.bytes_sent = 0
        self.digest_bytes = 0

    # ---- events from the connection --------------------------------------------------------------

    def on_need(self, need: m.Need) -> None:
        """A ``NEED`` arrived. ProtocolError if it answers no ``HASHES`` in flight or does not
        fit it: called from the sender's read loop, that makes the peer lost (and the file
        waiting for it fails with PeerLost through :meth:`peer_lost`)."""
        pending = self._waiting.get(need.seq)
        if pending is None:
            raise ProtocolError(f"NEED #{need.seq} for {need.path!r} answers no HASHES request")
        hashes, future = pending
        _check_need(need, hashes)  # on error the file stays waiting: peer_lost() fails it
        del self._waiting[need.seq]
        if not future.done():
            future.set_result(need)

    def peer_lost(self, reason: str) -> None:
        """The connection is gone: a file waiting for its NEED fails with PeerLost(reason)."""
        if self._lost is None:
            self._lost = PeerLost(reason)
        while self._waiting:
            _, (_, future) = self._waiting.popitem()
            if not future.done():
                future.set_exception(self._lost)

    # ---- one file --------------------------------------------------------------------------------

    async def sync_file(self, fd: int, path_of: PathOf) -> int | None:
        """Make the peer's copy of the file open as ``fd`` (readable) equal to it.

        ``path_of(fd)`` gives the file's current path relative to the replicated directory, None
        once it must not be sent any more (unlinked, or now excluded): the sync then stops. The
        peer's file must exist with the size the listing gave it. Returns the WRITE data bytes
        sent, or None (nothing sent) for a file of less than two blocks: the caller sends it
        whole (only an empty file now). The file's xattrs and times are the caller's. Raises PeerLost if the peer goes away
        (its ack or its NEED will not come) or answers with a NEED that does not fit."""
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        block_size = block_size_for(size, self._block_size, self._max_digests)
        if size < 2 * block_size:
            # A small file: small blocks. One round trip and a digest per 4 KiB instead of the
            # whole file: identical trees of small files still exchange almost nothing.
            block_size = SMALL_BLOCK_SIZE
        if self._lost is not None:
            raise self._lost
        count = m.block_count(size, block_size)
        digests: list[bytes] = []
        for first in range(0, count, HASH_SLICE):
            # In a worker thread (hashlib releases the GIL): the application's requests keep
            # being served meanwhile (module docstring: why that cannot leave stale blocks).
            stop = min(count, first + HASH_SLICE)
            digests += await asyncio.to_thread(block_digests, fd, block_size, size, first, stop)
        path = path_of(fd)
        if path is None:
            return 0
        hashes = m.Hashes(path, block_size, size, tuple(digests))
        need = await self._ask(hashes)
        self.files += 1
        self.blocks_matched += count - len(need.blocks)
        return await self._send(fd, path_of, hashes, need.blocks)

    async def _ask(self, hashes: m.Hashes) -> m.Need:
        """Send HASHES and wait for its NEED."""
        frame_type, header, payload = m.encode(hashes)
        ack = self._sender.submit(frame_type, header, payload)
        seq = self._sender.last_seq
        self.digest_bytes += len(payload)
        future: asyncio.Future[m.Need] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (hashes, future)
        try:
            await ack  # the sender's PeerLost if the peer cannot even acknowledge it
            return await future
        finally:
            self._waiting.pop(seq, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # the ack's PeerLost was raised instead: this one is seen

    async def _send(
        self, fd: int, path_of: PathOf, hashes: m.Hashes, blocks: tuple[int, ...]
    ) -> int:
        """The needed blocks, the data past ``hashes.size``, then the size; bytes of data sent."""
        inflight: collections.deque[asyncio.Future[int]] = collections.deque()
        sent = 0
        try:
            for index in blocks:
                start, end = block_range(index, hashes.block_size, hashes.size)
                done = await self._send_range(fd, path_of, start, end, inflight, zeros=True)
                if done is None:
                    return sent
                covered, data = done
                sent += data
                self.blocks_sent += 1
                if covered < end - start:
                    break  # the file is shorter now: the later blocks are past its end
            tail = await self._send_tail(fd, path_of, hashes.size, inflight)
            if tail is None:
                return sent
            sent += tail
            await self._slot(inflight)
            path = path_of(fd)
            if path is not None:
                st = os.fstat(fd)
                self._submit(m.Truncate(path, st.st_size, st.st_mtime_ns), inflight)
            while inflight:
                await inflight.popleft()
        finally:
            self.bytes_sent += sent
            for future in inflight:  # an early exit (peer lost): nobody will look at them
                future.cancel()
        return sent

    async def _send_range(
        self,
        fd: int,
        path_of: PathOf,
        start: int,
        end: int,
        inflight: collections.deque[asyncio.Future[int]],
        *,
        zeros: bool,
    ) -> tuple[int, int] | None:
        """Send bytes ``[start, end)`` as they are now, read and queued chunk by chunk.

        Returns (bytes covered: short if the file ends inside, data bytes sent), None if the file
        must not be sent any more. With ``zeros``, a chunk of zeros is sent as a hole punched on
        the peer (no data)."""
        sent = 0
        offset = start
        while offset < end:
            await self._slot(inflight)
            # Read and queue in one step, path and mtime taken now (module docstring).
            path = path_of(fd)
            if path is None:
                return None
            data = os.pread(fd, min(WRITE_CHUNK, end - offset), offset)
            if not data:
                break
            mtime_ns = os.fstat(fd).st_mtime_ns
            if zeros and data == bytes(len(data)):
                self._submit(m.Fallocate(path, PUNCH_HOLE, offset, len(data), mtime_ns), inflight)
            else:
                self._submit(m.Write(path, offset, mtime_ns, data), inflight)
                sent += len(data)
            offset += len(data)
        return offset - start, sent

    async def _send_tail(
        self,
        fd: int,
        path_of: PathOf,
        offset: int,
        inflight: collections.deque[asyncio.Future[int]],
    ) -> int | None:
        """The data the file gained past the hashed size (holes skipped: the final TRUNCATE
        makes them); bytes sent, None if the file must not be sent any more."""
        sent = 0
        while (start := _data_from(fd, offset)) is not None:
            end = min(start + WRITE_CHUNK, os.fstat(fd).st_size)
            if end <= start:
                break
            done = await self._send_range(fd, path_of, start, end, inflight, zeros=False)
            if done is None:
                return None
            covered, data = done
            if not covered:
                break
            sent += data
            offset = start + covered
        return sent

    def _submit(self, msg: m.Message, inflight: collections.deque[asyncio.Future[int]]) -> None:
        frame_type, header, payload = m.encode(msg)
        inflight.append(self._sender.submit(frame_type, header, payload))

    async def _slot(self, inflight: collections.deque[asyncio.Future[int]]) -> None:
        """Wait until another frame may be sent (at most ``window`` unacknowledged); yields to
        the loop either way so the application's requests run between blocks."""
        while len(inflight) >= self._window:
            await inflight.popleft()
        await asyncio.sleep(0)


def _check_need(need: m.Need, hashes: m.Hashes) -> None:
    if need.path != hashes.path:
        raise ProtocolError(
            f"NEED #{need.seq} names {need.path!r}, its HASHES request was for {hashes.path!r}"
        )
    if need.blocks and need.blocks[-1] >= len(hashes.digests):
        raise ProtocolError(
            f"NEED #{need.seq} for {need.path!r} asks for block {need.blocks[-1]}, the file has "
            f"{len(hashes.digests)}"
        )
