"""The replicated-directory routes of the API (``/api/v1/modules/{m}/rfs[/manifest]``), served by
the real app over a node directory in tmp_path."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

from hakit import __version__
from hakit.api import rfs_routes
from hakit.api.app import create_app
from hakit.config.model import NotReplicated
from hakit.daemon.modules_service import ModulesService
from hakit.paths import NodePaths
from hakit.replication.manifest import (
    Entry,
    NotReplicatedMatcher,
    decode_stream,
    walk_manifest,
)


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


def _userconfig(rfs: str) -> str:
    return (
        '<!DOCTYPE safe>\n<safe>\n<service mode="mirror">\n'
        '<heart><heartbeat name="default"/></heart>\n'
        f"{rfs}\n</service>\n</safe>\n"
    )


def _install(paths: NodePaths, module: str, userconfig: str) -> None:
    version = paths.active / f".{module}.1"
    (version / "conf").mkdir(parents=True)
    (version / "conf" / "userconfig.xml").write_text(userconfig)
    paths.module_active(module).symlink_to(version.name)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    data = tmp_path / "srv" / "data"
    (data / "app" / "tmp").mkdir(parents=True)
    (data / "app" / "db.dat").write_bytes(b"rows" * 1000)
    (data / "app" / "run.log").write_bytes(b"noise")
    (data / "app" / "tmp" / "scratch").write_bytes(b"scratch")
    (data / "tmp").mkdir()
    (data / "tmp" / "x").write_bytes(b"x")
    return data


@pytest.fixture
def paths(tmp_path: Path, data: Path) -> NodePaths:
    paths = NodePaths(tmp_path / "node")
    paths.ensure()
    rfs = (
        f'<rfs><replicated dir="{data}"><notreplicated path="tmp"/>'
        r'<notreplicated regexpath=".*\.log"/></replicated>'
        f'<replicated dir="{tmp_path / "srv" / "missing"}"/></rfs>'
    )
    _install(paths, "web", _userconfig(rfs))
    _install(paths, "plain", _userconfig(""))
    return paths


@pytest.fixture
def api(paths: NodePaths) -> TestClient:
    modules = ModulesService(paths, FakeSupervisor())  # type: ignore[arg-type]
    return TestClient(create_app(FakeNode(), modules), raise_server_exceptions=False)


def _manifest(api: TestClient, module: str = "web", index: int = 0) -> list[Entry]:
    with api.stream("GET", f"/api/v1/modules/{module}/rfs/manifest", params={"dir": index}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        return list(decode_stream(r.iter_lines(), "test"))


def test_lists_the_replicated_directories(api: TestClient, data: Path, tmp_path: Path) -> None:
    r = api.get("/api/v1/modules/web/rfs")
    assert r.status_code == 200
    body = r.json()
    assert body["module"] == "web" and isinstance(body["node"], str)
    assert body["dirs"] == [
        {
            "index": 0,
            "dir": str(data),
            "notreplicated": [
                {"path": "tmp", "regexpath": None, "only": False},
                {"path": None, "regexpath": r".*\.log", "only": False},
            ],
        },
        {"index": 1, "dir": str(tmp_path / "srv" / "missing"), "notreplicated": []},
    ]


def test_manifest_is_the_walk_without_notreplicated_paths(api: TestClient, data: Path) -> None:
    entries = _manifest(api)
    matcher = NotReplicatedMatcher([NotReplicated(path="tmp"), NotReplicated(regexpath=r".*\.log")])
    assert entries == list(walk_manifest(data, exclude=matcher.excludes_entry))
    assert [e.path for e in entries] == [b"", b"app", b"app/db.dat", b"app/tmp", b"app/tmp/scratch"]


def test_manifest_is_walked_outside_the_event_loop(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loops: list[bool] = []
    real_walk = rfs_routes.walk_manifest

    def watched(root: Any, **kwargs: Any) -> Iterator[Entry]:
        for entry in real_walk(root, **kwargs):
            try:
                asyncio.get_running_loop()
                loops.append(True)
            except RuntimeError:
                loops.append(False)
            yield entry

    monkeypatch.setattr(rfs_routes, "walk_manifest", watched)
    assert len(_manifest(api)) == 5
    assert loops == [False] * 5


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("/api/v1/modules/nope/rfs/manifest", "module nope is not configured on this node"),
        ("/api/v1/modules/plain/rfs/manifest", "module plain has no replicated directory"),
        ("/api/v1/modules/plain/rfs", "module plain has no replicated directory"),
        ("/api/v1/modules/web/rfs/manifest?dir=2", "2 replicated directories (dir=0..1); there is"),
    ],
)
def test_unknown_things_are_404_with_a_clear_message(
    api: TestClient, url: str, message: str
) -> None:
    r = api.get(url)
    assert r.status_code == 404
    assert r.json()["code"] == "not_found"
    assert message in r.json()["message"]


def test_a_negative_index_or_a_bad_module_name_is_a_bad_request(api: TestClient) -> None:
    assert api.get("/api/v1/modules/web/rfs/manifest?dir=-1").status_code == 400
    r = api.get("/api/v1/modules/bad name!/rfs")
    assert (r.status_code, r.json()["code"]) == (422, "invalid_config")


def test_a_missing_directory_is_a_local_system_error(api: TestClient, tmp_path: Path) -> None:
    r = api.get("/api/v1/modules/web/rfs/manifest?dir=1")
    assert r.status_code == 500
    assert r.json()["code"] == "local_system_error"
    assert str(tmp_path / "srv" / "missing") in r.json()["message"]
