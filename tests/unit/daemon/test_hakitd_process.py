"""Two real hakitd processes on one host (127.0.0.1 and 127.0.0.2, same UDP port) find each other.

The story: node1 and node2 share a cluster.xml and key; both daemons start; each reports the other
reachable; node2 is killed with SIGKILL; node1 reports it unreachable; node1 stops cleanly on
SIGTERM. Waits poll the API with a generous deadline: they are not timing assertions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hakit.paths import NodePaths

HAKITD = Path(sys.executable).parent / "hakitd"
HAKIT = Path(sys.executable).parent / "hakit"
DEADLINE = 30.0
KEY_HEX = bytes(range(32)).hex()

pytestmark = pytest.mark.skipif(
    not (HAKITD.exists() and HAKIT.exists()),
    reason=f"hakitd/hakit not installed next to {sys.executable}",
)


def free_port(kind: int, hosts: tuple[str, ...]) -> int:
    """A port free on every host of ``hosts`` for ``kind`` (SOCK_DGRAM or SOCK_STREAM)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, kind) as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port")


class Node:
    """One hakitd process with its own HAKIT_ROOT."""

    def __init__(self, name: str, root: Path, http_port: int) -> None:
        self.name = name
        self.paths = NodePaths(root)
        self.http_port = http_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = root / "hakitd.out"

    def start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "HAKIT_ROOT": str(self.paths.root), "HAKIT_NODE": self.name}
        env.pop("HAKIT_HTTP_PORT", None)
        with open(self.output, "ab") as out:
            proc = subprocess.Popen(
                [str(HAKITD), "--http-port", str(self.http_port), "--http-host", "127.0.0.1"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.proc = proc
        return proc

    def api(self, path: str) -> dict[str, Any]:
        answer = httpx.get(f"http://127.0.0.1:{self.http_port}/api/v1/{path}", timeout=2.0)
        answer.raise_for_status()
        data = answer.json()
        assert isinstance(data, dict)
        return data

    def reachable(self) -> set[str]:
        try:
            nodes = self.api("cluster/state")["nodes"]
        except httpx.HTTPError:
            return set()
        return {n["name"] for n in nodes if n["reachable"] and not n["local"]}

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def wait_for(condition: Callable[[], bool], what: str, nodes: list[Node]) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            logs = "\n".join(f"--- {n.name}:\n{n.log()[-3000:]}" for n in nodes)
            raise AssertionError(f"not within {DEADLINE} s: {what}\n{logs}")
        time.sleep(0.05)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    udp = free_port(socket.SOCK_DGRAM, ("127.0.0.1", "127.0.0.2"))
    cluster_xml = f"""<cluster><lans port="{udp}" pulse="100" slost_count="10">
      <lan name="default">
        <node name="node1" addr="127.0.0.1"/>
        <node name="node2" addr="127.0.0.2"/>
      </lan></lans></cluster>
    """
    result = []
    for name in ("node1", "node2"):
        node = Node(name, tmp_path / name, free_port(socket.SOCK_STREAM, ("127.0.0.1",)))
        node.paths.etc.mkdir(parents=True)
        node.paths.cluster_xml.write_text(cluster_xml)
        node.paths.cluster_key.write_text(KEY_HEX + "\n")
        result.append(node)
    try:
        yield result
    finally:
        for node in result:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
            if node.proc is not None:
                node.proc.wait(timeout=10)


def test_two_daemons_see_each_other_and_a_killed_one_is_lost(nodes: list[Node]) -> None:
    node1, node2 = nodes
    node1.start()
    node2.start()
    wait_for(lambda: node1.reachable() == {"node2"}, "node1 sees node2", nodes)
    wait_for(lambda: node2.reachable() == {"node1"}, "node2 sees node1", nodes)

    level = node1.api("level")
    assert level["node"] == "node1"
    state = node2.api("cluster/state")
    assert state["configured"] is True
    assert state["local"] == "node2"
    assert state["counters"]["accepted"] > 0
    assert state["counters"]["forged"] == 0
    assert node1.proc is not None
    assert node1.paths.run.joinpath("hakitd.pid").read_text().strip() == str(node1.proc.pid)

    # The CLI talks to the same API (HAKIT_API points it at node1's daemon).
    cli_env = {**os.environ, "HAKIT_API": f"http://127.0.0.1:{node1.http_port}"}
    shown = subprocess.run(
        [str(HAKIT), "cluster", "state"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[2:4]}
    assert rows["node1"][1:3] == ["(local)", "yes"]
    assert rows["node2"][1] == "yes"
    level_out = subprocess.run(
        [str(HAKIT), "level"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert level_out.stdout.splitlines()[0] == "node: node1", level_out.stderr

    # A second daemon on node1's root is refused (pid file lock), exit code 4.
    second = subprocess.run(
        [str(HAKITD), "--http-port", "1"],
        env={**os.environ, "HAKIT_ROOT": str(node1.paths.root), "HAKIT_NODE": "node1"},
        capture_output=True,
        timeout=60,
    )
    assert second.returncode == 4, second.stderr
    assert b"another hakitd" in second.stderr

    assert node2.proc is not None
    node2.proc.send_signal(signal.SIGKILL)
    node2.proc.wait(timeout=10)
    wait_for(lambda: "node2" not in node1.reachable(), "node1 loses node2", nodes)
    lost = node1.api("cluster/state")["nodes"][1]
    assert lost["name"] == "node2"
    assert lost["reachable"] is False
    assert lost["last_seen_s"] >= 1.0  # slost_count x pulse

    node1.proc.send_signal(signal.SIGTERM)
    assert node1.proc.wait(timeout=DEADLINE) == 0, node1.log()
    assert not node1.paths.run.joinpath("hakitd.pid").exists()
    assert "hakitd stopped" in node1.log()
    assert (node1.paths.log / "hakitd.log").read_text().count("hakitd stopped") == 1


def test_unconfigured_daemon_serves_the_api_and_reloads_on_sighup(nodes: list[Node]) -> None:
    node1, _ = nodes
    node1.paths.cluster_xml.unlink()
    proc = node1.start()
    wait_for(lambda: _answers(node1), "node1 API up", nodes)
    assert node1.api("cluster/state")["configured"] is False
    node1.paths.cluster_xml.write_text(_one_node_xml())
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: node1.api("cluster/state")["configured"] is True, "reload on SIGHUP", nodes)
    before = node1.api("cluster/state")["incarnation"]
    answer = httpx.post(f"http://127.0.0.1:{node1.http_port}/api/v1/cluster/reload", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["channel"] == "running"
    assert answer.json()["incarnation"] > before
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=DEADLINE) == 0, node1.log()


def _answers(node: Node) -> bool:
    try:
        node.api("level")
    except httpx.HTTPError:
        return False
    return True


def _one_node_xml() -> str:
    port = free_port(socket.SOCK_DGRAM, ("127.0.0.1",))
    return f"""<cluster><lans port="{port}"><lan name="default">
      <node name="node1" addr="127.0.0.1"/></lan></lans></cluster>"""
