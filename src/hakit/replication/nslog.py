"""The ordered log of namespace changes the peer missed (issue 5, next to the dirty-zone journal).

Theory of operation (docs/design/reintegration.md §2): the dirty-zone journal says *where* data
changed, by current path, and which directory listings must be re-sent; a listing alone cannot
say that ``b`` is the former ``a``, so a renamed file or directory would be recreated empty on the
peer and only its dirty zones copied. This log keeps the namespace requests themselves (create,
mkdir, mknod, symlink, link, unlink, rmdir, rename: the exact messages the peer would have
received, encoded as replication frames), in order. At reintegration they are replayed first:
the peer's tree, which was this node's tree when the peer left, goes through the same renames and
removals, then the listings and zones complete it. Namespace changes are rare next to writes, so
each is appended and flushed (group commit, like the journal) before the application's call
returns.

File format: replication frames (``wire.encode_frame``: length-prefixed), appended. A torn last
frame (a crash mid-append) is dropped; anything else unreadable makes the log unusable
(:class:`~hakit.replication.journal.JournalCorrupt`): the next copy must be a full one.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from hakit.errors import LocalSystemError
from hakit.replication import messages as m
from hakit.replication.journal import JournalCorrupt
from hakit.replication.wire import Frame, ProtocolError, encode_frame, split_frame

NAMESPACE = (m.Create, m.Mknod, m.Mkdir, m.Symlink, m.Link, m.Unlink, m.Rmdir, m.Rename)


class NamespaceLog:
    """Append-only, replayable log of namespace messages (module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._buffer = bytearray()
        self._flushing: asyncio.Task[None] | None = None
        self._count = len(self.messages())

    @staticmethod
    def wanted(msg: m.Message) -> bool:
        """True for the messages this log keeps."""
        return isinstance(msg, NAMESPACE)

    def append(self, msg: m.Message) -> None:
        """Record ``msg`` (in memory until :meth:`commit`)."""
        frame_type, header, payload = m.encode(msg)
        self._buffer += encode_frame(Frame(frame_type, self._count + 1, header, payload))
        self._count += 1

    async def commit(self) -> None:
        """Write and flush everything appended so far (concurrent callers share a flush)."""
        while self._buffer or self._flushing is not None:
            if self._flushing is None:
                data, self._buffer = bytes(self._buffer), bytearray()
                self._flushing = asyncio.get_running_loop().create_task(
                    asyncio.to_thread(self._write, data)
                )
            task = self._flushing
            try:
                await asyncio.shield(task)
            finally:
                if self._flushing is task and task.done():
                    self._flushing = None

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fdatasync(self._fd)
        except OSError as exc:
            raise LocalSystemError(f"namespace log {self.path}: cannot write: {exc}") from exc

    def messages(self) -> list[m.Message]:
        """Every message recorded and written, in order (JournalCorrupt if unreadable)."""
        data = Path(self.path).read_bytes()
        out: list[m.Message] = []
        pos = 0
        while pos < len(data):
            try:
                split = split_frame(data, start=pos)
            except ProtocolError as exc:
                raise JournalCorrupt(
                    f"namespace log {self.path}: unreadable at offset {pos}: {exc}"
                ) from None
            if split is None:
                break  # a torn last frame: the change it held was never answered
            frame, pos = split
            try:
                out.append(m.decode(frame))
            except ProtocolError as exc:
                raise JournalCorrupt(
                    f"namespace log {self.path}: bad record at offset {pos}: {exc}"
                ) from None
        return out

    def reset(self) -> None:
        """Empty the log (the peer holds everything again)."""
        self._buffer.clear()
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self._count = 0

    @property
    def empty(self) -> bool:
        """True when nothing is recorded."""
        return self._count == 0

    def close(self) -> None:
        """Close the file (what was not committed is dropped)."""
        os.close(self._fd)
