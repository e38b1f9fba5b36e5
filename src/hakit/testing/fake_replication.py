"""A fake :class:`~hakit.engine.replication.ReplicationPort`: records what the engine asked.

``FakeReplication`` answers a resync with ``resync_done`` on the next loop turn (as a replicator
whose copy is instant would) unless ``auto_resync`` is off; a test makes it report the peer's
loss with :meth:`FakeReplication.peer_out_of_date` and sees when the engine answered with
``generation_persisted`` (``persisted`` counts them, ``persisted_after`` keeps the generation
record found on disk at that moment).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

OnEvent = Callable[[int, Mapping[str, Any]], None]


class FakeReplication:
    """Records start/stop/resync/paired calls; sends events like real replicators would."""

    def __init__(self, dirs: int = 1, *, auto_resync: bool = True) -> None:
        self.dirs = dirs
        self.auto_resync = auto_resync
        self.on_event: OnEvent | None = None
        self.role: str | None = None
        self.calls: list[str] = []
        self.paired: bool | None = None
        self.persisted = 0
        self.persisted_after: list[str] = []
        self.generation_file: Path | None = None
        self.fail_start: str | None = None
        self.keep_aside: dict[str, str] | None = None
        self.serving = 0

    @property
    def count(self) -> int:
        """How many directories are replicated."""
        return self.dirs

    async def start(self, role: str, *, paired: bool, in_sync: bool, generation: str) -> None:
        """Record the start (LocalSystemError if ``fail_start`` is set)."""
        if self.fail_start is not None:
            from hakit.engine.replication import ReplicationStartError

            raise ReplicationStartError(self.fail_start)
        self.role = role
        self.calls.append(f"start {role} paired={paired} in_sync={in_sync}")

    async def stop(self) -> None:
        """Record the stop."""
        self.calls.append("stop")
        self.role = None

    def resync(self, kind: str, keep_aside: Mapping[str, str] | None = None) -> None:
        """Record it; answer ``resync_done`` for every directory soon if ``auto_resync``."""
        self.calls.append(f"resync {kind}" + (" keep-aside" if keep_aside else ""))
        self.keep_aside = dict(keep_aside) if keep_aside else None
        if self.auto_resync:
            asyncio.get_running_loop().call_soon(self.finish_resync, kind)

    def finish_resync(self, kind: str = "full") -> None:
        """Every directory reports its copy done."""
        for index in range(self.dirs):
            self.emit(index, {"ev": "resync_done", "kind": kind, "files": 1, "bytes": 1})

    def serve(self) -> None:
        """Count it (the real port sends it once per start)."""
        self.serving += 1

    def set_paired(self, paired: bool) -> None:
        """Record changes only (as the real port sends them)."""
        if paired != self.paired:
            self.paired = paired
            self.calls.append(f"paired {paired}")

    def generation_persisted(self) -> None:
        """Count it, and keep what the generation file said at that moment."""
        self.persisted += 1
        if self.generation_file is not None and self.generation_file.exists():
            self.persisted_after.append(self.generation_file.read_text())

    def resources(self) -> dict[str, str]:
        """One counter per directory."""
        return {f"rfs.{i}.connected": "1" for i in range(self.dirs)}

    def emit(self, index: int, msg: Mapping[str, Any]) -> None:
        """Deliver a replicator message to the engine."""
        assert self.on_event is not None, "wire on_event to the engine first"
        self.on_event(index, msg)

    def peer_out_of_date(self, reason: str = "peer did not acknowledge") -> None:
        """The primary's replicator gave up on its peer."""
        self.emit(0, {"ev": "peer_out_of_date", "reason": reason})
