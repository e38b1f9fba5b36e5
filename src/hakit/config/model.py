"""Typed, immutable models of a module's ``userconfig.xml`` (SafeKit 8.2 semantics).

Every attribute of the SafeKit reference has a field here, with SafeKit's default. Durations are
float seconds. Windows-only attributes are kept (so nothing read is lost) but hakit ignores them;
:mod:`hakit.config.userconfig` warns about each one present.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Mode(enum.StrEnum):
    """The module type: ``mirror`` (2 nodes, replication), ``farm`` (N nodes, load balancing),
    ``light`` (one node, no failover)."""

    MIRROR = "mirror"
    FARM = "farm"
    LIGHT = "light"


@dataclass(frozen=True)
class Macro:
    """``<macro name value>``; ``value`` after expansion of earlier macros and the environment."""

    name: str
    value: str


@dataclass(frozen=True)
class Service:
    """``<service>`` attributes."""

    mode: Mode
    boot: str = "ignore"  # on | off | auto | ignore
    boot_delay: float = 0.0
    failover: bool = True  # mirror only
    defaultprim: str = "alone"  # alone | lastprim | <node name>; mirror only
    maxloop: int = 3
    loop_interval: float = 24 * 3600.0  # 0 disables the maxloop counter
    automatic_reboot: bool = False


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat network. ``pulse``/``timeout`` are the effective values (inherited from
    ``<heart>`` unless overridden). ``servers`` holds the legacy (SafeKit <= 7.1) peer addresses;
    ``name`` is the cluster lan (resolved from ``servers`` when a cluster was given)."""

    name: str | None
    ident: str
    pulse: float = 0.7
    timeout: float = 30.0
    servers: tuple[str, ...] = ()

    @property
    def is_flow(self) -> bool:
        """True when this network carries the replication flow (``ident="flow"``)."""
        return self.ident == "flow"


@dataclass(frozen=True)
class Heart:
    """``<heart>``: the mirror heartbeats. ``port`` None = computed from the module id."""

    heartbeats: tuple[Heartbeat, ...]
    port: int | None = None
    pulse: float = 0.7
    timeout: float = 30.0
    permanent_arp: bool = True


@dataclass(frozen=True)
class FarmNode:
    """Legacy ``<farm><lan><node name addr/>`` entry."""

    name: str
    addr: str


@dataclass(frozen=True)
class FarmLan:
    """A cluster lan used by the farm membership protocol."""

    name: str
    nodes: tuple[FarmNode, ...] = ()


@dataclass(frozen=True)
class Farm:
    """``<farm>``: membership protocol of a farm module. ``port`` None = from the module id."""

    lans: tuple[FarmLan, ...]
    port: int | None = None
    pulse: float = 0.1
    mlost_count: int = 20
    slost_count: int = 10


@dataclass(frozen=True)
class VirtualAddr:
    """A virtual IP (literal or DNS name) and how it is set."""

    addr: str
    where: str  # one_side_alias (mirror) | alias (farm) | one_side
    check: bool = True
    connections: bool = False
    netmask: str | None = None


@dataclass(frozen=True)
class VipInterface:
    """``<interface>``: the NIC carrying VIPs (``real_interface`` in a mirror,
    ``virtual_interface`` with a virtual MAC in a farm)."""

    addrs: tuple[VirtualAddr, ...]
    check: bool = True
    arpreroute: bool = False
    arpinterval: float = 60.0
    arpelapse: float = 1200.0
    name: str | None = None
    virtual_type: str | None = None  # vmac_directed | vmac_invisible (farm)
    virtual_mac: str | None = None


@dataclass(frozen=True)
class LbHost:
    """A node of a load-balancing group and its relative weight (0 = no traffic)."""

    name: str
    power: int = 1


@dataclass(frozen=True)
class LbRule:
    """What traffic a group balances. ``port`` None = every port, ``virtual_addr`` '*' = every VIP."""

    proto: str  # tcp | udp | arp
    filter: str  # on_addr | on_port | on_ipid
    virtual_addr: str = "*"
    port: int | None = None


@dataclass(frozen=True)
class LbGroup:
    """A load-balancing group; no ``hosts`` = every node with power 1."""

    name: str
    rules: tuple[LbRule, ...]
    hosts: tuple[LbHost, ...] = ()


@dataclass(frozen=True)
class Vip:
    """``<vip>``: virtual IPs (and, in a farm, load balancing)."""

    interfaces: tuple[VipInterface, ...]
    groups: tuple[LbGroup, ...] = ()
    tcpreset: bool = True
    scriptcontrol: bool = False

    def addresses(self) -> list[str]:
        """Every VIP of the module."""
        return [a.addr for i in self.interfaces for a in i.addrs]


@dataclass(frozen=True)
class NotReplicated:
    """An exclusion: a relative ``path`` or a ``regexpath`` (``only`` = the 8.2 "!re" form:
    replicate only what matches)."""

    path: str | None = None
    regexpath: str | None = None
    only: bool = False


@dataclass(frozen=True)
class Replicated:
    """A replicated directory."""

    dir: str
    read_only: bool = False
    tocheck: tuple[str, ...] = ()
    notreplicated: tuple[NotReplicated, ...] = ()


