"""The node service: what hakitd knows and does, under the REST API (which is a thin shell over it).

It owns the cluster configuration in effect and the cluster channel. ``reload`` reads cluster.xml and
cluster.key again and restarts the channel:

* no cluster.xml: the node is *not configured*; the API still answers;
* an invalid cluster.xml or key: the reload is refused with every error, and what ran before keeps
  running (the files on disk are wrong, the node is not);
* a valid file the node is not part of, or a port that cannot be bound: the new configuration is in
  effect but the channel is off, and ``problem`` says why (``hakit cluster state`` shows it).

The channel's pulse task is created in the daemon's TaskGroup (:meth:`attach`), so a bug that crashes
it takes the whole daemon down with a non-zero exit, to be restarted by systemd.

It also owns the module engines (:class:`~hakit.daemon.supervisor.EngineSupervisor`, ``engines``)
and the module operations of the API (:class:`~hakit.daemon.modules_service.ModulesService`,
``modules``). A reload gives engines held after exit 78 a new start; :meth:`close` stops every
engine before the channel.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from hakit import __version__
from hakit.config.cluster import ClusterConfig, load_cluster
from hakit.daemon.incarnation import next_incarnation
from hakit.daemon.modules_service import ModulesService
from hakit.daemon.supervisor import EngineSupervisor
from hakit.errors import HakitError
from hakit.net.auth import counters_dict, load_key
from hakit.net.channel import IGNORED, ChannelPlan, ClusterChannel, plan_channel
from hakit.paths import NodePaths

log = logging.getLogger(__name__)

ChannelFactory = Callable[[ChannelPlan, bytes, int], ClusterChannel]


@dataclass(frozen=True)
class _Running:
    channel: ClusterChannel
    task: asyncio.Task[None]


class NodeService:
    """State and operations of the local node (one per hakitd)."""

    def __init__(
        self,
        paths: NodePaths,
        node: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        incarnation: Callable[[], int] | None = None,
        channel_factory: ChannelFactory | None = None,
        supervisor: EngineSupervisor | None = None,
    ) -> None:
        self.paths = paths
        self.node = node
        self._clock = clock
        self._started = clock()
        self._incarnation = incarnation or (
            lambda: next_incarnation(paths.lib / "incarnation", time.time_ns())
        )
        self._channel_factory = channel_factory or (
            lambda plan, key, inc: ClusterChannel(plan, key, inc, clock=clock)
        )
        self._tg: asyncio.TaskGroup | None = None
        self._lock = asyncio.Lock()
        self.cluster: ClusterConfig | None = None
        self.problem: str | None = None
        self._running: _Running | None = None
        # The module engines run with hakitd's node name, whatever the host name says.
        self.engines = supervisor or EngineSupervisor(
            paths, environ={**os.environ, "HAKIT_NODE": node}
        )
        self.modules = ModulesService(paths, self.engines)

    def attach(self, tg: asyncio.TaskGroup, *, engines: bool = True) -> None:
        """Run the channel's tasks in ``tg`` (the daemon's TaskGroup); with ``engines``, also
        start supervising the module engines there."""
        self._tg = tg
        self.engines.attach(tg)
        if engines:
            self.engines.start()

    # -- queries -------------------------------------------------------------------------------

    def level(self) -> dict[str, Any]:
        """Who and what this node runs (``hakit level``)."""
        return {
            "node": self.node,
            "version": __version__,
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "pid": os.getpid(),
            "uptime_s": round(self._clock() - self._started, 3),
            "configured": self.cluster is not None,
        }

    def cluster_state(self) -> dict[str, Any]:
        """Configuration in effect, channel status, every node's reachability, datagram counters."""
        running = self._running
        channel = running.channel if running else None
        statuses = {s.name: s for s in channel.status()} if channel else {}
        nodes = []
        if self.cluster is not None:
            for name in self.cluster.node_names():
                status = statuses.get(name)
                last = status.last_seen_s if status else None
                nodes.append(
                    {
                        "name": name,
                        "local": name == self.node,
                        "reachable": name == self.node or bool(status and status.reachable),
                        "last_seen_s": None if last is None else round(last, 3),
                        "lans": self.cluster.addrs_of(name),
                        "lans_last_seen_s": {
                            lan: None if age is None else round(age, 3)
                            for lan, age in (status.lans_last_seen_s.items() if status else ())
                        },
                    }
                )
        counters = channel.counters() if channel else counters_dict(Counter(), extra=(IGNORED,))
        return {
            "configured": self.cluster is not None,
            "local": self.node,
            "channel": "running" if channel else "off",
            "problem": self.problem,
            "incarnation": channel.core.sealer.incarnation if channel else None,
            "port": self.cluster.port if self.cluster else None,
            "pulse_s": self.cluster.pulse if self.cluster else None,
            "lost_after_s": channel.plan.lost_after if channel else None,
            "bound": [f"{host}:{port}" for host, port in channel.bound] if channel else [],
            "nodes": nodes,
            "counters": counters,
        }

    # -- operations ----------------------------------------------------------------------------

    async def reload(self, why: str = "API request") -> dict[str, Any]:
        """Read cluster.xml and cluster.key again and restart the channel; return the new state.

        Raises :class:`~hakit.config.report.ConfigInvalid` or another
        :class:`~hakit.errors.UserConfigError` when the files are invalid (nothing changed then).
        """
        if self._tg is None:
            raise RuntimeError("NodeService.attach(task_group) must be called before reload()")
        state = await self._reload(why)
        # An engine held after exit 78 may run with the new cluster configuration: try again.
        await self.engines.release_held()
        return state

    async def _reload(self, why: str) -> dict[str, Any]:
        async with self._lock:
            log.info("loading the cluster configuration (%s)", why)
            try:
                loaded = await asyncio.to_thread(self._load)
            except HakitError as exc:
                self.problem = (
                    f"last reload refused, the previous configuration is still in effect: {exc}"
                    if self.cluster is not None
                    else f"cluster configuration refused: {exc}"
                )
                raise
            await self._stop_channel()
            if loaded is None:
                self.cluster, self.problem = None, None
                log.info("no %s: cluster not configured", self.paths.cluster_xml)
                return self.cluster_state()
            self.cluster, key = loaded
            try:
                plan = plan_channel(self.cluster, self.node)
                channel = self._channel_factory(plan, key, self._incarnation())
                await channel.open()
            except HakitError as exc:
                self.problem = f"cluster channel off: {exc}"
                log.error("%s", self.problem)
                return self.cluster_state()
            self.problem = None
            self._running = _Running(channel, self._spawn(channel.run()))
            log.info("cluster configured: nodes %s", ", ".join(self.cluster.node_names()))
            return self.cluster_state()

    async def reload_logged(self, why: str) -> None:
        """:meth:`reload`, logging a refusal instead of raising (SIGHUP, start-up)."""
        try:
            await self.reload(why)
        except HakitError as exc:
            log.error("cluster configuration refused, nothing changed: %s", exc)

    def _load(self) -> tuple[ClusterConfig, bytes] | None:
        """cluster.xml and the key, validated; None when cluster.xml does not exist (blocking I/O)."""
        path = self.paths.cluster_xml
        if not path.exists():
            return None
        config, report = load_cluster(path)
        for warning in report.warnings:
            log.warning("%s", warning)
        report.raise_if_errors()
        assert config is not None
        return config, load_key(self.paths.cluster_key)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        assert self._tg is not None  # checked by reload()
        task: asyncio.Task[None] = self._tg.create_task(coro, name="cluster-channel")
        return task

    async def _stop_channel(self) -> None:
        running, self._running = self._running, None
        if running is None:
            return
        running.task.cancel()
        # Wait for the task to finish so the old and new channels never send at the same time.
        await asyncio.gather(running.task, return_exceptions=True)
        running.channel.close()

    async def close(self) -> None:
        """Stop the module engines, then the channel (daemon shutdown)."""
        await self.engines.close()
        async with self._lock:
            await self._stop_channel()
