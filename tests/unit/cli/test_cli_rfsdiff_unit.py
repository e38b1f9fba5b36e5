"""``hakit rfsdiff``: the CLI against the real app in-process (a TestClient as the ApiClient's
HTTP client) over a node directory in tmp_path, with a real journal and a real kept-aside set."""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from hakit import __version__
from hakit.api.app import create_app
from hakit.cli import cmd_rfsdiff
from hakit.cli.client import ApiClient, DaemonUnreachable
from hakit.cli.cmd_rfsdiff import describe_dir, describe_divergent, human_bytes
from hakit.cli.main import cli
from hakit.daemon.modules_service import ModulesService
from hakit.errors import NotFoundError
from hakit.paths import NodePaths
from hakit.replication.journal import DirtyJournal
from hakit.replication.keepaside import keep_aside
from hakit.replication.locations import divergent_dir, journal_path

ZONE = 64 * 1024


class FakeNode:
    def level(self) -> dict[str, Any]:
        return {"node": "node1", "version": __version__}

    def cluster_state(self) -> dict[str, Any]:
        return {"configured": False}

    async def reload(self) -> dict[str, Any]:
        return {}


class FakeSupervisor:
    def status(self, module: str) -> None:
        return None

    def is_alive(self, module: str) -> bool:
        return False


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    data, other = tmp_path / "srv" / "data", tmp_path / "srv" / "other"
    (data / "db").mkdir(parents=True)
    (data / "db" / "rows").write_bytes(b"r" * 200_000)
    (data / "db" / "fresh").write_bytes(b"f" * 3000)
    other.mkdir()
    (other / "blob").write_bytes(b"b" * (3 * 1024 * 1024))
    return data, other


