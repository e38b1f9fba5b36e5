"""``hakit rfsverify -m MODULE``: are the replicated directories of a mirror module identical on
both nodes?

Each node's hakitd walks its own copy of every replicated directory and streams its manifest
(``GET /api/v1/modules/{m}/rfs/manifest``: content hashes, sizes, modes, owners, mtimes, symlink
targets, hard links, types, extended attributes; :mod:`hakit.replication.manifest`). This command
reads the local node's stream from the local daemon and the peer's from the peer's daemon, and
compares them as they arrive (a merge of two sorted streams: constant memory, any tree size).

The peer is the other node of ``cluster.xml`` (``HAKIT_ROOT`` prefixes it); its API is at its
address on the command LAN, on the local API's port (the same on every node), unless
``--peer-api`` says otherwise.

Exit codes (those of ``diff``, not hakit's usual ones, so scripts can tell "different" from
"could not compare"): 0 identical, 1 different, 2 could not compare (usage, configuration,
unknown module, a node unreachable or failing; the message names the node and its address).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from hakit.cli.client import DEFAULT_API
from hakit.cli.cmd_control import module_option
from hakit.config.cluster import ClusterConfig, load_cluster
from hakit.errors import HakitError, NotFoundError, PeerProtocolError, UserConfigError
from hakit.paths import NodePaths
from hakit.replication.manifest import (
    Difference,
    DiffKind,
    Entry,
    ManifestTotals,
    decode_stream,
    diff_manifests,
    display,
)

EXIT_IDENTICAL, EXIT_DIFFERENT, EXIT_TROUBLE = 0, 1, 2
DEFAULT_LIMIT = 50
DEFAULT_PORT = 9010
# Hashing one big file sends nothing for a while: the read timeout must cover the slowest file.
TIMEOUT = httpx.Timeout(600.0, connect=5.0)


def _connect(base_url: str) -> httpx.Client:
    """The HTTP client of one node's API (tests replace this with in-process clients)."""
    return httpx.Client(base_url=base_url, timeout=TIMEOUT)


@dataclass
class NodeApi:
    """One node's hakitd as this command uses it; every error names the node and its address."""

    name: str
    url: str
    http: httpx.Client = field(repr=False)

    def get(self, path: str) -> dict[str, Any]:
        """``GET /api/v1/<path>``'s JSON object."""
        try:
            response = self.http.get(f"/api/v1/{path}")
            response.read()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        data = self._json(response)
        if response.is_success and isinstance(data, dict):
            return data
        raise self._answer_error(response, data)

    @contextmanager
    def manifest(
        self, module: str, index: int, totals: ManifestTotals
    ) -> Iterator[Iterator[Entry]]:
        """The entries of replicated directory ``index`` as this node's daemon walks them."""
        url = f"/api/v1/modules/{module}/rfs/manifest"
        try:
            with self.http.stream("GET", url, params={"dir": index}) as response:
                if not response.is_success:
                    response.read()
                    raise self._answer_error(response, self._json(response))
                yield decode_stream(self._lines(response), f"node {self.name} ({self.url})", totals)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    def _lines(self, response: httpx.Response) -> Iterator[str]:
        try:
            yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    def _transport_error(self, exc: httpx.HTTPError) -> PeerProtocolError:
        if isinstance(exc, httpx.ConnectError):
            why = f"cannot connect ({exc}): is hakitd running there and the port reachable?"
        elif isinstance(exc, httpx.TimeoutException):
            why = f"no answer within {TIMEOUT.read:g} s (see its hakitd log)"
        else:
            why = f"the connection failed: {exc}"
        return PeerProtocolError(f"node {self.name} ({self.url}): {why}")

    def _answer_error(self, response: httpx.Response, data: Any) -> HakitError:
        where = f"node {self.name} ({self.url})"
        if isinstance(data, dict) and "message" in data:
            message = f"{where}: {data['message']}"
            if response.status_code == 404:
                return NotFoundError(message)
            if response.status_code in (400, 422):
                return UserConfigError(message)
            return PeerProtocolError(message)
        return PeerProtocolError(
            f"{where}: unexpected answer HTTP {response.status_code} {response.text[:200]!r} "
            "(is it a hakit daemon of the same version?)"
        )


# -- finding the peer ---------------------------------------------------------------------------


