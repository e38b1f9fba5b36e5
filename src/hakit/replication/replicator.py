"""The replicator process of one replicated directory: ``python -m hakit.replication``.

Theory of operation (docs/design/replication.md §1, §8, §9): the module engine starts one
replicator per ``<replicated dir>`` when the core asks for ``StartReplication(role)``, passing one
end of a socket pair as file descriptor 3: the *control channel*, JSON lines both ways. The first
line is the ``start`` message with everything the process needs (it never reads the module's
configuration itself, so engine and replicator can never disagree about it):

    {"op": "start", "role": "primary"|"secondary", "dir": "/srv/data", "index": 0,
     "module": "m", "local": "node1", "peer": "node2", "peer_addrs": ["10.0.0.2"], "port": 5600,
     "key_file": "...", "async": "second", "sendtimeout": 30, "locktimeout": 100,
     "notreplicated": [{"path": ..., "regexpath": ..., "only": false}], "tocheck": [...],
     "paired": false, "in_sync": false, "generation": "..."}

Then the engine may send ``paired {value}``, ``resync {kind}``, ``generation_persisted``,
``stop``. The replicator sends ``mounted``, ``connected {peer}``, ``disconnected {reason}``,
``peer_out_of_date {reason}``, ``copy_sent``, ``resync_done {kind, files, bytes}``,
``counters {...}``, ``log {level, text}`` (its warnings, e.g. a refused write on the secondary:
the engine puts them in the module log) and ``stopped``.

* **primary**: the pass-through filesystem is mounted over the directory with a
  :class:`~hakit.replication.primary.ReplicatingSink`; a loop keeps a connection to the peer's
  receiver (retrying every half second); the peer's ``RESYNC_REQUEST`` starts a
  :class:`~hakit.replication.primary.Copier`.
* **secondary**: the same filesystem read-only (local processes cannot change the replica; each
  attempt is logged), and a :class:`~hakit.replication.transport.Receiver` on the module's port
  applying the primary's stream to the backing directory through an
  :class:`~hakit.replication.applier.Applier`. On ``stop`` what was received is applied before
  the process ends (it was acknowledged with ``async="second"``).

``stop``, SIGTERM, or the control channel closing (the engine died) end the process cleanly:
unmounted, exit 0. Anything unexpected ends it non-zero; the engine then cleans the stale mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pyfuse3.asyncio

from hakit.daemon.files import write_atomically
from hakit.errors import HakitError, UserConfigError
from hakit.net.auth import load_key
from hakit.replication import messages as m
from hakit.replication import passthrough
from hakit.replication.applier import Applier, HashesResult
from hakit.replication.handshake import AuthenticationError
from hakit.replication.hashsync import BlockSync
from hakit.replication.journal import DirtyJournal
from hakit.replication.keepaside import keep_aside
from hakit.replication.manifest import NotReplicatedMatcher
from hakit.replication.nslog import NamespaceLog
from hakit.replication.primary import Copier, ReplicatingSink
from hakit.replication.sink import NullSink
from hakit.replication.transport import Identity, PeerLost, Receiver, Sender
from hakit.replication.wire import Frame, ProtocolError

log = logging.getLogger("hakit.replication")

CONTROL_FD = 3
RECONNECT_DELAY = 0.5


@dataclass(frozen=True)
class StartRequest:
    """The ``start`` message, checked."""

    role: str
    directory: str
    index: int
    module: str
    local: str
    peer: str
    peer_addrs: tuple[str, ...]
    port: int
    key_file: str
    async_mode: str
    sendtimeout: float
    locktimeout: float
    notreplicated: tuple[Mapping[str, Any], ...]
    tocheck: tuple[str, ...]
    paired: bool
    in_sync: bool
    generation: str = ""
    bind: str = "0.0.0.0"
    zone_size: int = 1 << 20
    journal: str | None = None  # the dirty-zone journal (outside the replicated tree)
    marker: str | None = None  # exists while this node serves the directory as primary
    divergent: str | None = None  # where split-brain data is kept aside
    nbrei: int = 6  # copy requests in flight: 4 blocks per "reintegration thread"
    reiallowedbw: int | None = None  # bytes/s the copy may use

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> StartRequest:
        """From the JSON message (UserConfigError naming the field when it is malformed)."""
        try:
            role = str(data["role"])
            if role not in ("primary", "secondary"):
                raise ValueError(f"role {role!r}")
            async_mode = str(data.get("async", "second"))
            if async_mode not in ("second", "none"):
                raise ValueError(f"async {async_mode!r}")
            return cls(
                role=role,
                directory=str(data["dir"]),
                index=int(data["index"]),
                module=str(data["module"]),
                local=str(data["local"]),
                peer=str(data["peer"]),
                peer_addrs=tuple(str(a) for a in data["peer_addrs"]),
                port=int(data["port"]),
                key_file=str(data["key_file"]),
                async_mode=async_mode,
                sendtimeout=float(data["sendtimeout"]),
                locktimeout=float(data["locktimeout"]),
                notreplicated=tuple(data.get("notreplicated") or ()),
                tocheck=tuple(str(t) for t in data.get("tocheck") or ()),
                paired=bool(data.get("paired", False)),
                in_sync=bool(data.get("in_sync", False)),
                generation=str(data.get("generation", "")),
                bind=str(data.get("bind", "0.0.0.0")),
                zone_size=int(data.get("zone_size", 1 << 20)),
                journal=_optional(data, "journal"),
                marker=_optional(data, "marker"),
                divergent=_optional(data, "divergent"),
                nbrei=int(data.get("nbrei", 6)),
                reiallowedbw=(
                    int(data["reiallowedbw"]) if data.get("reiallowedbw") is not None else None
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserConfigError(
                f"replicator start message: bad or missing field: {exc}"
            ) from None


_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _deliver_need(block_sync: BlockSync, frame: Frame) -> None:
    block_sync.on_need(m.decode_need(frame))


def _optional(data: Mapping[str, Any], name: str) -> str | None:
    value = data.get(name)
    return None if value is None else str(value)


class Control:
    """The control channel: JSON lines to and from the engine."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self._writer = writer

    def send(self, event: str, **fields: Any) -> None:
        """Queue one message to the engine (dropped if the engine is gone)."""
        if self._writer.is_closing():
            return
        self._writer.write((json.dumps({"ev": event, **fields}) + "\n").encode())

    async def receive(self) -> dict[str, Any] | None:
        """The next message from the engine, None when the channel closed."""
        line = await self.reader.readline()
        if not line:
            return None
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ProtocolError(f"control message is not an object: {line[:80]!r}")
        return data

    async def close(self) -> None:
        """Flush and close."""
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()
        self._writer.close()


