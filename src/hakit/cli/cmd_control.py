"""Module control commands: ``hakit start|stop|...|failover``, ``state``, ``waitstate``, ``log``,
``printi``, ``printe`` (SafeKit's ``safekit <cmd> -m AM``).

Every command takes ``-m MODULE``, which defaults to ``$SAFEMODULE`` (set in module scripts), and
is a thin client of the local daemon's API (:class:`hakit.cli.client.ApiClient`), except ``printi``
and ``printe``, which write the module log directly so that they work from any script, with or
without the daemon and the engine.

Admin commands return once the engine has *decided* (accepted or refused), not once the module
reached its new state: ``hakit waitstate`` waits for that. So ``hakit stop -i NAME`` run by a module
script the engine is waiting for cannot deadlock: the engine queues the command and answers at once.

Exit codes beyond ``hakit.cli.main``'s: an admin command refused by the engine exits 1 with its
message; ``state -lq`` exits with SafeKit's codes (:data:`LQ_CODES`) and :data:`LQ_UNKNOWN` when the
state cannot be known; ``waitstate`` exits 1 on timeout. See docs/cli.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import click
import httpx

from hakit.cli.client import ApiClient, DaemonUnreachable, EngineDown, Refused
from hakit.engine.modlog import Level, LogRecord, print_from_script
from hakit.errors import HakitError, UserConfigError
from hakit.paths import NodePaths

# SafeKit's `safekit state -m AM -lq` exit codes.
LQ_CODES = {"STOP": 0, "WAIT": 1, "ALONE": 2, "UP": 2, "PRIM": 3, "SECOND": 4}
LQ_UNKNOWN = 10  # no daemon, no engine, no such module: 1 (WAIT) would be a lie
STATES = ("STOP", "WAIT", "ALONE", "UP", "PRIM", "SECOND")
WAIT_POLL = 0.2  # seconds between two state queries of waitstate
# The daemon waits up to 10 s for the engine's decision; the CLI waits a little longer.
COMMAND_TIMEOUT = httpx.Timeout(20.0, connect=2.0)
_READINESS = {"READY": "Ready", "NOT_READY": "NotReady", "TRANSIENT": "Transient"}

# Waiting is done through these two names so that tests can run waitstate without real time.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


def _client() -> ApiClient:
    return ApiClient(timeout=COMMAND_TIMEOUT)


def module_option(required: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-m MODULE`` (default ``$SAFEMODULE``)."""
    return click.option(
        "-m",
        "--module",
        "module",
        envvar="SAFEMODULE",
        show_envvar=True,
        required=required,
        metavar="MODULE",
        help="The module (default: $SAFEMODULE, set in module scripts).",
    )


def readiness_label(readiness: object) -> str:
    """``Ready`` from ``READY`` (SafeKit's spelling)."""
    text = str(readiness or "")
    return _READINESS.get(text.upper(), text or "?")


def state_label(state: object, readiness: object) -> str:
    """``PRIM (Ready)``."""
    return f"{state or '?'} ({readiness_label(readiness)})"


def origin() -> str:
    """Who asks, as the module log shows it: ``admin@<host>``."""
    return f"admin@{platform.node() or 'localhost'}"


# -- admin commands ---------------------------------------------------------------------------


def _send(
    ctx: click.Context, module: str, command: str, identity: str | None, **options: Any
) -> None:
    body = {"command": command, "options": options, "identity": identity, "origin": origin()}
    try:
        with _client() as api:
            answer = api.post(f"modules/{module}/command", body)
    except Refused as exc:
        click.echo(f"hakit: {command} -m {module} refused: {exc}", err=True)
        ctx.exit(1)
    click.echo(answer.get("message") or f"{command} -m {module}: {answer.get('code', 'accepted')}")


_IDENTITY = click.option(
    "-i",
    "--identity",
    metavar="NAME",
    help="Who asks, when it is not an administrator: a detector or script name (counts for the "
    "stop/start loop limit, as SafeKit's -i).",
)


def _simple(name: str, summary: str) -> click.Command:
    @click.command(name=name, help=summary)
    @module_option()
    @_IDENTITY
    @click.pass_context
    def command(ctx: click.Context, module: str, identity: str | None) -> None:
        _send(ctx, module, name, identity)

    return command


start = _simple("start", "Start the module (mirror: PRIM, SECOND or WAIT from what it remembers).")
stop = _simple("stop", "Stop the module (stop scripts, then STOP).")
restart = _simple("restart", "Run stop_xx then start_xx locally: no failover.")
stopstart = _simple("stopstart", "Stop then start the module (on the primary: a failover).")
forcestop = _simple("forcestop", "Stop the module when stop has no effect.")
primforce = _simple(
    "primforce",
    "Start as primary even if the data may be inconsistent (a full resync follows).",
)


@click.command()
@click.argument("nosync", required=False, type=click.Choice(["nosync"]))
@module_option()
@_IDENTITY
@click.pass_context
def swap(ctx: click.Context, nosync: str | None, module: str, identity: str | None) -> None:
    """Exchange the PRIM and SECOND roles (nosync: skip the resynchronisation)."""
    _send(ctx, module, "swap", identity, nosync=nosync is not None)


