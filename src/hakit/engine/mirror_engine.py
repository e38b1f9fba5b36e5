"""The mirror module engine: a thin executor around the pure decision core.

Theory of operation
-------------------
One engine process runs per configured mirror module (started by hakitd). It owns one event
queue. Everything that happens becomes an event on that queue: heartbeats from the peer (pushed by
:class:`~hakit.net.heartbeat.HeartbeatService`), ticks every ``pulse``, the end of a script, a
command from the control socket, a verdict of the generated VIP checker. One consumer takes events
in order and runs *snapshot, decide, act, record*:

* ``decide(state, event, now, settings)`` from :mod:`hakit.core.mirror` gives the next snapshot,
  the actions, and a decision record;
* each action is performed at once; all are quick (netlink, a file write, a datagram) except
  ``RunScript``, which starts a task whose end comes back as a ``ScriptExited`` event. The core
  emits the next script only after that, so scripts run one at a time;
* the record goes to the module log (the core's own ``Log`` actions carry SafeKit's wording).

Nothing here decides: which script runs, when the VIP moves, whether this node may be primary is
the core's answer. Side effects sit behind narrow ports (script runner, VIP, module log, heartbeat
transport), each with a fake in :mod:`hakit.testing`.

File replication (``<rfs>``) is the replicators' job, one process per replicated directory behind
:class:`~hakit.engine.replication.ReplicationPort`: the executor starts and stops them as the core
asks, turns their ``peer_out_of_date`` into the core's ``PeerOutOfDate`` (answering once the new
generation is on disk) and their ``resync_done`` into ``ResyncDone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hakit.config.cluster import ClusterConfig
from hakit.config.model import User, UserConfig, VipInterface, VirtualAddr
from hakit.core.actions import (
    AbortScript,
    Action,
    AnnounceStop,
    Log,
    LogLevel,
    PersistGeneration,
    PreserveDivergentData,
    PublishState,
    ReplicationRole,
    RunScript,
    ScriptTimeout,
    SetVip,
    StartReplication,
    StartResync,
    StopReplication,
)
from hakit.core.events import (
    AdminCommand,
    AdminKind,
    CheckerAction,
    CheckerKind,
    Event,
    PeerOutOfDate,
    PeerStopAnnounced,
    ResyncDone,
    ScriptCall,
    ScriptExited,
    Tick,
)
from hakit.core.generations import DataStatus, ResyncKind
from hakit.core.mirror import decide
from hakit.core.mirror_model import (
    Decision,
    MirrorSettings,
    MirrorState,
    RecordCode,
    initial_state,
)
from hakit.core.scripts import ALL_SCRIPTS
from hakit.core.states import PRIMARY_STATES, ModuleState, Readiness
from hakit.daemon.files import write_atomically
from hakit.engine import codec
from hakit.engine.modlog import Level, ModuleLog
from hakit.engine.replication import ReplicationPort, ReplicationSpec
from hakit.engine.scripts import ScriptRequest, ScriptRunner
from hakit.errors import HakitError, PeerProtocolError, UserConfigError
from hakit.modules.ids import ports
from hakit.net.heartbeat import Beat, HeartbeatPath, default_port
from hakit.net.vip import Vip, VipPort

log = logging.getLogger(__name__)

COMPONENT = "heart"
RFS_COMPONENT = "rfs"
# How often the generated IP checker looks for the VIP while the node is primary (SafeKit: 10 s).
IP_CHECK_INTERVAL = 3.0
# After a pause of this process, how long to let buffered heartbeats in before the next tick.
PAUSE_DRAIN = 0.05
# Gratuitous ARPs on takeover: at once, then again after these delays (a frame may be lost).
GARP_REPEATS = (0.5, 2.0)

_LEVELS = {
    LogLevel.CRITICAL: Level.CRITICAL,
    LogLevel.EVENT: Level.EVENT,
    LogLevel.INFO: Level.INFO,
    LogLevel.DEBUG: Level.DEBUG,
}


class HeartbeatPort(Protocol):
    """What the engine needs from the heartbeat transport."""

    def set_payload(self, payload: Mapping[str, Any]) -> None: ...

    async def announce_stop(self, payload: Mapping[str, Any]) -> None: ...

    def resources(self, now: float) -> dict[str, str]: ...

    async def run(self) -> None: ...


@dataclass(frozen=True)
class ModuleVip:
    """One configured VIP with its interface settings."""

    vip: Vip
    addr: VirtualAddr
    interface: VipInterface


@dataclass(frozen=True)
class MirrorSpec:
    """Everything the engine needs from the configuration, resolved for this node."""

    module: str
    module_id: int
    local: str
    peer: str
    settings: MirrorSettings
    heartbeat_paths: tuple[HeartbeatPath, ...]
    vips: tuple[ModuleVip, ...]
    tcpreset: bool
    user: User | None
    state_dir: Path
    replication: ReplicationSpec | None = None

    @property
    def generation_file(self) -> Path:
        return self.state_dir / "generation.json"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state"

    @property
    def ready_file(self) -> Path:
        return self.state_dir / "ready.txt"

    @property
    def intent_file(self) -> Path:
        return self.state_dir / "intent"


def build_spec(
    *,
    module: str,
    module_id: int,
    config: UserConfig,
    cluster: ClusterConfig,
    local: str,
    scripts: frozenset[str],
    state_dir: Path,
    incarnation: str,
    key_file: str = "",
) -> MirrorSpec:
    """Resolve a validated mirror configuration for node ``local`` (UserConfigError if it cannot run)."""
    if config.service.mode != "mirror":
        raise UserConfigError(f"module {module}: mode {config.service.mode} is not a mirror module")
    nodes = cluster.node_names()
    if local not in nodes:
        raise UserConfigError(
            f"module {module}: this node ({local}) is not in cluster.xml (nodes: {', '.join(nodes)})"
        )
    if len(nodes) != 2:
        raise UserConfigError(
            f"module {module}: a mirror module runs on exactly 2 nodes; cluster.xml has "
            f"{len(nodes)} ({', '.join(nodes)})"
        )
    peer = next(n for n in nodes if n != local)
    heart = config.heart
    if heart is None or not heart.heartbeats:
        raise UserConfigError(f"module {module}: a mirror module needs <heart> with a <heartbeat>")
    port = heart.port or default_port(module_id)
    paths = []
    for hb in heart.heartbeats:
        lan = cluster.lan(hb.name or "")
        me = lan.node(local) if lan else None
        other = lan.node(peer) if lan else None
        if lan is None or me is None or other is None:
            raise UserConfigError(
                f"module {module}: <heartbeat name={hb.name!r}> must name a cluster LAN holding "
                f"both {local} and {peer}"
            )
        paths.append(
            HeartbeatPath(
                lan=lan.name,
                ident=hb.ident,
                local_addr=me.laddr or me.addr,
                peer_addr=other.addr,
                port=port,
                pulse=hb.pulse,
                timeout=hb.timeout,
            )
        )
    settings = MirrorSettings(
        local_node=local,
        peer_node=peer,
        pulse=min(p.pulse for p in paths),
        # The peer is lost when no LAN heard it within that LAN's own timeout: the longest one.
        timeout=max(p.timeout for p in paths),
        failover=config.service.failover,
        defaultprim=config.service.defaultprim,
        maxloop=config.service.maxloop,
        loop_interval=config.service.loop_interval,
        scripts=scripts if config.user is not None else frozenset(),
        incarnation=incarnation,
    )
    vips = []
    if config.vip is not None:
        for intf in config.vip.interfaces:
            for va in intf.addrs:
                vips.append(ModuleVip(Vip.parse(va.addr, va.netmask, intf.name), va, intf))
    replication = None
    if config.rfs is not None and config.rfs.replicated:
        peer_addrs = [p.peer_addr for p in paths]
        if config.rfs.flow:
            flow = cluster.lan(config.rfs.flow)
            other = flow.node(peer) if flow else None
            if other is None:
                raise UserConfigError(
                    f"module {module}: <rfs><flow name={config.rfs.flow!r}> must name a cluster "
                    f"LAN holding {peer}"
                )
            peer_addrs.insert(0, other.addr)
        replication = ReplicationSpec(
            module=module,
            local=local,
            peer=peer,
            peer_addrs=tuple(dict.fromkeys(peer_addrs)),
            base_port=ports(module_id).replication,
            key_file=key_file,
            rfs=config.rfs,
            state_dir=state_dir,
        )
    return MirrorSpec(
        module=module,
        module_id=module_id,
        local=local,
        peer=peer,
        settings=settings,
        heartbeat_paths=tuple(paths),
        vips=tuple(vips),
        tcpreset=config.vip.tcpreset if config.vip is not None else False,
        user=config.user,
        state_dir=state_dir,
        replication=replication,
    )


def present_scripts(bin_dir: Path) -> frozenset[str]:
    """The automaton's scripts that exist (and are executable) in the module's ``bin/``."""
    return frozenset(
        name
        for name in ALL_SCRIPTS
        if (bin_dir / name).is_file() and os.access(bin_dir / name, os.X_OK)
    )


@dataclass
class _Running:
    """The script being run (at most one at a time)."""

    action: RunScript
    task: asyncio.Task[None]


@dataclass
class MirrorEngine:
    """Executor of one mirror module on this node."""

    spec: MirrorSpec
    runner: ScriptRunner
    vip: VipPort
    modlog: ModuleLog
    heartbeat: HeartbeatPort
    clock: Callable[[], float]
    state: MirrorState = field(init=False)
    last: Decision | None = field(default=None, init=False)
    _queue: asyncio.Queue[Event | _Await] = field(default_factory=asyncio.Queue, init=False)
    _script: _Running | None = field(default=None, init=False)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set, init=False)
    _vip_up: bool = field(default=False, init=False)
    _peer_released: tuple[int, int] | None = field(default=None, init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _announcements: int = field(default=0, init=False)
    replication: ReplicationPort | None = None
    _resyncing: set[int] = field(default_factory=set, init=False)
    _keep_aside: dict[str, str] | None = field(default=None, init=False)
    _kept_aside: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        data = codec.load_generation(self.spec.generation_file)
        self.state = initial_state(self.spec.settings, data)

    # --- inputs ---------------------------------------------------------------------------
    def submit(self, event: Event) -> None:
        """Queue an event (from any task of the engine's loop)."""
        self._queue.put_nowait(event)

    def on_beat(self, beat: Beat) -> None:
        """A valid heartbeat from the peer (called by the heartbeat transport)."""
        try:
            event = codec.beat_event(beat.payload)
        except PeerProtocolError as exc:
            log.warning("heartbeat from %s ignored: %s", self.spec.peer, exc)
            return
        released = beat.payload.get("released")
        if isinstance(released, int):
            # A stop announcement comes as a burst: one PeerStopAnnounced per announcement.
            key = (beat.incarnation, released)
            if key != self._peer_released:
                self._peer_released = key
                self.submit(PeerStopAnnounced())
            return
        self.submit(event)

    async def command(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Control-socket request ``{"op": "state" | "command", ...}`` -> response."""
        op = request.get("op")
        if op == "state":
            return self.snapshot()
        if op != "command":
            return {"ok": False, "code": "bad_request", "message": f"unknown op {op!r}"}
        try:
            event = admin_event(request)
        except UserConfigError as exc:
            return {"ok": False, "code": "bad_request", "message": str(exc)}
        if isinstance(event, CheckerAction):
            # `stop -i` from inside a script the engine waits for: queue it, answer at once.
            self.submit(event)
            return {"ok": True, "code": "queued", "message": event.describe() + " (queued)"}
        decision = await self._decide_now(event)
        refused = decision.record.code is RecordCode.REFUSED
        return {
            "ok": not refused,
            "code": decision.record.code.value,
            "message": decision.record.message,
        }

    # --- the loop -------------------------------------------------------------------------
    async def run(self, resume: bool = False) -> None:
        """Run until cancelled. ``resume``: start the module if the admin's last word was start."""
        self._publish_files(self.state.state, self.state.readiness)
        self.heartbeat.set_payload(self._payload())
        for mv in self.spec.vips:
            # A previous engine that died while primary left its VIP: a stopped module holds none.
            if await asyncio.to_thread(self.vip.remove, mv.vip):
                self.modlog.append(
                    "vipplug",
                    Level.EVENT,
                    f"Virtual IP {mv.vip.addr} left by a previous run removed",
                )
        self.modlog.append(
            COMPONENT,
            Level.INFO,
            f"Engine started (module id {self.spec.module_id}, node {self.spec.local}, peer {self.spec.peer})",
        )
        if resume and self._intent() == "started":
            self.submit(AdminCommand(AdminKind.START, origin="SYSTEM"))
            self.modlog.append(COMPONENT, Level.EVENT, "Action start called automatically")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.heartbeat.run())
            tg.create_task(self._ticker())
            tg.create_task(self._ip_checker())
            tg.create_task(self._consume())

    async def stop_and_wait(self, limit: float) -> None:
        """Stop the module (as ``hakit stop``) and wait until it is STOP, at most ``limit`` s."""
        if self.state.state is not ModuleState.STOP:
            self.submit(AdminCommand(AdminKind.STOP, origin="SYSTEM"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while self.state.state is not ModuleState.STOP:
                    self._changed.clear()
                    await self._changed.wait()

    async def _ticker(self) -> None:
        """A Tick every pulse, and one right when the peer's heartbeat timeout expires (so loss
        detection does not wait for the next pulse boundary)."""
        pulse, timeout = self.spec.settings.pulse, self.spec.settings.timeout
        while True:
            delay = pulse
            last_seen = self.state.peer.last_seen
            if self.state.peer.known and last_seen is not None:
                until_lost = last_seen + timeout - self.clock()
                if 0 <= until_lost < pulse:
                    delay = until_lost + 0.001
            expected = self.clock() + delay
            await asyncio.sleep(delay)
            paused = self.clock() - expected
            if paused > pulse:
                # This process did not run for a while (SIGSTOP, a VM pause, a swap storm): the
                # peer's heartbeats sent meanwhile wait in the socket buffer. Read them before
                # judging the peer lost, or a primary that merely hung would declare its peer
                # dead and start a generation of its own (corosync: "process pause detected").
                self.modlog.append(
                    COMPONENT,
                    Level.EVENT,
                    f"Process pause detected ({paused:.1f} s): reading the peer's heartbeats "
                    "before judging its loss",
                )
                await asyncio.sleep(min(pulse, PAUSE_DRAIN))
            self.submit(Tick())

    async def _consume(self) -> None:
        while True:
            event = await self._queue.get()
            await self._step(event)

    async def _decide_now(self, event: Event) -> Decision:
        # Commands are decided in queue order too: wait until everything queued before is done.
        done: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Await(event, done))
        return await done

    async def _step(self, item: Event | _Await) -> Decision:
        event = item.event if isinstance(item, _Await) else item
        before = self.state
        decision = decide(before, event, self.clock(), self.spec.settings)
        self.state = decision.state
        self.last = decision
        if not isinstance(event, Tick) or decision.record.code is not RecordCode.NO_CHANGE:
            log.debug(
                "%s -> %s: %s", type(event).__name__, decision.record.code, decision.record.message
            )
        for action in decision.actions:
            await self._perform(action)
        if self.replication is not None:
            self.replication.set_paired(
                self.state.state is ModuleState.PRIM and self.state.data.status is DataStatus.PAIRED
            )
            if (self.state.state, self.state.readiness) == (ModuleState.SECOND, Readiness.READY):
                self.replication.serve()
        if isinstance(event, AdminCommand):
            self._remember_intent(event)
        if (before.state, before.readiness) != (self.state.state, self.state.readiness):
            self._changed.set()
        if isinstance(item, _Await) and not item.done.done():
            item.done.set_result(decision)
        return decision

    # --- actions --------------------------------------------------------------------------
    async def _perform(self, action: Action) -> None:
        """Perform one action; all are quick. Netlink calls run in a worker thread (pyroute2's
        synchronous API runs its own event loop), awaited so that actions stay in order: the VIP
        is down before the stop is announced to the peer that will take it."""
        match action:
            case Log(level=level, text=text):
                self.modlog.append(COMPONENT, _LEVELS[level], text)
            case PublishState():
                self._publish(action)
            case PersistGeneration(generation=gen):
                codec.save_generation(self.spec.generation_file, gen)
            case RunScript():
                self._start_script(action)
            case AbortScript():
                if self._script is not None:
                    self._script.task.cancel()
            case SetVip(up=up):
                await self._set_vip(up)
            case AnnounceStop():
                self._spawn(self._announce_stop())
            case StartReplication(role=role):
                await self._start_replication(role)
            case StopReplication():
                if self.replication is not None:
                    self._resyncing.clear()
                    await self.replication.stop()
            case StartResync(kind=kind):
                if self.replication is None:
                    # No replicated directories: the copy is complete at once; the secondary now
                    # holds the primary's generation (the module's data is the scripts' business).
                    self.submit(ResyncDone(kind, self.state.peer.generation))
                else:
                    self._resyncing = set(range(self.replication.count))
                    keep, self._keep_aside = self._keep_aside, None
                    self.replication.resync(kind.value, keep)
            case PreserveDivergentData(reason=reason, generation=gen):
                if self.replication is None:
                    self.modlog.append(
                        COMPONENT,
                        Level.INFO,
                        f"No replicated directory: nothing to keep aside ({reason})",
                    )
                else:
                    # Done by the replicators before the copy starts (the resync that follows).
                    self._keep_aside = {"reason": reason, "generation": gen}
            case _:
                raise AssertionError(f"unknown action {action!r}")

    async def _start_replication(self, role: ReplicationRole) -> None:
        if self.replication is None:
            return
        s = self.state
        paired = s.data.status is DataStatus.PAIRED
        try:
            await self.replication.start(
                role.value,
                paired=paired and role is ReplicationRole.PRIMARY,
                in_sync=paired and s.data.current == s.peer.generation.current,
                generation=s.data.current,
            )
        except HakitError as exc:
            self.modlog.append(RFS_COMPONENT, Level.CRITICAL, str(exc))
            self.submit(CheckerAction(CheckerKind.STOP, identity="rfs"))

    def on_replication(self, index: int, msg: Mapping[str, Any]) -> None:
        """A message from the replicator of directory ``index`` (see engine/replication.py)."""
        ev = msg.get("ev")
        if ev == "peer_out_of_date":
            self._spawn(self._peer_out_of_date(str(msg.get("reason", ""))))
        elif ev == "resync_done":
            self._resyncing.discard(index)
            self.modlog.append(
                RFS_COMPONENT,
                Level.INFO,
                f"Directory {index} copied from {self.spec.peer}: {msg.get('files', 0)} files, "
                f"{msg.get('bytes', 0)} bytes",
            )
            if not self._resyncing:
                kind = ResyncKind(str(msg.get("kind", "full")))
                self.submit(ResyncDone(kind, self.state.peer.generation))
        elif ev == "log":
            level = Level.CRITICAL if msg.get("level") in ("error", "critical") else Level.EVENT
            self.modlog.append(RFS_COMPONENT, level, str(msg.get("text", "")))
        elif ev == "exited":
            self.modlog.append(
                RFS_COMPONENT,
                Level.CRITICAL,
                f"Replicator of directory {index} ended unexpectedly (exit code "
                f"{msg.get('code')}): restarting the module",
            )
            self.submit(CheckerAction(CheckerKind.STOPSTART, identity="rfs"))
        elif ev == "kept_aside":
            self.modlog.append(
                RFS_COMPONENT,
                Level.EVENT,
                f"Split brain: this node's divergent files of directory {index} kept aside in "
                f"{msg.get('directory')} ({msg.get('files', 0)} files, {msg.get('bytes', 0)} "
                f"bytes) before the copy from {self.spec.peer}",
            )
            self._kept_aside.append(str(msg.get("directory")))
        elif ev in ("connected", "disconnected", "copy_sent"):
            detail = msg.get("peer") or msg.get("reason") or f"{msg.get('files', 0)} files"
            self.modlog.append(RFS_COMPONENT, Level.INFO, f"Replication {ev} ({detail})")

    async def _peer_out_of_date(self, reason: str) -> None:
        # The replicator holds the application's requests until the new generation is on disk.
        try:
            await self._decide_now(PeerOutOfDate(reason))
        finally:
            if self.replication is not None:
                self.replication.generation_persisted()

    def _publish(self, action: PublishState) -> None:
        self._publish_files(action.state, action.readiness)
        self.heartbeat.set_payload(self._payload(action))

    def _payload(self, action: PublishState | None = None) -> dict[str, Any]:
        s = self.state
        if action is None:
            return codec.beat_payload(
                s.state, s.readiness, s.data, swap=s.swap, stopping=s.stopping
            )
        return codec.beat_payload(
            action.state,
            action.readiness,
            action.generation,
            stopping=action.stopping,
            swap=action.swap,
        )

    def _publish_files(self, state: ModuleState, readiness: Readiness) -> None:
        write_atomically(self.spec.state_file, f"{state.value} {readiness.value}\n".encode())
        ready = self.spec.ready_file
        if state in PRIMARY_STATES and readiness is Readiness.READY:
            if not ready.exists():
                write_atomically(ready, b"OK\n")
        else:
            ready.unlink(missing_ok=True)

    def _start_script(self, action: RunScript) -> None:
        user = self.spec.user
        force = action.call is ScriptCall.FORCE
        # Stop scripts are bounded (nicestoptimeout, then forcestoptimeout for the `force` call);
        # start scripts are not, as in SafeKit: a slow application start is not a failure.
        timeout: float | None = None
        if user is not None and (action.name.startswith("stop") or action.name == "poststop"):
            timeout = (
                user.forcestoptimeout
                if action.timeout is ScriptTimeout.FORCE
                else user.nicestoptimeout
            )
        request = ScriptRequest.transition(
            self.spec.module,
            action.name,
            action.current.value,
            action.next.value,
            action.action,
            user=user,
            force=force,
            timeout=timeout,
        )
        self.modlog.append("userplug", Level.SCRIPT, f"Script {request.command_line}")

        async def run_it() -> None:
            try:
                result = await self.runner.run(request)
            except asyncio.CancelledError:
                self.modlog.append(
                    "userplug", Level.EVENT, f"Script {request.command_line}: aborted"
                )
                raise
            finally:
                self._script = None
            level = Level.INFO if result.ok or result.status.value == "absent" else Level.EVENT
            self.modlog.append("userplug", level, result.describe())
            self.submit(
                ScriptExited(
                    script=action.name,
                    call=action.call,
                    exit_code=result.exit_code,
                    timed_out=result.timed_out,
                )
            )

        task = self._spawn(run_it())
        self._script = _Running(action, task)

    async def _set_vip(self, up: bool) -> None:
        for mv in self.spec.vips:
            if up:
                try:
                    added = await asyncio.to_thread(self.vip.add, mv.vip)
                    await asyncio.to_thread(self.vip.announce, mv.vip)
                except (OSError, HakitError) as exc:
                    self.modlog.append(
                        "vipplug", Level.EVENT, f"Virtual IP {mv.vip.addr} could not be set: {exc}"
                    )
                    self.submit(
                        CheckerAction(CheckerKind.STOPSTART, f"ip.{mv.vip.addr}", "ip_failure")
                    )
                    continue
                if added:
                    self.modlog.append("vipplug", Level.INFO, f"Virtual IP {mv.vip.addr} set")
                self._spawn(self._garp_followups(mv))
            else:
                if self.spec.tcpreset:
                    try:
                        n = await asyncio.to_thread(self.vip.reset_connections, mv.vip)
                    except (OSError, HakitError) as exc:
                        self.modlog.append(
                            "vipplug", Level.INFO, f"tcpreset of {mv.vip.addr}: {exc}"
                        )
                    else:
                        if n:
                            self.modlog.append(
                                "vipplug", Level.INFO, f"{n} connections to {mv.vip.addr} reset"
                            )
                if await asyncio.to_thread(self.vip.remove, mv.vip):
                    self.modlog.append("vipplug", Level.INFO, f"Virtual IP {mv.vip.addr} unset")
        self._vip_up = up

    async def _garp_followups(self, mv: ModuleVip) -> None:
        """Repeat the takeover GARP a few times, then every ``arpinterval`` for ``arpelapse``."""
        waited = 0.0
        for delay in GARP_REPEATS:
            await asyncio.sleep(delay - waited)
            waited = delay
            if not self._vip_up:
                return
            with contextlib.suppress(OSError, HakitError):
                await asyncio.to_thread(self.vip.announce, mv.vip)
        if not mv.interface.arpreroute:
            return
        start = self.clock()
        while self._vip_up and self.clock() - start < mv.interface.arpelapse:
            await asyncio.sleep(mv.interface.arpinterval)
            if self._vip_up:
                with contextlib.suppress(OSError, HakitError):
                    await asyncio.to_thread(self.vip.announce, mv.vip)

    async def _ip_checker(self) -> None:
        """The generated IP checker: the VIP vanished while primary -> stopstart (``ip_failure``)."""
        while True:
            await asyncio.sleep(IP_CHECK_INTERVAL)
            s = self.state
            if (
                not self._vip_up
                or s.state not in PRIMARY_STATES
                or s.readiness is not Readiness.READY
            ):
                continue
            for mv in self.spec.vips:
                if not mv.addr.check:
                    continue
                if not await asyncio.to_thread(self.vip.present, mv.vip):
                    self.modlog.append(
                        "ipcheck", Level.EVENT, f"Resource ip.{mv.vip.addr} set to down by ipcheck"
                    )
                    self.submit(CheckerAction(CheckerKind.STOPSTART, "ipcheck", "ip_failure"))
                    break

    async def _announce_stop(self) -> None:
        self._announcements += 1
        await self.heartbeat.announce_stop({**self._payload(), "released": self._announcements})
        self.heartbeat.set_payload(self._payload())

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- intent and snapshot --------------------------------------------------------------
    def _remember_intent(self, cmd: AdminCommand) -> None:
        # A stop on SIGTERM (node shutdown, engine restart) is not the administrator's word: the
        # module resumes when the engine starts again (SafeKit's boot="auto").
        if cmd.origin == "SYSTEM":
            return
        if cmd.kind in (AdminKind.START, AdminKind.PRIM, AdminKind.SECOND, AdminKind.PRIMFORCE):
            intent = "started"
        elif cmd.kind in (AdminKind.STOP, AdminKind.FORCESTOP):
            intent = "stopped"
        else:
            return
        if self.last is not None and self.last.record.code is RecordCode.REFUSED:
            return
        write_atomically(self.spec.intent_file, (intent + "\n").encode())

    def _intent(self) -> str:
        try:
            return self.spec.intent_file.read_text().strip()
        except OSError:
            return "stopped"

    def snapshot(self) -> dict[str, Any]:
        """The module's state as the API shows it (see docs/design/engine-protocol.md)."""
        s = self.state
        now = self.clock()
        peer = s.peer
        resources = {
            **self.heartbeat.resources(now),
            "rfs.uptodate": "up" if _up_to_date(s) else "down",
            "usersetting.failover": "on" if s.failover else "off",
            "heart.stopstartloop": str(len(s.loop_times)),
            **(self.replication.resources() if self.replication is not None else {}),
        }
        if self._kept_aside:
            resources["rfs.kept_aside"] = self._kept_aside[-1]
        for mv in self.spec.vips:
            resources[f"ip.{mv.vip.addr}"] = "up" if self._vip_up else "down"
        return {
            "ok": True,
            "module": self.spec.module,
            "id": self.spec.module_id,
            "mode": "mirror",
            "node": self.spec.local,
            "state": s.state.value,
            "readiness": s.readiness.value,
            "activity": s.activity.value,
            "since": now - s.since,
            "peer": {
                "node": self.spec.peer,
                "state": peer.state.value if peer.state is not None else "UNKNOWN",
                "readiness": peer.readiness.value if peer.readiness is not None else "Unknown",
                "reachable": peer.known,
            },
            "data": s.data.to_dict(),
            "wait_reason": s.wait_reason.message if s.wait_reason is not None else None,
            "resources": resources,
            "script": self._script.action.name if self._script is not None else None,
            "decision": (
                {"code": self.last.record.code.value, "message": self.last.record.message}
                if self.last is not None
                else None
            ),
        }


def _up_to_date(s: MirrorState) -> bool:
    """SafeKit's ``rfs.uptodate``: this node's data can serve as the primary's (a primary, a
    synchronized SECOND, or a stopped node that was the last sole writer)."""
    if s.state in PRIMARY_STATES:
        return True
    if s.state is ModuleState.SECOND and s.readiness is Readiness.READY:
        return True
    return s.data.status is DataStatus.UP_TO_DATE


@dataclass(frozen=True)
class _Await:
    """An event whose decision a caller awaits (control-socket commands)."""

    event: Event
    done: asyncio.Future[Decision]


_COMMANDS = {kind.value: kind for kind in AdminKind}


def admin_event(request: Mapping[str, Any]) -> AdminCommand | CheckerAction:
    """Turn a control-socket command into a core event (UserConfigError if malformed)."""
    name = request.get("command")
    options = request.get("options") or {}
    if not isinstance(options, dict):
        raise UserConfigError("options must be an object")
    if name == "failover":
        value = options.get("value")
        if value not in ("on", "off"):
            raise UserConfigError("failover needs the value on or off")
        name = f"failover {value}"
    kind = _COMMANDS.get(str(name))
    if kind is None:
        known = ", ".join(sorted(k for k in _COMMANDS if " " not in k)) + ", failover on|off"
        raise UserConfigError(f"unknown command {name!r} (known: {known})")
    identity = request.get("identity")
    origin = str(request.get("origin") or "admin")
    if identity is not None and kind in (AdminKind.STOP, AdminKind.RESTART, AdminKind.STOPSTART):
        # SafeKit: `-i NAME` marks a detector's action (counts for maxloop, answered at once).
        return CheckerAction(CheckerKind(kind.value), str(identity))
    return AdminCommand(
        kind,
        fullsync=bool(options.get("fullsync", False)),
        nosync=bool(options.get("nosync", False)),
        identity=str(identity) if identity is not None else None,
        origin=origin,
    )
