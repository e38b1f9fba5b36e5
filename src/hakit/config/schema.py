"""The userconfig.xml schema as data: every element, its attributes, children and support level.

Theory of operation: :mod:`hakit.config.tree` walks the XML against :data:`ELEMENTS` and converts
each attribute according to its :class:`Attr` (kind, default, implicit time unit, enumeration,
bounds), reporting unknown elements/attributes and every unusable value. The builders of
:mod:`hakit.config.userconfig` then turn the checked tree into the typed models and apply the
cross-field rules. Adding an attribute is one line here plus its field in the model.

``support`` says what hakit does with a setting SafeKit knows:

* ``SUPPORTED``   honoured;
* ``WINDOWS``     Windows-only in SafeKit: ignored on Linux, with a warning;
* ``OBSOLETE``    obsolete in SafeKit itself: ignored, with a warning;
* ``IGNORED``     meaningless for hakit's design (``note`` says why): ignored, with a warning;
* ``UNSUPPORTED`` not implemented by hakit yet: an error, since running without it would change
  the module's behaviour behind the administrator's back.

``refused``/``warned`` do the same for particular *values* of a supported attribute.
The table of docs/design/config-compat.md is written from these entries.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Kind(enum.Enum):
    """How an attribute's text is converted."""

    TEXT = "text"  # any text, may be empty
    NAME = "name"  # non-empty identifier-like text
    VARNAME = "varname"  # environment variable name
    INT = "int"
    DURATION = "duration"  # float seconds; ``unit`` = implicit unit of a bare number
    ONOFF = "onoff"  # on|off -> bool
    YESNO = "yesno"  # yes|no -> bool
    ENUM = "enum"  # one of ``choices`` -> str
    PORT = "port"  # 1..65535 (``star``: '*' -> None)
    ADDR = "addr"  # IPv4/IPv6 literal or DNS name
    PATH = "path"  # non-empty text; rules checked by the builders
    REGEX = "regex"  # POSIX ERE approximated by Python re (``negatable``: leading '!')
    MAC = "mac"


class Support(enum.Enum):
    """What hakit does with a setting (see the module docstring)."""

    SUPPORTED = "supported"
    WINDOWS = "windows"
    OBSOLETE = "obsolete"
    IGNORED = "ignored"
    UNSUPPORTED = "unsupported"


ALL_MODES = frozenset({"mirror", "farm", "light"})
MIRROR = frozenset({"mirror"})
FARM = frozenset({"farm"})
MIRROR_FARM = frozenset({"mirror", "farm"})


@dataclass(frozen=True)
class Attr:
    """One attribute: how to read it and what it defaults to."""

    kind: Kind
    default: object = None
    unit: str = ""
    choices: tuple[str, ...] = ()
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    star: bool = False
    negatable: bool = False
    support: Support = Support.SUPPORTED
    note: str = ""
    modes: frozenset[str] = ALL_MODES
    # Words for the "template placeholder" error: "<what> is empty: ...; fill in <attr> with <fill>".
    what: str = ""
    fill: str = ""
    refused: Mapping[str, str] = field(default_factory=dict)
    warned: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Child:
    """A child element allowed under a parent: its schema key and how many may appear."""

    key: str
    many: bool = False


@dataclass(frozen=True)
class Elem:
    """One element: attributes, allowed children, and whether its text content is kept."""

    attrs: Mapping[str, Attr] = field(default_factory=dict)
    children: Mapping[str, Child] = field(default_factory=dict)
    text: bool = False
    modes: frozenset[str] = ALL_MODES
    support: Support = Support.SUPPORTED
    note: str = ""


def _dur(default: float, unit: str, **kw: object) -> Attr:
    return Attr(Kind.DURATION, default, unit=unit, **kw)  # type: ignore[arg-type]


def _onoff(default: bool, **kw: object) -> Attr:
    return Attr(Kind.ONOFF, default, **kw)  # type: ignore[arg-type]


def _enum(choices: tuple[str, ...], default: str | None = None, **kw: object) -> Attr:
    return Attr(Kind.ENUM, default, choices=choices, **kw)  # type: ignore[arg-type]