@pytest.fixture
def paths(tmp_path: Path, trees: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> NodePaths:
    paths = NodePaths(tmp_path / "node")
    paths.ensure()
    version = paths.active / ".web.1"
    (version / "conf").mkdir(parents=True)
    (version / "conf" / "userconfig.xml").write_text(
        '<!DOCTYPE safe>\n<safe>\n<service mode="mirror">\n'
        '<heart><heartbeat name="default"/></heart>\n'
        f'<rfs><replicated dir="{trees[0]}"/><replicated dir="{trees[1]}"/></rfs>\n'
        "</service>\n</safe>\n"
    )
    paths.module_active("web").symlink_to(version.name)
    paths.module_state("web").mkdir(parents=True)
    app = create_app(FakeNode(), ModulesService(paths, FakeSupervisor()))  # type: ignore[arg-type]
    monkeypatch.setattr(
        cmd_rfsdiff,
        "_client",
        lambda: ApiClient(http=TestClient(app, raise_server_exceptions=False)),
    )
    monkeypatch.delenv("SAFEMODULE", raising=False)
    return paths


def _journal(paths: NodePaths) -> None:
    async def record() -> None:
        journal = DirtyJournal.open(journal_path(paths, "web", 0), zone_size=ZONE)
        journal.write(b"db/rows", 0, 2 * ZONE)  # zones 0 and 1
        journal.created(b"db/fresh", is_dir=False)
        await journal.commit()
        journal.close()

    asyncio.run(record())


def _kept(paths: NodePaths, data: Path) -> None:
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        keep_aside(
            fd,
            [b"db/fresh"],
            divergent_dir(paths, "web"),
            reason="split brain: node1 stays primary",
            generation="node2.4.1",
            since="node1.3.9",
            source=str(data),
            now=datetime(2026, 11, 22, 6, 0, tzinfo=UTC),
        )
    finally:
        os.close(fd)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_rfsdiff_prints_the_estimates_and_the_kept_aside_sets(
    paths: NodePaths, trees: tuple[Path, Path]
) -> None:
    _journal(paths)
    _kept(paths, trees[0])
    result = invoke("rfsdiff", "-m", "web")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("module web on ")
    bytes_ = 2 * ZONE + 3000
    assert f"{trees[0]} (dir 0): a reintegration would copy 130.9 KiB ({bytes_} bytes)" in lines
    assert "  2 files: 2 dirty zones of 64.0 KiB, the files created or rewritten copied whole" in (
        lines
    )
    assert "  1 directory to re-list, attributes of 0 entries to re-send" in lines
    assert "    db/rows (2 zones)" in lines and "    db/fresh (whole)" in lines
    assert "  directories to re-list: db" in lines
    assert (
        f"{trees[1]} (dir 1): no journal: a reintegration would be a full synchronization of "
        "3.0 MiB (1 file)"
    ) in lines
    assert lines[-2].startswith("divergent files kept aside on ")
    assert lines[-2].endswith(f"(in {divergent_dir(paths, 'web')}):")
    assert lines[-1] == (
        f"  20261122T060000Z-node2.4.1: 1 file, 2.9 KiB from {trees[0]} (generation node2.4.1, "
        "since node1.3.9): split brain: node1 stays primary"
    )


def test_rfsdiff_limit(paths: NodePaths) -> None:
    _journal(paths)
    result = invoke("rfsdiff", "-m", "web", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "    db/fresh (whole)" in result.output  # in tree order
    assert "db/rows" not in result.output
    assert "    ... and 1 more files (--limit 0 lists all)" in result.output


def test_rfsdiff_json(paths: NodePaths) -> None:
    _journal(paths)
    result = invoke("rfsdiff", "-m", "web", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["module"] == "web"
    assert [d["source"] for d in body["dirs"]] == ["journal", "full"]
    assert body["dirs"][0]["estimate"]["zones"] == 2
    assert body["divergent"]["sets"] == []


def test_rfsdiff_without_anything_kept_aside(paths: NodePaths) -> None:
    result = invoke("rfsdiff", "-m", "web")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("no divergent files kept aside on ")


def test_rfsdiff_unknown_module(paths: NodePaths) -> None:
    result = invoke("rfsdiff", "-m", "nope")
    assert isinstance(result.exception, NotFoundError)
    assert "module nope is not configured on this node" in str(result.exception)


def test_rfsdiff_without_a_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    monkeypatch.setattr(
        cmd_rfsdiff, "_client", lambda: ApiClient("http://x", transport=httpx.MockTransport(refuse))
    )
    result = invoke("rfsdiff", "-m", "web")
    assert isinstance(result.exception, DaemonUnreachable)


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(5 * 1024**3 + 1024**3 // 2) == "5.5 GiB"
    assert human_bytes(3 * 1024**6) == "3072.0 PiB"


def test_describe_dir_cases() -> None:
    empty = {"index": 0, "dir": "/d", "source": "journal", "estimate": {"files": 0, "zones": 0}}
    assert describe_dir(empty) == [
        "/d (dir 0): nothing to copy (the peer holds everything the journal knows of)"
    ]
    damaged = {
        "index": 1,
        "dir": "/e",
        "source": "full",
        "why": "the journal is damaged (bad header: x)",
        "full": {"files": 2, "bytes": 2048},
    }
    assert describe_dir(damaged) == [
        "/e (dir 1): the journal is damaged (bad header: x): a reintegration would be a full "
        "synchronization of 2.0 KiB (2 files)"
    ]
    error = {"index": 2, "dir": "/f", "source": "error", "message": "no journal, and /f is gone"}
    assert describe_dir(error) == ["/f (dir 2): no journal, and /f is gone"]
    unknown = {
        "index": 0,
        "dir": "/d",
        "source": "journal",
        "estimate": {"files": 1, "zones": 0, "bytes": 0, "whole_unknown": True, "zone_size": 1},
        "files": [{"path": "gone", "zones": None}],
    }
    assert "  (some files to copy whole are gone since: counted as 0 bytes)" in describe_dir(
        unknown
    )


def test_describe_divergent_with_an_unreadable_set() -> None:
    lines = describe_divergent(
        "node2", {"directory": "/s", "sets": [{"name": "x", "error": "/s/x is malformed"}]}
    )
    assert lines == ["divergent files kept aside on node2 (in /s):", "  x: /s/x is malformed"]