def _forced_role(name: str, summary: str) -> click.Command:
    @click.command(name=name, help=summary)
    @click.argument("fullsync", required=False, type=click.Choice(["fullsync"]))
    @module_option()
    @_IDENTITY
    @click.pass_context
    def command(
        ctx: click.Context, fullsync: str | None, module: str, identity: str | None
    ) -> None:
        _send(ctx, module, name, identity, fullsync=fullsync is not None)

    return command


prim = _forced_role(
    "prim",
    "Force the start as primary; refused if the peer is primary "
    "(fullsync: copy everything to the peer).",
)
second = _forced_role(
    "second",
    "Force the start as secondary; refused unless the peer is primary "
    "(fullsync: copy everything from it).",
)


@click.command()
@click.argument("value", type=click.Choice(["on", "off"]))
@module_option()
@_IDENTITY
@click.pass_context
def failover(ctx: click.Context, value: str, module: str, identity: str | None) -> None:
    """Allow (on) or forbid (off) automatic failover; persists across stop/start."""
    _send(ctx, module, "failover", identity, value=value)


# -- state ------------------------------------------------------------------------------------


@click.command()
@module_option(required=False)
@click.option("-v", "--verbose", is_flag=True, help="Also show the peer and the resources.")
@click.option(
    "-lq",
    "--lq",
    "exit_code",
    is_flag=True,
    help="Print nothing; exit with the state: STOP 0, WAIT 1, ALONE 2, UP 2, PRIM 3, SECOND 4, "
    f"unknown {LQ_UNKNOWN}.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the API's answer as JSON (scripts, tests)."
)
@click.pass_context
def state(
    ctx: click.Context, module: str | None, verbose: bool, exit_code: bool, as_json: bool
) -> None:
    """Show the state of every module, or of one with -m."""
    if exit_code:
        ctx.exit(_state_code(module))
    with _client() as api:
        if module is None:
            modules = api.get("modules")["modules"]
            if as_json:
                click.echo(json.dumps(modules, indent=1))
            else:
                _print_all(modules)
            return
        answer = _module_state(api, module)
    if as_json:
        click.echo(json.dumps(answer, indent=1))
        return
    click.echo(f"{module}  {state_label(answer.get('state'), answer.get('readiness'))}")
    if verbose:
        _print_details(answer)


def _module_state(api: ApiClient, module: str) -> dict[str, Any]:
    try:
        return api.get(f"modules/{module}/state")
    except EngineDown as exc:
        details: dict[str, Any] = getattr(exc, "details", {})
        if details.get("state"):
            last = state_label(details["state"], details.get("readiness"))
            raise EngineDown(f"{exc} (last known state: {last})") from None
        raise


def _state_code(module: str | None) -> int:
    """``state -lq``: the exit code of the module's state; errors on stderr."""
    if module is None:
        click.echo("hakit: state -lq needs a module: -m MODULE (or $SAFEMODULE)", err=True)
        return LQ_UNKNOWN
    try:
        with _client() as api:
            answer = api.get(f"modules/{module}/state")
    except HakitError as exc:
        click.echo(f"hakit: {exc}", err=True)
        return LQ_UNKNOWN
    name = str(answer.get("state") or "").upper()
    if name not in LQ_CODES:
        click.echo(f"hakit: module {module} reports an unknown state {name!r}", err=True)
        return LQ_UNKNOWN
    return LQ_CODES[name]


def _print_all(modules: list[dict[str, Any]]) -> None:
    if not modules:
        click.echo("no module installed on this node (hakit module install)")
        return
    width = max(len(str(m.get("name"))) for m in modules)
    for row in modules:
        name = str(row.get("name")).ljust(width)
        engine = row.get("engine") or {}
        if not row.get("configured"):
            text = "NOT CONFIGURED"
        elif row.get("state"):
            text = state_label(row["state"], row.get("readiness"))
        else:
            text = "?"
        if row.get("configured") and not engine.get("alive"):
            problem = engine.get("problem") or "not started"
            text += f"  [engine not running: {problem}]"
        click.echo(f"{name}  {text}")


def _print_details(answer: dict[str, Any]) -> None:
    if answer.get("node"):
        click.echo(f"  node: {answer['node']}")
    peer = answer.get("peer")
    if isinstance(peer, dict):
        reach = "" if peer.get("reachable", True) else " (unreachable)"
        click.echo(
            f"  peer: {peer.get('node') or '?'}  "
            f"{state_label(peer.get('state'), peer.get('readiness'))}{reach}"
        )
    if answer.get("script"):
        click.echo(f"  script: {answer['script']}")
    decision = answer.get("decision")
    if isinstance(decision, dict) and decision.get("message"):
        click.echo(f"  last decision: {decision['message']} ({decision.get('code')})")
    resources = answer.get("resources")
    if isinstance(resources, dict) and resources:
        click.echo("  resources:")
        width = max(len(str(name)) for name in resources)
        for name, value in sorted(resources.items()):
            click.echo(f"    {str(name).ljust(width)}  {value}")
        for line in progress_lines(resources):
            click.echo(line)


