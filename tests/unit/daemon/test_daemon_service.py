"""The node service under the API: loading, reloading and refusing cluster configurations."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from itertools import count
from pathlib import Path

import pytest

from hakit.config.report import ConfigInvalid
from hakit.daemon.service import NodeService
from hakit.errors import UserConfigError
from hakit.paths import NodePaths
from hakit.testing.clock import FakeClock

KEY_HEX = bytes(range(32)).hex()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_cluster(paths: NodePaths, port: int, *, key: bool = True, local: str = "node1") -> None:
    paths.ensure()
    paths.cluster_xml.write_text(
        f"""<cluster><lans port="{port}"><lan name="default">
        <node name="{local}" addr="127.0.0.1"/>
        <node name="node2" addr="127.0.0.2"/>
        </lan></lans></cluster>"""
    )
    if key:
        paths.cluster_key.write_text(KEY_HEX + "\n")


def run(tmp_path: Path, scenario: Callable[[NodeService, NodePaths], Awaitable[None]]) -> None:
    """Run ``scenario`` with a service attached to a TaskGroup, then stop it."""
    paths = NodePaths(tmp_path)
    numbers = count(1)
    service = NodeService(paths, "node1", clock=FakeClock(), incarnation=lambda: next(numbers))

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            service.attach(tg)
            try:
                await scenario(service, paths)
            finally:
                await service.close()

    asyncio.run(main())


def test_without_cluster_xml_the_node_is_not_configured(tmp_path: Path) -> None:
    async def scenario(service: NodeService, paths: NodePaths) -> None:
        state = await service.reload()
        assert state["configured"] is False
        assert state["channel"] == "off"
        assert state["problem"] is None
        assert state["nodes"] == []
        assert set(state["counters"]) >= {"accepted", "forged", "corrupted", "replayed"}
        assert set(state["counters"].values()) == {0}
        level = service.level()
        assert level["node"] == "node1"
        assert level["configured"] is False

    run(tmp_path, scenario)


def test_valid_configuration_starts_the_channel(tmp_path: Path) -> None:
    port = free_udp_port()

    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, port)
        state = await service.reload()
        assert state["configured"] is True
        assert state["channel"] == "running"
        assert state["bound"] == [f"127.0.0.1:{port}"]
        assert state["port"] == port
        assert state["incarnation"] == 1
        local, peer = state["nodes"]
        assert local == {
            "name": "node1",
            "local": True,
            "reachable": True,
            "last_seen_s": None,
            "lans": {"default": "127.0.0.1"},
            "lans_last_seen_s": {},
        }
        assert peer["name"] == "node2"
        assert peer["reachable"] is False
        assert peer["last_seen_s"] is None
        assert peer["lans"] == {"default": "127.0.0.2"}

    run(tmp_path, scenario)


def test_each_reload_restarts_the_channel_with_a_new_incarnation(tmp_path: Path) -> None:
    port = free_udp_port()

    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, port)
        first = await service.reload()
        second = await service.reload()  # same port: the old socket was closed first
        assert second["incarnation"] > first["incarnation"]
        assert second["channel"] == "running"

    run(tmp_path, scenario)


def test_invalid_cluster_xml_is_refused_and_the_running_channel_kept(tmp_path: Path) -> None:
    port = free_udp_port()

    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, port)
        await service.reload()
        paths.cluster_xml.write_text("<cluster><lans pulse='fast'/></cluster>")
        with pytest.raises(ConfigInvalid, match="pulse"):
            await service.reload()
        state = service.cluster_state()
        assert state["channel"] == "running"
        assert state["configured"] is True
        assert "previous configuration is still in effect" in state["problem"]

    run(tmp_path, scenario)


def test_missing_key_is_refused_with_the_next_step(tmp_path: Path) -> None:
    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, free_udp_port(), key=False)
        with pytest.raises(UserConfigError, match="hakit cluster genkey"):
            await service.reload()
        state = service.cluster_state()
        assert state["configured"] is False
        assert state["problem"].startswith("cluster configuration refused")

    run(tmp_path, scenario)


def test_node_not_in_the_cluster_keeps_the_channel_off(tmp_path: Path) -> None:
    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, free_udp_port(), local="node3")
        state = await service.reload()
        assert state["configured"] is True
        assert state["channel"] == "off"
        assert "'node1'" in state["problem"] and "node3, node2" in state["problem"]
        assert [n["reachable"] for n in state["nodes"]] == [False, False]

    run(tmp_path, scenario)


def test_removing_cluster_xml_unconfigures_the_node(tmp_path: Path) -> None:
    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, free_udp_port())
        await service.reload()
        paths.cluster_xml.unlink()
        state = await service.reload()
        assert state["configured"] is False
        assert state["channel"] == "off"

    run(tmp_path, scenario)


def test_reload_logged_does_not_raise(tmp_path: Path) -> None:
    async def scenario(service: NodeService, paths: NodePaths) -> None:
        write_cluster(paths, free_udp_port(), key=False)
        await service.reload_logged("SIGHUP")
        assert service.cluster_state()["problem"] is not None

    run(tmp_path, scenario)


def test_reload_needs_a_task_group(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    write_cluster(paths, free_udp_port())
    service = NodeService(paths, "node1", incarnation=lambda: 1)
    with pytest.raises(RuntimeError, match="attach"):
        asyncio.run(service.reload())
