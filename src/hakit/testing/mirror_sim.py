"""A two-node mirror simulator: two decision cores wired through a fake network and a fake clock.

It plays the executor's part for both nodes: it performs every action of a decision (scripts
"run" for ``script_time`` seconds and exit with the code configured for them, resyncs take
``resync_time``, heartbeats go out every ``pulse`` and on each state change, a stop announcement is
delivered to the peer) and feeds the results back as events, in time order. Nodes can be powered
off and on (the persisted generation record survives); the network can be partitioned, and it can
lose, duplicate and delay datagrams from a seeded RNG.

Used by the scenario tests; also handy to explore a behaviour by hand::

    sim = MirrorSim()
    sim.first_start()            # prim on node1, second on node2, until both are Ready
    sim.power_off("node1")
    sim.run_for(10)
    assert sim.node("node2").state.state is ModuleState.ALONE
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hakit.core.actions import (
    AbortScript,
    Action,
    AnnounceStop,
    Log,
    PersistGeneration,
    PreserveDivergentData,
    PublishState,
    ReplicationRole,
    RunScript,
    SetVip,
    StartReplication,
    StartResync,
    StopReplication,
)
from hakit.core.events import (
    AdminCommand,
    AdminKind,
    Event,
    HeartbeatReceived,
    PeerOutOfDate,
    PeerStopAnnounced,
    ResyncDone,
    ResyncFailed,
    ScriptExited,
    Tick,
)
from hakit.core.generations import DataGeneration, DataStatus, ResyncKind
from hakit.core.mirror import decide
from hakit.core.mirror_model import Decision, MirrorSettings, MirrorState, initial_state
from hakit.core.scripts import ALL_SCRIPTS
from hakit.core.states import PRIMARY_STATES, ModuleState, Readiness


@dataclass
class SimNode:
    """One simulated node: its core's snapshot and everything its executor did."""

    name: str
    settings: MirrorSettings
    state: MirrorState
    disk: DataGeneration
    powered: bool = True
    vip: bool = False
    replication: ReplicationRole | None = None
    published: PublishState | None = None
    decisions: list[Decision] = field(default_factory=list)
    scripts: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    kept_aside: list[PreserveDivergentData] = field(default_factory=list)
    resync_token: int = 0
    script_token: int = 0
    boot_id: int = 0
    content: frozenset[int] = frozenset()
    aside: frozenset[int] = frozenset()
    peer_has_data: bool = False

    @property
    def summary(self) -> str:
        """``ALONE Ready`` style."""
        return f"{self.state.state} {self.state.readiness}"

    def codes(self) -> list[str]:
        """Every record code of every decision, in order."""
        return [str(code) for d in self.decisions for code in d.record.codes]

    def script_names(self) -> list[str]:
        """Scripts run, ``force`` calls written ``name force``."""
        return [
            f"{name} force" if args and args[0] == "force" else name for name, args in self.scripts
        ]


@dataclass(order=True)
class _Scheduled:
    at: float
    seq: int
    node: str = field(compare=False)
    make: Callable[[], Event | None] = field(compare=False)


