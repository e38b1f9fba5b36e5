"""``userconfig.xml``: a module's configuration, read into :class:`~hakit.config.model.UserConfig`.

Two passes, every problem of both reported in one :class:`~hakit.config.report.ConfigReport`:

1. :func:`hakit.config.tree.read_tree` checks the file against the schema (unknown elements and
   attributes, types, units, enumerations, template placeholders, macros, support level);
2. the builders below make the typed models and apply the cross-field rules (heartbeat timing,
   mirror = 2 nodes, names that must exist in cluster.xml, replicated directories, VIPs, checkers,
   failover rules ...).

Nothing here touches the network or the file system (except reading the file in
:func:`load_userconfig`): names are checked for syntax, never resolved.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path

from hakit.config.cluster import ClusterConfig
from hakit.config.model import (
    Checker,
    CheckerKind,
    CheckTarget,
    Errd,
    Failover,
    FailoverRule,
    Farm,
    FarmLan,
    FarmNode,
    Heart,
    Heartbeat,
    LbGroup,
    LbHost,
    LbRule,
    Macro,
    Mode,
    NotReplicated,
    Proc,
    Replicated,
    Rfs,
    Service,
    User,
    UserConfig,
    Var,
    Vhost,
    Vip,
    VipInterface,
    VirtualAddr,
    VirtualHostName,
)
from hakit.config.report import ConfigReport
from hakit.config.rules import is_lua, parse_rules
from hakit.config.tree import Node, read_tree
from hakit.config.values import address_problem
from hakit.config.xmlsource import parse_xml

# One TCP port per replicated directory, four ports per module (5600 + (id-1)*4 + index).
MAX_REPLICATED_DIRS = 4

_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]|\\")
_WINDOWS_PROGRAM = re.compile(r"\.(exe|ps1|cmd|bat|vbs)$", re.IGNORECASE)
_PROC_ACTIONS = ("restart", "stopstart", "stop", "noaction")
#: ``when`` / errd ``class`` values meaningful per mode (a farm node is UP, never PRIM).
_WHEN_BY_MODE = {
    Mode.MIRROR: ("pre", "prim", "second"),
    Mode.FARM: ("pre", "both"),
    Mode.LIGHT: ("pre", "both"),
}
_BUILTIN_CLASSES = ("prim", "second", "sec", "both", "pre")
_CLASSES_BY_MODE = {
    Mode.MIRROR: ("prim", "second", "sec", "pre"),
    Mode.FARM: ("both", "pre"),
    Mode.LIGHT: ("both", "pre"),
}


class _Builder:
    """Turns the checked tree into models, applying the cross-field rules."""

    def __init__(self, report: ConfigReport, cluster: ClusterConfig | None) -> None:
        self.report = report
        self.cluster = cluster
        self.mode = Mode.MIRROR

    # -- reporting ----------------------------------------------------------------------------
    def error(
        self,
        node: Node,
        message: str,
        attr: str | None = None,
        *,
        hint: str | None = None,
        code: str = "",
    ) -> None:
        self.report.add_error(
            message,
            line=node.line,
            element=node.path,
            attribute=attr,
            value=node.raw.get(attr) if attr else None,
            hint=hint,
            code=code,
        )

    def warning(
        self,
        node: Node,
        message: str,
        attr: str | None = None,
        *,
        hint: str | None = None,
        code: str = "",
    ) -> None:
        self.report.add_warning(
            message,
            line=node.line,
            element=node.path,
            attribute=attr,
            value=node.raw.get(attr) if attr else None,
            hint=hint,
            code=code,
        )

    def usable(self, node: Node, attr: str) -> bool:
        """The attribute is present and its value passed the generic checks."""
        return node.given(attr) and attr not in node.bad

    def _cluster_lan(self, node: Node, attr: str, name: str, role: str) -> None:
        if self.cluster is None or attr in node.bad or not name:
            return
        if self.cluster.lan(name) is None:
            self.error(
                node,
                f"no lan '{name}' in cluster.xml for {role}",
                attr,
                hint=f"use one of the cluster lans: {', '.join(self.cluster.lan_names())}",
                code="unknown-lan",
            )

    def _cluster_node(self, node: Node, attr: str, name: str, role: str) -> None:
        if self.cluster is None or attr in node.bad or not name:
            return
        if name not in self.cluster.node_names():
            self.error(
                node,
                f"no node '{name}' in cluster.xml for {role}",
                attr,
                hint=f"use one of the cluster nodes: {', '.join(self.cluster.node_names())}",
                code="unknown-node",
            )

    # -- the whole file -----------------------------------------------------------------------
    def build(
        self,
        root: Node,
        mode: str | None,
        macros: dict[str, str],
        filename: str,
    ) -> UserConfig | None:
        service_node = root.child("service")
        if service_node is None:
            self.report.add_error(
                "no <service> element",
                line=root.line,
                element=root.path,
                hint="a module is described by <safe><service mode='mirror'>...</service></safe>",
                code="missing-element",
            )
            return None
        if mode is None:
            return None  # the invalid or missing mode is already reported
        self.mode = Mode(mode)
        service = self._service(service_node)
        heart = self._heart(service_node)
        farm = self._farm(service_node)
        vip = self._vip(service_node)
        rfs = self._rfs(service_node)
        user = self._user(service_node)
        errd = self._errd(service_node, user is not None)
        checkers = self._checkers(service_node)
        failover = self._failover(service_node)
        vhost = self._vhost(service_node)
        self._heartbeat_flow_rules(service_node, heart, rfs)
        return UserConfig(
            file=filename,
            service=service,
            macros=tuple(Macro(n, v) for n, v in macros.items()),
            heart=heart,
            farm=farm,
            vip=vip,
            rfs=rfs,
            user=user,
            vhost=vhost,
            errd=errd,
            checkers=checkers,
            failover=failover,
        )

    # -- <service> ----------------------------------------------------------------------------
    def _service(self, node: Node) -> Service:
        defaultprim = node.get_str("defaultprim") or "alone"
        if self.mode is Mode.MIRROR and defaultprim not in ("alone", "lastprim"):
            self._cluster_node(node, "defaultprim", defaultprim, "defaultprim")
        if self.cluster is not None and self.mode is Mode.MIRROR:
            names = self.cluster.node_names()
            if len(names) != 2:
                self.error(
                    node,
                    f"a mirror module runs on exactly 2 nodes; cluster.xml has "
                    f"{len(names)} ({', '.join(names)})",
                    "mode",
                    hint="use a cluster of two nodes, or mode='farm'",
                    code="mirror-nodes",
                )
        return Service(
            mode=self.mode,
            boot=node.get_str("boot") or "ignore",
            boot_delay=node.get_float("boot_delay"),
            failover=node.get_bool("failover"),
            defaultprim=defaultprim,
            maxloop=node.get_int("maxloop"),
            loop_interval=node.get_float("loop_interval"),
            automatic_reboot=node.get_bool("automatic_reboot"),
        )

    # -- <heart> ------------------------------------------------------------------------------
    def _heart(self, service: Node) -> Heart | None:
        node = service.child("heart")
        if self.mode is Mode.MIRROR and (node is None or not node.all("heartbeat")):
            self.error(
                node or service,
                "a mirror module needs <heart> with at least one <heartbeat>",
                hint="add <heart><heartbeat name='default'/></heart> "
                "('default' being a cluster.xml lan)",
                code="missing-heartbeat",
            )
        if node is None:
            return None
        pulse, timeout = node.get_float("pulse"), node.get_float("timeout")
        if pulse <= 0 and "pulse" not in node.bad:
            self.error(node, "the heartbeat pulse cannot be 0", "pulse", code="bad-duration")
        heartbeats: list[Heartbeat] = []
        names: dict[str, Node] = {}
        idents: dict[str, Node] = {}
        forms: set[str] = set()
        inherited_timing_reported = False  # <heart>'s own timing is reported once, not per child
        for hb in node.all("heartbeat"):
            servers = [s.get_str("addr") for s in hb.all("server") if "addr" not in s.bad]
            name: str | None = hb.get_str("name") or None
            if hb.given("name"):
                forms.add("name")
                self._cluster_lan(hb, "name", name or "", "this heartbeat")
                if name and self.cluster is not None and self.mode is Mode.MIRROR:
                    lan = self.cluster.lan(name)
                    if lan is not None and len(lan.nodes) < 2:
                        self.error(
                            hb,
                            f"cluster lan '{name}' has {len(lan.nodes)} node: a "
                            "heartbeat network needs both mirror nodes",
                            "name",
                            hint=f"add the other node to <lan name='{name}'> in cluster.xml",
                            code="lan-incomplete",
                        )
            elif hb.all("server"):
                forms.add("server")
                name = self._lan_of_servers(hb, servers)
            else:
                self.error(
                    hb,
                    "a <heartbeat> needs a name (a cluster.xml lan)",
                    "name",
                    hint="e.g. <heartbeat name='default'/>",
                    code="missing-attribute",
                )
            ident = hb.get_str("ident") or name or ""
            own_pulse, own_timeout = hb.opt_float("pulse"), hb.opt_float("timeout")
            hb_pulse = pulse if own_pulse is None else own_pulse
            hb_timeout = timeout if own_timeout is None else own_timeout
            if own_pulse == 0:
                self.error(hb, "the heartbeat pulse cannot be 0", "pulse", code="bad-duration")
            own = own_pulse is not None or own_timeout is not None
            if (
                hb_pulse > 0
                and hb_timeout <= 2 * hb_pulse
                and not ({"pulse", "timeout"} & (hb.bad | node.bad))
                and (own or not inherited_timing_reported)
            ):
                inherited_timing_reported |= not own
                where = hb if own else node
                self.error(
                    where,
                    f"the heartbeat timeout ({hb_timeout:g} s) must be more than "
                    f"twice the pulse ({hb_pulse:g} s), or one late packet fails over",
                    "timeout" if where.given("timeout") else "pulse",
                    hint="keep the defaults (pulse 700ms, timeout 30000ms) or raise timeout",
                    code="heartbeat-timing",
                )
            if name and "name" not in hb.bad:
                if name in names:
                    self.error(
                        hb,
                        f"a second heartbeat on lan '{name}'",
                        "name",
                        hint="one <heartbeat> per network",
                        code="duplicate-name",
                    )
                names.setdefault(name, hb)
            if ident and ident in idents and hb.given("ident"):
                self.error(
                    hb,
                    f"heartbeat ident '{ident}' is used twice",
                    "ident",
                    hint="each heartbeat needs its own ident (its resource is heartbeat.<ident>)",
                    code="duplicate-name",
                )
            idents.setdefault(ident, hb)
            heartbeats.append(
                Heartbeat(
                    name=name,
                    ident=ident,
                    pulse=hb_pulse,
                    timeout=hb_timeout,
                    servers=tuple(servers),
                )
            )
        if len(forms) > 1:
            self.error(
                node,
                "the legacy <heartbeat><server addr/></heartbeat> form is mixed "
                "with <heartbeat name>",
                hint="use <heartbeat name='lan'/> everywhere",
                code="mixed-forms",
            )
        return Heart(
            heartbeats=tuple(heartbeats),
            port=node.opt_int("port"),
            pulse=pulse,
            timeout=timeout,
            permanent_arp=node.get_bool("permanent_arp"),
        )

    def _lan_of_servers(self, hb: Node, servers: list[str]) -> str | None:
        """Legacy form: the cluster lan whose addresses are exactly these servers."""
        if self.cluster is None or not servers:
            return None
        wanted = {s.lower() for s in servers}
        for lan in self.cluster.lans:
            if wanted <= {n.addr.lower() for n in lan.nodes}:
                return lan.name
        self.error(
            hb,
            f"no cluster.xml lan holds the addresses {', '.join(servers)}",
            hint="write <heartbeat name='lan'/> with a cluster.xml lan name",
            code="unknown-lan",
        )
        return None

    def _heartbeat_flow_rules(self, service: Node, heart: Heart | None, rfs: Rfs | None) -> None:
        if heart is None:
            return
        node = service.child("heart")
        assert node is not None
        flows = [hb for hb in node.all("heartbeat") if hb.get_str("ident") == "flow"]
        if flows and rfs is None:
            self.error(
                flows[0],
                "ident='flow' reserves this network for replication, but the "
                "module has no <rfs>: the module would stay in WAIT",
                "ident",
                hint="remove ident='flow' or add <rfs>",
                code="flow-without-rfs",
            )

    # -- <farm> -------------------------------------------------------------------------------
    def _farm(self, service: Node) -> Farm | None:
        node = service.child("farm")
        if self.mode is Mode.FARM and (node is None or not node.all("lan")):
            self.error(
                node or service,
                "a farm module needs <farm> with at least one <lan>",
                hint="add <farm><lan name='default'/></farm> ('default' being a cluster.xml lan)",
                code="missing-farm-lan",
            )
        if node is None:
            return None
        lans: list[FarmLan] = []
        seen: set[str] = set()
        for lan_node in node.all("lan"):
            name = lan_node.get_str("name")
            self._cluster_lan(lan_node, "name", name, "the farm")
            if name and name in seen:
                self.error(lan_node, f"lan '{name}' is listed twice", "name", code="duplicate-name")
            seen.add(name)
            nodes = []
            for legacy in lan_node.all("node"):
                if {"name", "addr"} & legacy.bad:
                    continue
                self._cluster_node(legacy, "name", legacy.get_str("name"), "the farm")
                nodes.append(FarmNode(legacy.get_str("name"), legacy.get_str("addr")))
            lans.append(FarmLan(name=name, nodes=tuple(nodes)))
        if node.get_float("pulse") <= 0 and "pulse" not in node.bad:
            self.error(node, "the farm pulse cannot be 0", "pulse", code="bad-duration")
        return Farm(
            lans=tuple(lans),
            port=node.opt_int("port"),
            pulse=node.get_float("pulse"),
            mlost_count=node.get_int("mlost_count"),
            slost_count=node.get_int("slost_count"),
        )

    # -- <vip> --------------------------------------------------------------------------------
    def _vip(self, service: Node) -> Vip | None:
        node = service.child("vip")
        if node is None:
            return None
        interfaces: list[VipInterface] = []
        seen_addrs: dict[str, Node] = {}
        list_node = node.child("interface_list")
        for itf in list_node.all("interface") if list_node else []:
            real, virtual = itf.child("real_interface"), itf.child("virtual_interface")
            holder = real or virtual
            if real and virtual:
                self.error(
                    itf,
                    "<interface> holds both <real_interface> (mirror) and "
                    "<virtual_interface> (farm)",
                    hint="keep the one of the module's mode",
                    code="mixed-forms",
                )
            if holder is None:
                expected = "<real_interface>" if self.mode is Mode.MIRROR else "<virtual_interface>"
                self.error(
                    itf,
                    "<interface> declares no VIP",
                    hint=f"add {expected}<virtual_addr addr='...'/>",
                    code="missing-element",
                )
                continue
            addrs: list[VirtualAddr] = []
            for va in holder.all("virtual_addr"):
                self._check_where(va)
                if "addr" in va.bad:
                    continue
                addr = va.get_str("addr")
                if addr.lower() in seen_addrs:
                    self.error(
                        va, f"VIP {addr} is declared twice", "addr", code="duplicate-address"
                    )
                    continue
                seen_addrs[addr.lower()] = va
                addrs.append(
                    VirtualAddr(
                        addr=addr,
                        where=va.get_str("where"),
                        check=va.get_bool("check"),
                        connections=va.get_bool("connections"),
                        netmask=va.opt_str("netmask"),
                    )
                )
            if not holder.all("virtual_addr"):
                self.error(
                    holder,
                    f"<{holder.tag}> has no <virtual_addr>",
                    hint="add <virtual_addr addr='...'/>",
                    code="missing-element",
                )
            interfaces.append(
                VipInterface(
                    addrs=tuple(addrs),
                    check=itf.get_bool("check"),
                    arpreroute=itf.get_bool("arpreroute"),
                    arpinterval=itf.get_float("arpinterval"),
                    arpelapse=itf.get_float("arpelapse"),
                    name=itf.opt_str("name"),
                    virtual_type=virtual.get_str("type") if virtual else None,
                    virtual_mac=virtual.opt_str("addr") if virtual else None,
                )
            )
        if list_node is None or not list_node.all("interface"):
            self.error(
                list_node or node,
                "<vip> declares no interface",
                hint="add <interface_list><interface>...</interface></interface_list>",
                code="missing-element",
            )
        groups = self._groups(node, list(seen_addrs), interfaces)
        return Vip(
            interfaces=tuple(interfaces),
            groups=tuple(groups),
            tcpreset=node.get_bool("tcpreset"),
            scriptcontrol=node.get_bool("scriptcontrol"),
        )

    def _check_where(self, va: Node) -> None:
        if "where" in va.bad or not va.given("where"):
            return
        where = va.get_str("where")
        valid = ("one_side_alias", "one_side") if self.mode is Mode.MIRROR else ("alias",)
        if where not in valid:
            self.error(
                va,
                f"where='{where}' is not for a {self.mode} module",
                "where",
                hint=f"a {self.mode} VIP uses where='{valid[0]}'",
                code="wrong-mode",
            )

    def _groups(self, vip: Node, vips: list[str], interfaces: list[VipInterface]) -> list[LbGroup]:
        lb = vip.child("loadbalancing_list")
        if self.mode is Mode.FARM and (lb is None or not lb.all("group")):
            self.error(
                lb or vip,
                "a farm VIP needs a <loadbalancing_list> with a <group>: "
                "without a rule no node accepts traffic",
                hint="add <loadbalancing_list><group name='web'><rule port='80' "
                "proto='tcp' filter='on_addr'/></group></loadbalancing_list>",
                code="missing-element",
            )
        if lb is None:
            return []
        directed = all(i.virtual_type in (None, "vmac_directed") for i in interfaces)
        groups: list[LbGroup] = []
        names: set[str] = set()
        for group in lb.all("group"):
            name = group.get_str("name")
            if name in names:
                self.error(group, f"group '{name}' is defined twice", "name", code="duplicate-name")
            names.add(name)
            hosts: list[LbHost] = []
            cluster_node = group.child("cluster")
            for host in cluster_node.all("host") if cluster_node else []:
                if "name" in host.bad:
                    continue
                host_name = host.get_str("name")
                self._cluster_node(host, "name", host_name, f"group '{name}'")
                if any(h.name == host_name for h in hosts):
                    self.error(
                        host,
                        f"host '{host_name}' is listed twice in group '{name}'",
                        "name",
                        code="duplicate-name",
                    )
                    continue
                hosts.append(LbHost(host_name, host.get_int("power")))
            if hosts and all(h.power == 0 for h in hosts):
                self.warning(
                    cluster_node or group,
                    f"every host of group '{name}' has power 0: the group receives no traffic",
                    code="no-traffic",
                )
            rules: list[LbRule] = []
            for rule in group.all("rule"):
                rules.append(self._rule(rule, vips, directed))
            if not group.all("rule"):
                self.error(
                    group,
                    f"group '{name}' has no <rule>",
                    hint="add <rule port='80' proto='tcp' filter='on_addr'/>",
                    code="missing-element",
                )
            groups.append(LbGroup(name=name, rules=tuple(rules), hosts=tuple(hosts)))
        return groups

    def _rule(self, rule: Node, vips: list[str], directed: bool) -> LbRule:
        proto, filt = rule.get_str("proto"), rule.get_str("filter")
        if proto == "arp" and (filt != "on_addr" or not directed):
            self.error(
                rule,
                "proto='arp' needs filter='on_addr' and a vmac_directed interface",
                "proto",
                code="bad-combination",
            )
        if filt == "on_ipid" and proto != "udp" and "proto" not in rule.bad:
            self.error(
                rule,
                "filter='on_ipid' works only with proto='udp' (IPv4)",
                "filter",
                code="bad-combination",
            )
        target = rule.get_str("virtual_addr") or "*"
        if target != "*" and target.lower() not in vips:
            self.error(
                rule,
                f"virtual_addr '{target}' is not a VIP of this module",
                "virtual_addr",
                hint=f"use '*' or one of: {', '.join(vips) or 'none'}",
                code="unknown-vip",
            )
        return LbRule(proto=proto, filter=filt, virtual_addr=target, port=rule.opt_int("port"))

    # -- <rfs> --------------------------------------------------------------------------------
    def _rfs(self, service: Node) -> Rfs | None:
        node = service.child("rfs")
        if node is None:
            return None
        replicated: list[Replicated] = []
        dirs: list[tuple[str, Node]] = []
        for rep in node.all("replicated"):
            directory = rep.get_str("dir")
            if self.usable(rep, "dir") and self._check_dir(rep, directory, dirs):
                dirs.append((posixpath.normpath(directory), rep))
            replicated.append(
                Replicated(
                    dir=directory,
                    read_only=rep.get_str("mode") == "read_only",
                    tocheck=tuple(self._relative(t, "path") for t in rep.all("tocheck")),
                    notreplicated=tuple(self._notreplicated(n) for n in rep.all("notreplicated")),
                )
            )
        if len(node.all("replicated")) > MAX_REPLICATED_DIRS:
            fifth = node.all("replicated")[MAX_REPLICATED_DIRS]
            self.error(
                fifth,
                f"at most {MAX_REPLICATED_DIRS} replicated directories per module (each uses one "
                f"of the module's {MAX_REPLICATED_DIRS} replication ports); this is number "
                f"{MAX_REPLICATED_DIRS + 1}",
                hint="replicate a common parent directory, or split the application in modules",
                code="too-many",
            )
        if not node.all("replicated"):
            self.error(
                node,
                "<rfs> replicates no directory",
                hint="add <replicated dir='/var/lib/app'/>",
                code="missing-element",
            )
        packet, zone = node.get_int("reipacketsize"), node.get_int("ruzone_blocksize")
        if node.given("ruzone_blocksize") and packet and zone % packet:
            self.error(
                node,
                f"ruzone_blocksize ({zone}) must be a multiple of reipacketsize ({packet})",
                "ruzone_blocksize",
                code="bad-combination",
            )
        flow_node = node.child("flow")
        flow = flow_node.get_str("name") if flow_node else None
        if flow_node is not None and flow:
            self._cluster_lan(flow_node, "name", flow, "the replication flow")
        return Rfs(
            replicated=tuple(replicated),
            async_mode=node.get_str("async"),
            locktimeout=node.get_float("locktimeout"),
            sendtimeout=node.get_float("sendtimeout"),
            nbrei=node.get_int("nbrei"),
            reipacketsize=packet,
            ruzone_blocksize=zone,
            namespacepolicy=int(node.get_str("namespacepolicy") or 4),
            reitimeout=node.get_float("reitimeout"),
            reicommit=node.get_int("reicommit"),
            reidetail=node.get_bool("reidetail"),
            nbremconn=node.get_int("nbremconn"),
            checktime=node.get_float("checktime"),
            checkintv=node.get_float("checkintv"),
            reiallowedbw=node.opt_int("reiallowedbw"),
            syncdelta=node.get_float("syncdelta"),
            syncat=node.opt_str("syncat"),
            scripts=node.get_bool("scripts"),
            acl=node.get_bool("acl"),
            packetsize=node.opt_int("packetsize"),
            mountoversuffix=node.get_str("mountoversuffix") or "_For_SafeKit_Replication",
            flow=flow,
            iotimeout=node.get_float("iotimeout"),
            roflags=node.opt_str("roflags"),
            allocthreshold=node.get_int("allocthreshold"),
            nfsbox_options=node.opt_str("nfsbox_options"),
        )

    def _check_dir(self, rep: Node, directory: str, dirs: list[tuple[str, Node]]) -> bool:
        if _WINDOWS_PATH.search(directory):
            self.error(
                rep,
                "a Windows path: on Linux a replicated directory is an absolute "
                "path such as /var/lib/app",
                "dir",
                code="windows-path",
            )
            return False
        if not directory.startswith("/"):
            self.error(
                rep,
                "the replicated directory must be an absolute path",
                "dir",
                hint="e.g. dir='/var/lib/app'",
                code="bad-path",
            )
            return False
        normal = posixpath.normpath(directory)
        if normal in ("/", "//"):
            self.error(
                rep,
                "the root directory '/' cannot be replicated",
                "dir",
                hint="replicate the application's data directory",
                code="bad-path",
            )
            return False
        if normal != directory.rstrip("/"):
            self.error(
                rep, f"write the path without '.', '..' or '//': '{normal}'", "dir", code="bad-path"
            )
            return False
        for other, other_node in dirs:
            if other == normal:
                self.error(
                    rep,
                    f"directory {normal} is replicated twice (line {other_node.line})",
                    "dir",
                    code="duplicate-path",
                )
                return False
            if normal.startswith(other + "/") or other.startswith(normal + "/"):
                inner, outer = (normal, other) if len(normal) > len(other) else (other, normal)
                self.error(
                    rep,
                    f"{inner} is inside {outer} (line {other_node.line}): replicated "
                    "directories cannot be nested",
                    "dir",
                    hint="replicate only the outer directory",
                    code="nested-path",
                )
                return False
        return True

    def _relative(self, node: Node, attr: str) -> str:
        path = node.get_str(attr)
        if self.usable(node, attr) and (
            path.startswith("/") or _WINDOWS_PATH.search(path) or ".." in path.split("/")
        ):
            self.error(
                node,
                "expected a path relative to the replicated directory",
                attr,
                hint="e.g. path='data/PG_VERSION'",
                code="bad-path",
            )
        return path

    def _notreplicated(self, node: Node) -> NotReplicated:
        has_path, has_regex = node.given("path"), node.given("regexpath")
        if has_path == has_regex:
            self.error(
                node,
                "<notreplicated> needs exactly one of path and regexpath",
                hint="path='rel/dir' or regexpath='.*\\.tmp$'",
                code="bad-combination",
            )
        if has_path:
            return NotReplicated(path=self._relative(node, "path"))
        regex = node.get_str("regexpath")
        only = regex.startswith("!")
        return NotReplicated(regexpath=regex[1:] if only else regex or None, only=only)

    # -- <user>, <vhost> ----------------------------------------------------------------------
    def _user(self, service: Node) -> User | None:
        node = service.child("user")
        if node is None:
            return None
        variables: list[Var] = []
        for var in node.all("var"):
            name = var.get_str("name")
            if name and any(v.name == name for v in variables):
                self.error(var, f"variable {name} is defined twice", "name", code="duplicate-name")
                continue
            if name and "name" not in var.bad:
                variables.append(Var(name, var.get_str("value")))
        return User(
            vars=tuple(variables),
            nicestoptimeout=node.get_float("nicestoptimeout"),
            forcestoptimeout=node.get_float("forcestoptimeout"),
            logging=node.get_str("logging"),
            userlogsize=node.get_int("userlogsize"),
        )

    def _vhost(self, service: Node) -> Vhost | None:
        node = service.child("vhost")
        if node is None:
            return None
        return Vhost(
            tuple(
                VirtualHostName(v.get_str("name"), v.get_str("envfile"), v.get_str("when"))
                for v in node.all("virtualhostname")
            )
        )

    # -- <errd> -------------------------------------------------------------------------------
    def _errd(self, service: Node, has_user: bool) -> Errd | None:
        node = service.child("errd")
        if node is None:
            return None
        if not has_user:
            self.error(
                node,
                "<errd> needs <user>: without it no script runs, so a process "
                "could never be restarted",
                hint="add <user/>",
                code="errd-without-user",
            )
        procs: list[Proc] = []
        for proc in node.all("proc"):
            procs.append(self._proc(proc, procs))
        return Errd(procs=tuple(procs), polltimer=node.get_float("polltimer"))

    def _proc(self, proc: Node, previous: list[Proc]) -> Proc:
        name = proc.get_str("name")
        if self.usable(proc, "name"):
            if _WINDOWS_PROGRAM.search(name):
                self.warning(
                    proc,
                    "a Windows program name: on Linux errd matches the process "
                    "command name (no .exe)",
                    "name",
                    code="windows-only",
                )
            elif len(name) > 15 and not proc.given("nameregex") and not proc.get_bool("service"):
                self.warning(
                    proc,
                    "Linux process command names are at most 15 characters: "
                    "this name can never match",
                    "name",
                    hint=f"use name='{name[:15]}' or nameregex",
                    code="long-name",
                )
            if any(p.name == name for p in previous):
                self.error(
                    proc,
                    f"process {name} is monitored twice (its resource is proc.{name})",
                    "name",
                    code="duplicate-name",
                )
        action = proc.get_str("action") or "stopstart"
        if action not in _PROC_ACTIONS and self.usable(proc, "action"):
            if _WINDOWS_PROGRAM.search(action):
                self.warning(
                    proc, "the handler is a Windows program", "action", code="windows-only"
                )
            elif action.startswith("/") or ".." in action.split("/"):
                self.error(
                    proc,
                    f"action is one of {', '.join(_PROC_ACTIONS)} or a handler of "
                    "the module's bin/ directory (relative path)",
                    "action",
                    code="bad-value",
                )
        class_ = proc.get_str("class")
        if (
            self.usable(proc, "class")
            and class_ in _BUILTIN_CLASSES
            and class_ not in _CLASSES_BY_MODE[self.mode]
        ):
            self.error(
                proc,
                f"class='{class_}' is not active in a {self.mode} module",
                "class",
                hint=f"use one of: {', '.join(_CLASSES_BY_MODE[self.mode])}",
                code="wrong-mode",
            )
        atleast, atmax = proc.get_int("atleast"), proc.get_int("atmax")
        if atleast != -1 and atmax != -1 and atleast >= atmax:
            self.error(
                proc,
                f"atleast ({atleast}) must be below atmax ({atmax}): the action would always run",
                "atmax",
                code="bad-combination",
            )
        if proc.get_bool("service") and _WINDOWS_PROGRAM.search(name):
            self.warning(
                proc,
                "service='yes' watches a systemd unit on Linux, not a Windows service",
                "service",
                code="windows-only",
            )
        services = tuple(
            s.strip() for s in proc.get_str("restart_services").split(",") if s.strip()
        )
        return Proc(
            name=name,
            class_=class_,
            action=action,
            service=proc.get_bool("service"),
            nameregex=proc.opt_str("nameregex"),
            argregex=proc.opt_str("argregex"),
            atleast=atleast,
            atmax=atmax,
            restart_services=services,
            start_after=proc.get_int("start_after"),
        )

    # -- <check> ------------------------------------------------------------------------------
    def _checkers(self, service: Node) -> tuple[Checker, ...]:
        node = service.child("check")
        if node is None:
            return ()
        checkers: list[Checker] = []
        splitbrains = 0
        for child in node.children:
            kind = CheckerKind(child.tag)
            checker = self._checker(child, kind)
            if kind is CheckerKind.SPLITBRAIN:
                splitbrains += 1
                if splitbrains > 1:
                    self.error(child, "at most one <splitbrain> checker", code="duplicate-element")
            if checker is None:
                continue
            if any(c.resource == checker.resource for c in checkers):
                self.error(
                    child,
                    f"a second checker with resource {checker.resource}",
                    "ident",
                    hint="give each checker its own ident",
                    code="duplicate-name",
                )
                continue
            checkers.append(checker)
        return tuple(checkers)

    def _checker(self, node: Node, kind: CheckerKind) -> Checker | None:
        ident = node.get_str("ident") or (
            node.get_str("name") if kind is CheckerKind.MODULE else ""
        )
        when = node.get_str("when") or ("prim" if self.mode is Mode.MIRROR else "both")
        if kind in (CheckerKind.MODULE, CheckerKind.SPLITBRAIN):
            when = "pre"
        action = node.get_str("action") or (
            "wait" if kind is not CheckerKind.CUSTOM else "noaction"
        )
        if self.usable(node, "when") and when not in _WHEN_BY_MODE[self.mode]:
            self.error(
                node,
                f"when='{when}' never happens in a {self.mode} module",
                "when",
                hint=f"use one of: {', '.join(_WHEN_BY_MODE[self.mode])}",
                code="wrong-mode",
            )
        if (
            when == "pre"
            and action not in ("wait", "noaction")
            and kind in (CheckerKind.TCP, CheckerKind.PING, CheckerKind.CUSTOM)
        ):
            self.error(
                node,
                f"a when='pre' checker can only wait or noaction, not {action}",
                "action",
                hint="use action='wait'",
                code="bad-combination",
            )
        targets = tuple(self._target(t) for t in node.all("to"))
        if kind in (CheckerKind.TCP, CheckerKind.PING, CheckerKind.INTF, CheckerKind.IP) and (
            not node.all("to")
        ):
            self.error(
                node,
                f"<{kind.value}> needs a <to> element saying what to check",
                code="missing-element",
            )
        exec_ = node.opt_str("exec")
        if kind is CheckerKind.CUSTOM and exec_ and self.usable(node, "exec"):
            if _WINDOWS_PROGRAM.search(exec_):
                self.warning(
                    node, "a Windows program: it will not run on Linux", "exec", code="windows-only"
                )
            elif exec_.startswith("/") or ".." in exec_.split("/"):
                self.error(
                    node,
                    "the checker program is a path relative to the module's bin/",
                    "exec",
                    code="bad-path",
                )
        if kind is CheckerKind.SPLITBRAIN and self.usable(node, "arg"):
            for witness in node.get_str("arg").split():
                if problem := address_problem(witness):
                    self.error(node, f"witness '{witness}': {problem}", "arg", code="bad-address")
        if not ident:
            return None
        return Checker(
            kind=kind,
            ident=ident,
            when=when,
            action=action,
            targets=targets,
            exec=exec_,
            arg=node.opt_str("arg"),
            module=node.get_str("name") if kind is CheckerKind.MODULE else None,
        )

    def _target(self, node: Node) -> CheckTarget:
        return CheckTarget(
            addr=node.opt_str("addr"),
            port=node.opt_int("port"),
            interval=node.opt_float("interval") or 10.0,
            timeout=node.opt_float("timeout") or 5.0,
            local_addr=node.opt_str("local_addr"),
            secure=node.get_bool("secure"),
        )

    # -- <failover> ---------------------------------------------------------------------------
    def _failover(self, service: Node) -> Failover | None:
        node = service.child("failover")
        if node is None:
            return None
        period, handle = node.get_float("period"), node.get_float("handle_time")
        if period <= 0 and "period" not in node.bad:
            self.error(
                node, "the rule evaluation period cannot be 0", "period", code="bad-duration"
            )
        elif not {"period", "handle_time"} & node.bad:
            ratio = handle / period
            if abs(ratio - round(ratio)) > 1e-9:
                self.error(
                    node,
                    f"handle_time ({handle:g} s) must be a multiple of period ({period:g} s)",
                    "handle_time",
                    code="bad-combination",
                )
        rules: tuple[FailoverRule, ...] = ()
        text = node.text
        if is_lua(text):
            self.error(
                node,
                "failover rules in Lua syntax are not supported by hakit",
                hint="write them as 'label: if (resource == down) then action;'",
                code="unsupported",
            )
        else:
            parsed, problems = parse_rules(text)
            for problem in problems:
                line = (node.line or 0) + text[: problem.offset].count("\n")
                self.report.add_error(
                    problem.message,
                    line=line or None,
                    element=node.path,
                    hint="syntax: label: if (resource == state) then "
                    "stop()|stopstart()|wait()|restart()|swap();",
                    code="bad-rule",
                )
            rules = tuple(parsed)
        return Failover(
            extends=node.get_str("extends") != "no",
            period=period,
            handle_time=handle,
            text=text,
            rules=rules,
        )


def parse_userconfig(
    text: str | bytes,
    filename: str,
    cluster: ClusterConfig | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[UserConfig | None, ConfigReport]:
    """Parse and validate userconfig.xml content.

    ``cluster`` enables the checks against cluster.xml (lan and node names, mirror = 2 nodes);
    ``environ`` resolves ``%NAME%`` that no macro defines (default: this process's environment).
    The model is returned only when there is no error; the report always.
    """
    report = ConfigReport(file=filename)
    document = parse_xml(text, report, root_tag="safe", allow_strays=True)
    if document is None:
        return None, report
    tree = read_tree(document, report, os.environ if environ is None else environ)
    config = _Builder(report, cluster).build(tree.root, tree.mode, tree.expander.macros, filename)
    # The two passes find issues in different orders; the reader wants them in file order.
    report.issues.sort(key=lambda issue: issue.line or 0)
    return (config if report.ok else None), report


def load_userconfig(
    path: str | Path,
    cluster: ClusterConfig | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[UserConfig | None, ConfigReport]:
    """Read and validate a userconfig.xml file (an unreadable file is reported, not raised)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        report = ConfigReport(file=str(path))
        report.add_error(
            f"cannot read the file: {exc.strerror or exc}",
            hint="check the path and the permissions",
            code="unreadable",
        )
        return None, report
    return parse_userconfig(data, str(path), cluster, environ)