def peer_of(cluster: ClusterConfig, local: str) -> tuple[str, str]:
    """``(name, address)`` of the other node of a two-node cluster, on the command LAN if it is
    there (else the first LAN it is on)."""
    nodes = cluster.node_names()
    if local not in nodes:
        raise UserConfigError(
            f"this node ({local}) is not in cluster.xml (nodes: {', '.join(nodes)}): fix "
            "cluster.xml, or the node name hakitd runs with (host name, or HAKIT_NODE)"
        )
    if len(nodes) != 2:
        raise UserConfigError(
            f"a mirror module runs on exactly 2 nodes; cluster.xml has {len(nodes)} "
            f"({', '.join(nodes)}); name the peer's API with --peer-api"
        )
    peer = next(n for n in nodes if n != local)
    command = cluster.command_lan().node(peer)
    addr = command.addr if command else next(iter(cluster.addrs_of(peer).values()))
    return peer, addr


def peer_url(addr: str, local_url: str) -> str:
    """The peer's API: its address with the local API's scheme and port."""
    parts = urlsplit(local_url)
    host = f"[{addr}]" if ":" in addr else addr
    return f"{parts.scheme or 'http'}://{host}:{parts.port or DEFAULT_PORT}"


def _cluster(paths: NodePaths) -> ClusterConfig:
    cluster, report = load_cluster(paths.cluster_xml)
    if cluster is None:
        raise UserConfigError(
            f"cannot find the peer: {paths.cluster_xml} is missing or invalid:\n{report.render()}"
        )
    return cluster


# -- comparing ----------------------------------------------------------------------------------


@dataclass
class DirResult:
    """The comparison of one replicated directory."""

    index: int
    dir: str
    a: ManifestTotals = field(default_factory=ManifestTotals)
    b: ManifestTotals = field(default_factory=ManifestTotals)
    shown: list[Difference] = field(default_factory=list)
    count: int = 0

    @property
    def identical(self) -> bool:
        """No difference found."""
        return self.count == 0

    def to_json(self) -> dict[str, Any]:
        """The result as ``--json`` prints it."""
        return {
            "index": self.index,
            "dir": self.dir,
            "identical": self.identical,
            "entries": {"a": self.a.entries, "b": self.b.entries},
            "bytes": {"a": self.a.bytes, "b": self.b.bytes},
            "difference_count": self.count,
            "differences": [d.to_json() for d in self.shown],
            "truncated": self.count > len(self.shown),
        }


def compare_dir(
    a: NodeApi,
    b: NodeApi,
    module: str,
    index: int,
    directory: str,
    *,
    limit: int,
    ignore_dir_mtime: bool,
) -> DirResult:
    """Compare one replicated directory of both nodes (keeps the first ``limit`` differences,
    all of them when ``limit`` is 0)."""
    result = DirResult(index, directory)
    with ExitStack() as stack:
        # Both requests are sent before reading either: the two daemons walk at the same time.
        ea = stack.enter_context(a.manifest(module, index, result.a))
        eb = stack.enter_context(b.manifest(module, index, result.b))
        for difference in diff_manifests(ea, eb, ignore_dir_mtime=ignore_dir_mtime):
            result.count += 1
            if not limit or len(result.shown) < limit:
                result.shown.append(difference)
    return result


def _directories(a: NodeApi, b: NodeApi, module: str) -> list[str]:
    """The module's replicated directories, which both nodes must agree on (and the peer's name as
    its daemon gives it)."""
    answer = b.get(f"modules/{module}/rfs")
    name = str(answer.get("node") or b.name)
    if name == a.name:
        raise UserConfigError(
            f"node {b.name} ({b.url}) answers as node {name}, this very node: check the peer's "
            "address in cluster.xml or --peer-api"
        )
    b.name = name
    mine = [str(d["dir"]) for d in a.get(f"modules/{module}/rfs").get("dirs", [])]
    theirs = [str(d["dir"]) for d in answer.get("dirs", [])]
    if mine != theirs:
        raise UserConfigError(
            f"module {module}: the replicated directories differ between node {a.name} "
            f"({', '.join(mine)}) and node {b.name} ({', '.join(theirs)}): configure the same "
            f"module on both nodes (`hakit config -m {module}`)"
        )
    return mine


# -- output -------------------------------------------------------------------------------------


