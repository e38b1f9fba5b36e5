"""``hakit rfsdiff -m MODULE``: what would a reintegration from this node copy to its peer?

Run it on the node that runs the application without its peer (ALONE): while the peer is behind,
the replicator records every change in a dirty-zone journal, and this command reads the local
daemon's estimate from it (``GET /api/v1/modules/{m}/rfs/diff``): files, zones and bytes to copy,
directories to re-list, attributes to re-send. A directory without a journal (or with a damaged
one) would be synchronized in full: the estimate is then the size of the tree.

It also lists the sets of divergent files kept aside on this node: what a resync would have
overwritten after a split brain, copied outside the replicated directories first
(``GET /api/v1/modules/{m}/rfs/divergent``; nothing is ever silently discarded).

Exit codes: hakit's usual ones (0 success, 3 unknown module, 5 daemon unreachable...).
"""

from __future__ import annotations

import json
from typing import Any

import click
import httpx

from hakit.cli.client import ApiClient
from hakit.cli.cmd_control import module_option

DEFAULT_LIMIT = 20
# Without a journal the daemon walks the whole tree to size it: that can take a while.
TIMEOUT = httpx.Timeout(600.0, connect=2.0)
_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def _client() -> ApiClient:
    """The local daemon's API (tests replace this with an in-process client)."""
    return ApiClient(timeout=TIMEOUT)


def human_bytes(count: int) -> str:
    """``12.3 MiB`` for humans (binary units; ``300 B`` below one KiB)."""
    if count < 1024:
        return f"{count} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if value < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def _plural(count: int, word: str) -> str:
    if count == 1:
        return f"1 {word}"
    return f"{count} {word[:-1] + 'ies' if word.endswith('y') else word + 's'}"


def describe_dir(entry: dict[str, Any]) -> list[str]:
    """The lines ``rfsdiff`` prints for one replicated directory of the ``diff`` answer."""
    head = f"{entry.get('dir')} (dir {entry.get('index')})"
    source = entry.get("source")
    if source == "full":
        full = entry.get("full") or {}
        why = entry.get("why") or "no journal"
        return [
            f"{head}: {why}: a reintegration would be a full synchronization of "
            f"{human_bytes(int(full.get('bytes', 0)))} ({_plural(int(full.get('files', 0)), 'file')})"
        ]
    if source != "journal":
        return [f"{head}: {entry.get('message', 'no estimate')}"]
    est = entry.get("estimate") or {}
    files, zones, size = (
        int(est.get("files", 0)),
        int(est.get("zones", 0)),
        int(est.get("bytes", 0)),
    )
    if not (files or est.get("listings") or est.get("attrs")):
        return [f"{head}: nothing to copy (the peer holds everything the journal knows of)"]
    zone = human_bytes(int(est.get("zone_size", 0)))
    lines = [
        f"{head}: a reintegration would copy {human_bytes(size)} ({size} bytes)",
        f"  {_plural(files, 'file')}: {_plural(zones, 'dirty zone')} of {zone}, the files created "
        "or rewritten copied whole",
        f"  {_plural(int(est.get('listings', 0)), 'directory')} to re-list, attributes of "
        f"{_plural(int(est.get('attrs', 0)), 'entry')} to re-send",
    ]
    if est.get("whole_unknown"):
        lines.append("  (some files to copy whole are gone since: counted as 0 bytes)")
    shown = entry.get("files") or []
    for item in shown:
        count = item.get("zones")
        what = "whole" if count is None else _plural(int(count), "zone")
        lines.append(f"    {item.get('path')} ({what})")
    if files > len(shown):
        lines.append(f"    ... and {files - len(shown)} more files (--limit 0 lists all)")
    relist = entry.get("relist") or []
    if relist:
        lines.append(f"  directories to re-list: {', '.join(str(p) for p in relist)}")
        if int(est.get("listings", 0)) > len(relist):
            lines.append(f"    ... and {int(est['listings']) - len(relist)} more")
    return lines


def describe_divergent(node: str, divergent: dict[str, Any]) -> list[str]:
    """The lines ``rfsdiff`` prints for the kept-aside sets of the ``divergent`` answer."""
    sets = divergent.get("sets") or []
    where = divergent.get("directory")
    if not sets:
        return [f"no divergent files kept aside on {node} ({where})"]
    lines = [f"divergent files kept aside on {node} (in {where}):"]
    for kept in sets:
        name = kept.get("name")
        if kept.get("error"):
            lines.append(f"  {name}: {kept['error']}")
            continue
        since = f", since {kept['since']}" if kept.get("since") else ""
        source = f" from {kept['source']}" if kept.get("source") else ""
        lines.append(
            f"  {name}: {_plural(int(kept.get('files', 0)), 'file')}, "
            f"{human_bytes(int(kept.get('bytes', 0)))}{source} (generation "
            f"{kept.get('generation') or '?'}{since}): {kept.get('reason')}"
        )
    return lines


@click.command()
@module_option()
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Files and directories named per replicated directory (0: all); all are counted.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON.")
def rfsdiff(module: str, limit: int, as_json: bool) -> None:
    """Estimate what a reintegration from this node would copy; list the divergent files kept
    aside here."""
    with _client() as api:
        answer = api.get(f"modules/{module}/rfs/diff", params={"limit": limit})
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    node = str(answer.get("node") or "this node")
    click.echo(f"module {module} on {node}:")
    for entry in answer.get("dirs") or []:
        for line in describe_dir(entry):
            click.echo(line)
    for line in describe_divergent(node, answer.get("divergent") or {}):
        click.echo(line)


commands: list[click.Command] = [rfsdiff]
