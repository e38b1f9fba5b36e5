"""The real VIP port in a pair of throw-away network namespaces joined by a veth.

Node side ``a`` adds the VIP, announces it, and ``b`` must then see the VIP at ``a``'s MAC in its
neighbour table (the gratuitous ARP did its job) and reach it; removal makes it unreachable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (ip netns)"
)


def sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def veth_pair() -> Iterator[tuple[str, str]]:
    a, b = f"hkvip{os.getpid()}a", f"hkvip{os.getpid()}b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, addr in ((a, "10.213.9.1/24"), (b, "10.213.9.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def in_ns(ns: str, code: str) -> str:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_vip_add_announce_remove(veth_pair: tuple[str, str]) -> None:
    a, b = veth_pair
    mac_a = sh("ip", "netns", "exec", a, "cat", "/sys/class/net/eth0/address").stdout.strip()
    # The client still believes the VIP is at the old primary's MAC (what a takeover must fix).
    sh(
        "ip",
        "-n",
        b,
        "neigh",
        "replace",
        "10.213.9.100",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "eth0",
        "nud",
        "stale",
    )
    out = in_ns(
        a,
        """
        from hakit.net.vip import NetlinkVip, Vip
        port = NetlinkVip()
        vip = Vip.parse("10.213.9.100")
        place = port.place(vip)
        print(place.ifname, place.prefixlen, port.add(vip), port.add(vip), port.present(vip))
        port.announce(vip)
        """,
    )
    assert out == "eth0 24 True False True"
    neigh = sh("ip", "-n", b, "neigh", "show", "10.213.9.100").stdout
    assert mac_a in neigh, f"gratuitous ARP did not move the VIP on b: {neigh!r}"
    sh("ip", "netns", "exec", b, "ping", "-c", "1", "-W", "2", "10.213.9.100")

    out = in_ns(
        a,
        """
        from hakit.net.vip import NetlinkVip, Vip
        port = NetlinkVip()
        vip = Vip.parse("10.213.9.100")
        print(port.reset_connections(vip), port.remove(vip), port.remove(vip), port.present(vip))
        """,
    )
    assert out == "0 True False False"
    ping = subprocess.run(
        ["ip", "netns", "exec", b, "ping", "-c", "1", "-W", "1", "10.213.9.100"],
        capture_output=True,
        check=False,
    )
    assert ping.returncode != 0


def test_vip_outside_any_subnet_is_refused(veth_pair: tuple[str, str]) -> None:
    a, _ = veth_pair
    out = in_ns(
        a,
        """
        from hakit.errors import LocalSystemError
        from hakit.net.vip import NetlinkVip, Vip
        try:
            NetlinkVip().add(Vip.parse("10.99.0.1"))
        except LocalSystemError as exc:
            print("refused:", exc)
        """,
    )
    assert out.startswith("refused: no interface carries a subnet containing virtual IP 10.99.0.1")


def test_tcpreset_resets_established_connections_to_the_vip(veth_pair: tuple[str, str]) -> None:
    a, b = veth_pair
    sh("ip", "-n", a, "addr", "add", "10.213.9.100/24", "dev", "eth0")
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            a,
            sys.executable,
            "-c",
            textwrap.dedent(
                """
            import socket, time
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("10.213.9.100", 7000))
            s.listen()
            print("listening", flush=True)
            conn, _ = s.accept()
            time.sleep(30)
            """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    client = None
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                b,
                sys.executable,
                "-c",
                textwrap.dedent(
                    """
                import socket
                c = socket.create_connection(("10.213.9.100", 7000), timeout=10)
                print("connected", flush=True)
                try:
                    data = c.recv(10)
                    print("closed" if data == b"" else "data")
                except ConnectionResetError:
                    print("reset")
                """
                ),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        out = in_ns(
            a,
            """
            from hakit.net.vip import NetlinkVip, Vip
            print(NetlinkVip().reset_connections(Vip.parse("10.213.9.100")))
            """,
        )
        assert int(out) >= 1
        assert client.stdout.readline().strip() == "reset"
    finally:
        for proc in (server, client):
            if proc is not None:
                proc.kill()
                proc.communicate()  # reaps it and closes its stdout pipe
