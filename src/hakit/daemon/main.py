"""``hakitd``: the node daemon (foreground; systemd's hakit.service runs it).

One asyncio event loop, every task in one :class:`asyncio.TaskGroup`: the HTTP API (uvicorn, in
this loop), the cluster channel and the supervision of the module engines (one ``python -m
hakit.engine <module>`` child per configured module, see :mod:`hakit.daemon.supervisor`). A crash
of any task ends the group, and hakitd exits 1 so that systemd restarts a whole daemon instead of
leaving a half-alive one.

Signals: SIGTERM and SIGINT stop cleanly (exit 0) after stopping every module engine (SIGTERM to
each, SIGKILL after the module's stop timeouts); SIGHUP reloads cluster.xml and cluster.key, as
``POST /api/v1/cluster/reload`` does.

Exit codes: 0 stopped by a signal; 1 crash (a bug: the traceback is in the log); 4 (LocalSystemError)
the node refused to start it (pid file locked by another hakitd, HTTP port in use...).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import logging.handlers
import os
import signal
import socket
import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import IO

import click
import uvicorn

from hakit import __version__
from hakit.api.app import create_app
from hakit.daemon.service import NodeService
from hakit.errors import HakitError, LocalSystemError
from hakit.paths import NodePaths, node_name

log = logging.getLogger("hakitd")

DEFAULT_HTTP_PORT = 9010
_LOG_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside our loop: the daemon, not uvicorn, owns the signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def setup_logging(log_dir: Path, level: int = logging.INFO) -> None:
    """Log to stderr (journald adds nothing but takes it) and to ``hakitd.log`` with timestamps."""
    formatter = logging.Formatter(_LOG_FORMAT, _DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        # WatchedFileHandler reopens the file after logrotate moved it.
        handlers.append(logging.handlers.WatchedFileHandler(log_dir / "hakitd.log"))
    except OSError as exc:
        print(f"hakitd: cannot log to {log_dir}/hakitd.log: {exc}; stderr only", file=sys.stderr)
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
    # uvicorn's per-request noise stays out; its errors still come through.
    logging.getLogger("uvicorn").setLevel(logging.WARNING)


@contextlib.contextmanager
def pid_file(path: Path) -> Generator[None, None, None]:
    """Hold ``path`` locked with our pid in it; another hakitd on the same root cannot start.

    An flock (not a liveness check of the pid written there) is what decides: the kernel drops it
    when the process dies, even by SIGKILL, so a stale file never blocks a restart.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = open(path, "a+", encoding="ascii")  # noqa: SIM115 (held for the lifetime)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "?"
            raise LocalSystemError(
                f"another hakitd (pid {other}) is running with pid file {path}: stop it first "
                "(systemctl stop hakit)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
    finally:
        handle.close()


def _ensure(paths: NodePaths) -> None:
    try:
        paths.ensure()
    except OSError as exc:
        raise LocalSystemError(
            f"cannot create the node directories under {paths.root}: {exc.strerror or exc} "
            "(run hakitd as root, or set HAKIT_ROOT to a writable directory)"
        ) from None


def listen_socket(host: str, port: int) -> socket.socket:
    """The HTTP listening socket, bound here so that a busy port is a clear error, not a crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LocalSystemError(
            f"cannot listen on {host}:{port} (TCP): {exc.strerror or exc} (another hakitd? "
            "choose another port with --http-port or HAKIT_HTTP_PORT)"
        ) from None
    sock.set_inheritable(False)
    return sock


async def serve(service: NodeService, http: socket.socket) -> None:
    """Run the node until SIGTERM/SIGINT; raise (in an ExceptionGroup) if a task crashes."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    config = uvicorn.Config(
        create_app(service, service.modules),
        log_config=None,
        access_log=False,
        lifespan="off",
        loop="none",
    )
    server = _EmbeddedServer(config)

    async def http_task() -> None:
        await server.serve(sockets=[http])
        if not stop.is_set():
            raise RuntimeError("the HTTP server stopped on its own")

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_on, stop, sig)
    try:
        async with asyncio.TaskGroup() as tg:
            service.attach(tg)
            loop.add_signal_handler(signal.SIGHUP, _reload_on_hup, tg, service, stop)
            await service.reload_logged("start-up")
            tg.create_task(http_task(), name="http")
            log.info(
                "hakitd %s of node %s ready: API on http://%s:%d/api/v1",
                __version__,
                service.node,
                *http.getsockname()[:2],
            )
            await stop.wait()
            server.should_exit = True
            await service.close()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _reload_on_hup(tg: asyncio.TaskGroup, service: NodeService, stop: asyncio.Event) -> None:
    if stop.is_set():
        return  # stopping: the TaskGroup takes no new task
    tg.create_task(service.reload_logged("SIGHUP"), name="reload")


def _stop_on(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("received %s: stopping", sig.name)
    stop.set()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    envvar="HAKIT_HTTP_PORT",
    default=DEFAULT_HTTP_PORT,
    show_default=True,
    help="TCP port of the REST API (env HAKIT_HTTP_PORT).",
)
@click.option("--http-host", default="0.0.0.0", show_default=True, help="Address the API binds.")
@click.option("--debug", is_flag=True, help="Log datagram drops and other details.")
@click.version_option(__version__, prog_name="hakitd")
def cli(http_port: int, http_host: str, debug: bool) -> None:
    """hakitd: the hakit node daemon (runs in the foreground)."""
    paths = NodePaths.from_env()
    setup_logging(paths.log, logging.DEBUG if debug else logging.INFO)
    node = node_name()
    try:
        _ensure(paths)
        with pid_file(paths.run / "hakitd.pid"):
            http = listen_socket(http_host, http_port)
            log.info("starting hakitd %s: node %s, root %s", __version__, node, paths.root)
            asyncio.run(serve(NodeService(paths, node), http))
    except HakitError as exc:
        log.error("%s", exc)
        sys.exit(exc.exit_code)
    except Exception:  # an ExceptionGroup from the TaskGroup: a task crashed
        log.critical("hakitd crashed", exc_info=True)
        sys.exit(1)
    log.info("hakitd stopped")


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``hakitd`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="hakitd")
