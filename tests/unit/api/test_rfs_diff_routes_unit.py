"""``GET /api/v1/modules/{m}/rfs/diff`` and ``.../rfs/divergent``, served by the real app over a
node directory in tmp_path (a real dirty-zone journal, real kept-aside sets)."""

from __future__ import annotations

import asyncio
import os
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from hakit import __version__
from hakit.api.app import create_app
from hakit.api.rfs_routes import tree_size
from hakit.daemon.modules_service import ModulesService
from hakit.errors import LocalSystemError
from hakit.paths import NodePaths
from hakit.replication.journal import DirtyJournal
from hakit.replication.keepaside import keep_aside
from hakit.replication.locations import divergent_dir, journal_path

ZONE = 4096


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


def _install(paths: NodePaths, module: str, rfs: str) -> None:
    version = paths.active / f".{module}.1"
    (version / "conf").mkdir(parents=True)
    (version / "conf" / "userconfig.xml").write_text(
        '<!DOCTYPE safe>\n<safe>\n<service mode="mirror">\n'
        f'<heart><heartbeat name="default"/></heart>\n{rfs}\n</service>\n</safe>\n'
    )
    paths.module_active(module).symlink_to(version.name)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = tmp_path / "srv" / "data"
    (data / "db").mkdir(parents=True)
    (data / "db" / "big").write_bytes(b"b" * 10_000)
    (data / "db" / "new").write_bytes(b"n" * 300)
    (data / "db" / "alias").hardlink_to(data / "db" / "big")  # counted once
    os.symlink("db/big", data / "link")
    (data / "logs").mkdir()
    (data / "logs" / "x.log").write_bytes(b"l" * 5000)  # not replicated: not counted
    return data


@pytest.fixture
def other(tmp_path: Path) -> Path:
    other = tmp_path / "srv" / "other"
    other.mkdir(parents=True)
    (other / "a").write_bytes(b"a" * 70)
    return other


@pytest.fixture
def paths(tmp_path: Path, data: Path, other: Path) -> NodePaths:
    paths = NodePaths(tmp_path / "node")
    paths.ensure()
    _install(
        paths,
        "web",
        f'<rfs><replicated dir="{data}"><notreplicated path="logs"/></replicated>'
        f'<replicated dir="{other}"/></rfs>',
    )
    _install(paths, "plain", "")
    paths.module_state("web").mkdir(parents=True)
    return paths


@pytest.fixture
def api(paths: NodePaths) -> TestClient:
    modules = ModulesService(paths, FakeSupervisor())  # type: ignore[arg-type]
    return TestClient(create_app(FakeNode(), modules), raise_server_exceptions=False)


def _journal(paths: NodePaths) -> None:
    """Directory 0 was written alone: 3 zones of db/big, db/new created, db/ listing changed."""

    async def record() -> None:
        journal = DirtyJournal.open(journal_path(paths, "web", 0), zone_size=ZONE)
        journal.write(b"db/big", 0, 1)
        journal.write(b"db/big", 2 * ZONE, ZONE + 1)
        journal.created(b"db/new", is_dir=False)
        journal.attrs(b"link")
        await journal.commit()
        journal.close()

    asyncio.run(record())


def test_diff_from_the_journal_and_full_sync_without_one(
    api: TestClient, paths: NodePaths, data: Path, other: Path
) -> None:
    _journal(paths)
    r = api.get("/api/v1/modules/web/rfs/diff")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["module"], body["node"]) == ("web", body["node"])
    first, second = body["dirs"]
    assert (first["index"], first["dir"], first["source"]) == (0, str(data), "journal")
    assert first["journal"] == str(journal_path(paths, "web", 0))
    estimate = first["estimate"]
    assert (estimate["files"], estimate["zones"]) == (2, 3)
    assert estimate["bytes"] == 3 * ZONE + 300  # db/new is copied whole, at its current size
    assert (estimate["listings"], estimate["attrs"], estimate["zone_size"]) == (1, 1, ZONE)
    assert first["files"] == [{"path": "db/big", "zones": 3}, {"path": "db/new", "zones": None}]
    assert first["relist"] == ["db"]
    assert "would copy 12588 bytes: 2 files" in first["message"]
    # No journal for directory 1: everything would be copied.
    assert second["source"] == "full" and second["full"] == {"files": 1, "bytes": 70}
    assert second["message"] == (
        "no journal: a reintegration would be a full synchronization of 70 bytes (1 files)"
    )
    assert body["divergent"] == {"directory": str(divergent_dir(paths, "web")), "sets": []}


