"""``cluster.xml``: the nodes of the cluster and their addresses on each named LAN.

::

    <cluster>
      <lans port="4800" pulse="100" mlost_count="20" slost_count="10">
        <lan name="default" command="on">
          <node name="node1" addr="192.168.1.67" laddr="10.0.0.1"/>
          <node name="node2" addr="192.168.1.68"/>
        </lan>
      </lans>
    </cluster>

:func:`parse_cluster` checks every rule and reports every problem at once; it returns a
:class:`ClusterConfig` only when there is no error. Obsolete SafeKit 8.2 attributes
(``console``/``framework``/``connect`` on ``<lan>``) are accepted with a warning. No name is
resolved here: validation does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hakit.config.report import ConfigReport
from hakit.config.units import DurationError, parse_duration
from hakit.config.values import address_problem, ip_literal, node_name_problem, port_problem
from hakit.config.xmlsource import Element, element_path, elements, line_of, parse_xml, tag_of


@dataclass(frozen=True)
class ClusterNode:
    """A node as seen on one LAN: its name, the address peers use, and its local address."""

    name: str
    addr: str
    laddr: str | None = None


@dataclass(frozen=True)
class Lan:
    """A named network; modules refer to it by name (heartbeats, farm membership)."""

    name: str
    command: bool
    nodes: tuple[ClusterNode, ...]

    def node(self, name: str) -> ClusterNode | None:
        """The node called ``name`` on this LAN, if it is there."""
        return next((n for n in self.nodes if n.name == name), None)


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster: membership protocol settings and LANs. ``pulse`` is in seconds."""

    lans: tuple[Lan, ...]
    port: int = 4800
    pulse: float = 0.1
    mlost_count: int = 20
    slost_count: int = 10

    def node_names(self) -> list[str]:
        """Every node name, in order of first appearance, each once."""
        names: list[str] = []
        for lan in self.lans:
            for node in lan.nodes:
                if node.name not in names:
                    names.append(node.name)
        return names

    def lan(self, name: str) -> Lan | None:
        """The LAN called ``name``, if any."""
        return next((lan for lan in self.lans if lan.name == name), None)

    def lan_names(self) -> list[str]:
        """LAN names in file order."""
        return [lan.name for lan in self.lans]

    def command_lan(self) -> Lan:
        """The LAN used for distributed commands: the one with ``command="on"``, else the first."""
        return next((lan for lan in self.lans if lan.command), self.lans[0])

    def addrs_of(self, node: str) -> dict[str, str]:
        """``{lan name: address}`` of ``node`` on every LAN it belongs to."""
        return {lan.name: n.addr for lan in self.lans for n in lan.nodes if n.name == node}


_OBSOLETE_LAN_ATTRIBUTES = ("console", "framework", "connect")
_LANS_ATTRIBUTES = ("port", "pulse", "mlost_count", "slost_count")
_LAN_ATTRIBUTES = ("name", "command", *_OBSOLETE_LAN_ATTRIBUTES)
_NODE_ATTRIBUTES = ("name", "addr", "laddr")