@dataclass(frozen=True)
class Rfs:
    """``<rfs>``: real-time file replication (mirror only), with SafeKit's defaults."""

    replicated: tuple[Replicated, ...]
    async_mode: str = "second"  # second | none
    locktimeout: float = 100.0
    sendtimeout: float = 30.0
    nbrei: int = 6
    reipacketsize: int = 8 * 1024 * 1024
    ruzone_blocksize: int = 8 * 1024 * 1024
    namespacepolicy: int = 4
    reitimeout: float = 150.0
    reicommit: int = 0
    reidetail: bool = False
    nbremconn: int = 1
    checktime: float = 220.0
    checkintv: float = 120.0
    reiallowedbw: int | None = None  # KB/s, None = unlimited
    syncdelta: float = 0.0
    syncat: str | None = None
    scripts: bool = False
    acl: bool = False
    packetsize: int | None = None
    mountoversuffix: str = "_For_SafeKit_Replication"
    flow: str | None = None  # legacy <flow name>
    # Windows-only, kept for completeness, ignored by hakit:
    iotimeout: float = 300.0
    roflags: str | None = None
    allocthreshold: int = 0
    nfsbox_options: str | None = None


@dataclass(frozen=True)
class Var:
    """``<var name value>``: exported to every script."""

    name: str
    value: str


@dataclass(frozen=True)
class User:
    """``<user>``: scripts are run (without it, none is)."""

    vars: tuple[Var, ...] = ()
    nicestoptimeout: float = 300.0
    forcestoptimeout: float = 300.0
    logging: str = "userlog"  # userlog | none
    userlogsize: int = 2048  # KB

    def environment(self) -> dict[str, str]:
        """The ``<var>`` values as environment variables."""
        return {v.name: v.value for v in self.vars}


@dataclass(frozen=True)
class VirtualHostName:
    """``<virtualhostname>`` of ``<vhost>``."""

    name: str
    envfile: str
    when: str = "prim"


@dataclass(frozen=True)
class Vhost:
    """``<vhost>`` (not implemented by hakit: refused at validation)."""

    names: tuple[VirtualHostName, ...]


@dataclass(frozen=True)
class Proc:
    """``<proc>``: a process or service watched by errd."""

    name: str
    class_: str  # prim | second | sec | both | pre | <custom class>
    action: str = "stopstart"  # restart | stopstart | stop | noaction | <handler in bin/>
    service: bool = False
    nameregex: str | None = None
    argregex: str | None = None
    atleast: int = 1  # -1 = ignore
    atmax: int = -1  # -1 = ignore
    restart_services: tuple[str, ...] = ()
    start_after: int = 0


@dataclass(frozen=True)
class Errd:
    """``<errd>``: process monitoring."""

    procs: tuple[Proc, ...]
    polltimer: float = 30.0


class CheckerKind(enum.StrEnum):
    """The checker element names of ``<check>``."""

    TCP = "tcp"
    PING = "ping"
    INTF = "intf"
    IP = "ip"
    CUSTOM = "custom"
    MODULE = "module"
    SPLITBRAIN = "splitbrain"


@dataclass(frozen=True)
class CheckTarget:
    """A ``<to>`` child: what a checker probes."""

    addr: str | None = None
    port: int | None = None
    interval: float = 10.0
    timeout: float = 5.0
    local_addr: str | None = None  # intf
    secure: bool = False  # module


@dataclass(frozen=True)
class Checker:
    """One checker; its resource is ``<kind>.<ident>``."""

    kind: CheckerKind
    ident: str
    when: str  # pre | prim | second | both
    action: str  # stop | stopstart | restart | wait | noaction
    targets: tuple[CheckTarget, ...] = ()
    exec: str | None = None  # custom, splitbrain
    arg: str | None = None
    module: str | None = None  # module checker: the watched module's name

    @property
    def resource(self) -> str:
        """The resource the checker sets up/down."""
        return f"{self.kind.value}.{self.ident}"


@dataclass(frozen=True)
class FailoverRule:
    """``label: if (condition) then action;`` of the classic failover language."""

    label: str
    condition: str
    action: str


@dataclass(frozen=True)
class Failover:
    """``<failover>``: the failover machine's settings and the user's rules (text kept)."""

    extends: bool = True
    period: float = 5.0
    handle_time: float = 15.0
    text: str = ""
    rules: tuple[FailoverRule, ...] = ()


@dataclass(frozen=True)
class UserConfig:
    """A module's whole configuration."""

    file: str
    service: Service
    macros: tuple[Macro, ...] = ()
    heart: Heart | None = None
    farm: Farm | None = None
    vip: Vip | None = None
    rfs: Rfs | None = None
    user: User | None = None
    vhost: Vhost | None = None
    errd: Errd | None = None
    checkers: tuple[Checker, ...] = ()
    failover: Failover | None = None

    @property
    def mode(self) -> Mode:
        """The module type (``service.mode``)."""
        return self.service.mode

    def checker(self, resource: str) -> Checker | None:
        """The checker whose resource is ``resource`` (e.g. ``tcp.http``)."""
        return next((c for c in self.checkers if c.resource == resource), None)