class _ForwardLogs(logging.Handler):
    """Replication warnings go to the engine, which puts them in the module log."""

    def __init__(self, control: Control) -> None:
        super().__init__(logging.WARNING)
        self._control = control

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self._control.send("log", level=record.levelname.lower(), text=record.getMessage())


@dataclass
class Replicator:
    """One replicated directory's replication, in either role (module docstring)."""

    req: StartRequest
    control: Control
    key: bytes
    exclude: NotReplicatedMatcher
    fs: passthrough.PassthroughFS | None = None
    sink: ReplicatingSink | None = None
    receiver: Receiver | None = None
    applier: Applier | None = None
    pending_resync: str | None = None
    _journal_lost: bool = False
    _block_sync: BlockSync | None = None
    _copier: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _lost: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def identity(self) -> Identity:
        return Identity(
            key=self.key,
            local=self.req.local,
            peer=self.req.peer,
            module=self.req.module,
            index=self.req.index,
        )

    # ---- start ------------------------------------------------------------------------------

    def mount(self) -> None:
        """Mount the filesystem in this role (tocheck verified first on the primary)."""
        req = self.req
        if req.role == "primary":
            for rel in req.tocheck:
                target = os.path.join(req.directory, rel)
                if not os.path.lexists(target):
                    raise UserConfigError(
                        f"replicated directory {req.directory}: <tocheck path={rel!r}> does not "
                        "exist; is the file system that holds the data mounted? Replication was "
                        "not started"
                    )
            self.sink = ReplicatingSink(
                exclude=self.exclude,
                sendtimeout=req.sendtimeout,
                locktimeout=req.locktimeout,
                on_out_of_date=self._out_of_date,
                paired=req.paired,
                journal=self._open_journal(),
                nslog=self._open_nslog(),
            )
            self.fs = passthrough.mount(
                req.directory, self.sink, flush_runner=passthrough.flush_in_thread
            )
        else:
            self.fs = passthrough.mount(req.directory, NullSink(), read_only=True)
            self.applier = Applier(
                os.dup(self.fs.root_fd), in_sync=req.in_sync, exclude=self.exclude
            )

    def _open_journal(self) -> DirtyJournal | None:
        """The dirty-zone journal; None (every copy is then a full one) if it is unusable."""
        if not self.req.journal:
            return None
        try:
            return DirtyJournal.open(Path(self.req.journal), zone_size=self.req.zone_size)
        except HakitError as exc:
            log.error("replication: %s: the next reintegration will be a full synchronization", exc)
            # A fresh journal lacks the history: copies are full ones until the peer is current.
            self._journal_lost = True
            with contextlib.suppress(OSError):
                os.replace(self.req.journal, self.req.journal + ".corrupt")
            try:
                return DirtyJournal.open(Path(self.req.journal), zone_size=self.req.zone_size)
            except HakitError:
                return None

    def _open_nslog(self) -> NamespaceLog | None:
        if not self.req.journal:
            return None
        path = Path(self.req.journal + ".ns")
        try:
            log_ = NamespaceLog(path)
            log_.messages()
            return log_
        except HakitError as exc:
            log.error("replication: %s: the next reintegration will be a full one", exc)
            self._journal_lost = True
            with contextlib.suppress(OSError):
                os.replace(path, str(path) + ".corrupt")
            return NamespaceLog(path)

    async def run(self) -> None:
        """Serve until stopped; a task that crashes ends the process with its exception."""
        self.control.send("mounted", dir=self.req.directory, role=self.req.role)
        fuse = asyncio.create_task(pyfuse3.main(min_tasks=1, max_tasks=64), name="fuse")
        tasks = [
            fuse,
            asyncio.create_task(self._control_loop(), name="control"),
            asyncio.create_task(self._counters_loop(), name="counters"),
        ]
        if self.req.role == "primary":
            self._mark_primary(True)
            tasks.append(asyncio.create_task(self._connect_loop(), name="connect"))
        elif self.req.in_sync:
            await self._serve()
        stopping = asyncio.create_task(self._stopping.wait(), name="stopping")
        done, _ = await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        failure = next(
            (t.exception() for t in done if not t.cancelled() and t.exception() is not None),
            None,
        )
        try:
            await self._shutdown()
        finally:
            if not fuse.done():
                pyfuse3.terminate()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fuse, 10.0)
            for task in [*tasks, stopping]:
                task.cancel()
            await asyncio.gather(*tasks, stopping, return_exceptions=True)
        if failure is not None:
            raise failure

    async def _shutdown(self) -> None:
        if self._copier is not None:
            self._copier.cancel()
        if self.sink is not None and self.sink.sender is not None:
            sender, self.sink.sender = self.sink.sender, None
            await sender.close()
        if self.receiver is not None:
            await self.receiver.drain()

    def stop(self) -> None:
        """End :meth:`run` (from the loop)."""
        self._stopping.set()

    # ---- control ------------------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            try:
                msg = await self.control.receive()
            except (ValueError, ProtocolError) as exc:
                log.error("replicator: malformed control message: %s", exc)
                continue
            if msg is None:
                log.warning("replicator: the module engine went away: stopping")
                self.stop()
                return
            op = msg.get("op")
            if op == "stop":
                self.stop()
                return
            if op == "paired" and self.sink is not None:
                self.sink.set_paired(bool(msg.get("value")))
            elif op == "generation_persisted" and self.sink is not None:
                self.sink.generation_persisted()
            elif op == "resync":
                keep = msg.get("keep_aside")
                await self._want_resync(
                    str(msg.get("kind", "full")), keep if isinstance(keep, dict) else None
                )
            elif op == "serve":
                await self._serve()
            else:
                log.error("replicator: unknown control message %r", op)

    async def _counters_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.control.send("counters", **self.counters())

    def counters(self) -> dict[str, int]:
        """What this replicator did so far."""
        out: dict[str, int] = {}
        if self.sink is not None:
            c = self.sink.counters
            sender = self.sink.sender
            out = {
                "ops": c.ops,
                "bytes": c.bytes,
                "out_of_date": c.out_of_date,
                "copied_files": c.copied_files,
                "copied_bytes": c.copied_bytes,
                "excluded": c.excluded,
                "connected": int(sender is not None and not sender.lost),
                "current": int(self.sink.current),
                "in_flight": sender.outstanding if sender is not None else 0,
                **c.progress(),
            }
        if self.applier is not None:
            counters = self.applier.counters
            out = {
                "applied_ops": sum(v for k, v in counters.items() if k != "bytes"),
                "applied_bytes": counters.get("bytes", 0),
                "tolerated": self.applier.tolerated,
                "connected": int(self.receiver is not None and self.receiver.connected),
                "in_sync": int(self.applier.in_sync),
            }
        return out

    # ---- primary ------------------------------------------------------------------------------

    def _out_of_date(self, reason: str) -> None:
        self.control.send("peer_out_of_date", reason=reason)

    async def _connect_loop(self) -> None:
        assert self.sink is not None
        refused: str | None = None
        while not self._stopping.is_set():
            sender = await self._connect()
            if sender is None:
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            if isinstance(sender, str):
                if sender != refused:
                    log.error("replication: %s", sender)
                    refused = sender
                await asyncio.sleep(RECONNECT_DELAY * 4)
                continue
            refused = None
            self._lost.clear()
            block_sync = BlockSync(sender)
            self._block_sync = block_sync
            sender.on_need(functools.partial(_deliver_need, block_sync))
            self.sink.attach(sender)
            self.control.send("connected", peer=sender.peer.node)
            log.info("replication: connected to %s", sender.peer.node)
            await self._lost.wait()

    async def _connect(self) -> Sender | str | None:
        """A connected sender, an authentication refusal's text, or None (unreachable)."""
        for addr in self.req.peer_addrs:
            try:
                return await Sender.connect(
                    addr,
                    self.req.port,
                    self.identity,
                    sendtimeout=self.req.sendtimeout,
                    on_peer_lost=self._peer_lost,
                    on_resync_request=self._resync_requested,
                    handshake_timeout=min(5.0, self.req.sendtimeout),
                )
            except (AuthenticationError, ProtocolError) as exc:
                return str(exc)
            except (OSError, PeerLost, TimeoutError):
                continue
        return None

    def _peer_lost(self, reason: str) -> None:
        assert self.sink is not None
        if self._copier is not None:
            self._copier.cancel()
        if self._block_sync is not None:
            self._block_sync.peer_lost(reason)
        self.sink.detach(reason)
        self.control.send("disconnected", reason=reason)
        self._lost.set()

    def _resync_requested(self, kind: str) -> None:
        assert self.sink is not None and self.fs is not None
        sender = self.sink.sender
        if sender is None:
            return
        if self._copier is not None:
            self._copier.cancel()
        log.info("replication: %s asked for a %s copy", sender.peer.node, kind)
        self._copier = asyncio.create_task(self._copy(sender, kind), name="copier")

    async def _copy(self, sender: Sender, kind: str) -> None:
        assert self.sink is not None and self.fs is not None
        journal = self.sink.journal
        block_sync = self._block_sync
        copier = Copier(
            self.fs.root_fd,
            sender,
            self.exclude,
            self.sink.counters,
            sink=self.sink,
            block_sync=block_sync,
            window=4 * max(self.req.nbrei, 1),
            bandwidth=self.req.reiallowedbw,
        )
        try:
            if kind == "incremental" and journal is not None and not self._journal_lost:
                files, sent = await copier.run_incremental(
                    journal, kind, self.req.generation, self.sink.nslog
                )
            else:
                files, sent = await copier.run(kind, self.req.generation)
            end = sender.last_seq
            # The peer's copy is complete once it is on its disk: then the journal restarts.
            while sender.durable < end and not sender.lost:
                await asyncio.sleep(0.1)
        except PeerLost as exc:
            log.info("replication: copy to the peer interrupted: %s", exc)
            return
        if self.sink.sender is sender and not sender.lost:
            if journal is not None:
                journal.reset()
            if self.sink.nslog is not None:
                self.sink.nslog.reset()
            self._journal_lost = False
            self.sink.copy_ended()
            self.control.send("copy_sent", files=files, bytes=sent)

    # ---- secondary ----------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Listen for the primary (once): from now on its stream is applied here."""
        if self.receiver is None and not self._stopping.is_set():
            await self._start_receiver()

    async def _start_receiver(self) -> None:
        receiver = Receiver(
            self.identity,
            self._apply,
            async_mode=self.req.async_mode,  # type: ignore[arg-type]
            sync=self._sync_backing,
        )
        receiver.on_connected = lambda peer: self._receiver_connected(peer.node)
        receiver.on_disconnected = lambda peer: self._receiver_disconnected(peer.node)
        await receiver.start(self.req.bind, self.req.port)
        self.receiver = receiver

    def _receiver_connected(self, peer: str) -> None:
        self.control.send("connected", peer=peer)
        if self.pending_resync is not None and self.receiver is not None:
            self.receiver.request_resync(self.pending_resync)

    def _receiver_disconnected(self, peer: str) -> None:
        # Whatever the primary wrote while we were cut off is missing here until a copy.
        if self.applier is not None:
            self.applier.in_sync = False
        self.control.send("disconnected", reason=f"{peer} closed the replication connection")

    async def _want_resync(self, kind: str, keep_aside: Mapping[str, Any] | None) -> None:
        if self.applier is None or self.fs is None:
            log.error("replication: resync asked on the primary: ignored")
            return
        if kind == "incremental" and self.req.marker and os.path.exists(self.req.marker):
            # This node served the directory as primary and did not stop cleanly: writes it
            # applied but never sent may be here, unknown to the primary's journal.
            log.warning(
                "replication: %s was primary here and did not stop cleanly: full "
                "synchronization (by block hashes) instead of incremental",
                self.req.directory,
            )
            kind = "full"
        if keep_aside is not None and self.receiver is None:
            await self._keep_aside(keep_aside)
        self.pending_resync = kind
        self.applier.in_sync = False
        await self._serve()
        assert self.receiver is not None
        if self.receiver.connected:
            self.receiver.request_resync(kind)

    async def _keep_aside(self, keep: Mapping[str, Any]) -> None:
        """Copy this node's divergent files aside before the primary's copy overwrites them."""
        assert self.fs is not None
        if not self.req.divergent:
            log.error("replication: no place to keep divergent data aside: keeping nothing")
            return
        paths = self._journaled_paths()
        kept = await asyncio.to_thread(
            keep_aside,
            self.fs.root_fd,
            paths,
            Path(self.req.divergent),
            reason=str(keep.get("reason", "")),
            generation=str(keep.get("generation", "")),
            source=self.req.directory,
        )
        self.control.send(
            "kept_aside", directory=str(kept.directory), files=kept.files, bytes=kept.bytes
        )

    def _journaled_paths(self) -> list[bytes] | None:
        """What this node changed on its own, from its journal; None (everything) if unknown."""
        if not self.req.journal or not os.path.exists(self.req.journal):
            return None
        try:
            journal = DirtyJournal.load_readonly(Path(self.req.journal))
        except HakitError as exc:
            log.warning("replication: journal unusable (%s): keeping the whole tree aside", exc)
            return None
        plan = journal.plan()
        return sorted({*plan.files, *plan.attrs})

    def _reset_journal(self) -> None:
        """This node's own history is over: no journal means nothing recorded (a primary
        replicator creates a fresh one)."""
        if self.req.journal:
            for path in (self.req.journal, self.req.journal + ".ns"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _sync_backing(self) -> None:
        """Make everything applied so far durable (called in a worker thread)."""
        assert self.applier is not None and self.fs is not None
        _syncfs(self.fs.root_fd)

    def _mark_primary(self, on: bool) -> None:
        """The marker says "this node may hold writes the peer never got" until a clean stop."""
        marker = self.req.marker
        if not marker:
            return
        if on:
            write_atomically(Path(marker), f"{self.req.generation}\n".encode())
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker)

    async def _apply(self, frame: Frame) -> None:
        """Apply one request, inline on the loop except HASHES.

        FSYNC too runs inline (the flush blocks the loop for the disk's time): its ack is sent
        after the apply and acks are cumulative, so nothing received after it could be
        acknowledged before it anyway, and a worker thread's two hand-offs cost more than the
        overlap gained (lab traces, 4 KiB write+fsync, median from the FSYNC frame's receipt to
        the ack leaving: ~505 -> ~350 µs, of which the flush itself ~240-270)."""
        assert self.applier is not None
        msg = m.decode(frame)
        if isinstance(msg, m.Hashes):
            # Hashing a large file takes seconds: off the loop, which keeps receiving and
            # acknowledging the requests that follow meanwhile.
            end = await asyncio.to_thread(self.applier.apply, msg)
        else:
            end = self.applier.apply(msg)
        if isinstance(end, HashesResult):
            if self.receiver is not None:
                self.receiver.send_control(
                    m.encode_need(m.Need(frame.seq, end.path, tuple(end.blocks)))
                )
            return
        if end is not None:
            # Durable before this node calls itself up to date.
            await asyncio.to_thread(self._sync_backing)
            self.pending_resync = None
            # This node now holds the primary's data: its own history is over.
            self._mark_primary(False)
            self._reset_journal()
            self.control.send("resync_done", kind=end.kind, files=end.files, bytes=end.bytes)


