"""Running a module's user scripts (``start_prim``, ``stop_prim force``, ``transition`` ...).

Theory of operation
-------------------
The decision core says *which* script to run with *which* arguments; this module only runs it and
reports what happened. It is the one side effect behind :class:`ScriptRunner`; the engine's tests
use :class:`hakit.testing.fake_scripts.FakeScriptRunner` instead.

* **Resolution.** A script is looked up by name in the module's active ``bin`` directory
  (``SAFEUSERBIN`` = ``$HAKIT_ROOT/var/lib/hakit/active/<module>/bin``). Only scripts that exist run:
  a missing one is reported as :attr:`ScriptStatus.ABSENT`, never as an error, and the caller decides
  what that means. A script that exists but cannot be executed is a clear error result.
* **Process group.** Each script starts in a new session (``setsid``), so the script and every
  process it forks share one process group whose id is the script's pid. A timeout or a cancellation
  stops the *whole group*: SIGTERM, a short grace, then SIGKILL of whatever is left. A script that
  exits on its own is never followed by a kill: ``start_prim`` legitimately leaves the application's
  daemon running in its group, and killing it would stop the service it just started. (A process that
  calls ``setsid`` itself escapes the group; only cgroups could catch it.)
* **Working directory** is ``SAFEUSERVAR``: it is per module, writable, and survives
  ``hakit config`` (which replaces the directory behind ``SAFEUSERBIN``), so a daemon started by a
  script never sits in a deleted directory.
* **Output.** stdin is ``/dev/null``; stdout and stderr are appended to one file per run,
  ``$SAFEUSERVAR/userlog_<YYYY>_<MM>_<DD>T<hhmmss>_<script>.ulog`` (SafeKit's name, local wall-clock
  time, used for the name only). Two runs of one script within the same second share a file; the
  header and footer lines written by hakit (``[hakit] ...``) tell the runs apart. ``last_<script>.ulog``
  is a symlink to the newest log of each script. With ``<user logging="none">`` output goes to
  ``/dev/null``. :func:`trim_userlogs` bounds the directory at module start (``userlogsize``).
* **Time.** Timeouts use the event loop's monotonic clock; an NTP step never shortens or extends one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import signal
import sys
import sysconfig
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from hakit.config.model import User
from hakit.errors import LocalSystemError, UserConfigError
from hakit.paths import NodePaths

_log = logging.getLogger(__name__)

# A script name is a plain file name in the module's bin directory: nothing that could climb out of it.
_SCRIPT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USERLOG_NAME = re.compile(r"^userlog_(\d{4})_(\d{2})_(\d{2})T(\d{2})(\d{2})(\d{2})_(.+)\.ulog$")

# The PATH a script gets when the daemon itself was started without one (systemd always sets one).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Variables the runner owns: a <var> of the same name is refused rather than silently shadowed.
RESERVED_VARIABLES = frozenset(
    {"SAFE", "SAFEMODULE", "SAFEBIN", "SAFEUSERBIN", "SAFEUSERCONF", "SAFEVAR", "SAFEUSERVAR"}
)


class UserLogging(enum.Enum):
    """``<user logging="...">``: where a script's stdout and stderr go."""

    USERLOG = "userlog"
    NONE = "none"


class ScriptStatus(enum.Enum):
    """How a script run ended."""

    OK = "ok"  # exited with status 0
    FAILED = "failed"  # exited non-zero, or was killed by a signal nobody here sent
    TIMED_OUT = "timed_out"  # still running at its timeout: its process group was killed
    ABSENT = "absent"  # no such script in SAFEUSERBIN: nothing ran
    NOT_EXECUTABLE = "not_executable"  # exists but is not an executable regular file
    START_FAILED = "start_failed"  # exec failed (bad interpreter line, exec format error...)


