"""The engine's side of file replication: one replicator process per replicated directory.

Theory of operation (docs/design/replication.md §1, §9): the core asks for
``StartReplication(role)`` / ``StopReplication`` / ``StartResync(kind)``; the executor calls this
port. :class:`Replicators` spawns ``python -m hakit.replication FD`` per ``<replicated dir>``
with one end of a socket pair as its control channel (JSON lines), sends the ``start`` message
(everything the process needs: it never reads the configuration itself), and waits until the
directory is mounted. Messages from the replicators come back through ``on_event(index,
message)``: the executor turns ``peer_out_of_date`` into the core's ``PeerOutOfDate`` and answers
``generation_persisted``, ``resync_done`` from every directory into ``ResyncDone``, and so on.

Stopping sends ``stop`` and waits for the process (a secondary first applies what it received);
one that does not end in time is killed and its mount, now stale, cleaned. A replicator that
ends on its own is reported as ``{"ev": "exited", "code": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hakit.config.model import Replicated, Rfs
from hakit.errors import LocalSystemError
from hakit.replication.passthrough import clean_stale_mounts

log = logging.getLogger(__name__)

SAFEKIT_ZONE = 8 * 1024 * 1024
DEFAULT_ZONE = 64 * 1024  # small zones: scattered writes cost little more than their size
START_LIMIT = 20.0  # mounting takes well under a second; a hung /dev/fuse does not
STOP_LIMIT = 30.0  # a secondary applies what it received before it ends


@dataclass(frozen=True)
class ReplicationSpec:
    """What the replicators of one module need, resolved for this node."""

    module: str
    local: str
    peer: str
    peer_addrs: tuple[str, ...]
    base_port: int
    key_file: str
    rfs: Rfs
    state_dir: Path | None = None  # the module's state directory (journals, kept-aside data)

    @property
    def zone_size(self) -> int:
        """The dirty-zone size: 64 KiB unless ``ruzone_blocksize`` was changed from SafeKit's
        8 MiB default (smaller zones copy less after scattered writes)."""
        configured = self.rfs.ruzone_blocksize
        return configured if configured != SAFEKIT_ZONE else DEFAULT_ZONE

    @property
    def dirs(self) -> tuple[Replicated, ...]:
        return self.rfs.replicated

    def start_message(
        self, index: int, role: str, *, paired: bool, in_sync: bool, generation: str
    ) -> dict[str, Any]:
        """The ``start`` control message of directory ``index``."""
        rep = self.dirs[index]
        return {
            "op": "start",
            "role": role,
            "dir": rep.dir,
            "index": index,
            "module": self.module,
            "local": self.local,
            "peer": self.peer,
            "peer_addrs": list(self.peer_addrs),
            "port": self.base_port + index,
            "key_file": self.key_file,
            "async": self.rfs.async_mode,
            "sendtimeout": self.rfs.sendtimeout,
            "locktimeout": self.rfs.locktimeout,
            "notreplicated": [
                {"path": n.path, "regexpath": n.regexpath, "only": n.only}
                for n in rep.notreplicated
            ],
            "tocheck": list(rep.tocheck),
            "paired": paired,
            "in_sync": in_sync,
            "generation": generation,
            "zone_size": self.zone_size,
            "nbrei": self.rfs.nbrei,
            # <rfs reiallowedbw> is in KB/s
            "reiallowedbw": self.rfs.reiallowedbw * 1024 if self.rfs.reiallowedbw else None,
            **(
                {
                    "journal": str(self.state_dir / f"rfs{index}.journal"),
                    "marker": str(self.state_dir / f"rfs{index}.primary"),
                    "divergent": str(self.state_dir / "divergent"),
                }
                if self.state_dir is not None
                else {}
            ),
        }


OnEvent = Callable[[int, Mapping[str, Any]], None]


class ReplicationPort(Protocol):
    """What the mirror engine needs from replication (a fake lives in hakit.testing)."""

    @property
    def count(self) -> int: ...

    async def start(self, role: str, *, paired: bool, in_sync: bool, generation: str) -> None: ...

    async def stop(self) -> None: ...

    def resync(self, kind: str, keep_aside: Mapping[str, str] | None = None) -> None: ...

    def serve(self) -> None: ...

    def set_paired(self, paired: bool) -> None: ...

    def generation_persisted(self) -> None: ...

    def resources(self) -> dict[str, str]: ...


class ReplicationStartError(LocalSystemError):
    """A replicator could not mount its directory (the reason comes from the replicator)."""


@dataclass
class _Process:
    index: int
    directory: str
    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    reader_task: asyncio.Task[None] | None = None
    mounted: asyncio.Future[str | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    stopping: bool = False
    counters: dict[str, Any] = field(default_factory=dict)

    def send(self, op: str, **fields: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write((json.dumps({"op": op, **fields}) + "\n").encode())


class Replicators:
    """The replicator processes of one module (module docstring)."""

    def __init__(self, spec: ReplicationSpec, on_event: OnEvent) -> None:
        self.spec = spec
        self._on_event = on_event
        self._procs: list[_Process] = []
        self._paired: bool | None = None
        self._serving = False
        self.role: str | None = None

    @property
    def count(self) -> int:
        """How many directories are replicated."""
        return len(self.spec.dirs)

    async def start(self, role: str, *, paired: bool, in_sync: bool, generation: str) -> None:
        """Spawn and mount every directory in ``role``; ReplicationStartError if one cannot."""
        if self._procs:
            await self.stop()
        self.role = role
        self._paired = paired
        self._serving = False
        for index, rep in enumerate(self.spec.dirs):
            proc = await self._spawn(index, rep.dir)
            self._procs.append(proc)
            proc.send(
                **self.spec.start_message(
                    index, role, paired=paired, in_sync=in_sync, generation=generation
                )
            )
        for proc in self._procs:
            try:
                error = await asyncio.wait_for(asyncio.shield(proc.mounted), START_LIMIT)
            except TimeoutError:
                error = f"not mounted within {START_LIMIT:g} s"
            if error is not None:
                await self.stop()
                raise ReplicationStartError(
                    f"replicated directory {proc.directory}: replication could not start: {error}"
                )

    async def _spawn(self, index: int, directory: str) -> _Process:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "hakit.replication",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        entry = _Process(index, directory, proc, writer)
        entry.reader_task = asyncio.create_task(
            self._read(entry, reader), name=f"replicator-{index}"
        )
        return entry

    async def _read(self, entry: _Process, reader: asyncio.StreamReader) -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                log.error("replicator %d: malformed message %r", entry.index, line[:120])
                continue
            if not isinstance(msg, dict):
                continue
            ev = msg.get("ev")
            if ev == "mounted" and not entry.mounted.done():
                entry.mounted.set_result(None)
            elif ev == "error" and not entry.mounted.done():
                entry.mounted.set_result(str(msg.get("message")))
            elif ev == "counters":
                entry.counters = {k: v for k, v in msg.items() if k != "ev"}
            self._on_event(entry.index, msg)
        code = await entry.proc.wait()
        if not entry.mounted.done():
            entry.mounted.set_result(f"the replicator ended (exit code {code}) before mounting")
            return
        if not entry.stopping:
            self._on_event(entry.index, {"ev": "exited", "code": code})

    async def stop(self) -> None:
        """Stop every replicator (unmounting), killing one that does not end in time."""
        procs, self._procs = self._procs, []
        self.role = None
        for entry in procs:
            entry.stopping = True
            entry.send("stop")
        for entry in procs:
            try:
                await asyncio.wait_for(entry.proc.wait(), STOP_LIMIT)
            except TimeoutError:
                log.error(
                    "replicator of %s did not stop within %g s: killed", entry.directory, STOP_LIMIT
                )
                with contextlib.suppress(ProcessLookupError):
                    entry.proc.kill()
                await entry.proc.wait()
            if entry.proc.returncode != 0:
                # Killed or crashed: its FUSE mount may still cover the directory.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(clean_stale_mounts, entry.directory)
            entry.writer.close()
            if entry.reader_task is not None:
                with contextlib.suppress(Exception):
                    await entry.reader_task

    def _broadcast(self, op: str, **fields: Any) -> None:
        for entry in self._procs:
            entry.send(op, **fields)

    def resync(self, kind: str, keep_aside: Mapping[str, str] | None = None) -> None:
        """Ask every (secondary) replicator to get a ``kind`` copy from the primary, first
        keeping aside its divergent files if ``keep_aside`` ({reason, generation}) is given."""
        self._broadcast("resync", kind=kind, keep_aside=dict(keep_aside) if keep_aside else None)

    def serve(self) -> None:
        """Secondaries may apply the primary's stream (the module is a Ready SECOND)."""
        if not self._serving:
            self._serving = True
            self._broadcast("serve")

    def set_paired(self, paired: bool) -> None:
        """Tell primaries whether the module is paired (sent on change only)."""
        if paired != self._paired:
            self._paired = paired
            self._broadcast("paired", value=paired)

    def generation_persisted(self) -> None:
        """The new generation after a peer loss is on disk: release the held requests."""
        self._broadcast("generation_persisted")

    def resources(self) -> dict[str, str]:
        """Counters as module resources: ``rfs.<dir index>.<name>``."""
        out: dict[str, str] = {}
        for entry in self._procs:
            for name, value in sorted(entry.counters.items()):
                out[f"rfs.{entry.index}.{name}"] = str(value)
        return out