async def _main(control_fd: int) -> int:
    sock = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    control = Control(reader, writer)
    logging.getLogger("hakit.replication").addHandler(_ForwardLogs(control))
    first = await control.receive()
    if first is None or first.get("op") != "start":
        log.error("replicator: the first control message must be start, got %r", first)
        return 2
    try:
        req = StartRequest.parse(first)
        key = load_key(Path(req.key_file))
        replicator = Replicator(req, control, key, NotReplicatedMatcher(_rules(req)))
        pyfuse3.asyncio.enable()
        replicator.mount()
    except HakitError as exc:
        control.send("error", message=str(exc))
        await control.close()
        print(f"hakit replicator: {exc}", file=sys.stderr)
        return exc.exit_code
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, replicator.stop)
    try:
        await replicator.run()
        if req.role == "primary":
            # A clean stop: the application is stopped and every write was acknowledged (or
            # journaled): nothing here is unknown to the peer's or this node's records.
            replicator._mark_primary(False)
    finally:
        if replicator.fs is not None:
            passthrough.unmount(replicator.fs)
        if replicator.applier is not None:
            replicator.applier.close()
    control.send("stopped")
    await control.close()
    return 0


def _rules(req: StartRequest) -> list[Any]:
    from hakit.config.model import NotReplicated

    return [
        NotReplicated(
            path=rule.get("path"), regexpath=rule.get("regexpath"), only=bool(rule.get("only"))
        )
        for rule in req.notreplicated
    ]


def main(argv: list[str] | None = None) -> int:
    """Entry point (the engine runs it with the control socket as fd 3)."""
    args = sys.argv[1:] if argv is None else argv
    control_fd = int(args[0]) if args else CONTROL_FD
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return asyncio.run(_main(control_fd))