def _int(default: int | None, minimum: int | None = None, **kw: object) -> Attr:
    return Attr(Kind.INT, default, minimum=minimum, **kw)  # type: ignore[arg-type]


_WIN = "Windows-only in SafeKit"
_NO_NFS = "hakit replicates through a FUSE mount, not a local NFS mount"
_WHEN = ("pre", "prim", "second", "both")
_ACTIONS = ("stop", "stopstart", "restart", "wait", "noaction")

#: Every element of userconfig.xml, by schema key (the tag, or ``parent_tag`` when one tag has
#: different meanings, e.g. the ``<to>`` of each checker).
ELEMENTS: dict[str, Elem] = {
    "safe": Elem(children={"macro": Child("macro", many=True), "service": Child("service")}),
    "macro": Elem(attrs={"name": Attr(Kind.NAME, required=True), "value": Attr(Kind.TEXT, "")}),
    "service": Elem(
        attrs={
            "mode": _enum(("mirror", "farm", "light"), required=True),
            "boot": _enum(("on", "off", "auto", "ignore"), "ignore"),
            "boot_delay": _dur(0.0, "s"),
            "failover": _onoff(True, modes=MIRROR),
            "defaultprim": Attr(Kind.NAME, "alone", modes=MIRROR),
            "maxloop": _int(3, 0),
            "loop_interval": _dur(24 * 3600.0, "h"),
            "automatic_reboot": _onoff(False),
        },
        children={
            "heart": Child("heart"),
            "farm": Child("farm"),
            "vip": Child("vip"),
            "rfs": Child("rfs"),
            "user": Child("user"),
            "vhost": Child("vhost"),
            "errd": Child("errd"),
            "check": Child("check"),
            "failover": Child("failover"),
        },
    ),
    # -- mirror heartbeats ------------------------------------------------------------------
    "heart": Elem(
        modes=MIRROR,
        attrs={
            "port": Attr(Kind.PORT),
            "pulse": _dur(0.7, "ms"),
            "timeout": _dur(30.0, "ms"),
            "permanent_arp": _onoff(True),
        },
        children={"heartbeat": Child("heartbeat", many=True)},
    ),
    "heartbeat": Elem(
        attrs={
            "name": Attr(
                Kind.NAME, what="the heartbeat network", fill="the name of a cluster.xml <lan>"
            ),
            "ident": Attr(Kind.NAME),
            # No default: a heartbeat inherits <heart>'s pulse and timeout.
            "pulse": Attr(Kind.DURATION, None, unit="ms"),
            "timeout": Attr(Kind.DURATION, None, unit="ms"),
        },
        children={"server": Child("server", many=True)},
    ),
    "server": Elem(
        attrs={
            "addr": Attr(
                Kind.ADDR, required=True, what="the server address", fill="the peer's address"
            ),
        },
        support=Support.OBSOLETE,
        note="the SafeKit <= 7.1 heartbeat form; name a cluster.xml lan instead: "
        "<heartbeat name='default'/>",
    ),
    # -- farm membership --------------------------------------------------------------------
    "farm": Elem(
        modes=FARM,
        attrs={
            "port": Attr(Kind.PORT),
            "pulse": _dur(0.1, "ms"),
            "mlost_count": _int(20, 1),
            "slost_count": _int(10, 1),
        },
        children={"lan": Child("farm_lan", many=True)},
    ),
    "farm_lan": Elem(
        attrs={
            "name": Attr(
                Kind.NAME,
                required=True,
                what="the farm network",
                fill="the name of a cluster.xml <lan>",
            )
        },
        children={"node": Child("farm_node", many=True)},
    ),
    "farm_node": Elem(
        attrs={
            "name": Attr(Kind.NAME, required=True, what="the node name", fill="a node name"),
            "addr": Attr(Kind.ADDR, required=True, what="the node address", fill="its address"),
        },
        support=Support.OBSOLETE,
        note="the legacy farm form; nodes and addresses now come from cluster.xml",
    ),
    # -- virtual IPs --------------------------------------------------------------------------
    "vip": Elem(
        modes=MIRROR_FARM,
        attrs={"tcpreset": _onoff(True), "scriptcontrol": _onoff(False, modes=FARM)},
        children={
            "interface_list": Child("interface_list"),
            "loadbalancing_list": Child("loadbalancing_list"),
        },
    ),
    "interface_list": Elem(children={"interface": Child("interface", many=True)}),
    "interface": Elem(
        attrs={
            "check": _onoff(True),
            "arpreroute": _onoff(False),
            "arpinterval": _dur(60.0, "s"),
            "arpelapse": _dur(1200.0, "s"),
            "name": Attr(Kind.NAME),
        },
        children={
            "real_interface": Child("real_interface"),
            "virtual_interface": Child("virtual_interface"),
        },
    ),
    "real_interface": Elem(
        modes=MIRROR, children={"virtual_addr": Child("virtual_addr", many=True)}
    ),
    "virtual_interface": Elem(
        modes=FARM,
        attrs={
            "type": _enum(("vmac_directed", "vmac_invisible"), "vmac_directed"),
            "addr": Attr(Kind.MAC),
        },
        children={"virtual_addr": Child("virtual_addr", many=True)},
    ),
    "virtual_addr": Elem(
        attrs={
            "addr": Attr(
                Kind.ADDR,
                required=True,
                what="the VIP address",
                fill="the virtual IP (an unused address of the nodes' subnet)",
            ),
            "where": _enum(("one_side_alias", "alias", "one_side"), required=True),
            "check": _onoff(True),
            "connections": _onoff(False),
            "netmask": Attr(Kind.TEXT),
        },
    ),
    "loadbalancing_list": Elem(modes=FARM, children={"group": Child("group", many=True)}),
    "group": Elem(
        attrs={"name": Attr(Kind.NAME, required=True)},
        children={"cluster": Child("lb_cluster"), "rule": Child("rule", many=True)},
    ),
    "lb_cluster": Elem(children={"host": Child("host", many=True)}),
    "host": Elem(attrs={"name": Attr(Kind.NAME, required=True), "power": _int(1, 0)}),
    "rule": Elem(
        attrs={
            "virtual_addr": Attr(Kind.TEXT, "*"),
            "port": Attr(
                Kind.PORT,
                None,
                star=True,
                what="the load-balanced port",
                fill="the application's TCP/UDP port (or '*')",
            ),
            "proto": _enum(("tcp", "udp", "arp"), required=True),
            "filter": _enum(("on_addr", "on_port", "on_ipid"), required=True),
        }
    ),
    # -- replication ------------------------------------------------------------------------
    "rfs": Elem(
        modes=MIRROR,
        attrs={
            "acl": _onoff(
                False,
                support=Support.WINDOWS,
                note=_WIN + " (on Linux, POSIX ACLs are extended attributes, always replicated)",
            ),
            "async": _enum(("second", "none"), "second"),
            "iotimeout": _dur(300.0, "s", support=Support.WINDOWS, note=_WIN),
            "roflags": Attr(Kind.TEXT, support=Support.WINDOWS, note=_WIN),
            "locktimeout": _dur(100.0, "s"),
            "sendtimeout": _dur(30.0, "s"),
            "nbrei": _int(6, 1),
            "reipacketsize": _int(8 * 1024 * 1024, 4096),
            "ruzone_blocksize": _int(8 * 1024 * 1024, 4096),
            "namespacepolicy": _enum(
                ("0", "1", "3", "4"),
                "4",
                warned={
                    "1": "namespacepolicy 1 is Windows-only; hakit uses 4 (zones, then a "
                    "remembered full copy)",
                    "3": "namespacepolicy 3 (NTFS USN journal) is Windows-only; hakit uses 4",
                },
            ),
            "reitimeout": _dur(150.0, "s"),
            "reicommit": _int(0, 0),
            "reidetail": _onoff(False),
            "allocthreshold": _int(0, 0, support=Support.WINDOWS, note=_WIN),
            "nbremconn": _int(1, 1),
            "checktime": _dur(220.0, "ms"),
            "checkintv": _dur(120.0, "s"),
            "nfsbox_options": _enum(
                ("cross", "nocross"), "cross", support=Support.WINDOWS, note=_WIN
            ),
            "scripts": _onoff(
                False,
                refused={
                    "on": "the _rfs_* replication callback scripts are not supported by hakit "
                    "yet: they would never be called"
                },
            ),
            "reiallowedbw": _int(None, 1),
            "syncdelta": _dur(0.0, "m"),
            "syncat": Attr(
                Kind.TEXT,
                support=Support.UNSUPPORTED,
                note="scheduled synchronisation (syncat) is not supported by hakit yet: "
                "replication is continuous",
            ),
            "mountoversuffix": Attr(
                Kind.TEXT,
                "_For_SafeKit_Replication",
                support=Support.IGNORED,
                note="hakit mounts over the directory in place and never renames it",
            ),
            "packetsize": _int(None, 4096, support=Support.IGNORED, note=_NO_NFS),
            "mountover": Attr(
                Kind.TEXT,
                support=Support.OBSOLETE,
                note="a SafeKit 7.x attribute, not in the 8.2 reference",
            ),
            "smartwrite": Attr(
                Kind.TEXT,
                support=Support.OBSOLETE,
                note="a SafeKit 7.x Windows attribute, not in the 8.2 reference",
            ),
        },
        children={"replicated": Child("replicated", many=True), "flow": Child("flow")},
    ),
    "replicated": Elem(
        attrs={
            "dir": Attr(
                Kind.PATH,
                required=True,
                what="the replicated directory",
                fill="the absolute path of the application's data directory",
            ),
            "mode": _enum(("read_only",)),
        },
        children={
            "tocheck": Child("tocheck", many=True),
            "notreplicated": Child("notreplicated", many=True),
        },
    ),
    "tocheck": Elem(
        attrs={
            "path": Attr(
                Kind.PATH,
                required=True,
                what="the file to check",
                fill="a path relative to the replicated directory",
            )
        }
    ),
    "notreplicated": Elem(
        attrs={"path": Attr(Kind.PATH), "regexpath": Attr(Kind.REGEX, negatable=True)}
    ),
    "flow": Elem(
        attrs={
            "name": Attr(
                Kind.NAME,
                required=True,
                what="the replication network",
                fill="the name of a cluster.xml <lan>",
            )
        }
    ),
    # -- scripts ------------------------------------------------------------------------------
    "user": Elem(
        attrs={
            "nicestoptimeout": _dur(300.0, "s"),
            "forcestoptimeout": _dur(300.0, "s"),
            "logging": _enum(("userlog", "none"), "userlog"),
            "userlogsize": _int(2048, 0),
        },
        children={"var": Child("var", many=True)},
    ),
    "var": Elem(attrs={"name": Attr(Kind.VARNAME, required=True), "value": Attr(Kind.TEXT, "")}),
    "vhost": Elem(
        children={"virtualhostname": Child("virtualhostname", many=True)},
        support=Support.UNSUPPORTED,
        note="virtual hostnames (<vhost>) are not supported by hakit yet: the scripts would "
        "see the real host name",
    ),
    "virtualhostname": Elem(
        attrs={
            "name": Attr(Kind.NAME, required=True),
            "envfile": Attr(Kind.PATH, required=True),
            "when": _enum(("prim", "second", "both"), "prim"),
        }
    ),
    # -- process monitoring -------------------------------------------------------------------
    "errd": Elem(attrs={"polltimer": _dur(30.0, "s")}, children={"proc": Child("proc", many=True)}),
    "proc": Elem(
        attrs={
            "name": Attr(
                Kind.NAME,
                required=True,
                what="the monitored process name",
                fill="the process command name (as shown by 'ps -o comm')",
            ),
            "service": Attr(Kind.YESNO, False),
            "nameregex": Attr(Kind.REGEX),
            "argregex": Attr(Kind.REGEX),
            "atleast": _int(1, -1),
            "atmax": _int(-1, -1),
            "action": Attr(Kind.NAME, "stopstart"),
            "restart_services": Attr(Kind.TEXT),
            "class": Attr(Kind.NAME, required=True),
            "start_after": _int(0, 0),
        }
    ),
    # -- checkers -----------------------------------------------------------------------------
    "check": Elem(
        children={
            "tcp": Child("tcp", many=True),
            "ping": Child("ping", many=True),
            "intf": Child("intf", many=True),
            "ip": Child("ip", many=True),
            "custom": Child("custom", many=True),
            "module": Child("module", many=True),
            "splitbrain": Child("splitbrain", many=True),
        }
    ),
    "tcp": Elem(
        attrs={
            "ident": Attr(Kind.NAME, required=True),
            "when": _enum(_WHEN, required=True),
            "action": _enum(_ACTIONS, "restart"),
        },
        children={"to": Child("tcp_to", many=True)},
    ),
    "tcp_to": Elem(
        attrs={
            "addr": Attr(
                Kind.ADDR, required=True, what="the checked address", fill="the address to probe"
            ),
            "port": Attr(
                Kind.PORT, required=True, what="the checked port", fill="the TCP port to probe"
            ),
            "interval": _dur(10.0, "s"),
            "timeout": _dur(5.0, "s"),
        }
    ),
    "ping": Elem(
        attrs={
            "ident": Attr(Kind.NAME, required=True),
            "when": _enum(_WHEN, "pre"),
            "action": _enum(_ACTIONS, "wait"),
        },
        children={"to": Child("ping_to", many=True)},
    ),
    "ping_to": Elem(
        attrs={
            "addr": Attr(
                Kind.ADDR, required=True, what="the pinged address", fill="the address to ping"
            ),
            "interval": _dur(10.0, "s"),
            "timeout": _dur(5.0, "s"),
        }
    ),
    "intf": Elem(
        attrs={"ident": Attr(Kind.NAME, required=True), "when": _enum(_WHEN, "pre")},
        children={"to": Child("intf_to", many=True)},
    ),
    "intf_to": Elem(
        attrs={
            "local_addr": Attr(
                Kind.ADDR,
                required=True,
                what="the checked interface address",
                fill="a local IP address of the NIC to watch",
            )
        }
    ),
    "ip": Elem(
        attrs={"ident": Attr(Kind.NAME, required=True), "when": _enum(_WHEN, "prim")},
        children={"to": Child("ip_to", many=True)},
    ),
    "ip_to": Elem(
        attrs={
            "addr": Attr(Kind.ADDR, required=True, what="the checked IP", fill="an IP address"),
            "interval": _dur(10.0, "s"),
        }
    ),
    "custom": Elem(
        attrs={
            "ident": Attr(
                Kind.NAME,
                required=True,
                what="the checker identifier",
                fill="a name for the checker's resource custom.<ident>",
            ),
            "when": _enum(_WHEN, required=True),
            "exec": Attr(
                Kind.PATH,
                required=True,
                what="the checker program",
                fill="a program of the module's bin/ directory",
            ),
            "arg": Attr(Kind.TEXT),
            "action": _enum(_ACTIONS, "noaction"),
        }
    ),
    "module": Elem(
        attrs={"ident": Attr(Kind.NAME), "name": Attr(Kind.NAME, required=True)},
        children={"to": Child("module_to")},
    ),
    "module_to": Elem(
        attrs={
            "addr": Attr(Kind.ADDR, "127.0.0.1"),
            "port": Attr(Kind.PORT, 9010),
            "interval": _dur(10.0, "s"),
            "timeout": _dur(5.0, "s"),
            "secure": _onoff(False),
        }
    ),
    "splitbrain": Elem(
        modes=MIRROR,
        attrs={
            "ident": Attr(Kind.NAME, required=True),
            "exec": _enum(("ping",), required=True),
            "arg": Attr(
                Kind.TEXT,
                required=True,
                what="the witness list",
                fill="the addresses of one or more witnesses, separated by spaces",
            ),
        },
    ),
    # -- failover machine ---------------------------------------------------------------------
    "failover": Elem(
        text=True,
        attrs={
            "extends": _enum(
                ("yes", "no"),
                "yes",
                refused={
                    "no": "replacing the built-in failover rules (extends='no') is not "
                    "supported by hakit"
                },
            ),
            "period": _dur(5.0, "ms"),
            "handle_time": _dur(15.0, "ms"),
        },
    ),
}

#: Values that SafeKit's own templates use as "to be replaced" markers.
PLACEHOLDER_WORDS = frozenset({"PROCESS_NAME", "PATH_TO_BE_DEFINED", "VIRTUAL_TO_BE_DEFINED"})