class _ClusterReader:
    """Walks one cluster.xml tree; collects issues in ``report`` while building the model."""

    def __init__(self, report: ConfigReport) -> None:
        self.report = report
        # (lan name, node name) -> its <node> element, to locate cross-lan errors precisely.
        self.node_elements: dict[tuple[str, str], Element] = {}

    # -- generic helpers -------------------------------------------------------------------
    def _check_attributes(self, el: Element, allowed: tuple[str, ...]) -> None:
        for attr in el.attrib:
            if attr not in allowed:
                self.report.add_error(
                    f"unknown attribute '{attr!s}'",
                    line=line_of(el),
                    element=element_path(el),
                    attribute=str(attr),
                    value=el.get(str(attr)),
                    hint=f"<{tag_of(el)}> accepts: {', '.join(allowed) or 'no attribute'}",
                    code="unknown-attribute",
                )

    def _unknown_child(self, child: Element, allowed: str) -> None:
        up = child.getparent()
        parent = tag_of(up) if up is not None else ""
        self.report.add_error(
            f"unknown element <{tag_of(child)}>",
            line=line_of(child),
            element=element_path(child),
            hint=f"<{parent}> contains only {allowed}",
            code="unknown-element",
        )

    def _int(self, el: Element, attr: str, default: int, minimum: int) -> int:
        raw = el.get(attr)
        if raw is None:
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            value = minimum - 1
        if value < minimum:
            self.report.add_error(
                f"expected a whole number >= {minimum}",
                line=line_of(el),
                element=element_path(el),
                attribute=attr,
                value=raw,
                code="bad-integer",
            )
            return default
        return value

    def _on_off(self, el: Element, attr: str) -> bool:
        raw = el.get(attr)
        if raw is None:
            return False
        if raw.strip().lower() not in ("on", "off"):
            self.report.add_error(
                "expected 'on' or 'off'",
                line=line_of(el),
                element=element_path(el),
                attribute=attr,
                value=raw,
                code="bad-enum",
            )
            return False
        return raw.strip().lower() == "on"

    # -- elements --------------------------------------------------------------------------
    def read(self, root: Element) -> ClusterConfig | None:
        self._check_attributes(root, ())
        lans_elements: list[Element] = []
        for child in elements(root):
            if child.tag == "lans":
                lans_elements.append(child)
            else:
                self._unknown_child(child, "<lans>")
        if not lans_elements:
            self.report.add_error(
                "no <lans> element",
                line=line_of(root),
                element="cluster",
                hint="declare the networks: <cluster><lans><lan name='default'>"
                "<node name='node1' addr='...'/>...</lan></lans></cluster>",
                code="missing-element",
            )
            return None
        for extra in lans_elements[1:]:
            self.report.add_error(
                "more than one <lans> element",
                line=line_of(extra),
                element=element_path(extra),
                hint="put every <lan> in a single <lans>",
                code="duplicate-element",
            )
        return self._lans(lans_elements[0])

    def _lans(self, el: Element) -> ClusterConfig | None:
        self._check_attributes(el, _LANS_ATTRIBUTES)
        port = self._int(el, "port", 4800, 1)
        if problem := port_problem(port):
            self.report.add_error(
                problem,
                line=line_of(el),
                element=element_path(el),
                attribute="port",
                value=el.get("port"),
                code="bad-port",
            )
            port = 4800
        pulse = 0.1
        if (raw_pulse := el.get("pulse")) is not None:
            try:
                pulse = parse_duration(raw_pulse, "ms", "pulse")
            except DurationError as exc:
                self.report.add_error(
                    str(exc),
                    line=line_of(el),
                    element=element_path(el),
                    attribute="pulse",
                    value=raw_pulse,
                    code="bad-duration",
                )
            else:
                if pulse == 0:
                    self.report.add_error(
                        "the membership pulse cannot be 0",
                        line=line_of(el),
                        element=element_path(el),
                        attribute="pulse",
                        value=raw_pulse,
                        hint="leave it out for the default 100 ms",
                        code="bad-duration",
                    )
                    pulse = 0.1
        mlost = self._int(el, "mlost_count", 20, 1)
        slost = self._int(el, "slost_count", 10, 1)

        lans: list[Lan] = []
        seen: dict[str, Element] = {}
        for child in elements(el):
            if child.tag != "lan":
                self._unknown_child(child, "<lan>")
                continue
            lan = self._lan(child)
            if lan is None:
                continue
            if lan.name in seen:
                self.report.add_error(
                    f"duplicate lan name '{lan.name}' (first defined at line "
                    f"{line_of(seen[lan.name])})",
                    line=line_of(child),
                    element=element_path(child),
                    attribute="name",
                    value=lan.name,
                    hint="give each <lan> a unique name",
                    code="duplicate-name",
                )
                continue
            seen[lan.name] = child
            lans.append(lan)
        if not lans and not seen:
            self.report.add_error(
                "no <lan> defined",
                line=line_of(el),
                element=element_path(el),
                hint="add at least <lan name='default'> with one <node> per server",
                code="missing-element",
            )
        self._cross_lan_rules(lans, seen)
        if not self.report.ok or not lans:
            return None
        return ClusterConfig(
            lans=tuple(lans), port=port, pulse=pulse, mlost_count=mlost, slost_count=slost
        )

    def _lan(self, el: Element) -> Lan | None:
        self._check_attributes(el, _LAN_ATTRIBUTES)
        for attr in _OBSOLETE_LAN_ATTRIBUTES:
            if attr in el.attrib:
                self.report.add_warning(
                    "obsolete since SafeKit 8.2, ignored",
                    line=line_of(el),
                    element=element_path(el),
                    attribute=attr,
                    value=el.get(attr),
                    hint="remove the attribute",
                    code="obsolete",
                )
        name = (el.get("name") or "").strip()
        if not name:
            self.report.add_error(
                "a <lan> needs a name",
                line=line_of(el),
                element=element_path(el),
                attribute="name",
                value=el.get("name"),
                hint="modules refer to networks by this name, e.g. name='default'",
                code="missing-attribute",
            )
        command = self._on_off(el, "command")
        nodes: list[ClusterNode] = []
        names: set[str] = set()
        addrs: dict[str, str] = {}
        for child in elements(el):
            if child.tag != "node":
                self._unknown_child(child, "<node>")
                continue
            node = self._node(child)
            if node is None:
                continue
            if node.name in names:
                self.report.add_error(
                    f"node '{node.name}' appears twice on lan '{name}'",
                    line=line_of(child),
                    element=element_path(child),
                    attribute="name",
                    value=node.name,
                    hint="list each node once per lan",
                    code="duplicate-name",
                )
                continue
            key = node.addr.lower()
            if key in addrs:
                self.report.add_error(
                    f"address {node.addr} is already used by node '{addrs[key]}' on lan '{name}'",
                    line=line_of(child),
                    element=element_path(child),
                    attribute="addr",
                    value=node.addr,
                    hint="each node needs its own address on a lan",
                    code="duplicate-address",
                )
                continue
            names.add(node.name)
            addrs[key] = node.name
            self.node_elements[(name, node.name)] = child
            nodes.append(node)
        if not nodes and not list(elements(el)):
            self.report.add_error(
                f"lan '{name}' has no node",
                line=line_of(el),
                element=element_path(el),
                hint="add one <node name='...' addr='...'/> per server on this network",
                code="missing-element",
            )
        if not name:
            return None
        return Lan(name=name, command=command, nodes=tuple(nodes))

    def _node(self, el: Element) -> ClusterNode | None:
        self._check_attributes(el, _NODE_ATTRIBUTES)
        path = element_path(el)
        raw_name = el.get("name")
        name = (raw_name or "").strip()
        if raw_name is not None and name and raw_name != name:
            # The User's Guide itself prints name=" Inst1": tolerated, but said out loud.
            self.report.add_warning(
                "leading/trailing spaces in the node name are ignored",
                line=line_of(el),
                element=path,
                attribute="name",
                value=raw_name,
                hint=f"write name='{name}'",
                code="trimmed",
            )
        ok = True
        if problem := node_name_problem(name):
            self.report.add_error(
                problem,
                line=line_of(el),
                element=path,
                attribute="name",
                value=raw_name,
                hint="use the server's short host name, e.g. name='node1'",
                code="bad-name",
            )
            ok = False
        addr = el.get("addr")
        if addr is None:
            self.report.add_error(
                "a <node> needs an addr",
                line=line_of(el),
                element=path,
                attribute="addr",
                hint="the IP address or DNS name of the node on this lan",
                code="missing-attribute",
            )
            ok = False
        elif problem := address_problem(addr):
            self.report.add_error(
                problem,
                line=line_of(el),
                element=path,
                attribute="addr",
                value=addr,
                hint="an IPv4 address, an IPv6 address (may be written [v6]) or a DNS name",
                code="bad-address",
            )
            ok = False
        laddr = el.get("laddr")
        if laddr is not None and (problem := address_problem(laddr)):
            self.report.add_error(
                problem,
                line=line_of(el),
                element=path,
                attribute="laddr",
                value=laddr,
                hint="the node's local address when NAT makes it differ from addr",
                code="bad-address",
            )
            ok = False
        if not ok or addr is None:
            return None
        return ClusterNode(name=name, addr=addr, laddr=laddr)

    def _cross_lan_rules(self, lans: list[Lan], elements_by_name: dict[str, Element]) -> None:
        commands = [lan for lan in lans if lan.command]
        for extra in commands[1:]:
            el = elements_by_name[extra.name]
            self.report.add_error(
                f"lan '{extra.name}' has command='on' but lan '{commands[0].name}' already has it",
                line=line_of(el),
                element=element_path(el),
                attribute="command",
                value=el.get("command"),
                hint="only one lan carries the distributed commands",
                code="duplicate-command-lan",
            )
        all_names = {n.name for lan in lans for n in lan.nodes}
        if commands:
            lan = commands[0]
            missing = sorted(all_names - {n.name for n in lan.nodes})
            if missing:
                el = elements_by_name[lan.name]
                self.report.add_error(
                    f"the command lan '{lan.name}' lacks node(s) {', '.join(missing)}",
                    line=line_of(el),
                    element=element_path(el),
                    attribute="command",
                    value=el.get("command"),
                    hint="the command lan must contain every node of the cluster",
                    code="command-lan-incomplete",
                )
        # A name denotes one server on every lan: the same spelling, and no address shared by
        # two different names (that would be one server under two names).
        by_folded: dict[str, str] = {}
        owner_of_ip: dict[str, tuple[str, str]] = {}
        for lan in lans:
            for node in lan.nodes:
                el = self.node_elements[(lan.name, node.name)]
                first = by_folded.setdefault(node.name.lower(), node.name)
                if first != node.name:
                    self.report.add_error(
                        f"node '{node.name}' differs only in case from node '{first}'",
                        line=line_of(el),
                        element=element_path(el),
                        attribute="name",
                        value=node.name,
                        hint="spell a node's name identically on every lan",
                        code="inconsistent-node",
                    )
                ip = ip_literal(node.addr)
                if ip is None:
                    continue
                owner = owner_of_ip.setdefault(str(ip), (node.name, lan.name))
                if owner[0] != node.name:
                    self.report.add_error(
                        f"address {node.addr} of node '{node.name}' on lan '{lan.name}' is the "
                        f"address of node '{owner[0]}' on lan '{owner[1]}'",
                        line=line_of(el),
                        element=element_path(el),
                        attribute="addr",
                        value=node.addr,
                        hint="a node name must denote the same server on every lan",
                        code="inconsistent-node",
                    )


def parse_cluster(text: str | bytes, filename: str) -> tuple[ClusterConfig | None, ConfigReport]:
    """Parse and validate cluster.xml content; the model is None when there is any error."""
    report = ConfigReport(file=filename)
    document = parse_xml(text, report, root_tag="cluster")
    if document is None:
        return None, report
    config = _ClusterReader(report).read(document.root)
    return (config if report.ok else None), report


def load_cluster(path: str | Path) -> tuple[ClusterConfig | None, ConfigReport]:
    """Read and validate a cluster.xml file (an unreadable file is reported, not raised)."""
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
    return parse_cluster(data, str(path))
