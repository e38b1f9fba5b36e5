"""Module engines under hakitd: one child process per configured module, restarted when it dies.

Theory of operation
-------------------
A module is *configured* when ``active/<module>`` exists and resolves (``hakit config`` swaps that
symbolic link atomically). For each configured module hakitd runs ``python -m hakit.engine
<module>`` (``docs/design/engine-protocol.md`` is the contract) and keeps it running:

* every ``poll_interval`` (2 s) :meth:`EngineSupervisor.reconcile` compares the active directory
  with the engines it runs: a new module gets an engine, a removed one has its engine stopped, and a
  module whose active copy changed (new link target or new ``module.json`` signature) has its
  engine restarted on the new copy;
* an engine that exits is restarted after a back-off (1 s, doubling up to 30 s, back to 1 s once an
  engine has lived 60 s), so a crash loop costs little CPU and a rare crash is repaired at once;
* exit code 78 (``EX_CONFIG``) means "this configuration cannot run on this node" (the engine
  logged why): restarting would fail the same way, so the engine is *held* until its active copy
  changes or hakitd reloads (:meth:`EngineSupervisor.release_held`).

Stopping an engine (module removed, restart, hakitd shutdown) sends SIGTERM, which the engine
handles as ``hakit stop`` (scripts, VIP, announce to the peer) before exiting; SIGKILL only once
the engine's own stop limit (from the module's ``nicestoptimeout`` and ``forcestoptimeout``) has
passed, plus a margin (:func:`engine_stop_timeout`).

Each engine's stdout and stderr are appended to ``var/log/hakit/engine-<module>.log``, with a line
from hakitd at each start and exit. Everything runs in the daemon's TaskGroup, as asyncio
subprocesses: the event loop never waits on a child.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hakit.errors import HakitError, NotFoundError
from hakit.modules.store import MODULE_JSON
from hakit.paths import NodePaths

log = logging.getLogger(__name__)

EX_CONFIG = 78  # sysexits.h: the engine cannot run this configuration here; do not restart
POLL_INTERVAL = 2.0
FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STABLE_AFTER = 60.0  # an engine that lived this long crashed for a new reason: back-off resets
ENGINE_STOP_BASE = 60.0  # the engine's own stop limit: this + 2 * (nice + force stop timeouts)
STOP_MARGIN = 30.0  # beyond the engine's own limit: only a stuck engine is killed
DEFAULT_STOP_SCRIPTS = 600.0  # nicestoptimeout + forcestoptimeout defaults, when unreadable

EngineCommand = Callable[[str], Sequence[str]]
Sleep = Callable[[float], Awaitable[None]]


def engine_command(module: str) -> list[str]:
    """The production command line of the engine of ``module``."""
    return [sys.executable, "-m", "hakit.engine", module]


def engine_log_path(paths: NodePaths, module: str) -> Path:
    """Where the stdout and stderr of the engine of ``module`` are appended."""
    return paths.log / f"engine-{module}.log"


def engine_stop_timeout(paths: NodePaths, module: str) -> float:
    """How long to wait after SIGTERM before SIGKILL (blocking: reads the active userconfig.xml).

    The engine may have to run its stop scripts (each up to ``nicestoptimeout``, then the forced
    call up to ``forcestoptimeout``) before it exits, and gives itself ``ENGINE_STOP_BASE + 2 *
    (nicestoptimeout + forcestoptimeout)`` for that (``hakit.engine.__main__``); hakitd waits
    ``STOP_MARGIN`` more, so that it only kills an engine that is stuck. A configuration that
    cannot be read gets the defaults of both timeouts.
    """
    from hakit.config.userconfig import load_userconfig

    scripts = DEFAULT_STOP_SCRIPTS
    try:
        config, _ = load_userconfig(paths.module_active(module) / "conf" / "userconfig.xml")
    except (HakitError, OSError) as exc:
        log.warning("module %s: stop timeout from defaults (%s)", module, exc)
        config = None
    if config is not None:
        scripts = 0.0
        if config.user is not None:
            scripts = config.user.nicestoptimeout + config.user.forcestoptimeout
    return ENGINE_STOP_BASE + 2 * scripts + STOP_MARGIN


class EngineState(enum.Enum):
    """Where the supervision of one engine stands."""

    RUNNING = "running"  # the process is alive
    BACKOFF = "backoff"  # it exited (or could not start): restarted after a delay
    HELD = "held"  # it exited 78: waits for a new active copy or a reload
    STOPPING = "stopping"  # being stopped (module removed, restart, shutdown)


@dataclass(frozen=True)
class ActiveCopy:
    """What identifies the configuration an engine runs: a change means "restart the engine"."""

    target: str  # resolved directory of active/<module>
    signature: str | None  # module.json "signature" (None if unreadable)


def read_active_copy(paths: NodePaths, module: str) -> ActiveCopy | None:
    """The active copy of ``module``, or None when it is not configured (blocking I/O)."""
    import json

    link = paths.module_active(module)
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError):
        return None  # no link, dangling link or loop: nothing to run
    if not target.is_dir():
        return None
    signature: str | None = None
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((target / MODULE_JSON).read_text(encoding="utf-8"))
        if isinstance(meta, dict) and isinstance(meta.get("signature"), str):
            signature = meta["signature"]
    return ActiveCopy(str(target), signature)


def scan_active(paths: NodePaths) -> dict[str, ActiveCopy]:
    """Every configured module and its active copy (blocking I/O)."""
    try:
        names = sorted(p.name for p in paths.active.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        return {}
    copies = {}
    for name in names:
        copy = read_active_copy(paths, name)
        if copy is not None:
            copies[name] = copy
    return copies


class Backoff:
    """Delays before restarting an engine: ``first``, doubling up to ``maximum``; an engine that
    lived ``stable_after`` seconds or more starts again from ``first``."""

    def __init__(
        self,
        first: float = FIRST_DELAY,
        maximum: float = MAX_DELAY,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        self.first, self.maximum, self.stable_after = first, maximum, stable_after
        self._next = first

    def after_exit(self, lived: float) -> float:
        """The delay before the next start of an engine that exited after ``lived`` seconds."""
        if lived >= self.stable_after:
            self._next = self.first
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


@dataclass(frozen=True)
class EngineStatus:
    """A snapshot of one supervised engine (the API shows it)."""

    module: str
    state: EngineState
    pid: int | None  # of the running process, else None
    restarts: int  # starts after the first one
    last_exit: int | None  # exit code of the last process (negative: killed by that signal)
    since: float  # wall-clock time of the last state change (display only)
    problem: str | None  # why it is not running, for humans

    @property
    def alive(self) -> bool:
        """Whether the engine process runs."""
        return self.state is EngineState.RUNNING

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "module": self.module,
            "state": self.state.value,
            "alive": self.alive,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "since": datetime.fromtimestamp(self.since, UTC).isoformat(timespec="seconds"),
            "problem": self.problem,
        }


class _Engine:
    """The supervisor's mutable record of one engine, and its runner task."""

    def __init__(self, module: str, copy: ActiveCopy, now: float) -> None:
        self.module = module
        self.copy = copy
        self.state = EngineState.BACKOFF
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.since = now
        self.problem: str | None = "starting"
        self.task: asyncio.Task[None] | None = None

    def status(self) -> EngineStatus:
        return EngineStatus(
            self.module,
            self.state,
            self.pid if self.state is EngineState.RUNNING else None,
            self.restarts,
            self.last_exit,
            self.since,
            self.problem,
        )


