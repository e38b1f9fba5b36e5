"""The CLI side of the API: ApiClient error mapping and the `hakit cluster` / `hakit level` commands.

The daemon is replaced by an httpx MockTransport (no network, no process).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from hakit.cli import cmd_cluster
from hakit.cli.client import ApiClient, DaemonUnreachable
from hakit.errors import LocalSystemError, NotFoundError, PeerProtocolError, UserConfigError
from hakit.paths import NodePaths

Handler = Callable[[httpx.Request], httpx.Response]
KEY_HEX = bytes(range(32)).hex()
CLUSTER_XML = """<cluster><lans port="4800"><lan name="default">
  <node name="node1" addr="10.0.0.1"/>
  <node name="node2" addr="10.0.0.2"/>
</lan></lans></cluster>
"""
STATE = {
    "configured": True,
    "local": "node1",
    "channel": "running",
    "problem": None,
    "bound": ["10.0.0.1:4800"],
    "pulse_s": 0.1,
    "lost_after_s": 1.0,
    "nodes": [
        {
            "name": "node1",
            "local": True,
            "reachable": True,
            "last_seen_s": None,
            "lans": {"default": "10.0.0.1"},
        },
        {
            "name": "node2",
            "local": False,
            "reachable": True,
            "last_seen_s": 0.04,
            "lans": {"default": "10.0.0.2"},
        },
        {
            "name": "node3",
            "local": False,
            "reachable": False,
            "last_seen_s": None,
            "lans": {"default": "10.0.0.3"},
        },
    ],
    "counters": {"accepted": 12, "corrupted": 0, "forged": 1, "replayed": 0},
}


def api(handler: Handler) -> ApiClient:
    return ApiClient("http://hakitd.test", transport=httpx.MockTransport(handler))


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


# -- ApiClient ----------------------------------------------------------------------------------


def test_client_returns_the_json_object() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={"node": "node1"})

    with api(handler) as client:
        assert client.get("level") == {"node": "node1"}
        assert client.post("/cluster/reload") == {"node": "node1"}
    assert seen == ["GET /api/v1/level", "POST /api/v1/cluster/reload"]


def test_unreachable_daemon_says_what_to_check() -> None:
    with pytest.raises(DaemonUnreachable, match=r"http://hakitd.test: is hakitd running\?"):
        api(unreachable).get("level")
    assert issubclass(DaemonUnreachable, PeerProtocolError)


def test_timeout_is_a_peer_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(PeerProtocolError, match="did not answer"):
        api(handler).get("level")


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (422, UserConfigError),
        (404, NotFoundError),
        (500, LocalSystemError),
        (502, PeerProtocolError),
    ],
)
def test_json_errors_become_hakit_errors(status: int, cls: type[Exception]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"code": "some_code", "message": "what went wrong"})

    with pytest.raises(cls, match="what went wrong") as info:
        api(handler).post("cluster/reload")
    assert info.value.code == "some_code"  # type: ignore[attr-defined]


def test_non_hakit_answer_is_a_peer_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>hello</html>")

    with pytest.raises(PeerProtocolError, match="is it a hakit daemon"):
        api(handler).get("level")


def test_default_address_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAKIT_API", raising=False)
    assert ApiClient().base_url == "http://127.0.0.1:9010"
    monkeypatch.setenv("HAKIT_API", "http://10.0.0.9:9999/")
    assert ApiClient().base_url == "http://10.0.0.9:9999"


# -- commands -----------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodePaths:
    monkeypatch.setenv("HAKIT_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("HAKIT_NODE", "node1")
    return NodePaths(tmp_path / "root")


def with_daemon(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> None:
    monkeypatch.setattr(cmd_cluster, "ApiClient", lambda: api(handler))


def invoke(*args: str) -> Result:
    group = cmd_cluster.level if args[0] == "level" else cmd_cluster.cluster
    return CliRunner().invoke(group, list(args[1:]) if args[0] == "level" else list(args))


def test_level_prints_node_and_version(monkeypatch: pytest.MonkeyPatch, root: NodePaths) -> None:
    with_daemon(
        monkeypatch,
        lambda r: httpx.Response(
            200, json={"node": "node1", "version": "0.1.0", "pid": 7, "uptime_s": 3725}
        ),
    )
    result = invoke("level")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "node: node1",
        "version: 0.1.0",
        "daemon: pid 7, up 1h 2m",
    ]


def test_genkey_writes_a_private_hex_key(root: NodePaths) -> None:
    result = invoke("genkey")
    assert result.exit_code == 0, result.output
    text = root.cluster_key.read_text()
    assert len(bytes.fromhex(text.strip())) == 32
    assert stat.S_IMODE(root.cluster_key.stat().st_mode) == 0o600
    assert str(root.cluster_key) in result.output


def test_genkey_output_option(root: NodePaths, tmp_path: Path) -> None:
    out = tmp_path / "k" / "my.key"
    assert invoke("genkey", "--output", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not root.cluster_key.exists()


def test_confcheck_prints_the_report(root: NodePaths, tmp_path: Path) -> None:
    good = tmp_path / "cluster.xml"
    good.write_text(CLUSTER_XML)
    result = invoke("confcheck", str(good))
    assert result.exit_code == 0
    assert result.output.strip() == f"{good}: OK"
    bad = tmp_path / "bad.xml"
    bad.write_text('<cluster><lans pulse="soon"><lan name="default"/></lans></cluster>')
    result = invoke("confcheck", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:1: error: <cluster/lans> @pulse='soon'" in result.output
    assert result.output.splitlines()[-1] == f"{bad}: 2 errors, 0 warnings"
    result = invoke("confcheck", "--json", str(bad))
    assert result.exit_code == 2
    assert json.loads(result.output)["errors"] == 2


def test_config_refuses_an_invalid_file_and_writes_nothing(root: NodePaths, tmp_path: Path) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<cluster><lans/></cluster>")
    key = tmp_path / "k.key"
    key.write_text(KEY_HEX)
    result = invoke("config", str(bad), "--key", str(key))
    assert isinstance(result.exception, UserConfigError)
    assert "nothing installed" in str(result.exception)
    assert not root.cluster_xml.exists()
    assert not root.cluster_key.exists()


def test_config_refuses_a_bad_key_and_a_foreign_node(
    root: NodePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "cluster.xml"
    good.write_text(CLUSTER_XML)
    key = tmp_path / "k.key"
    key.write_text("not hex")
    result = invoke("config", str(good), "--key", str(key))
    assert isinstance(result.exception, UserConfigError)
    assert "not hexadecimal" in str(result.exception)
    result = invoke("config", str(good))  # no key anywhere
    assert isinstance(result.exception, UserConfigError)
    assert "hakit cluster genkey" in str(result.exception)
    monkeypatch.setenv("HAKIT_NODE", "node9")
    key.write_text(KEY_HEX)
    result = invoke("config", str(good), "--key", str(key))
    assert isinstance(result.exception, UserConfigError)
    assert "this node (node9) is not in it" in str(result.exception)
    assert not root.cluster_xml.exists()


def test_config_installs_and_reloads_the_daemon(
    root: NodePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={**STATE, "problem": None})

    with_daemon(monkeypatch, handler)
    good = tmp_path / "cluster.xml"
    good.write_text(CLUSTER_XML)
    key = tmp_path / "k.key"
    key.write_text(KEY_HEX.upper() + "\n")
    result = invoke("config", str(good), "--key", str(key))
    assert result.exit_code == 0, result.output
    assert root.cluster_xml.read_text() == CLUSTER_XML
    assert root.cluster_key.read_text() == KEY_HEX + "\n"
    assert stat.S_IMODE(root.cluster_key.stat().st_mode) == 0o600
    assert calls == ["POST /api/v1/cluster/reload"]
    assert "hakitd reloaded the cluster configuration (channel running)" in result.output


def test_config_without_a_daemon_applies_at_next_start(
    root: NodePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_daemon(monkeypatch, unreachable)
    good = tmp_path / "cluster.xml"
    good.write_text(CLUSTER_XML)
    root.ensure()
    root.cluster_key.write_text(KEY_HEX)  # an installed key is kept when --key is not given
    result = invoke("config", str(good))
    assert result.exit_code == 0, result.output
    assert "applies at its next start" in result.output
    assert root.cluster_key.read_text() == KEY_HEX


def test_state_table_marks_the_local_node(root: NodePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    with_daemon(monkeypatch, lambda r: httpx.Response(200, json=STATE))
    result = invoke("state")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("cluster channel running on 10.0.0.1:4800 (UDP), pulse 100 ms")
    assert lines[1].split() == ["NODE", "REACHABLE", "LAST", "SEEN", "ADDRESSES"]
    assert lines[2].split() == ["node1", "(local)", "yes", "-", "default=10.0.0.1"]
    assert lines[3].split() == ["node2", "yes", "0.0", "s", "ago", "default=10.0.0.2"]
    assert lines[4].split() == ["node3", "no", "never", "default=10.0.0.3"]
    assert "forged 1" in lines[5]


def test_state_json_and_not_configured(root: NodePaths, monkeypatch: pytest.MonkeyPatch) -> None:
    with_daemon(monkeypatch, lambda r: httpx.Response(200, json=STATE))
    result = invoke("state", "--json")
    assert json.loads(result.output) == STATE
    bare = {"configured": False, "local": "node1", "problem": None, "nodes": []}
    with_daemon(monkeypatch, lambda r: httpx.Response(200, json=bare))
    assert "cluster not configured" in invoke("state").output


def test_state_without_daemon_fails_with_exit_code_5(
    root: NodePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    with_daemon(monkeypatch, unreachable)
    result = invoke("state")
    assert isinstance(result.exception, DaemonUnreachable)
    assert result.exception.exit_code == 5