def progress_lines(resources: dict[str, object]) -> list[str]:
    """A progress bar per replicated directory being copied (``rfs.N.resync.*`` resources)."""
    lines = []
    for name in sorted(resources):
        if not (name.startswith("rfs.") and name.endswith(".resync.total_bytes")):
            continue
        prefix = name[: -len("total_bytes")]
        try:
            total = int(str(resources[name]))
            done = int(str(resources.get(prefix + "done_bytes", 0)))
            rate = int(str(resources.get(prefix + "rate_bytes_s", 0)))
            eta = int(str(resources.get(prefix + "eta_s", -1)))
            files = (
                f"{resources.get(prefix + 'files_done')}/{resources.get(prefix + 'files_total')}"
            )
        except ValueError:
            continue
        share = 1.0 if total <= 0 else min(done / total, 1.0)
        bar = "#" * int(share * 30) + "." * (30 - int(share * 30))
        state = "done" if share >= 1.0 else (f"ETA {eta} s" if eta >= 0 else "ETA ?")
        index = name.split(".")[1]
        lines.append(
            f"  reintegration of directory {index}: [{bar}] {share:4.0%} "
            f"{_mib(done)}/{_mib(total)} MiB, {files} files, {_mib(rate)} MiB/s, {state}"
        )
    return lines


def _mib(value: int) -> str:
    return f"{value / 1048576:.1f}"


@click.command()
@click.argument("wanted", metavar="STATE", type=click.Choice(STATES, case_sensitive=False))
@module_option()
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    help="Give up after this many seconds (exit 1); default: wait for ever.",
)
@click.pass_context
def waitstate(ctx: click.Context, wanted: str, module: str, timeout: float | None) -> None:
    """Wait until the module is in STATE (checked every 0.2 s)."""
    wanted = wanted.upper()
    deadline = None if timeout is None else _clock() + timeout
    current = "unknown"
    with _client() as api:
        while True:
            try:
                answer = api.get(f"modules/{module}/state")
            except (EngineDown, DaemonUnreachable) as exc:
                # The engine or the daemon may be restarting: keep waiting, report it at the end.
                current = f"unknown ({exc})"
            else:
                current = state_label(answer.get("state"), answer.get("readiness"))
                if str(answer.get("state") or "").upper() == wanted:
                    click.echo(f"{module}  {current}")
                    return
            if deadline is not None and _clock() >= deadline:
                click.echo(
                    f"hakit: module {module} not {wanted} after {timeout:g} s; "
                    f"current state: {current}",
                    err=True,
                )
                ctx.exit(1)
            _sleep(WAIT_POLL)


# -- module log -------------------------------------------------------------------------------


@click.command(name="log")
@module_option()
@click.option(
    "-s",
    "--size",
    "size",
    type=click.IntRange(1, 10_000),
    default=300,
    show_default=True,
    help="Number of lines.",
)
@click.option("-A", "--all", "all_levels", is_flag=True, help="Also the I and D (verbose) lines.")
def log_command(module: str, size: int, all_levels: bool) -> None:
    """Show the last lines of the module log (default levels: C, E, U, S)."""
    with _client() as api:
        answer = api.get(
            f"modules/{module}/log", {"limit": size, "levels": "all" if all_levels else "main"}
        )
    for line in answer.get("lines", []):
        click.echo(render_line(line))


def render_line(line: dict[str, Any]) -> str:
    """SafeKit's raw log line in this machine's time zone, from the API's JSON form."""
    try:
        record = LogRecord(
            int(line["id"]),
            int(line["ts_wall"]),
            float(line.get("ts_mono", 0.0)),
            str(line["component"]),
            Level(line["level"]),
            line.get("code"),
            str(line["message"]),
        )
    except (KeyError, ValueError, TypeError):
        return str(line.get("text", line))
    return record.render()


# -- printi / printe --------------------------------------------------------------------------


def _printer(name: str, level: str, summary: str) -> click.Command:
    @click.command(name=name, help=summary)
    @module_option(required=False)
    @click.argument("words", nargs=-1, required=True)
    def command(module: str | None, words: tuple[str, ...]) -> None:
        text = " ".join(words)
        if not text.strip():
            raise UserConfigError(f"{name}: give the message to write")
        print_from_script(module or os.environ.get("SAFEMODULE"), level, text, NodePaths.from_env())

    return command


printi = _printer("printi", "I", "Write MESSAGE in the module log at level I (verbose log).")
printe = _printer("printe", "E", "Write MESSAGE in the module log at level E (main log).")


commands: list[click.Command] = [
    start,
    stop,
    restart,
    stopstart,
    forcestop,
    swap,
    prim,
    second,
    primforce,
    failover,
    state,
    waitstate,
    log_command,
    printi,
    printe,
]