class EngineSupervisor:
    """Runs and supervises the engine process of every configured module of the node.

    ``command`` builds an engine's command line (tests run a small fake engine); ``sleep`` waits
    the back-off delays and ``clock`` measures engine lifetimes (tests pass fakes: no real waiting);
    ``stop_timeout`` says how long an engine may take to stop after SIGTERM.
    """

    def __init__(
        self,
        paths: NodePaths,
        *,
        command: EngineCommand = engine_command,
        environ: Mapping[str, str] | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        stop_timeout: Callable[[NodePaths, str], float] = engine_stop_timeout,
        poll_interval: float = POLL_INTERVAL,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.paths = paths
        self._command = command
        env = dict(os.environ if environ is None else environ)
        env["HAKIT_ROOT"] = str(paths.root)  # the engine acts on the same node as hakitd
        self._environ = env
        self._sleep = sleep
        self._clock = clock
        self._wall = wall
        self._stop_timeout = stop_timeout
        self._poll_interval = poll_interval
        self._backoff = backoff
        self._engines: dict[str, _Engine] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._poller: asyncio.Task[None] | None = None
        self._closing = False
        self._lock = asyncio.Lock()  # one reconciliation at a time (poll, restart, reload)

    def attach(self, tg: asyncio.TaskGroup) -> None:
        """Run the engines' tasks in ``tg`` (the daemon's TaskGroup)."""
        self._tg = tg

    def start(self) -> None:
        """Start polling the active directory (:meth:`run` as a task of the TaskGroup)."""
        if self._poller is None:
            self._poller = self._spawn(self.run(), "engines-poll")

    # -- queries -------------------------------------------------------------------------------

    def status(self, module: str) -> EngineStatus | None:
        """The engine of ``module``, or None when hakitd runs none for it."""
        engine = self._engines.get(module)
        return engine.status() if engine else None

    def statuses(self) -> dict[str, EngineStatus]:
        """Every supervised engine, by module name."""
        return {name: engine.status() for name, engine in sorted(self._engines.items())}

    def is_alive(self, module: str) -> bool:
        """Whether the engine process of ``module`` runs now."""
        engine = self._engines.get(module)
        return engine is not None and engine.state is EngineState.RUNNING

    # -- operations ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile with the active directory every ``poll_interval`` seconds, until cancelled."""
        while not self._closing:
            try:
                await self.reconcile()
            except OSError as exc:
                # e.g. the active directory unreadable for a moment: the engines keep running.
                log.error("cannot scan %s for configured modules: %s", self.paths.active, exc)
            await asyncio.sleep(self._poll_interval)

    async def reconcile(self) -> None:
        """Start, stop or restart engines so that each configured module has one on its copy."""
        async with self._lock:
            if self._closing:
                return
            active = await asyncio.to_thread(scan_active, self.paths)
            for name, engine in list(self._engines.items()):
                if engine.state is EngineState.STOPPING:
                    continue  # its replacement is decided once it is gone
                copy = active.get(name)
                if copy is None:
                    log.info("module %s is no longer configured: stopping its engine", name)
                    self._spawn(self._retire(engine), f"retire-{name}")
                elif copy != engine.copy:
                    log.info("the active copy of module %s changed: restarting its engine", name)
                    self._spawn(self._replace(engine), f"replace-{name}")
            for name, copy in active.items():
                if name not in self._engines:
                    self._start(name, copy)

    async def restart(self, module: str) -> EngineStatus:
        """Restart the engine of ``module`` (``POST .../reload``) and return its new status."""
        engine = self._engines.get(module)
        if engine is not None:
            await self._replace(engine)
        else:
            copy = await asyncio.to_thread(read_active_copy, self.paths, module)
            if copy is None:
                raise NotFoundError(
                    f"module {module} is not configured on this node (no "
                    f"{self.paths.module_active(module)}): run `hakit config -m {module}` first"
                )
            async with self._lock:
                if module not in self._engines and not self._closing:
                    self._start(module, copy)
        status = self.status(module)
        if status is None:
            raise NotFoundError(f"module {module} is no longer configured on this node")
        return status

    async def release_held(self) -> None:
        """Give every engine held after exit 78 a new start (hakitd reloaded its configuration)."""
        held = [e for e in self._engines.values() if e.state is EngineState.HELD]
        for engine in held:
            log.info("reload: starting the held engine of module %s again", engine.module)
        await asyncio.gather(*(self._replace(engine) for engine in held))

    async def close(self) -> None:
        """Stop every engine (SIGTERM, then SIGKILL after its stop timeout): daemon shutdown."""
        self._closing = True
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait({self._poller})
        engines = list(self._engines.values())
        await asyncio.gather(*(self._stop(engine) for engine in engines))
        self._engines.clear()

    # -- internals -----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._tg is None:
            coro.close()
            raise RuntimeError("EngineSupervisor.attach(task_group) must be called first")
        task: asyncio.Task[None] = self._tg.create_task(coro, name=name)
        return task

    def _start(self, module: str, copy: ActiveCopy) -> None:
        engine = _Engine(module, copy, self._wall())
        self._engines[module] = engine
        engine.task = self._spawn(self._supervise(engine), f"engine-{module}")

    async def _retire(self, engine: _Engine) -> None:
        await self._stop(engine)
        if self._engines.get(engine.module) is engine:
            del self._engines[engine.module]

    async def _replace(self, engine: _Engine) -> None:
        await self._retire(engine)
        copy = await asyncio.to_thread(read_active_copy, self.paths, engine.module)
        async with self._lock:
            if copy is not None and engine.module not in self._engines and not self._closing:
                self._start(engine.module, copy)

    async def _stop(self, engine: _Engine) -> None:
        self._set(engine, EngineState.STOPPING, "stopping")
        if engine.task is not None:
            engine.task.cancel()  # the runner terminates its process, see _run_once
            # wait() and not the task itself: a caller cancelled meanwhile must not cancel it again.
            await asyncio.wait({engine.task})

    def _set(self, engine: _Engine, state: EngineState, problem: str | None) -> None:
        if engine.state is EngineState.STOPPING and state is not EngineState.STOPPING:
            return  # a stop in progress is never overridden by the runner's own bookkeeping
        if engine.state is not state:
            engine.since = self._wall()
        engine.state, engine.problem = state, problem

    async def _supervise(self, engine: _Engine) -> None:
        """Run the engine of one module again and again, until it is held or cancelled."""
        backoff = self._backoff()
        try:
            while True:
                started = self._clock()
                code = await self._run_once(engine)
                lived = self._clock() - started
                engine.last_exit = code
                if code == EX_CONFIG:
                    self._set(engine, EngineState.HELD, _held_problem(self.paths, engine.module))
                    log.error("module %s: %s", engine.module, engine.problem)
                    return
                delay = backoff.after_exit(lived)
                what = "could not start" if code is None else f"exited with code {code}"
                self._set(engine, EngineState.BACKOFF, f"engine {what}; restart in {delay:g} s")
                log.warning(
                    "engine of module %s %s: restarting in %g s", engine.module, what, delay
                )
                await self._sleep(delay)
                engine.restarts += 1
        finally:
            engine.pid = None

    async def _run_once(self, engine: _Engine) -> int | None:
        """Start the engine, wait for its exit and return its code (None: it could not start)."""
        module = engine.module
        timeout = await asyncio.to_thread(self._stop_timeout, self.paths, module)
        log_path = engine_log_path(self.paths, module)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        except OSError as exc:
            log.error("module %s: cannot open the engine log %s: %s", module, log_path, exc)
            out = os.open(os.devnull, os.O_WRONLY)
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *self._command(module),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=self._environ,
            )
        )
        try:
            # Shielded: a stop arriving while the child is being created must still find it.
            proc = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                await _terminate(await spawn, module, timeout)
            raise
        except OSError as exc:
            log.error("module %s: cannot start its engine: %s", module, exc)
            _note(out, f"cannot start the engine: {exc}")
            return None
        finally:
            os.close(out)
        engine.pid = proc.pid
        self._set(engine, EngineState.RUNNING, None)
        log.info("engine of module %s started (pid %d)", module, proc.pid)
        _note_file(log_path, f"engine started (pid {proc.pid})")
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            code = await _terminate(proc, module, timeout)
            engine.last_exit = code
            _note_file(log_path, f"engine stopped by hakitd (pid {proc.pid}, exit code {code})")
            raise
        _note_file(log_path, f"engine exited (pid {proc.pid}, exit code {code})")
        return code


async def _terminate(proc: asyncio.subprocess.Process, module: str, timeout: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            return await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            log.error(
                "engine of module %s (pid %d) still runs %g s after SIGTERM: SIGKILL",
                module,
                proc.pid,
                timeout,
            )
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()


def _held_problem(paths: NodePaths, module: str) -> str:
    return (
        f"the engine exited with code {EX_CONFIG}: its configuration cannot run on this node "
        f"(see the module log and {engine_log_path(paths, module)}); it is started again after "
        f"`hakit config -m {module}` or a reload of hakitd"
    )


def _stamp() -> str:
    return datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")


def _note(fd: int, text: str) -> None:
    """A line from hakitd in an engine log (never fails: the log is for humans)."""
    with contextlib.suppress(OSError):
        os.write(fd, f"--- {_stamp()} hakitd: {text}\n".encode())


def _note_file(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            _note(fd, text)
        finally:
            os.close(fd)
