"""``python -m hakit.engine MODULE``: the engine process of one configured module (run by hakitd).

Exit codes: 0 after a clean stop (SIGTERM/SIGINT: the module is stopped first, as by ``hakit
stop``), 78 (EX_CONFIG) when the active configuration cannot run on this node (the reason is in the
module log and on stderr; hakitd does not restart the engine until the configuration changes),
1 on an unexpected crash (hakitd restarts the engine, which resumes what the admin asked).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time

from hakit.config.cluster import load_cluster
from hakit.config.userconfig import load_userconfig
from hakit.daemon.incarnation import next_incarnation
from hakit.engine import control
from hakit.engine.mirror_engine import MirrorEngine, build_spec, present_scripts
from hakit.engine.modlog import Level, SqliteModuleLog
from hakit.engine.replication import Replicators
from hakit.engine.scripts import SubprocessScriptRunner
from hakit.errors import HakitError, UserConfigError
from hakit.net.auth import load_key
from hakit.net.heartbeat import Beat, HeartbeatService
from hakit.net.vip import NetlinkVip
from hakit.paths import NodePaths, node_name

EX_CONFIG = 78
log = logging.getLogger("hakit.engine")


def _load(module: str, paths: NodePaths) -> tuple[MirrorEngine, SqliteModuleLog]:
    """Build the engine of ``module`` from the node's active configuration (UserConfigError)."""
    active = paths.module_active(module)
    meta_file = active / "module.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        module_id = int(meta["id"])
    except (OSError, ValueError, KeyError) as exc:
        raise UserConfigError(
            f"module {module}: no usable active configuration ({meta_file}: {exc}); run "
            f"`hakit config -m {module}`"
        ) from None
    cluster, creport = load_cluster(paths.cluster_xml)
    if cluster is None:
        raise UserConfigError(
            f"module {module}: the cluster configuration is missing or invalid:\n{creport.render()}"
        )
    config, report = load_userconfig(active / "conf" / "userconfig.xml", cluster=cluster)
    if config is None:
        raise UserConfigError(f"module {module}: invalid configuration:\n{report.render()}")
    if config.service.mode != "mirror":
        raise UserConfigError(
            f"module {module}: {config.service.mode} modules are not available in this version of "
            "hakit (mirror modules are)"
        )
    key = load_key(paths.cluster_key)
    local = node_name()
    spec = build_spec(
        module=module,
        module_id=module_id,
        config=config,
        cluster=cluster,
        local=local,
        scripts=present_scripts(active / "bin"),
        state_dir=paths.module_state(module),
        incarnation=secrets.token_hex(4),
        key_file=str(paths.cluster_key),
    )
    modlog = SqliteModuleLog.for_module(paths, module)
    incarnation = next_incarnation(paths.module_state(module) / "incarnation", time.time_ns())
    engine_box: list[MirrorEngine] = []

    def on_beat(beat: Beat) -> None:
        engine_box[0].on_beat(beat)

    heartbeat = HeartbeatService(
        module=module,
        local=local,
        peer=spec.peer,
        key=key,
        incarnation=incarnation,
        paths=list(spec.heartbeat_paths),
        on_beat=on_beat,
    )
    engine = MirrorEngine(
        spec=spec,
        runner=SubprocessScriptRunner(paths),
        vip=NetlinkVip(),
        modlog=modlog,
        heartbeat=heartbeat,
        clock=time.monotonic,
    )
    if spec.replication is not None:
        engine.replication = Replicators(
            spec.replication, lambda index, msg: engine.on_replication(index, msg)
        )
    engine_box.append(engine)
    return engine, modlog


async def _serve(module: str, paths: NodePaths, engine: MirrorEngine) -> None:
    """Run the engine and its control socket until SIGTERM/SIGINT, then stop the module."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await control.serve(control.socket_path(paths.run, module), engine.command)
    user = engine.spec.user
    stop_limit = 60.0 + (2 * (user.nicestoptimeout + user.forcestoptimeout) if user else 0.0)
    async with server, asyncio.TaskGroup() as tg:
        runner = tg.create_task(engine.run(resume=True))
        waiter = tg.create_task(stop.wait())
        await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            log.info("module %s: stopping on signal", module)
            await engine.stop_and_wait(stop_limit)
            if engine.replication is not None:
                await engine.replication.stop()
            runner.cancel()
        waiter.cancel()


def _realtime_priority() -> None:
    """Run the engine at the lowest real-time priority (as corosync does).

    The engine is idle but for heartbeats, ticks and decisions; a CPU-bound application must not
    delay a heartbeat past the peer's timeout (a false failover). SCHED_RESET_ON_FORK makes every
    script and application started from here run with the normal policy again.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except (OSError, AttributeError) as exc:
        log.info("engine runs without real-time priority (%s)", exc)


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m hakit.engine MODULE [--debug]``."""
    parser = argparse.ArgumentParser(prog="hakit-engine", description=__doc__)
    parser.add_argument("module")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    _realtime_priority()
    paths = NodePaths.from_env()
    paths.module_state(args.module).mkdir(parents=True, exist_ok=True)
    try:
        engine, modlog = _load(args.module, paths)
    except UserConfigError as exc:
        print(f"hakit engine: {exc}", file=sys.stderr)
        with contextlib.suppress(HakitError, OSError):
            SqliteModuleLog.for_module(paths, args.module).append(
                "heart", Level.CRITICAL, f"Module cannot run here: {exc}"
            )
        sys.exit(EX_CONFIG)
    try:
        asyncio.run(_serve(args.module, paths, engine))
    finally:
        modlog.append("heart", Level.INFO, "Engine stopped")
        modlog.close()


if __name__ == "__main__":
    main()