def _time(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{rest:09d}Z"


def _value(what: DiffKind, value: str | int | None) -> str:
    if value is None:
        return {DiffKind.LINK: "no hard link", DiffKind.XATTRS: "no xattrs"}.get(what, "none")
    if what is DiffKind.MTIME and isinstance(value, int):
        return _time(value)
    if what in (DiffKind.CONTENT, DiffKind.XATTRS):
        return f"sha256 {str(value)[:12]}"
    if what is DiffKind.SIZE:
        return f"{value} bytes"
    if what is DiffKind.LINK:
        return f"hard link of {display(str(value).encode('utf-8', 'surrogateescape'))}"
    if what is DiffKind.TARGET:
        return f"-> {display(str(value).encode('utf-8', 'surrogateescape'))}"
    return str(value)


def describe(difference: Difference, a: str, b: str) -> str:
    """One difference for humans, ``a`` and ``b`` being the nodes' names."""
    path, what = difference.display_path, difference.what
    if what is DiffKind.MISSING_ON_A:
        return f"missing on {a}: {path} ({difference.b} on {b})"
    if what is DiffKind.MISSING_ON_B:
        return f"missing on {b}: {path} ({difference.a} on {a})"
    return (
        f"{what.value} differs: {path}: {_value(what, difference.a)} on {a}, "
        f"{_value(what, difference.b)} on {b}"
    )


def _print_text(result: DirResult, a: str, b: str) -> None:
    if result.identical:
        click.echo(
            f"{result.dir}: identical: {result.a.entries} entries, {result.a.bytes} bytes "
            f"({a} and {b})"
        )
        return
    plural = "s" if result.count != 1 else ""
    click.echo(f"{result.dir}: {result.count} difference{plural} between {a} and {b}:")
    for difference in result.shown:
        click.echo(f"  {describe(difference, a, b)}")
    if result.count > len(result.shown):
        click.echo(f"  ... and {result.count - len(result.shown)} more (--limit 0 lists all)")
    click.echo(
        f"  ({a}: {result.a.entries} entries, {result.a.bytes} bytes; "
        f"{b}: {result.b.entries} entries, {result.b.bytes} bytes)"
    )


# -- the command --------------------------------------------------------------------------------


@click.command()
@module_option()
@click.option(
    "--dir",
    "dir_index",
    type=click.IntRange(min=0),
    metavar="N",
    help="Only the N-th replicated directory (from 0, in userconfig.xml order).",
)
@click.option(
    "--ignore-dir-mtime", is_flag=True, help="Do not compare the modification times of directories."
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=DEFAULT_LIMIT,
    show_default=True,
    help="Differences listed per directory (0: all); all of them are counted.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--peer-api",
    metavar="URL",
    help="The peer's API (default: http://<peer's address on the command LAN>:<local API port>).",
)
@click.pass_context
def rfsverify(
    ctx: click.Context,
    module: str,
    dir_index: int | None,
    ignore_dir_mtime: bool,
    limit: int,
    as_json: bool,
    peer_api: str | None,
) -> None:
    """Compare the replicated directories of a mirror module on both nodes.

    Exit 0 identical, 1 different, 2 could not compare.
    """
    try:
        results, a, b = _verify(module, dir_index, peer_api, limit, ignore_dir_mtime)
    except HakitError as exc:
        click.echo(f"hakit: rfsverify -m {module}: {exc}", err=True)
        ctx.exit(EXIT_TROUBLE)
    identical = all(r.identical for r in results)
    if as_json:
        nodes = {"a": {"name": a.name, "url": a.url}, "b": {"name": b.name, "url": b.url}}
        body = {
            "module": module,
            "identical": identical,
            "nodes": nodes,
            "dirs": [r.to_json() for r in results],
        }
        click.echo(json.dumps(body, indent=2))
    else:
        for result in results:
            _print_text(result, a.name, b.name)
    ctx.exit(EXIT_IDENTICAL if identical else EXIT_DIFFERENT)


def _verify(
    module: str, dir_index: int | None, peer_api: str | None, limit: int, ignore_dir_mtime: bool
) -> tuple[list[DirResult], NodeApi, NodeApi]:
    local_url = (os.environ.get("HAKIT_API") or DEFAULT_API).rstrip("/")
    with ExitStack() as stack:
        a = NodeApi("local", local_url, stack.enter_context(_connect(local_url)))
        a.name = str(a.get(f"modules/{module}/rfs").get("node") or "local")
        if peer_api:
            b_name, b_url = "peer", peer_api.rstrip("/")
        else:
            b_name, addr = peer_of(_cluster(NodePaths.from_env()), a.name)
            b_url = peer_url(addr, local_url)
        b = NodeApi(b_name, b_url, stack.enter_context(_connect(b_url)))
        directories = _directories(a, b, module)
        if dir_index is not None and dir_index >= len(directories):
            raise UserConfigError(
                f"--dir {dir_index}: module {module} has {len(directories)} replicated "
                f"director{'y' if len(directories) == 1 else 'ies'} (0..{len(directories) - 1})"
            )
        indexes = range(len(directories)) if dir_index is None else [dir_index]
        results = [
            compare_dir(
                a,
                b,
                module,
                i,
                directories[i],
                limit=limit,
                ignore_dir_mtime=ignore_dir_mtime,
            )
            for i in indexes
        ]
    return results, a, b


commands: list[click.Command] = [rfsverify]