class MirrorSim:
    """Two mirror cores, a fake clock and a fake network (see the module docstring)."""

    def __init__(
        self,
        nodes: tuple[str, str] = ("node1", "node2"),
        *,
        scripts: frozenset[str] = ALL_SCRIPTS,
        failover: bool = True,
        defaultprim: str = "alone",
        pulse: float = 1.0,
        timeout: float = 5.0,
        latency: float = 0.01,
        script_time: float = 0.2,
        resync_time: float = 3.0,
        maxloop: int = 3,
        loop_interval: float = 3600.0,
        loss: float = 0.0,
        duplicate: float = 0.0,
        jitter: float = 0.0,
        seed: int = 0,
        write_every: float | None = None,
    ) -> None:
        self.now = 0.0
        self.loss = loss
        self.duplicate = duplicate
        self.jitter = jitter
        self.rng = random.Random(seed)
        self.acked: set[int] = set()
        self._write_ids = itertools.count(1)
        self.latency = latency
        self.script_time = script_time
        self.resync_time = resync_time
        self.pulse = pulse
        self.link_up = True
        self.partitioned_once = False
        self.vip_overlap = False
        self.script_exit_codes: dict[str, int] = {}
        self.resync_failures = 0
        self._queue: list[_Scheduled] = []
        self._seq = itertools.count()
        self._incarnations = itertools.count(1)
        self._nodes: dict[str, SimNode] = {}
        for me, peer in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            settings = MirrorSettings(
                local_node=me,
                peer_node=peer,
                pulse=pulse,
                timeout=timeout,
                failover=failover,
                defaultprim=defaultprim,
                maxloop=maxloop,
                loop_interval=loop_interval,
                scripts=scripts,
                incarnation=str(next(self._incarnations)),
            )
            node = SimNode(
                me, settings, initial_state(settings, DataGeneration()), DataGeneration()
            )
            self._nodes[me] = node
        for node in self._nodes.values():
            self._boot(node)
        if write_every is not None:
            self._schedule("", write_every, self._writer(write_every))

    # -- access ---------------------------------------------------------------------------------

    def node(self, name: str) -> SimNode:
        """The simulated node called ``name``."""
        return self._nodes[name]

    def peer_of(self, name: str) -> SimNode:
        """The other node."""
        return next(n for n in self._nodes.values() if n.name != name)

    def states(self) -> dict[str, str]:
        """``{"node1": "PRIM Ready", ...}``."""
        return {name: node.summary for name, node in self._nodes.items()}

    # -- driving --------------------------------------------------------------------------------

    def command(self, name: str, kind: AdminKind, **options: Any) -> Decision:
        """An administrator command on node ``name`` (delivered now)."""
        return self.deliver(name, AdminCommand(kind, **options))

    def deliver(self, name: str, event: Event) -> Decision:
        """Feed ``event`` to node ``name``'s core now and perform the resulting actions."""
        node = self._nodes[name]
        decision = decide(node.state, event, self.now, node.settings)
        node.state = decision.state
        node.decisions.append(decision)
        for action in decision.actions:
            self._perform(node, action)
        self._check_vips()
        return decision

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass, processing every event due."""
        self.run_until(lambda: False, seconds)

    def run_until(self, predicate: Callable[[], bool], limit: float = 120.0) -> bool:
        """Process events until ``predicate()`` holds (True) or ``limit`` seconds pass (False)."""
        end = self.now + limit
        while not predicate():
            if not self._queue or self._queue[0].at > end:
                self.now = end
                return predicate()
            item = heapq.heappop(self._queue)
            self.now = max(self.now, item.at)
            if not item.node:  # a simulator timer, not an event for a node
                item.make()
                continue
            node = self._nodes[item.node]
            if not node.powered:
                continue
            event = item.make()
            if event is not None:
                self.deliver(item.node, event)
        return True

    def settle(self, limit: float = 120.0) -> bool:
        """Run until both powered nodes are in a settled state (Ready, STOP or WAIT NotReady)."""

        def settled() -> bool:
            for node in self._nodes.values():
                if node.powered and node.state.readiness is Readiness.TRANSIENT:
                    return False
            return True

        return self.run_until(settled, limit)

    def wait_for(
        self, name: str, state: ModuleState, readiness: Readiness, limit: float = 120.0
    ) -> bool:
        """Run until node ``name`` is in ``state readiness``."""
        node = self._nodes[name]
        return self.run_until(
            lambda: node.state.state is state and node.state.readiness is readiness, limit
        )

    def first_start(self, primary: str = "node1") -> None:
        """The documented first start: ``prim`` on ``primary``, ``second`` on the other."""
        other = self.peer_of(primary).name
        self.command(primary, AdminKind.PRIM)
        assert self.wait_for(primary, ModuleState.ALONE, Readiness.READY), self.states()
        self.run_for(self.pulse * 2)
        self.command(other, AdminKind.SECOND)
        assert self.wait_for(other, ModuleState.SECOND, Readiness.READY), self.states()
        assert self.wait_for(primary, ModuleState.PRIM, Readiness.READY), self.states()

    # -- faults ---------------------------------------------------------------------------------

    def power_off(self, name: str) -> None:
        """Node ``name`` loses power: nothing more happens on it; its disk record survives."""
        node = self._nodes[name]
        node.powered = False
        node.vip = False
        node.replication = None
        node.published = None

    def power_on(self, name: str) -> None:
        """Node ``name`` boots: its engine starts in STOP with the persisted record."""
        node = self._nodes[name]
        node.powered = True
        node.settings = replace(node.settings, incarnation=str(next(self._incarnations)))
        node.state = initial_state(node.settings, node.disk)
        self._boot(node)

    def partition(self) -> None:
        """Cut every link between the nodes (heartbeats and announcements are lost)."""
        self.link_up = False
        self.partitioned_once = True

    def heal(self) -> None:
        """Restore the links."""
        self.link_up = True

    # -- the application's data -----------------------------------------------------------------

    def write(self, name: str) -> int | None:
        """The application on node ``name`` writes to a replicated directory.

        Returns the write's id once acknowledged, or None if no application runs there. Models
        the replicator: a write is acknowledged once it is on the local disk and, when a secondary
        is connected, on the secondary's; a primary that believes its peer is in sync (PRIM) but
        cannot reach it first declares it out of date (``PeerOutOfDate``), as the real replicator
        does before acknowledging alone.
        """
        node = self._nodes[name]
        if not node.powered or node.replication is not ReplicationRole.PRIMARY:
            return None
        peer = self.peer_of(name)
        write_id = next(self._write_ids)
        connected = peer.powered and self.link_up and peer.replication is ReplicationRole.SECONDARY
        if connected:
            peer.content = peer.content | {write_id}
            node.peer_has_data = True
        elif node.peer_has_data or node.state.data.status is DataStatus.PAIRED:
            # The generation is shared with the peer (PAIRED), or the peer got data from this
            # node (replicated writes, a resync) since the last report: before acknowledging a
            # write alone, the replicator declares the peer out of date.
            node.peer_has_data = False
            self.deliver(name, PeerOutOfDate("sendtimeout"))
        node.content = node.content | {write_id}
        self.acked.add(write_id)
        return write_id

    def lost_writes(self) -> set[int]:
        """Acknowledged writes found neither on a primary's disk nor in any kept-aside set."""
        found: set[int] = set()
        for node in self._nodes.values():
            found |= node.aside
            if node.state.state in PRIMARY_STATES:
                found |= node.content
        return self.acked - found

    def _writer(self, every: float) -> Callable[[], Event | None]:
        def tick() -> Event | None:
            for name in self._nodes:
                self.write(name)
            self._schedule("", every, tick)
            return None

        return tick

    # -- executor -------------------------------------------------------------------------------

    def _boot(self, node: SimNode) -> None:
        s = node.state
        node.published = PublishState(s.state, s.readiness, s.data, s.stopping, s.swap)
        node.boot_id += 1
        node.script_token += 1
        node.resync_token += 1
        self._schedule(node.name, self.pulse, self._timer(node, node.boot_id))

    def _timer(self, node: SimNode, boot_id: int) -> Callable[[], Event | None]:
        # Every pulse: send a heartbeat to the peer and give the core a Tick.
        def fire() -> Event | None:
            if not node.powered or node.boot_id != boot_id:
                return None
            self._send_heartbeat(node)
            self._schedule(node.name, self.pulse, fire)
            return Tick()

        return fire

    def _schedule(self, name: str, delay: float, make: Callable[[], Event | None]) -> None:
        heapq.heappush(self._queue, _Scheduled(self.now + delay, next(self._seq), name, make))

    def _send(self, src: SimNode, event: Event) -> None:
        # The fake network: a partition drops everything; otherwise each datagram may be lost,
        # duplicated and delayed by a random jitter (all from the seeded RNG: runs are repeatable).
        if not self.link_up or not src.powered:
            return
        dst = self.peer_of(src.name)
        copies = 0 if self.rng.random() < self.loss else 1
        if copies and self.rng.random() < self.duplicate:
            copies = 2
        for _ in range(copies):
            delay = self.latency + self.rng.random() * self.jitter
            self._schedule(dst.name, delay, lambda: event)

    def _send_heartbeat(self, node: SimNode) -> None:
        p = node.published
        if p is None:
            return
        self._send(node, HeartbeatReceived(p.state, p.readiness, p.generation, p.stopping, p.swap))

    def _perform(self, node: SimNode, action: Action) -> None:
        if isinstance(action, RunScript):
            node.scripts.append((action.name, action.args))
            token = node.script_token
            code = self.script_exit_codes.get(action.name, 0)

            def exited() -> Event | None:
                if node.script_token != token:
                    return None
                return ScriptExited(action.name, action.call, code)

            self._schedule(node.name, self.script_time, exited)
        elif isinstance(action, AbortScript):
            node.script_token += 1
            self._schedule(node.name, 0.0, lambda: ScriptExited(action.name, exit_code=None))
        elif isinstance(action, SetVip):
            node.vip = action.up
        elif isinstance(action, StartReplication):
            node.replication = action.role
        elif isinstance(action, StopReplication):
            node.replication = None
            node.resync_token += 1
        elif isinstance(action, StartResync):
            self._start_resync(node, action)
        elif isinstance(action, PersistGeneration):
            node.disk = action.generation
        elif isinstance(action, PublishState):
            node.published = action
            self._send_heartbeat(node)
        elif isinstance(action, AnnounceStop):
            self._send(node, PeerStopAnnounced())
        elif isinstance(action, PreserveDivergentData):
            node.kept_aside.append(action)
            node.aside = node.aside | (node.content - self.peer_of(node.name).content)
        elif isinstance(action, Log):
            node.logs.append(action.text)

    def _start_resync(self, node: SimNode, action: StartResync) -> None:
        token = node.resync_token
        peer = self.peer_of(node.name)

        def done() -> Event | None:
            if node.resync_token != token:
                return None
            if self.resync_failures > 0:
                self.resync_failures -= 1
                return ResyncFailed("simulated failure")
            if not (peer.powered and self.link_up and peer.state.state in PRIMARY_STATES):
                return ResyncFailed("primary unreachable")
            # A full copy makes the directories identical; an incremental one only brings the
            # zones written on the primary, so anything the secondary wrote on its own would stay
            # (a wrong "incremental" verdict shows up as two different contents).
            if action.kind is ResyncKind.FULL:
                node.content = peer.content
            else:
                node.content = node.content | peer.content
            peer.peer_has_data = True
            return ResyncDone(action.kind, peer.state.data)

        self._schedule(node.name, self.resync_time, done)

    def _check_vips(self) -> None:
        if self.partitioned_once:
            return
        if all(n.vip for n in self._nodes.values()):
            self.vip_overlap = True
