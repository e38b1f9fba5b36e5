"""Virtual IP addresses of mirror modules: netlink address changes and gratuitous ARP.

A mirror VIP (``where="one_side_alias"``) lives as an extra address on the interface that carries its
subnet, only on the PRIM/ALONE node. Taking it over is three steps, each behind the narrow
:class:`VipPort` interface so the executor can be tested with :class:`hakit.testing.fake_vip.FakeVip`:

1. ``add`` the address through netlink (``RTM_NEWADDR``; ~2 ms);
2. ``announce`` it with gratuitous ARP frames, so neighbours and switches move the VIP to our MAC at
   once (without them a client keeps the old MAC for up to its ARP cache lifetime, ~40 s measured);
3. on leaving, ``reset_connections`` (``tcpreset``: clients learn at once that their connection is gone
   instead of waiting for retransmission timeouts) and ``remove`` the address.

Why a raw AF_PACKET socket rather than ``arping``: no extra process on the takeover path and no
dependency on which arping flavour is installed. Both an ARP request and an ARP reply are sent, each
with sender = target = VIP (and, for the reply, target MAC = sender MAC, which is what makes Linux
accept an unsolicited reply as gratuitous).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import subprocess
from dataclasses import dataclass
from typing import Protocol

from pyroute2 import IPRoute

from hakit.errors import LocalSystemError, UserConfigError

ETH_P_ARP = 0x0806
BROADCAST_MAC = b"\xff" * 6


@dataclass(frozen=True)
class Vip:
    """One virtual address. ``interface`` None means: the interface whose subnet contains it."""

    addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefixlen: int | None = None
    interface: str | None = None

    @classmethod
    def parse(cls, addr: str, netmask: str | None = None, interface: str | None = None) -> Vip:
        """Build from configuration strings (``netmask`` as dotted quad or prefix length)."""
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError as exc:
            raise UserConfigError(f"virtual IP {addr!r} is not an IP address literal") from exc
        prefix: int | None = None
        if netmask:
            try:
                prefix = ipaddress.ip_network(f"{ip}/{netmask}", strict=False).prefixlen
            except ValueError as exc:
                raise UserConfigError(
                    f"netmask {netmask!r} of virtual IP {addr} is invalid"
                ) from exc
        return cls(ip, prefix, interface)


@dataclass(frozen=True)
class Placement:
    """Where a VIP goes: interface index and name, prefix length, the interface's MAC."""

    index: int
    ifname: str
    prefixlen: int
    mac: bytes


class VipPort(Protocol):
    """What the module engine needs from the system to hold a VIP."""

    def add(self, vip: Vip) -> bool:
        """Add the address; return False when it was already there."""

    def remove(self, vip: Vip) -> bool:
        """Remove the address; return False when it was not there."""

    def present(self, vip: Vip) -> bool:
        """Is the address configured on this node?"""

    def announce(self, vip: Vip) -> None:
        """Send gratuitous ARP for the address (IPv4; IPv6 relies on the kernel's unsolicited NA)."""

    def reset_connections(self, vip: Vip) -> int:
        """Reset TCP connections whose local address is the VIP; return how many were reset."""


