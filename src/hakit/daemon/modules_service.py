"""Modules as hakitd serves them: the service under ``/api/v1/modules/...`` and the health check.

State queries and admin commands are forwarded to the module's engine over its control socket
(``docs/design/engine-protocol.md``); the module log, the script logs and ``ready.txt`` are read
from the files the engine maintains, so they answer even while the engine is down.

Errors the API turns into answers:

* :class:`EngineDown` (HTTP 503, ``engine_down``): the engine does not answer; for a state query it
  carries what the files say (``state/<module>/state``) in ``details``;
* :class:`CommandRefused` (HTTP 409, the engine's own code): the engine refused the command.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hakit.daemon.supervisor import EngineSupervisor
from hakit.engine import control
from hakit.engine.modlog import MAIN_LEVELS, Level, LogRecord, SqliteModuleLog, module_log_path
from hakit.engine.scripts import list_userlogs
from hakit.errors import HakitError, NotFoundError, PeerProtocolError, UserConfigError
from hakit.modules.ids import check_module_name
from hakit.modules.runstate import running_reason
from hakit.modules.store import list_modules
from hakit.paths import NodePaths

Request = Callable[[Path, dict[str, Any], float], Awaitable[dict[str, Any]]]

STATE_FILE = "state"
READY_FILE = "ready.txt"
COMMANDS = frozenset(
    {
        "start",
        "stop",
        "restart",
        "stopstart",
        "forcestop",
        "swap",
        "prim",
        "second",
        "primforce",
        "failover",
    }
)
# Which options each command takes (SafeKit: swap nosync, prim|second fullsync, failover on|off).
OPTIONS: dict[str, frozenset[str]] = {
    "swap": frozenset({"nosync"}),
    "prim": frozenset({"fullsync"}),
    "second": frozenset({"fullsync"}),
    "failover": frozenset({"value"}),
}
MAX_LOG_LINES = 10_000
LIST_STATE_TIMEOUT = 2.0  # per engine, when listing every module: one stuck engine must not stall


class EngineDown(PeerProtocolError):
    """The engine of a module is not running or does not answer."""

    code = "engine_down"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class CommandRefused(HakitError):
    """The engine refused a command (its own ``code`` and ``message``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_state_file(paths: NodePaths, module: str) -> tuple[str, str] | None:
    """``(STATE, READINESS)`` from ``state/<module>/state``, or None when there is none."""
    try:
        words = (paths.module_state(module) / STATE_FILE).read_text(encoding="utf-8").split()
    except OSError:
        return None
    if not words:
        return None
    state = words[0].upper()
    readiness = _readiness(words[1]) if len(words) > 1 else "NOT_READY"
    return state, readiness


def _readiness(word: str) -> str:
    """``READY`` from ``Ready``/``READY``, ``NOT_READY`` from ``NotReady``/``NOT_READY``..."""
    folded = word.replace("_", "").upper()
    return {"READY": "READY", "NOTREADY": "NOT_READY", "TRANSIENT": "TRANSIENT"}.get(
        folded, word.upper()
    )


def record_dict(record: LogRecord) -> dict[str, Any]:
    """One module log line as the API returns it (``text`` is SafeKit's raw line, daemon's time
    zone; clients rebuild the line in theirs from ``ts_wall``)."""
    return {
        "id": record.id,
        "ts_wall": record.ts_wall,
        "ts_mono": record.ts_mono,
        "time": record.wall.isoformat(),
        "component": record.component,
        "level": record.level.value,
        "code": record.code,
        "message": record.message,
        "text": record.render(),
    }


def parse_levels(levels: str | None) -> frozenset[Level] | None:
    """``"E,C"`` or ``"EC"`` → those levels; ``"main"`` → C, E, U, S; None or ``"all"`` → all."""
    if levels is None or levels.strip().lower() in ("", "all"):
        return None
    if levels.strip().lower() == "main":
        return MAIN_LEVELS
    letters = [c for c in levels if c not in ", "]
    return frozenset(Level.parse(letter) for letter in letters)


class ModulesService:
    """What hakitd knows and does about the modules of the node (one per hakitd)."""

    def __init__(
        self,
        paths: NodePaths,
        supervisor: EngineSupervisor,
        *,
        request: Request = control.request,
        timeout: float = 10.0,
        hostname: Callable[[], str] = platform.node,
    ) -> None:
        self.paths = paths
        self.supervisor = supervisor
        self._request = request
        self._timeout = timeout
        self._hostname = hostname

    # -- queries -------------------------------------------------------------------------------

    async def list(self) -> dict[str, Any]:
        """Every module of the node: what the files say, its engine, and its state."""
        infos = await asyncio.to_thread(list_modules, self.paths)
        states = await asyncio.gather(*(self._quick_state(info.name) for info in infos))
        modules = []
        for info, state in zip(infos, states, strict=True):
            status = self.supervisor.status(info.name)
            row = info.to_dict()
            row["engine"] = status.to_dict() if status else None
            row.update(state)
            modules.append(row)
        return {"modules": modules}

    async def _quick_state(self, module: str) -> dict[str, Any]:
        if self.supervisor.is_alive(module):
            try:
                answer = await self._ask(module, {"op": "state"}, LIST_STATE_TIMEOUT)
            except PeerProtocolError:
                pass
            else:
                if answer.get("ok", True):
                    return {
                        "state": answer.get("state"),
                        "readiness": answer.get("readiness"),
                        "state_source": "engine",
                    }
        files = read_state_file(self.paths, module)
        return {
            "state": files[0] if files else None,
            "readiness": files[1] if files else None,
            "state_source": "file" if files else None,
        }

    async def state(self, module: str) -> dict[str, Any]:
        """The engine's answer to ``{"op": "state"}``, plus its supervision status."""
        self._require(module)
        status = self.supervisor.status(module)
        engine = status.to_dict() if status else None
        try:
            answer = await self._ask(module, {"op": "state"}, self._timeout)
        except PeerProtocolError as exc:
            files = read_state_file(self.paths, module)
            raise EngineDown(
                f"module {module}: {exc}"
                + (f" ({status.problem})" if status and status.problem else ""),
                {
                    "module": module,
                    "state": files[0] if files else None,
                    "readiness": files[1] if files else None,
                    "state_source": "file" if files else None,
                    "engine": engine,
                },
            ) from None
        if answer.get("ok") is False:
            raise CommandRefused(
                str(answer.get("code") or "refused"), str(answer.get("message") or answer)
            )
        answer.pop("ok", None)
        answer["engine"] = engine
        return answer

    def is_ready(self, module: str) -> bool:
        """The health check: ``ready.txt`` exists and the engine runs (read now, never cached)."""
        try:
            check_module_name(module)
        except UserConfigError:
            return False
        ready = (self.paths.module_state(module) / READY_FILE).exists()
        return ready and self.supervisor.is_alive(module)

    def log(
        self,
        module: str,
        *,
        after_id: int | None = None,
        limit: int = 300,
        levels: frozenset[Level] | None = None,
    ) -> dict[str, Any]:
        """Module log lines (blocking: SQLite), oldest first: the last ``limit`` ones, or the
        first ``limit`` after ``after_id``."""
        self._require(module)
        if not 1 <= limit <= MAX_LOG_LINES:
            raise UserConfigError(f"limit={limit}: ask for 1 to {MAX_LOG_LINES} lines")
        if not module_log_path(self.paths, module).exists():
            return {"module": module, "lines": [], "last_id": 0}
        with SqliteModuleLog.for_module(self.paths, module, readonly=True) as modlog:
            if after_id is None:
                records = modlog.tail(limit, levels)
            else:
                records = modlog.since(after_id, levels, limit)
            last_id = modlog.last_id()
        return {"module": module, "lines": [record_dict(r) for r in records], "last_id": last_id}

    def userlogs(self, module: str) -> dict[str, Any]:
        """The script logs (``.ulog``) of ``module``, oldest first (blocking: directory scan)."""
        self._require(module)
        logs = list_userlogs(self.paths.module_state(module))
        return {
            "module": module,
            "userlogs": [
                {
                    "name": ulog.path.name,
                    "path": str(ulog.path),
                    "script": ulog.script,
                    "started": ulog.started.isoformat(),
                    "size": ulog.size,
                }
                for ulog in logs
            ],
        }

    # -- operations ----------------------------------------------------------------------------

    async def command(
        self,
        module: str,
        command: str,
        options: dict[str, Any] | None = None,
        identity: str | None = None,
        origin: str | None = None,
    ) -> dict[str, Any]:
        """Forward an admin command to the engine; its answer once it has decided."""
        self._require(module)
        message = {
            "op": "command",
            "command": command,
            "options": check_options(command, options or {}),
            "identity": identity or None,
            "origin": origin or f"admin@{self._hostname()}",
        }
        try:
            answer = await self._ask(module, message, self._timeout)
        except PeerProtocolError as exc:
            raise EngineDown(f"module {module}: {exc}; the command was not sent") from None
        if not answer.get("ok"):
            raise CommandRefused(
                str(answer.get("code") or "refused"),
                str(answer.get("message") or f"{command} refused by the engine of {module}"),
            )
        return answer

    async def reload(self, module: str, *, force: bool = False) -> dict[str, Any]:
        """Restart the engine of ``module`` on its active copy (refused while the module runs,
        unless ``force``: the engine's SIGTERM stops the module, as ``hakit stop``)."""
        self._require(module)
        if not force:
            reason = await asyncio.to_thread(running_reason, self.paths, module)
            if reason is not None:
                raise CommandRefused(
                    "module_running",
                    f"module {module} runs ({reason}): stop it first (hakit stop -m {module}), "
                    "or force the restart of its engine",
                )
        status = await self.supervisor.restart(module)
        return {"module": module, "engine": status.to_dict()}

    # -- internals -----------------------------------------------------------------------------

    async def _ask(self, module: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        path = control.socket_path(self.paths.run, module)
        try:
            return await self._request(path, message, timeout)
        except (OSError, ValueError) as exc:  # a reset connection, a line that is not JSON
            raise PeerProtocolError(f"the engine of module {module} failed: {exc}") from None

    def _require(self, module: str) -> None:
        check_module_name(module)
        if not (
            self.paths.module_source(module).is_dir()
            or self.paths.module_active(module).exists()
            or self.supervisor.status(module) is not None
        ):
            raise NotFoundError(
                f"module {module} is not installed on this node (see `hakit module list`)"
            )


def check_options(command: str, options: dict[str, Any]) -> dict[str, Any]:
    """The command's options, checked: a known command, known options of the right type."""
    if command not in COMMANDS:
        raise UserConfigError(
            f"unknown module command {command!r}: use one of {', '.join(sorted(COMMANDS))}"
        )
    allowed = OPTIONS.get(command, frozenset())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserConfigError(
            f"{command}: unknown option(s) {', '.join(unknown)}"
            + (f" (it takes {', '.join(sorted(allowed))})" if allowed else " (it takes none)")
        )
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name == "value":
            if value not in ("on", "off"):
                raise UserConfigError(f"{command}: value must be 'on' or 'off', not {value!r}")
            checked[name] = value
        else:
            if not isinstance(value, bool):
                raise UserConfigError(f"{command}: option {name} must be true or false")
            checked[name] = value
    if command == "failover" and "value" not in checked:
        raise UserConfigError("failover: say 'on' or 'off'")
    return checked