@dataclass(frozen=True)
class ScriptRequest:
    """One call of a module script.

    ``args`` are SafeKit's: current state, next state, action; the forced stop call puts ``"force"``
    first (see :meth:`forced`). ``timeout`` is in seconds (None: no limit, as for start scripts).
    ``env`` holds additions to the environment, normally the module's ``<var name value>`` pairs.
    """

    module: str
    script: str
    args: tuple[str, ...] = ()
    timeout: float | None = None
    env: Mapping[str, str] = field(default_factory=dict, hash=False)
    logging: UserLogging = UserLogging.USERLOG

    def __post_init__(self) -> None:
        # A read-only copy: the request is a value, the caller's dict may change afterwards.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not _SCRIPT_NAME.match(self.script) or self.script in (".", ".."):
            raise UserConfigError(
                f"module {self.module}: script name {self.script!r} is not a plain file name of "
                "the module's bin directory (letters, digits, '_', '.', '+', '-')"
            )
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"script {self.script}: timeout must be positive, not {self.timeout}")

    @classmethod
    def transition(
        cls,
        module: str,
        script: str,
        current: str,
        next_state: str,
        action: str,
        *,
        user: User | None = None,
        force: bool = False,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ScriptRequest:
        """A call with SafeKit's arguments; ``force=True`` puts ``force`` before the three.

        ``user`` (the module's ``<user>``) gives the ``<var>`` environment and the logging mode;
        ``env`` adds to it. The timeout is the caller's choice (``user.nicestoptimeout`` for a
        graceful stop, ``user.forcestoptimeout`` for the forced one, None for start scripts).
        """
        args = (current, next_state, action)
        variables = user.environment() if user is not None else {}
        variables.update(env or {})
        mode = UserLogging(user.logging) if user is not None else UserLogging.USERLOG
        return cls(
            module=module,
            script=script,
            args=("force", *args) if force else args,
            timeout=timeout,
            env=variables,
            logging=mode,
        )

    def forced(self, timeout: float | None) -> ScriptRequest:
        """The second call of a stop script: same call with ``force`` first (``forcestoptimeout``)."""
        args = self.args if self.args[:1] == ("force",) else ("force", *self.args)
        return ScriptRequest(self.module, self.script, args, timeout, self.env, self.logging)

    @property
    def command_line(self) -> str:
        """``stop_prim force ALONE WAIT stop``: how the call reads in logs."""
        return " ".join((self.script, *self.args))


@dataclass(frozen=True)
class ScriptResult:
    """What happened to one :class:`ScriptRequest`."""

    request: ScriptRequest
    status: ScriptStatus
    exit_code: int | None = None  # set when the script exited by itself (or after SIGTERM)
    signal: int | None = None  # the signal that ended the script's own process, if any
    duration: float = 0.0  # seconds, monotonic clock
    log_path: Path | None = None  # the .ulog file; None when nothing ran or logging="none"
    pid: int | None = None  # the script's pid, which is also its process group id
    error: str | None = None  # why the script could not run (NOT_EXECUTABLE, START_FAILED)

    @property
    def ok(self) -> bool:
        """True when the script ran and exited with status 0."""
        return self.status is ScriptStatus.OK

    @property
    def timed_out(self) -> bool:
        """True when the script was still running at its timeout and its group was killed."""
        return self.status is ScriptStatus.TIMED_OUT

    def describe(self) -> str:
        """One line for the module log: ``Script stop_prim force ... timed out after 300 s``."""
        head = f"Script {self.request.command_line}"
        if self.status is ScriptStatus.ABSENT:
            return f"{head}: absent, skipped"
        if self.error is not None:
            return f"{head}: {self.error}"
        if self.status is ScriptStatus.TIMED_OUT:
            return (
                f"{head}: timed out after {self.request.timeout:g} s, "
                f"process group {self.pid} killed"
            )
        if self.signal is not None:
            return f"{head}: killed by {_signal_name(self.signal)} after {self.duration:.1f} s"
        return f"{head}: exit code {self.exit_code} after {self.duration:.1f} s"


class ScriptRunner(Protocol):
    """Runs module scripts. The engine's only way to start a user process."""

    async def run(self, request: ScriptRequest) -> ScriptResult:
        """Run ``request`` to its end (or timeout) and report; cancelling kills its process group."""
        ...


@dataclass(frozen=True)
class InstallDirs:
    """Where hakit itself is installed: ``SAFE`` (prefix) and ``SAFEBIN`` (its commands)."""

    prefix: Path
    bin: Path

    @classmethod
    def detect(cls) -> InstallDirs:
        """The running interpreter's installation: the venv holding the ``hakit`` command.

        ``sysconfig``'s "scripts" directory is where pip put the ``hakit`` console script, so a
        script can always call ``"$SAFEBIN/hakit" printi "..."``.
        """
        return cls(prefix=Path(sys.prefix), bin=Path(sysconfig.get_path("scripts")))


@dataclass(frozen=True)
class ModuleDirs:
    """A module's directories as its scripts see them (``SAFEUSERBIN`` and friends)."""

    userbin: Path  # active copy of bin/: the scripts that run
    userconf: Path  # active copy of conf/
    uservar: Path  # runtime state: module.db, userlogs; scripts may keep working files here
    var: Path  # SAFEVAR: hakit's variable data of the node

    @classmethod
    def of(cls, paths: NodePaths, module: str) -> ModuleDirs:
        """The directories of ``module`` on the node described by ``paths``."""
        active = paths.module_active(module)
        return cls(
            userbin=active / "bin",
            userconf=active / "conf",
            uservar=paths.module_state(module),
            var=paths.lib,
        )


def script_environment(
    request: ScriptRequest,
    paths: NodePaths,
    install: InstallDirs,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The complete environment of a script run.

    Layers, later wins: the daemon's ``base`` environment, the request's additions (``<var>``
    values), then the variables hakit owns (``SAFE*``, ``HAKIT_ROOT``), which a ``<var>`` may not
    shadow: a script must be able to trust ``$SAFEMODULE``.
    """
    dirs = ModuleDirs.of(paths, request.module)
    env = dict(base)
    env.setdefault("PATH", DEFAULT_PATH)
    for name, value in request.env.items():
        if not _ENV_NAME.match(name):
            raise UserConfigError(
                f"module {request.module}: <var name={name!r}> is not a valid environment variable "
                "name (letters, digits and '_', not starting with a digit)"
            )
        if name in RESERVED_VARIABLES:
            raise UserConfigError(
                f"module {request.module}: <var name={name!r}> would hide the variable hakit sets "
                "for every script; rename the variable"
            )
        if "\0" in value:
            raise UserConfigError(
                f"module {request.module}: <var name={name!r}> has a NUL character in its value"
            )
        env[name] = value
    env.update(
        SAFE=str(install.prefix),
        SAFEBIN=str(install.bin),
        SAFEMODULE=request.module,
        SAFEUSERBIN=str(dirs.userbin),
        SAFEUSERCONF=str(dirs.userconf),
        SAFEVAR=str(dirs.var),
        SAFEUSERVAR=str(dirs.uservar),
        HAKIT_ROOT=str(paths.root),
    )
    return env


# --- user logs ------------------------------------------------------------------------------------


def userlog_name(script: str, when: datetime) -> str:
    """SafeKit's log file name of one run: ``userlog_2021_08_06T084020_start_prim.ulog``."""
    return f"userlog_{when:%Y_%m_%dT%H%M%S}_{script}.ulog"


def latest_link_name(script: str) -> str:
    """Name of the symlink to the newest log of ``script`` (not matched by the userlog pattern)."""
    return f"last_{script}.ulog"


@dataclass(frozen=True)
class UserLog:
    """One script log file found in a module's SAFEUSERVAR."""

    path: Path
    script: str
    started: datetime  # local wall-clock time, to the second, as written in the name
    size: int


def list_userlogs(directory: Path, script: str | None = None) -> list[UserLog]:
    """The script logs in ``directory``, oldest first (optionally of one script only)."""
    logs: list[UserLog] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        match = _USERLOG_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        if script is not None and match.group(7) != script:
            continue
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        try:
            started = datetime(year, month, day, hour, minute, second)
            size = entry.stat(follow_symlinks=False).st_size
        except (ValueError, FileNotFoundError):
            continue  # a name that only looks like ours, or removed meanwhile
        logs.append(UserLog(Path(entry.path), match.group(7), started, size))
    logs.sort(key=lambda log: (log.started, log.path.name))
    return logs


def latest_userlog(directory: Path, script: str) -> Path | None:
    """The newest log of ``script`` in ``directory``, or None if it never ran with logging on."""
    link = directory / latest_link_name(script)
    if link.is_file():
        return directory / os.readlink(link)
    logs = list_userlogs(directory, script)
    return logs[-1].path if logs else None


@dataclass(frozen=True)
class TrimReport:
    """What :func:`trim_userlogs` did."""

    removed: tuple[Path, ...]
    truncated: tuple[Path, ...]
    bytes_before: int
    bytes_after: int

    @property
    def changed(self) -> bool:
        """True when a file was removed or cut."""
        return bool(self.removed or self.truncated)


def trim_userlogs(directory: Path, limit_kb: int) -> TrimReport:
    """Bound the script logs of one module to ``limit_kb`` KiB in total (``userlogsize``).

    Called at module start. The oldest files go first; if the newest alone is still over the limit
    it keeps only its last ``limit_kb`` KiB, cut at a line start. The cut is done in place (not by
    renaming a copy) so a daemon started by an earlier ``start_prim`` that still appends to the file
    keeps writing into the file the admin reads. Symlinks left pointing at removed files are removed.
    """
    if limit_kb < 0:
        raise ValueError(f"userlogsize must be >= 0 KB, not {limit_kb}")
    limit = limit_kb * 1024
    logs = list_userlogs(directory)
    before = sum(log.size for log in logs)
    total = before
    removed: list[Path] = []
    truncated: list[Path] = []
    while logs and total > limit and (len(logs) > 1 or limit == 0):
        oldest = logs.pop(0)
        with contextlib.suppress(FileNotFoundError):
            oldest.path.unlink()
        removed.append(oldest.path)
        total -= oldest.size
    if logs and total > limit:
        newest = logs[0]
        kept = _keep_tail(newest.path, limit)
        truncated.append(newest.path)
        total = kept
    _remove_dangling_links(directory)
    return TrimReport(tuple(removed), tuple(truncated), before, total)


def _keep_tail(path: Path, limit: int) -> int:
    """Cut ``path`` to at most its last ``limit`` bytes, from a line start; returns the new size."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        start = size - limit
        if start <= 0:
            return size
        f.seek(start - 1)
        data = f.read()
        # data[0] is the byte before the cut: if it ends a line, the cut already starts one.
        if data[:1] == b"\n":
            tail = data[1:]
        else:
            newline = data.find(b"\n", 1)
            tail = data[newline + 1 :] if newline >= 0 else data[1:]
        f.seek(0)
        f.truncate(0)
        f.write(tail)
        return len(tail)


def _remove_dangling_links(directory: Path) -> None:
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith("last_") and entry.is_symlink() and not Path(entry.path).exists():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


# --- the real runner ------------------------------------------------------------------------------


class SubprocessScriptRunner:
    """The production :class:`ScriptRunner`: one child process group per script run.

    ``grace`` is the time between SIGTERM and SIGKILL of a timed-out or cancelled script's group.
    ``base_env`` is the environment scripts inherit (default: this process's, read at each run).
    ``wall`` gives the local wall-clock time used only to name log files; ``monotonic`` measures
    durations.
    """

    # How often the group is checked for survivors between SIGTERM and SIGKILL.
    _POLL = 0.05

    def __init__(
        self,
        paths: NodePaths,
        *,
        grace: float = 2.0,
        install: InstallDirs | None = None,
        base_env: Mapping[str, str] | None = None,
        wall: Callable[[], datetime] = datetime.now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if grace < 0:
            raise ValueError(f"grace must be >= 0 s, not {grace}")
        self._paths = paths
        self._grace = grace
        self._install = install or InstallDirs.detect()
        self._base_env = base_env
        self._wall = wall
        self._monotonic = monotonic

    async def run(self, request: ScriptRequest) -> ScriptResult:
        """Run one script to its end; see the module docstring for what happens on the way."""
        dirs = ModuleDirs.of(self._paths, request.module)
        script = dirs.userbin / request.script
        refusal = _refusal(request, script)
        if refusal is not None:
            return refusal
        base = os.environ if self._base_env is None else self._base_env
        env = script_environment(request, self._paths, self._install, base)
        try:
            dirs.uservar.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalSystemError(
                f"module {request.module}: cannot create its state directory {dirs.uservar}: "
                f"{exc.strerror or exc}"
            ) from exc
        log_path, out_fd = self._open_output(request, dirs.uservar)
        started = self._monotonic()
        try:
            # Cancelled during the spawn, asyncio itself kills the just-started script (which has
            # had no time to fork anything yet); from the next line on, cancellation is ours.
            proc = await asyncio.create_subprocess_exec(
                str(script),
                *request.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_fd,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(dirs.uservar),
                start_new_session=True,
            )
        except OSError as exc:
            error = f"cannot be started: {exc.strerror or exc} (check its '#!' line and format)"
            result = ScriptResult(
                request, ScriptStatus.START_FAILED, log_path=log_path, error=error
            )
            self._footer(log_path, result)
            return result
        finally:
            if out_fd != asyncio.subprocess.DEVNULL:
                os.close(out_fd)
        returncode, timed_out = await self._wait(proc, request, log_path)
        if timed_out:
            status = ScriptStatus.TIMED_OUT
        else:
            status = ScriptStatus.OK if returncode == 0 else ScriptStatus.FAILED
        result = ScriptResult(
            request,
            status,
            exit_code=returncode if returncode >= 0 else None,
            signal=-returncode if returncode < 0 else None,
            duration=self._monotonic() - started,
            log_path=log_path,
            pid=proc.pid,
        )
        self._footer(log_path, result)
        return result

    async def _wait(
        self, proc: asyncio.subprocess.Process, request: ScriptRequest, log_path: Path | None
    ) -> tuple[int, bool]:
        """The script's return code once it is gone, and whether it had to be killed on timeout."""
        try:
            async with asyncio.timeout(request.timeout):
                return await proc.wait(), False
        except TimeoutError:
            return await self._stop_group(proc), True
        except asyncio.CancelledError:
            # The engine gave up on this script (module stopping, task group failing): the script
            # and everything it started must not outlive the decision that wanted them.
            try:
                await self._stop_group(proc)
            except asyncio.CancelledError:
                _killpg(proc.pid, signal.SIGKILL)  # cancelled again: no more grace
                raise
            self._footer(log_path, None, note=f"cancelled, process group {proc.pid} killed")
            raise

    def _open_output(self, request: ScriptRequest, uservar: Path) -> tuple[Path | None, int]:
        """The fd scripts write to (a fresh or reused .ulog, or DEVNULL), with the log's path.

        A log that cannot be opened (disk full, a directory in the way) never keeps a script from
        running: a failover must not fail for want of a log file. The script then writes to
        /dev/null and a warning says so.
        """
        if request.logging is UserLogging.NONE:
            return None, asyncio.subprocess.DEVNULL
        now = self._wall()
        path = uservar / userlog_name(request.script, now)
        try:
            # 0640: scripts print connection strings and the like; O_APPEND keeps a second run in
            # the same second (and daemons left running by the first) from overwriting each other.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            _log.warning(
                "module %s: cannot open the log %s of script %s (%s): the script runs with its "
                "output discarded; free space or fix the directory %s",
                request.module,
                path,
                request.script,
                exc.strerror or exc,
                uservar,
            )
            return None, asyncio.subprocess.DEVNULL
        try:
            os.write(fd, f"[hakit] {now:%Y-%m-%d %H:%M:%S} {request.command_line}\n".encode())
            _point_link(uservar / latest_link_name(request.script), path.name)
        except OSError as exc:
            _log.warning(
                "module %s: cannot write the header of %s or its last_ link (%s)",
                request.module,
                path,
                exc.strerror or exc,
            )
        return path, fd

    def _footer(self, log_path: Path | None, result: ScriptResult | None, note: str = "") -> None:
        if log_path is None:
            return
        line = note if result is None else result.describe()
        with contextlib.suppress(OSError), open(log_path, "a", encoding="utf-8") as f:
            f.write(f"[hakit] {line}\n")

    async def _stop_group(self, proc: asyncio.subprocess.Process) -> int:
        """SIGTERM the script's group, SIGKILL what is left after the grace; the script's status."""
        pgid = proc.pid
        _killpg(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._grace
        while loop.time() < deadline:
            if proc.returncode is not None and not live_group_members(pgid):
                break
            await asyncio.sleep(self._POLL)
        if live_group_members(pgid):
            _killpg(pgid, signal.SIGKILL)
        return await proc.wait()


def _refusal(request: ScriptRequest, script: Path) -> ScriptResult | None:
    """The result of a script that cannot run (ABSENT or NOT_EXECUTABLE), or None if it can."""
    if not os.path.lexists(script):
        return ScriptResult(request, ScriptStatus.ABSENT)
    if script.is_symlink() and not script.exists():
        reason = f"{script} is a symlink to {os.readlink(script)}, which does not exist"
    elif not script.is_file():
        reason = f"{script} is not a regular file"
    elif not os.access(script, os.X_OK):
        reason = (
            f"{script} is not executable (chmod +x it in the module's bin/ and run hakit config)"
        )
    else:
        return None
    return ScriptResult(request, ScriptStatus.NOT_EXECUTABLE, error=reason)


def _point_link(link: Path, target_name: str) -> None:
    """Make ``link`` a relative symlink to ``target_name``, atomically (rename over the old one)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def live_group_members(pgid: int) -> list[int]:
    """Pids of the processes of group ``pgid`` that are still alive (zombies excluded).

    ``kill(-pgid, 0)`` is not enough: killed children of a dead script are reparented to PID 1,
    and an init that does not reap (a container's, a lab node's) leaves them as zombies, which
    ``kill`` still finds although they hold no resources and cannot be killed again.
    """
    members: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # exited meanwhile
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and ')', so split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