class NetlinkVip:
    """The real :class:`VipPort`: pyroute2 netlink in the current network namespace."""

    def place(self, vip: Vip) -> Placement:
        """Find the interface for ``vip``: the named one, or the one whose subnet contains it."""
        with IPRoute() as ipr:
            links = {link["index"]: link for link in ipr.get_links()}
            if vip.interface is not None:
                found = [i for i, link in links.items() if link.get("ifname") == vip.interface]
                if not found:
                    names = sorted(str(link.get("ifname")) for link in links.values())
                    raise LocalSystemError(
                        f"interface {vip.interface!r} for virtual IP {vip.addr} does not exist "
                        f"(interfaces here: {', '.join(names)})"
                    )
                index = found[0]
                prefix = vip.prefixlen
                if prefix is None:
                    prefix = self._subnet_prefix(ipr, index, vip) or vip.addr.max_prefixlen
            else:
                index, prefix = self._interface_for(ipr, vip)
            link = links[index]
            mac_text = str(link.get("address") or "00:00:00:00:00:00")
            return Placement(
                index=index,
                ifname=str(link.get("ifname")),
                prefixlen=prefix,
                mac=bytes.fromhex(mac_text.replace(":", "")),
            )

    @staticmethod
    def _subnet_prefix(ipr: IPRoute, index: int, vip: Vip) -> int | None:
        for msg in ipr.get_addr(index=index):
            net = ipaddress.ip_network(f"{msg.get('address')}/{msg['prefixlen']}", strict=False)
            if (
                vip.addr.version == net.version
                and vip.addr in net
                and net.prefixlen < vip.addr.max_prefixlen
            ):
                return int(net.prefixlen)
        return None

    @staticmethod
    def _interface_for(ipr: IPRoute, vip: Vip) -> tuple[int, int]:
        candidates = []
        for msg in ipr.get_addr():
            address = msg.get("address")
            if address is None or address == str(vip.addr):
                continue
            net = ipaddress.ip_network(f"{address}/{msg['prefixlen']}", strict=False)
            if (
                net.version == vip.addr.version
                and vip.addr in net
                and net.prefixlen < net.max_prefixlen
            ):
                candidates.append((net.prefixlen, msg["index"]))
        if not candidates:
            raise LocalSystemError(
                f"no interface carries a subnet containing virtual IP {vip.addr}: give the interface "
                "name (<interface name=...>) or put the VIP in the subnet of a local address"
            )
        prefix, index = max(candidates)  # the most specific subnet wins
        return index, vip.prefixlen if vip.prefixlen is not None else prefix

    def present(self, vip: Vip) -> bool:
        with IPRoute() as ipr:
            return any(msg.get("address") == str(vip.addr) for msg in ipr.get_addr())

    def add(self, vip: Vip) -> bool:
        if self.present(vip):
            return False
        place = self.place(vip)
        with IPRoute() as ipr:
            ipr.addr("add", index=place.index, address=str(vip.addr), prefixlen=place.prefixlen)
        return True

    def remove(self, vip: Vip) -> bool:
        with IPRoute() as ipr:
            for msg in ipr.get_addr():
                if msg.get("address") == str(vip.addr):
                    ipr.addr(
                        "del", index=msg["index"], address=str(vip.addr), prefixlen=msg["prefixlen"]
                    )
                    return True
        return False

    def announce(self, vip: Vip) -> None:
        if vip.addr.version != 4:
            return
        place = self.place(vip)
        send_gratuitous_arp(place.ifname, place.mac, vip.addr.packed)

    def reset_connections(self, vip: Vip) -> int:
        # `ss -K` asks the kernel (SOCK_DESTROY over sock_diag) to abort each matching socket, which
        # sends a RST to the peer. Counting the listed sockets gives the number reset.
        family = "-4" if vip.addr.version == 4 else "-6"
        proc = subprocess.run(
            ["ss", family, "-K", "-t", "-H", "state", "connected", "src", str(vip.addr)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalSystemError(f"tcpreset of {vip.addr} failed: {proc.stderr.strip()}")
        return sum(1 for line in proc.stdout.splitlines() if line.strip())


def arp_frame(op: int, mac: bytes, ip: bytes, dst_mac: bytes = BROADCAST_MAC) -> bytes:
    """An Ethernet ARP frame announcing ``ip`` at ``mac`` (sender and target protocol address = ip)."""
    eth = dst_mac + mac + struct.pack("!H", ETH_P_ARP)
    target_mac = mac if op == 2 else b"\x00" * 6
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mac + ip + target_mac + ip
    return eth + arp


def send_gratuitous_arp(ifname: str, mac: bytes, ip: bytes) -> None:
    """Send one gratuitous ARP request and one gratuitous ARP reply on ``ifname``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((ifname, 0))
        sock.send(arp_frame(1, mac, ip))
        sock.send(arp_frame(2, mac, ip))
