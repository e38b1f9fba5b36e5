"""Cluster commands: ``hakit level`` and ``hakit cluster genkey|config|confcheck|state``.

Files are handled locally (the key, cluster.xml); everything about the running node goes through the
local daemon's REST API (:class:`hakit.cli.client.ApiClient`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from hakit.cli.client import ApiClient, DaemonUnreachable
from hakit.config.cluster import ClusterConfig, load_cluster
from hakit.daemon.files import write_atomically
from hakit.errors import LocalSystemError, UserConfigError
from hakit.net.auth import generate_key, parse_key
from hakit.paths import NodePaths, node_name


@click.command()
def level() -> None:
    """Show the local node's name and hakit version (asks the local daemon)."""
    with ApiClient() as api:
        info = api.get("level")
    click.echo(f"node: {info.get('node')}")
    click.echo(f"version: {info.get('version')}")
    if info.get("os"):
        click.echo(f"os: {info['os']}")
    if info.get("pid") is not None:
        click.echo(f"daemon: pid {info['pid']}, up {_duration(info.get('uptime_s'))}")


@click.group()
def cluster() -> None:
    """Cluster configuration (cluster.xml, the cluster key) and membership."""


@cluster.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the key (default: the node's cluster.key).",
)
def genkey(output: Path | None) -> None:
    """Create a new cluster key (32 random bytes, hex, mode 0600).

    Every node needs the same key: install it everywhere with
    `hakit cluster config cluster.xml --key KEYFILE`.
    """
    path = output or NodePaths.from_env().cluster_key
    _write(path, (generate_key() + "\n").encode(), mode=0o600)
    click.echo(f"cluster key written to {path} (mode 0600)")
    click.echo(f"install the same key on every node: hakit cluster config cluster.xml --key {path}")


@cluster.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Cluster key file to install with it (from `hakit cluster genkey`).",
)
def config(file: Path, key_file: Path | None) -> None:
    """Validate FILE and install it as this node's cluster.xml, then reload the local daemon.

    Nothing is written when FILE (or the key) is invalid. Run it on every node with the same files.
    """
    paths = NodePaths.from_env()
    cluster_config = _checked_cluster(file)
    local = node_name()
    if local not in cluster_config.node_names():
        raise UserConfigError(
            f"{file}: this node ({local}) is not in it (nodes: "
            f"{', '.join(cluster_config.node_names())}); nothing installed (fix the file, or the "
            "host name / HAKIT_NODE)"
        )
    key_text: str | None = None
    if key_file is not None:
        try:
            raw = key_file.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserConfigError(f"{key_file}: cannot read the cluster key: {exc}") from None
        key_text = parse_key(raw, str(key_file)).hex() + "\n"
    elif not paths.cluster_key.exists():
        raise UserConfigError(
            f"no cluster key in {paths.cluster_key} and no --key given; nothing installed "
            "(create one with `hakit cluster genkey -o cluster.key`, then pass --key cluster.key "
            "on every node)"
        )
    if key_text is not None:
        _write(paths.cluster_key, key_text.encode(), mode=0o600)
    _write(paths.cluster_xml, file.read_bytes(), mode=0o644)
    installed = f"{paths.cluster_xml}" + (f" and {paths.cluster_key}" if key_text else "")
    click.echo(f"installed {installed}")
    try:
        with ApiClient() as api:
            state = api.post("cluster/reload")
    except DaemonUnreachable:
        click.echo("hakitd is not running here: the configuration applies at its next start")
        return
    click.echo(f"hakitd reloaded the cluster configuration (channel {state.get('channel')})")
    if state.get("problem"):
        click.echo(f"warning: {state['problem']}", err=True)


@cluster.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the issues as JSON.")
def confcheck(file: Path, as_json: bool) -> None:
    """Check a cluster.xml file and print every issue (exit 0 if no error, 2 otherwise)."""
    _, report = load_cluster(file)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.render())
    if not report.ok:
        # SystemExit, as `hakit confcheck` does: hakit's main() runs click with
        # standalone_mode=False, where click turns ctx.exit() into a return value it drops.
        raise SystemExit(UserConfigError.exit_code)


@cluster.command()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON answer.")
def state(as_json: bool) -> None:
    """Show every cluster node and whether this node hears it (asks the local daemon)."""
    with ApiClient() as api:
        data = api.get("cluster/state")
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(render_state(data))


def render_state(data: dict[str, Any]) -> str:
    """The human form of ``GET /api/v1/cluster/state``."""
    lines: list[str] = []
    if not data.get("configured"):
        lines.append(
            f"node {data.get('local')}: cluster not configured (install it with "
            "`hakit cluster config cluster.xml --key cluster.key`)"
        )
    else:
        channel = data.get("channel")
        if channel == "running":
            bound = ", ".join(data.get("bound") or []) or "?"
            pulse_ms = round(float(data.get("pulse_s") or 0) * 1000)
            lines.append(
                f"cluster channel running on {bound} (UDP), pulse {pulse_ms} ms, node lost after "
                f"{data.get('lost_after_s')} s"
            )
        else:
            lines.append("cluster channel off")
        rows = [("NODE", "REACHABLE", "LAST SEEN", "ADDRESSES")]
        for node in data.get("nodes", []):
            name = node["name"] + (" (local)" if node.get("local") else "")
            addrs = " ".join(f"{lan}={addr}" for lan, addr in node.get("lans", {}).items())
            seen = "-" if node.get("local") else _ago(node.get("last_seen_s"))
            rows.append((name, "yes" if node.get("reachable") else "no", seen, addrs))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
            lines.append("  ".join([*cells, row[3]]).rstrip())
        counters = data.get("counters", {})
        if counters:
            lines.append(
                "datagrams: " + ", ".join(f"{name} {count}" for name, count in counters.items())
            )
    if data.get("problem"):
        lines.append(f"problem: {data['problem']}")
    return "\n".join(lines)


def _ago(seconds: Any) -> str:
    return "never" if seconds is None else f"{float(seconds):.1f} s ago"


def _duration(seconds: Any) -> str:
    if seconds is None:
        return "?"
    total = int(float(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def _checked_cluster(file: Path) -> ClusterConfig:
    """The validated cluster of ``file``; every issue printed, :class:`UserConfigError` if any."""
    cluster_config, report = load_cluster(file)
    if report.issues:
        click.echo(report.render(), err=True)
    if cluster_config is None:
        raise UserConfigError(f"{file}: invalid cluster configuration; nothing installed")
    return cluster_config


def _write(path: Path, data: bytes, *, mode: int) -> None:
    try:
        write_atomically(path, data, mode=mode)
    except OSError as exc:
        raise LocalSystemError(f"cannot write {path}: {exc.strerror or exc}") from None


commands: list[click.Command] = [level, cluster]
