"""The shape of a lab and everything derived from it, with no I/O.

A lab is named (``HAKIT_LAB``, default ``hakit``); the name prefixes every network namespace
(``<lab>-sw`` holds the switch, ``<lab>-node1``... and ``<lab>-client`` are the hosts). Addresses
come from one subnet at fixed offsets so that a test, a benchmark and a human all know that node *i*
is ``.10+i``, the client ``.250`` and ``.100``-``.199`` are free for virtual IPs.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from xml.sax.saxutils import quoteattr

from hakit.errors import UserConfigError

DEFAULT_LAB = "hakit"
DEFAULT_SUBNET = "10.213.0.0/24"
CLIENT = "client"
SWITCH_SUFFIX = "sw"
BRIDGE = "br0"
HOST_IFACE = "eth0"
LAN_NAME = "default"

NODE_OFFSET = 10  # node i is network + 10 + i
CLIENT_OFFSET = 250
VIP_FIRST_OFFSET = 100
VIP_LAST_OFFSET = 199
MAX_NODES = VIP_FIRST_OFFSET - NODE_OFFSET - 1  # node addresses must stay below the VIP range

# Lab names end up in namespace names and are matched by prefix ("<lab>-"), so no dash is allowed:
# lab "a" must never match the namespaces of lab "a-b".
_LAB_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_HOST_SUFFIX = re.compile(r"^(sw|client|node[1-9][0-9]*)$")


def check_lab_name(name: str) -> str:
    """Return ``name`` if it is a valid lab name, else raise :class:`UserConfigError`."""
    if not _LAB_NAME.match(name):
        raise UserConfigError(
            f"HAKIT_LAB={name!r}: a lab name is 1-16 characters, lowercase letters and digits, "
            "starting with a letter (it prefixes namespace names)"
        )
    return name


def node_name(index: int) -> str:
    """Host name of node number ``index`` (1-based)."""
    return f"node{index}"


def netns_name(lab: str, host: str) -> str:
    """Network namespace of ``host`` (or of the switch, host ``sw``) in ``lab``."""
    return f"{lab}-{host}"


def switch_port(host: str) -> str:
    """Name of ``host``'s veth end plugged into the switch (at most 15 characters)."""
    return f"v-{host}"


def lab_namespaces(lab: str, existing: list[str]) -> list[str]:
    """The namespaces among ``existing`` that belong to ``lab`` (also those of a crashed run)."""
    prefix = f"{lab}-"
    return [
        ns for ns in existing if ns.startswith(prefix) and _HOST_SUFFIX.match(ns[len(prefix) :])
    ]


@dataclass(frozen=True)
class LabShape:
    """What ``hakit lab up`` was asked for; two labs with the same shape are the same lab."""

    nodes: int
    client: bool
    subnet: str
    hakitd: bool = True  # False: bare hosts, for testing the lab itself or raw network benchmarks

    @classmethod
    def parse(cls, nodes: int, client: bool, subnet: str | None, hakitd: bool = True) -> LabShape:
        """Validate the arguments of ``lab up`` (errors name the option and the fix)."""
        if not 1 <= nodes <= MAX_NODES:
            raise UserConfigError(f"--nodes {nodes}: a lab has between 1 and {MAX_NODES} nodes")
        text = subnet or DEFAULT_SUBNET
        try:
            net = ipaddress.IPv4Network(text, strict=False)
        except ValueError as exc:
            raise UserConfigError(f"--subnet {text!r}: not an IPv4 network ({exc})") from None
        if net.prefixlen > 24:
            raise UserConfigError(
                f"--subnet {text!r}: the lab needs at least a /24 (nodes at .11+, virtual IPs at "
                f".100-.199, the client at .250); use e.g. {DEFAULT_SUBNET}"
            )
        return cls(nodes=nodes, client=client, subnet=str(net), hakitd=hakitd)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    def node_names(self) -> list[str]:
        """``node1``..``nodeN``."""
        return [node_name(i) for i in range(1, self.nodes + 1)]

    def host_names(self) -> list[str]:
        """Every host: the nodes, then the client if there is one."""
        return self.node_names() + ([CLIENT] if self.client else [])

    def address(self, host: str) -> str:
        """IPv4 address of ``host`` (without prefix length)."""
        base = self.network.network_address
        if host == CLIENT:
            return str(base + CLIENT_OFFSET)
        if host.startswith("node") and host[4:].isdigit():
            index = int(host[4:])
            if 1 <= index <= self.nodes:
                return str(base + NODE_OFFSET + index)
        raise UserConfigError(f"host {host!r} is not part of this lab ({self.describe()})")

    def vip_candidates(self) -> list[str]:
        """Addresses reserved for virtual IPs (``.100``-``.199``)."""
        base = self.network.network_address
        return [str(base + off) for off in range(VIP_FIRST_OFFSET, VIP_LAST_OFFSET + 1)]

    def describe(self) -> str:
        """One line for messages: ``3 nodes + client on 10.213.0.0/24``."""
        client = " + client" if self.client else ""
        bare = "" if self.hakitd else " without hakitd"
        return f"{self.nodes} node{'s' if self.nodes != 1 else ''}{client} on {self.subnet}{bare}"


def new_cluster_key() -> str:
    """A fresh cluster key: 32 random bytes, hex encoded."""
    return secrets.token_hex(32)


def cluster_xml(shape: LabShape) -> str:
    """The SafeKit-syntax ``cluster.xml`` naming every node of the lab on LAN ``default``."""
    lines = ["<cluster>", "  <lans>", f"    <lan name={quoteattr(LAN_NAME)}>"]
    for node in shape.node_names():
        addr = shape.address(node)
        lines.append(f"      <node name={quoteattr(node)} addr={quoteattr(addr)}/>")
    lines += ["    </lan>", "  </lans>", "</cluster>", ""]
    return "\n".join(lines)


def compress_ranges(addrs: list[str]) -> str:
    """``10.0.0.100-10.0.0.103, 10.0.0.105`` for a sorted list of IPv4 addresses."""
    if not addrs:
        return "none"
    ips = [ipaddress.IPv4Address(a) for a in addrs]
    parts: list[str] = []
    start = prev = ips[0]
    for ip in [*ips[1:], None]:
        if ip is not None and int(ip) == int(prev) + 1:
            prev = ip
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if ip is not None:
            start = prev = ip
    return ", ".join(parts)
