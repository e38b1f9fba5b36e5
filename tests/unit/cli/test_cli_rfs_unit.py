"""``hakit rfsverify``: the CLI against two fake node APIs (httpx mock transports) serving the
manifests of two tmp trees as the real route does (encode_stream of walk_manifest)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from hakit.cli import cmd_rfs
from hakit.cli.main import cli
from hakit.config.cluster import parse_cluster
from hakit.errors import UserConfigError
from hakit.replication.manifest import encode_stream, walk_manifest

LOCAL_API = "http://127.0.0.1:9010"
PEER_API = "http://10.0.0.2:9010"
T0 = 1_700_000_000_000_000_000


def _cluster_xml(*nodes: tuple[str, str]) -> str:
    body = "".join(f'<node name="{n}" addr="{a}"/>' for n, a in nodes)
    return f'<cluster><lans><lan name="default">{body}</lan></lans></cluster>'


def _tree(root: Path, files: int = 3) -> Path:
    (root / "sub").mkdir(parents=True)
    for i in range(files):
        (root / "sub" / f"f{i}").write_bytes(b"data %d\n" % i)
    os.symlink("sub/f0", root / "link")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(T0, T0), follow_symlinks=False)
        os.utime(dirpath, ns=(T0, T0))
    return root


class FakeNodeApi:
    """The rfs routes of one node: ``trees[i]`` is what its replicated dir ``i`` holds."""

    def __init__(self, name: str, trees: list[Path], dirs: list[str] | None = None) -> None:
        self.name = name
        self.trees = trees
        self.dirs = dirs or [f"/srv/d{i}" for i in range(len(trees))]
        self.truncate = False
        self.requests: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(str(request.url))
        path = request.url.path
        if not path.startswith("/api/v1/modules/web/"):
            module = path.split("/")[4]
            return httpx.Response(
                404,
                json={"code": "not_found", "message": f"module {module} is not configured"},
            )
        if path.endswith("/rfs"):
            dirs = [{"index": i, "dir": d, "notreplicated": []} for i, d in enumerate(self.dirs)]
            return httpx.Response(200, json={"module": "web", "node": self.name, "dirs": dirs})
        index = int(request.url.params["dir"])
        stream = b"".join(encode_stream(walk_manifest(self.trees[index])))
        if self.truncate:
            stream = stream[: stream.rindex(b'{"end"')]
        return httpx.Response(200, content=stream, headers={"content-type": "application/x-ndjson"})


@pytest.fixture
def tmp_trees(tmp_path: Path) -> tuple[Path, Path]:
    return _tree(tmp_path / "n1" / "d0"), _tree(tmp_path / "n2" / "d0")


@pytest.fixture
def nodes(tmp_trees: tuple[Path, Path]) -> dict[str, FakeNodeApi]:
    return {
        LOCAL_API: FakeNodeApi("node1", [tmp_trees[0]]),
        PEER_API: FakeNodeApi("node2", [tmp_trees[1]]),
    }


@pytest.fixture(autouse=True)
def environment(
    tmp_path: Path, nodes: dict[str, FakeNodeApi], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "etc" / "hakit").mkdir(parents=True)
    (root / "etc" / "hakit" / "cluster.xml").write_text(
        _cluster_xml(("node1", "10.0.0.1"), ("node2", "10.0.0.2"))
    )
    monkeypatch.setenv("HAKIT_ROOT", str(root))
    monkeypatch.setenv("HAKIT_API", LOCAL_API)
    monkeypatch.delenv("SAFEMODULE", raising=False)

    def connect(base_url: str) -> httpx.Client:
        handler = nodes.get(base_url)
        if handler is None:

            def refuse(request: httpx.Request) -> httpx.Response:
                raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

            return httpx.Client(base_url=base_url, transport=httpx.MockTransport(refuse))
        return httpx.Client(base_url=base_url, transport=httpx.MockTransport(handler))

    monkeypatch.setattr(cmd_rfs, "_connect", connect)


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, ["rfsverify", "-m", "web", *args])


def test_identical_trees_exit_0_with_a_summary(nodes: dict[str, FakeNodeApi]) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    # 1 root + sub + 3 files + link; 3 files of 7 bytes.
    assert result.output == "/srv/d0: identical: 6 entries, 21 bytes (node1 and node2)\n"
    assert any("rfs/manifest?dir=0" in url for url in nodes[PEER_API].requests)


def test_differences_exit_1_and_are_listed(tmp_trees: tuple[Path, Path]) -> None:
    (tmp_trees[1] / "sub" / "f1").write_bytes(b"DATA 1\n")
    os.utime(tmp_trees[1] / "sub" / "f1", ns=(T0, T0))
    os.chmod(tmp_trees[1] / "sub" / "f2", 0o600)
    (tmp_trees[0] / "only-here").write_bytes(b"")
    os.utime(tmp_trees[0], ns=(T0, T0))
    result = run()
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0] == "/srv/d0: 3 differences between node1 and node2:"
    assert lines[1] == "  missing on node2: only-here (file on node1)"
    assert lines[2].startswith("  content differs: sub/f1: sha256 ")
    assert lines[2].endswith(" on node2")
    assert lines[3] == "  mode differs: sub/f2: 0644 on node1, 0600 on node2"
    assert lines[4] == "  (node1: 7 entries, 21 bytes; node2: 6 entries, 21 bytes)"


def test_json_output(tmp_trees: tuple[Path, Path]) -> None:
    os.utime(tmp_trees[1] / "sub" / "f0", ns=(T0, T0 + 1))
    result = run("--json")
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["module"] == "web" and body["identical"] is False
    assert body["nodes"] == {
        "a": {"name": "node1", "url": LOCAL_API},
        "b": {"name": "node2", "url": PEER_API},
    }
    [d] = body["dirs"]
    assert d["entries"] == {"a": 6, "b": 6} and d["bytes"] == {"a": 21, "b": 21}
    assert d["difference_count"] == 1 and d["truncated"] is False
    assert d["differences"] == [{"path": "sub/f0", "what": "mtime", "a": T0, "b": T0 + 1}]


def test_only_the_first_differences_are_listed_but_all_are_counted(
    tmp_trees: tuple[Path, Path],
) -> None:
    for i in range(60):
        (tmp_trees[1] / f"extra{i:02d}").write_bytes(b"")
    os.utime(tmp_trees[1], ns=(T0, T0))
    result = run()
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "/srv/d0: 60 differences between node1 and node2:"
    assert len([line for line in lines if line.startswith("  missing on node1")]) == 50
    assert "  ... and 10 more (--limit 0 lists all)" in lines
    result = run("--limit", "0", "--json")
    assert len(json.loads(result.output)["dirs"][0]["differences"]) == 60


def test_ignore_dir_mtime(tmp_trees: tuple[Path, Path]) -> None:
    os.utime(tmp_trees[1] / "sub", ns=(T0, T0 + 5))
    assert run().exit_code == 1
    assert "mtime differs: sub: " in run().output
    assert run("--ignore-dir-mtime").exit_code == 0


def test_dir_selects_one_directory(tmp_path: Path, nodes: dict[str, FakeNodeApi]) -> None:
    other1, other2 = _tree(tmp_path / "n1" / "d1"), _tree(tmp_path / "n2" / "d1", files=2)
    nodes[LOCAL_API] = FakeNodeApi("node1", [*nodes[LOCAL_API].trees, other1])
    nodes[PEER_API] = FakeNodeApi("node2", [*nodes[PEER_API].trees, other2])
    result = run()
    assert result.exit_code == 1
    assert (
        result.output.splitlines()[0] == "/srv/d0: identical: 6 entries, 21 bytes (node1 and node2)"
    )
    assert run("--dir", "0").exit_code == 0
    result = run("--dir", "1")
    assert result.exit_code == 1 and "/srv/d0" not in result.output
    assert "missing on node2: sub/f2 (file on node1)" in result.output


def test_dir_out_of_range_exits_2() -> None:
    result = run("--dir", "3")
    assert result.exit_code == 2
    assert "--dir 3: module web has 1 replicated directory (0..0)" in result.output


def test_usage_error_exits_2() -> None:
    assert CliRunner().invoke(cli, ["rfsverify"]).exit_code == 2
    assert run("--dir", "-1").exit_code == 2


def test_an_unreachable_peer_exits_2_naming_it(nodes: dict[str, FakeNodeApi]) -> None:
    del nodes[PEER_API]
    result = run()
    assert result.exit_code == 2
    assert (
        "hakit: rfsverify -m web: node node2 (http://10.0.0.2:9010): cannot connect "
        "([Errno 111] Connection refused): is hakitd running there" in result.output
    )


def test_an_unreachable_local_daemon_exits_2_naming_it(nodes: dict[str, FakeNodeApi]) -> None:
    del nodes[LOCAL_API]
    result = run()
    assert result.exit_code == 2
    assert "node local (http://127.0.0.1:9010): cannot connect" in result.output


def test_an_unknown_module_exits_2_with_the_daemons_message() -> None:
    result = CliRunner().invoke(cli, ["rfsverify", "-m", "nope"])
    assert result.exit_code == 2
    assert "node local (http://127.0.0.1:9010): module nope is not configured" in result.output


def test_a_truncated_peer_stream_exits_2(nodes: dict[str, FakeNodeApi]) -> None:
    nodes[PEER_API].truncate = True
    result = run()
    assert result.exit_code == 2
    assert "node node2 (http://10.0.0.2:9010): the manifest stream ended" in result.output


def test_nodes_configured_with_other_directories_exit_2(nodes: dict[str, FakeNodeApi]) -> None:
    nodes[PEER_API].dirs = ["/srv/other"]
    result = run()
    assert result.exit_code == 2
    assert "the replicated directories differ between node node1 (/srv/d0)" in result.output


def test_a_peer_address_that_is_this_node_exits_2(nodes: dict[str, FakeNodeApi]) -> None:
    nodes[PEER_API].name = "node1"
    result = run()
    assert result.exit_code == 2
    assert "answers as node node1, this very node" in result.output


def test_peer_api_option_needs_no_cluster_xml(
    tmp_path: Path, nodes: dict[str, FakeNodeApi]
) -> None:
    shutil.rmtree(tmp_path / "root" / "etc")
    nodes["http://peer.example:7000"] = nodes.pop(PEER_API)
    assert run().exit_code == 2  # no cluster.xml: the peer is unknown
    result = run("--peer-api", "http://peer.example:7000/")
    assert result.exit_code == 0, result.output
    assert "(node1 and node2)" in result.output


def test_rfsverify_is_a_hakit_command() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "rfsverify" in result.output


# -- finding the peer ---------------------------------------------------------------------------


def _cluster(xml: str) -> Any:
    cluster, report = parse_cluster(xml, "cluster.xml")
    assert cluster is not None, report.render()
    return cluster


def test_the_peer_is_reached_on_the_command_lan() -> None:
    cluster = _cluster(
        "<cluster><lans>"
        '<lan name="data"><node name="n1" addr="10.1.0.1"/><node name="n2" addr="10.1.0.2"/></lan>'
        '<lan name="admin" command="on"><node name="n1" addr="10.9.0.1"/>'
        '<node name="n2" addr="fd00::2"/></lan>'
        "</lans></cluster>"
    )
    assert cmd_rfs.peer_of(cluster, "n1") == ("n2", "fd00::2")
    assert cmd_rfs.peer_of(cluster, "n2") == ("n1", "10.9.0.1")
    assert cmd_rfs.peer_url("fd00::2", "http://127.0.0.1:9011") == "http://[fd00::2]:9011"
    assert cmd_rfs.peer_url("10.0.0.2", "http://localhost") == "http://10.0.0.2:9010"


@pytest.mark.parametrize(
    ("nodes_xml", "local", "message"),
    [
        ((("n1", "10.0.0.1"), ("n2", "10.0.0.2")), "n3", "this node (n3) is not in cluster.xml"),
        (
            (("n1", "10.0.0.1"), ("n2", "10.0.0.2"), ("n3", "10.0.0.3")),
            "n1",
            "a mirror module runs on exactly 2 nodes",
        ),
    ],
)
def test_no_single_peer_is_a_config_error(
    nodes_xml: tuple[tuple[str, str], ...], local: str, message: str
) -> None:
    with pytest.raises(UserConfigError, match=re.escape(message)):
        cmd_rfs.peer_of(_cluster(_cluster_xml(*nodes_xml)), local)