def test_diff_limit_names_fewer(api: TestClient, paths: NodePaths) -> None:
    _journal(paths)
    first = api.get("/api/v1/modules/web/rfs/diff", params={"limit": 1}).json()["dirs"][0]
    assert first["files"] == [{"path": "db/big", "zones": 3}]
    assert first["estimate"]["files"] == 2  # all counted


def test_a_damaged_journal_means_a_full_sync(api: TestClient, paths: NodePaths) -> None:
    journal_path(paths, "web", 0).write_bytes(b"not a journal at all, not even its header")
    first = api.get("/api/v1/modules/web/rfs/diff").json()["dirs"][0]
    assert first["source"] == "full"
    # The tree of directory 0 without logs/: big (once, with its hard link), new; link counts as a
    # file (a name to create) but has no bytes.
    assert first["full"] == {"files": 4, "bytes": 10_300}
    assert first["message"].startswith("the journal is damaged (")


def test_an_empty_journal_says_nothing_to_copy(api: TestClient, paths: NodePaths) -> None:
    DirtyJournal.open(journal_path(paths, "web", 0), zone_size=ZONE).close()
    first = api.get("/api/v1/modules/web/rfs/diff").json()["dirs"][0]
    assert first["source"] == "journal" and first["estimate"]["bytes"] == 0
    assert first["message"].startswith("nothing to copy")


def test_kept_aside_sets_are_listed(api: TestClient, paths: NodePaths, data: Path) -> None:
    fd = os.open(data, os.O_RDONLY | os.O_DIRECTORY)
    try:
        kept = keep_aside(
            fd,
            [b"db/new"],
            divergent_dir(paths, "web"),
            reason="split brain: node1 stays primary",
            generation="node2.4.1",
            source=str(data),
            now=datetime(2026, 11, 22, 6, 0, tzinfo=UTC),
        )
    finally:
        os.close(fd)
    for url in ("/api/v1/modules/web/rfs/divergent", "/api/v1/modules/web/rfs/diff"):
        r = api.get(url)
        assert r.status_code == 200, r.text
        body = r.json()
        sets = (body["divergent"] if url.endswith("diff") else body)["sets"]
        assert len(sets) == 1
        assert sets[0]["name"] == kept.directory.name == "20261122T060000Z-node2.4.1"
        assert (sets[0]["files"], sets[0]["bytes"], sets[0]["paths"]) == (1, 300, ["db/new"])
        assert sets[0]["reason"] == "split brain: node1 stays primary"
        assert sets[0]["source"] == str(data)


def test_unknown_modules(api: TestClient) -> None:
    for url in ("/api/v1/modules/nope/rfs/diff", "/api/v1/modules/nope/rfs/divergent"):
        r = api.get(url)
        assert r.status_code == 404 and r.json()["code"] == "not_found", url
    r = api.get("/api/v1/modules/plain/rfs/diff")
    assert r.status_code == 404 and "no replicated directory" in r.json()["message"]
    # A module without <rfs> simply has no kept-aside set.
    assert api.get("/api/v1/modules/plain/rfs/divergent").json()["sets"] == []


def test_a_missing_directory_is_reported_not_fatal(
    api: TestClient, paths: NodePaths, other: Path
) -> None:
    _journal(paths)
    other.rename(other.with_name("moved"))
    with pytest.raises(LocalSystemError, match="does not exist on this node"):
        tree_size(other)
    r = api.get("/api/v1/modules/web/rfs/diff")
    assert r.status_code == 200
    first, second = r.json()["dirs"]
    assert first["source"] == "journal"
    assert second["source"] == "error" and second["full"] is None
    assert second["message"].startswith(f"no journal, and {other} does not exist on this node")
