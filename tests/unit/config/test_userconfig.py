"""userconfig.xml: models with SafeKit's defaults, and one test per validation rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config.model import CheckerKind, Mode
from hakit.config.userconfig import load_userconfig

from .helpers import check, error_codes, farm, make_cluster, mirror, warning_codes

# -- models and defaults ------------------------------------------------------------------------


def test_minimal_mirror_gets_safekit_defaults() -> None:
    config, report = check(mirror())
    assert report.ok and not report.issues, report.render()
    assert config is not None
    assert config.mode is Mode.MIRROR
    service = config.service
    assert (service.boot, service.boot_delay, service.failover, service.defaultprim) == (
        "ignore",
        0.0,
        True,
        "alone",
    )
    assert (service.maxloop, service.loop_interval, service.automatic_reboot) == (3, 86400.0, False)
    assert config.heart is not None
    assert (config.heart.pulse, config.heart.timeout, config.heart.port) == (0.7, 30.0, None)
    assert config.heart.permanent_arp is True
    hb = config.heart.heartbeats[0]
    assert (hb.name, hb.ident, hb.pulse, hb.timeout, hb.is_flow) == (
        "default",
        "default",
        0.7,
        30.0,
        False,
    )
    rfs = config.rfs
    assert rfs is not None
    assert (rfs.async_mode, rfs.locktimeout, rfs.sendtimeout, rfs.nbrei) == (
        "second",
        100.0,
        30.0,
        6,
    )
    assert (rfs.reipacketsize, rfs.ruzone_blocksize, rfs.namespacepolicy) == (8388608, 8388608, 4)
    assert (rfs.reitimeout, rfs.checktime, rfs.checkintv, rfs.syncdelta) == (
        150.0,
        220.0,
        120.0,
        0.0,
    )
    assert rfs.replicated[0].dir == "/srv/data" and not rfs.replicated[0].read_only
    assert config.user is not None
    assert (config.user.nicestoptimeout, config.user.forcestoptimeout) == (300.0, 300.0)
    assert (config.user.logging, config.user.userlogsize) == ("userlog", 2048)


def test_every_mirror_element_is_modelled() -> None:
    text = mirror(
        """
        <vip tcpreset="off"><interface_list>
          <interface check="off" arpreroute="on" arpinterval="30s" arpelapse="10m" name="eth0">
            <real_interface>
              <virtual_addr addr="10.0.0.100" where="one_side_alias" check="off"
                            connections="on" netmask="255.255.255.0"/>
            </real_interface>
          </interface>
        </interface_list></vip>
        <errd polltimer="10">
          <proc name="postgres" service="no" nameregex="postgres.*" argregex=".*-D.*"
                atleast="2" atmax="5" action="restart" restart_services="a, b" class="prim"
                start_after="3"/>
        </errd>
        <check>
          <tcp ident="pg" when="prim" action="restart"><to addr="127.0.0.1" port="5432"
               interval="5" timeout="2"/></tcp>
          <ping ident="gw"><to addr="10.0.0.254"/></ping>
          <intf ident="eth0"><to local_addr="10.0.0.1"/></intf>
          <ip ident="vip"><to addr="10.0.0.100"/></ip>
          <custom ident="c" when="prim" exec="mycheck" arg="x y" action="stopstart"/>
          <module name="other"><to addr="10.0.0.5" port="9453" secure="on"/></module>
          <splitbrain ident="witness" exec="ping" arg="10.0.0.254 10.0.0.253"/>
        </check>
        <failover period="1s" handle_time="3s"><![CDATA[
          down: if (custom.c == down) then stopstart();
        ]]></failover>
        """,
        service='boot="auto" boot_delay="10" failover="off" defaultprim="node1" maxloop="5" '
        'loop_interval="12" automatic_reboot="on"',
        heart='<heart port="9000" pulse="1s" timeout="10s" permanent_arp="off">'
        '<heartbeat name="default"/><heartbeat name="private" ident="flow" timeout="5s"/></heart>',
        rfs='<rfs async="none" locktimeout="50" nbrei="3" reiallowedbw="1000" syncdelta="5">'
        '<replicated dir="/srv/pg" mode="read_only"><tocheck path="PG_VERSION"/>'
        '<notreplicated path="pg_stat_tmp"/><notreplicated regexpath="!.*\\.conf$"/>'
        "</replicated></rfs>",
        user='<user logging="none" userlogsize="100"><var name="A" value="1"/></user>',
    )
    config, report = check(text, make_cluster())
    assert report.ok and not report.issues, report.render()
    assert config is not None
    s = config.service
    assert (s.boot, s.boot_delay, s.failover, s.defaultprim) == ("auto", 10.0, False, "node1")
    assert (s.maxloop, s.loop_interval, s.automatic_reboot) == (5, 12 * 3600.0, True)
    assert config.heart is not None and config.heart.port == 9000
    flow = config.heart.heartbeats[1]
    assert (flow.name, flow.ident, flow.pulse, flow.timeout, flow.is_flow) == (
        "private",
        "flow",
        1.0,
        5.0,
        True,
    )
    assert config.vip is not None and not config.vip.tcpreset
    itf = config.vip.interfaces[0]
    assert (itf.check, itf.arpreroute, itf.arpinterval, itf.arpelapse, itf.name) == (
        False,
        True,
        30.0,
        600.0,
        "eth0",
    )
    va = itf.addrs[0]
    assert (va.addr, va.where, va.check, va.connections, va.netmask) == (
        "10.0.0.100",
        "one_side_alias",
        False,
        True,
        "255.255.255.0",
    )
    assert config.vip.addresses() == ["10.0.0.100"]
    assert config.errd is not None and config.errd.polltimer == 10.0
    proc = config.errd.procs[0]
    assert (proc.name, proc.class_, proc.action, proc.atleast, proc.atmax) == (
        "postgres",
        "prim",
        "restart",
        2,
        5,
    )
    assert proc.restart_services == ("a", "b") and proc.start_after == 3
    kinds = [c.kind for c in config.checkers]
    assert kinds == list(CheckerKind)
    tcp = config.checker("tcp.pg")
    assert tcp is not None and tcp.targets[0].port == 5432 and tcp.targets[0].interval == 5.0
    ping = config.checker("ping.gw")
    assert ping is not None and (ping.when, ping.action) == ("pre", "wait")
    module = config.checker("module.other")
    assert module is not None and module.targets[0].secure and module.module == "other"
    rfs = config.rfs
    assert rfs is not None and rfs.async_mode == "none" and rfs.reiallowedbw == 1000
    assert rfs.syncdelta == 300.0
    rep = rfs.replicated[0]
    assert rep.read_only and rep.tocheck == ("PG_VERSION",)
    assert rep.notreplicated[0].path == "pg_stat_tmp"
    assert rep.notreplicated[1].regexpath == ".*\\.conf$" and rep.notreplicated[1].only
    assert config.user is not None and config.user.environment() == {"A": "1"}
    assert config.failover is not None
    assert (config.failover.period, config.failover.handle_time) == (1.0, 3.0)
    assert config.failover.rules[0].label == "down"


def test_farm_model() -> None:
    text = farm(
        '<check><tcp ident="web" when="both"><to addr="127.0.0.1" port="80"/></tcp></check>',
        vip="<vip scriptcontrol='on'><interface_list><interface>"
        "<virtual_interface type='vmac_invisible' addr='5A:FE:0A:00:00:64'>"
        "<virtual_addr addr='10.0.0.100' where='alias'/></virtual_interface></interface>"
        "</interface_list><loadbalancing_list><group name='web'><cluster>"
        "<host name='node1' power='2'/><host name='node2'/></cluster>"
        "<rule virtual_addr='10.0.0.100' port='*' proto='tcp' filter='on_port'/>"
        "<rule proto='udp' port='53' filter='on_ipid'/></group></loadbalancing_list></vip>",
    )
    config, report = check(text, make_cluster(3, ("default",)))
    assert report.ok, report.render()
    assert config is not None and config.farm is not None and config.vip is not None
    assert (config.farm.pulse, config.farm.mlost_count, config.farm.slost_count) == (0.1, 20, 10)
    assert config.farm.lans[0].name == "default"
    assert config.vip.scriptcontrol
    itf = config.vip.interfaces[0]
    assert (itf.virtual_type, itf.virtual_mac) == ("vmac_invisible", "5A:FE:0A:00:00:64")
    group = config.vip.groups[0]
    assert [(h.name, h.power) for h in group.hosts] == [("node1", 2), ("node2", 1)]
    assert group.rules[0].port is None and group.rules[1].port == 53


def test_light_mode_is_accepted() -> None:
    config, report = check('<safe><service mode="light"><user/></service></safe>')
    assert report.ok and config is not None and config.mode is Mode.LIGHT


def test_load_userconfig_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "userconfig.xml"
    path.write_text(mirror())
    config, report = load_userconfig(path, environ={})
    assert config is not None and report.ok
    config, report = load_userconfig(tmp_path / "missing.xml")
    assert config is None and error_codes(report) == ["unreadable"]


# -- the promise: every mistake, located, in one run ---------------------------------------------


def test_three_mistakes_give_exactly_three_located_errors() -> None:
    text = (
        "<safe>\n"  # 1
        '<service mode="mirror" boot_delay="500ms">\n'  # 2: rounds to 0 s
        "  <heart>\n"  # 3
        '    <heartbeat name="default"/>\n'  # 4
        '    <heartbeat name="backup"/>\n'  # 5: not a cluster lan
        "  </heart>\n"  # 6
        '  <rfs colour="blue"><replicated dir="/srv/data"/></rfs>\n'  # 7: unknown attribute
        "  <user/>\n"
        "</service>\n"
        "</safe>\n"
    )
    config, report = check(text, make_cluster())
    assert config is None
    assert [(i.line, i.attribute, i.code) for i in report.errors] == [
        (2, "boot_delay", "bad-duration"),
        (5, "name", "unknown-lan"),
        (7, "colour", "unknown-attribute"),
    ]
    assert report.errors[0].message == (
        "invalid value '500ms' for the attribute boot_delay (expected time unit: 's')"
    )
    assert all(i.file == "userconfig.xml" for i in report.errors)
    assert report.errors[1].element == "safe/service/heart/heartbeat[backup]"


# -- generic rules ---------------------------------------------------------------------------------


def test_malformed_xml_is_one_error() -> None:
    config, report = check("<safe><service mode='mirror'></safe>")
    assert config is None and error_codes(report) == ["xml-syntax"]


def test_unknown_element_names_what_is_allowed() -> None:
    _, report = check(mirror("<heartbeat name='default'/>"))
    assert error_codes(report) == ["unknown-element"]
    hint = report.errors[0].hint or ""
    assert "<heart>" in hint and "<rfs>" in hint and "<failover>" in hint


def test_unknown_attribute_names_what_is_allowed() -> None:
    _, report = check(mirror(service='bootdelay="1"'))
    assert error_codes(report) == ["unknown-attribute"]
    assert "boot_delay" in (report.errors[0].hint or "")


def test_duplicate_single_element() -> None:
    _, report = check(mirror("<user/>"))
    assert error_codes(report) == ["duplicate-element"]


@pytest.mark.parametrize(
    ("service", "code"),
    [
        ('mode="cluster"', "bad-enum"),
        ('boot="sometimes"', "bad-enum"),
        ('failover="maybe"', "bad-enum"),
        ('maxloop="-1"', "out-of-range"),
        ('maxloop="three"', "bad-integer"),
        ('loop_interval="1m"', "bad-duration"),
    ],
)
def test_bad_values_are_reported(service: str, code: str) -> None:
    text = mirror(service=service).replace('mode="mirror" mode="cluster"', 'mode="cluster"')
    _, report = check(text)
    assert code in error_codes(report)


def test_missing_service_and_mode() -> None:
    _, report = check("<safe/>")
    assert error_codes(report) == ["missing-element"]
    _, report = check("<safe><service/></safe>")
    assert error_codes(report) == ["missing-attribute"]


def test_text_inside_an_element_is_an_error() -> None:
    _, report = check(mirror("oops", user="<user>stray</user>"))
    assert "unexpected-text" in error_codes(report)


# -- macros ------------------------------------------------------------------------------------------


def test_macros_and_environment_expand_everywhere() -> None:
    text = mirror(
        macros='<macro name="DIR" value="/srv/%APP%"/>',
        rfs='<rfs><replicated dir="%DIR%"/></rfs>',
        user='<user><var name="D" value="%DIR%"/></user>',
    )
    config, report = check(text, environ={"APP": "pg"})
    assert report.ok, report.render()
    assert config is not None and config.rfs is not None
    assert config.rfs.replicated[0].dir == "/srv/pg"
    assert config.user is not None and config.user.environment() == {"D": "/srv/pg"}
    assert ("DIR", "/srv/pg") in [(m.name, m.value) for m in config.macros]


def test_unresolved_macro_is_named() -> None:
    _, report = check(mirror(rfs='<rfs><replicated dir="/srv/%NOPE%"/></rfs>'))
    assert error_codes(report) == ["unresolved-macro"]
    assert "%NOPE%" in report.errors[0].message


def test_duplicate_macro() -> None:
    _, report = check(mirror(macros='<macro name="A" value="1"/><macro name="A" value="2"/>'))
    assert error_codes(report) == ["duplicate-macro"]


def test_macro_before_safe_is_accepted_with_a_warning() -> None:
    text = '<!DOCTYPE safe>\n<macro name="D" value="/srv/x"/>\n' + mirror(
        rfs='<rfs><replicated dir="%D%"/></rfs>'
    ).replace("<!DOCTYPE safe>\n", "")
    config, report = check(text)
    assert config is not None, report.render()
    assert warning_codes(report) == ["misplaced-macro"]
    assert report.warnings[0].line == 2


# -- template placeholders ------------------------------------------------------------------------


def test_empty_vip_is_a_template_placeholder_error() -> None:
    text = mirror(
        "<vip><interface_list><interface><real_interface>"
        '<virtual_addr addr="" where="one_side_alias"/>'
        "</real_interface></interface></interface_list></vip>"
    )
    _, report = check(text)
    assert error_codes(report) == ["template-placeholder"]
    message = report.errors[0].message
    assert "the VIP address is empty: this file is a template; fill in addr" in message


def test_empty_macro_is_named_in_the_placeholder_error() -> None:
    text = mirror(
        "<vip><interface_list><interface><real_interface>"
        '<virtual_addr addr="%VIP%" where="one_side_alias"/>'
        "</real_interface></interface></interface_list></vip>",
        macros='<macro name="VIP" value=""/>',
    )
    _, report = check(text)
    assert error_codes(report) == ["template-placeholder"]
    assert "macro VIP" in report.errors[0].message


@pytest.mark.parametrize(
    "inner",
    [
        '<errd><proc name="PROCESS_NAME" class="prim"/></errd>',
        '<errd><proc name="" class="prim"/></errd>',
    ],
)
def test_placeholder_process_names(inner: str) -> None:
    _, report = check(mirror(inner))
    assert error_codes(report) == ["template-placeholder"]


# -- support levels: Windows-only, obsolete, unsupported ------------------------------------------


def test_windows_only_and_obsolete_rfs_attributes_are_warnings() -> None:
    config, report = check(
        mirror(
            rfs='<rfs iotimeout="300" acl="off" roflags="0x10" allocthreshold="1" '
            'nfsbox_options="cross" mountover="off" smartwrite="3" packetsize="65536" '
            'mountoversuffix="_x"><replicated dir="/srv/d"/></rfs>'
        )
    )
    assert config is not None, report.render()
    assert sorted(warning_codes(report)) == sorted(
        ["windows-only"] * 5 + ["obsolete"] * 2 + ["ignored"] * 2
    )


@pytest.mark.parametrize(
    ("rfs_attrs", "inner"),
    [
        ('scripts="on"', ""),
        ('syncat="0 3 * * *"', ""),
        ("", '<vhost><virtualhostname name="v" envfile="vhostenv"/></vhost>'),
        ("", '<failover extends="no"/>'),
        ("", "<failover><![CDATA[--Lua Rules\nRules.disable('ip_failure')]]></failover>"),
    ],
)
def test_unsupported_settings_are_errors(rfs_attrs: str, inner: str) -> None:
    _, report = check(mirror(inner, rfs=f'<rfs {rfs_attrs}><replicated dir="/srv/d"/></rfs>'))
    assert error_codes(report) == ["unsupported"]


def test_windows_namespacepolicy_values_warn() -> None:
    config, report = check(mirror(rfs='<rfs namespacepolicy="3"><replicated dir="/d"/></rfs>'))
    assert config is not None and warning_codes(report) == ["windows-only"]


def test_legacy_heartbeat_server_form() -> None:
    heart = (
        '<heart><heartbeat><server addr="10.0.0.1"/><server addr="10.0.0.2"/></heartbeat></heart>'
    )
    config, report = check(mirror(heart=heart), make_cluster())
    assert config is not None, report.render()
    assert warning_codes(report) == ["obsolete", "obsolete"]
    assert config.heart is not None and config.heart.heartbeats[0].name == "default"
    assert config.heart.heartbeats[0].servers == ("10.0.0.1", "10.0.0.2")
    mixed = heart.replace("</heart>", '<heartbeat name="private"/></heart>')
    _, report = check(mirror(heart=mixed), make_cluster())
    assert error_codes(report) == ["mixed-forms"]
    unknown = heart.replace("10.0.0.2", "10.9.9.9")
    _, report = check(mirror(heart=unknown), make_cluster())
    assert error_codes(report) == ["unknown-lan"]


def test_legacy_farm_node_form() -> None:
    text = farm().replace(
        '<lan name="default"/>', '<lan name="default"><node name="node1" addr="10.0.0.1"/></lan>'
    )
    config, report = check(text, make_cluster())
    assert config is not None and config.farm is not None, report.render()
    assert config.farm.lans[0].nodes[0].name == "node1"
    assert warning_codes(report) == ["obsolete"]


# -- mode rules -------------------------------------------------------------------------------------


def test_rfs_is_mirror_only_and_farm_is_farm_only() -> None:
    _, report = check(farm('<rfs><replicated dir="/srv/d"/></rfs>'))
    assert error_codes(report) == ["wrong-mode"]
    _, report = check(mirror('<farm><lan name="default"/></farm>'))
    assert error_codes(report) == ["wrong-mode"]


def test_mirror_needs_a_heartbeat_and_farm_a_lan() -> None:
    _, report = check(mirror(heart=""))
    assert error_codes(report) == ["missing-heartbeat"]
    _, report = check(mirror(heart="<heart/>"))
    assert error_codes(report) == ["missing-heartbeat"]
    _, report = check(farm().replace('<farm><lan name="default"/></farm>', ""))
    assert error_codes(report) == ["missing-farm-lan"]


def test_mirror_needs_exactly_two_cluster_nodes() -> None:
    _, report = check(mirror(), make_cluster(3))
    assert error_codes(report) == ["mirror-nodes"]
    config, report = check(farm(), make_cluster(3))
    assert report.ok and config is not None


def test_mode_specific_attributes() -> None:
    _, report = check(farm(service='failover="off"'))
    assert error_codes(report) == ["wrong-mode"]


# -- heartbeats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "heart",
    [
        '<heart pulse="1s" timeout="2s"><heartbeat name="default"/></heart>',
        '<heart><heartbeat name="default" pulse="15s"/></heart>',
        '<heart><heartbeat name="default" timeout="1000"/><heartbeat name="private"/></heart>',
    ],
)
def test_heartbeat_timeout_must_exceed_twice_the_pulse(heart: str) -> None:
    _, report = check(mirror(heart=heart))
    assert error_codes(report) == ["heartbeat-timing"]


def test_heartbeat_names_must_be_cluster_lans() -> None:
    _, report = check(mirror(heart='<heart><heartbeat name="nope"/></heart>'), make_cluster())
    assert error_codes(report) == ["unknown-lan"]
    assert "default, private" in (report.errors[0].hint or "")
    config, report = check(mirror(heart='<heart><heartbeat name="nope"/></heart>'))
    assert config is not None  # without a cluster the name cannot be checked


def test_heartbeat_lan_must_hold_both_nodes() -> None:
    cluster = make_cluster()
    text = (
        "<cluster><lans><lan name='default'><node name='node1' addr='10.0.0.1'/>"
        "<node name='node2' addr='10.0.0.2'/></lan><lan name='solo'>"
        "<node name='node1' addr='10.5.0.1'/></lan></lans></cluster>"
    )
    from hakit.config.cluster import parse_cluster

    cluster, _ = parse_cluster(text, "c")
    assert cluster is not None
    _, report = check(
        mirror(heart='<heart><heartbeat name="default"/><heartbeat name="solo"/></heart>'), cluster
    )
    assert error_codes(report) == ["lan-incomplete"]


def test_duplicate_heartbeats() -> None:
    _, report = check(
        mirror(heart='<heart><heartbeat name="default"/><heartbeat name="default"/></heart>')
    )
    assert error_codes(report) == ["duplicate-name"]
    _, report = check(
        mirror(
            heart='<heart><heartbeat name="default" ident="a"/>'
            '<heartbeat name="private" ident="a"/></heart>'
        )
    )
    assert error_codes(report) == ["duplicate-name"]


def test_heartbeat_without_name() -> None:
    _, report = check(mirror(heart="<heart><heartbeat/></heart>"))
    assert error_codes(report) == ["missing-attribute"]


def test_flow_heartbeat_needs_rfs() -> None:
    heart = '<heart><heartbeat name="default" ident="flow"/></heart>'
    _, report = check(mirror(heart=heart, rfs=""))
    assert error_codes(report) == ["flow-without-rfs"]
    config, report = check(mirror(heart=heart))
    assert config is not None


def test_heart_port_range() -> None:
    _, report = check(mirror(heart='<heart port="70000"><heartbeat name="default"/></heart>'))
    assert error_codes(report) == ["bad-port"]


def test_defaultprim_must_be_a_cluster_node() -> None:
    _, report = check(mirror(service='defaultprim="node9"'), make_cluster())
    assert error_codes(report) == ["unknown-node"]
    config, _ = check(mirror(service='defaultprim="lastprim"'), make_cluster())
    assert config is not None


# -- farm -------------------------------------------------------------------------------------------


def test_farm_lan_and_hosts_must_be_in_the_cluster() -> None:
    text = farm().replace('name="default"/></farm>', 'name="other"/></farm>')
    _, report = check(text, make_cluster())
    assert error_codes(report) == ["unknown-lan"]
    vip = (
        "<vip><interface_list><interface><virtual_interface>"
        "<virtual_addr addr='10.0.0.100' where='alias'/></virtual_interface></interface>"
        "</interface_list><loadbalancing_list><group name='web'><cluster>"
        "<host name='node1'/><host name='node7'/><host name='node1'/></cluster>"
        "<rule port='80' proto='tcp' filter='on_addr'/></group></loadbalancing_list></vip>"
    )
    _, report = check(farm(vip=vip), make_cluster())
    assert error_codes(report) == ["unknown-node", "duplicate-name"]


def test_farm_vip_needs_load_balancing_rules() -> None:
    vip = (
        "<vip><interface_list><interface><virtual_interface>"
        "<virtual_addr addr='10.0.0.100' where='alias'/></virtual_interface></interface>"
        "</interface_list></vip>"
    )
    _, report = check(farm(vip=vip))
    assert error_codes(report) == ["missing-element"]


@pytest.mark.parametrize(
    ("rule", "code"),
    [
        ("<rule proto='tcp' filter='on_ipid'/>", "bad-combination"),
        ("<rule proto='arp' filter='on_port'/>", "bad-combination"),
        ("<rule proto='tcp' filter='on_addr' virtual_addr='10.9.9.9'/>", "unknown-vip"),
        ("<rule proto='sctp' filter='on_addr'/>", "bad-enum"),
        ("<rule port='0' proto='tcp' filter='on_addr'/>", "bad-port"),
    ],
)
def test_load_balancing_rules(rule: str, code: str) -> None:
    _, report = check(
        farm(
            vip=farm()
            .split("\n")[3]
            .replace("<rule port='80' proto='tcp' filter='on_addr'/>", rule)
        )
    )
    assert error_codes(report) == [code]


def test_all_power_zero_warns() -> None:
    vip = (
        farm()
        .split("\n")[3]
        .replace(
            "<group name='web'>",
            "<group name='web'><cluster><host name='node1' power='0'/></cluster>",
        )
    )
    config, report = check(farm(vip=vip))
    assert config is not None and warning_codes(report) == ["no-traffic"]


# -- VIP --------------------------------------------------------------------------------------------


def vip_mirror(addr_attrs: str) -> str:
    return mirror(
        "<vip><interface_list><interface><real_interface>"
        f"<virtual_addr {addr_attrs}/></real_interface></interface>"
        "</interface_list></vip>"
    )


@pytest.mark.parametrize(
    ("attrs", "code"),
    [
        ("addr='10.0.0.300' where='one_side_alias'", "bad-address"),
        ("addr='10.0.0.100' where='alias'", "wrong-mode"),
        ("addr='10.0.0.100' where='everywhere'", "bad-enum"),
        ("addr='10.0.0.100'", "missing-attribute"),
    ],
)
def test_vip_rules(attrs: str, code: str) -> None:
    _, report = check(vip_mirror(attrs))
    assert error_codes(report) == [code]


@pytest.mark.parametrize("addr", ["10.0.0.100", "fd00::100", "[fd00::100]", "vip.example.com"])
def test_vip_literal_or_name(addr: str) -> None:
    config, report = check(vip_mirror(f"addr='{addr}' where='one_side_alias'"))
    assert config is not None, report.render()


def test_farm_interface_in_a_mirror_and_duplicate_vip() -> None:
    text = mirror(
        "<vip><interface_list><interface><virtual_interface>"
        "<virtual_addr addr='10.0.0.1' where='alias'/></virtual_interface></interface>"
        "</interface_list></vip>"
    )
    _, report = check(text)
    assert "wrong-mode" in error_codes(report)
    text = mirror(
        "<vip><interface_list><interface><real_interface>"
        "<virtual_addr addr='10.0.0.1' where='one_side_alias'/>"
        "<virtual_addr addr='10.0.0.1' where='one_side_alias'/>"
        "</real_interface></interface></interface_list></vip>"
    )
    _, report = check(text)
    assert error_codes(report) == ["duplicate-address"]


# -- replication ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dirs", "code"),
    [
        (["relative/dir"], "bad-path"),
        (["/"], "bad-path"),
        (["/srv/../etc"], "bad-path"),
        (["C:\\data"], "windows-path"),
        (["/srv/a", "/srv/a"], "duplicate-path"),
        (["/srv/a", "/srv/a/b"], "nested-path"),
        (["/srv/a/b", "/srv/a"], "nested-path"),
    ],
)
def test_replicated_directories(dirs: list[str], code: str) -> None:
    reps = "".join(f'<replicated dir="{d}"/>' for d in dirs)
    _, report = check(mirror(rfs=f"<rfs>{reps}</rfs>"))
    assert error_codes(report) == [code]


def test_sibling_directories_with_a_common_prefix_are_fine() -> None:
    config, report = check(
        mirror(rfs='<rfs><replicated dir="/srv/a"/><replicated dir="/srv/ab"/></rfs>')
    )
    assert config is not None, report.render()


def test_rfs_needs_a_directory() -> None:
    _, report = check(mirror(rfs="<rfs/>"))
    assert error_codes(report) == ["missing-element"]


@pytest.mark.parametrize(
    ("child", "code"),
    [
        ('<notreplicated regexpath="(unclosed"/>', "bad-regex"),
        ('<notreplicated regexpath="!(unclosed"/>', "bad-regex"),
        ('<notreplicated path="/abs"/>', "bad-path"),
        ('<notreplicated path="a" regexpath="b"/>', "bad-combination"),
        ("<notreplicated/>", "bad-combination"),
        ('<tocheck path="../x"/>', "bad-path"),
    ],
)
def test_replicated_children(child: str, code: str) -> None:
    _, report = check(mirror(rfs=f'<rfs><replicated dir="/srv/a">{child}</replicated></rfs>'))
    assert error_codes(report) == [code]
    if code == "bad-regex":
        assert "(unclosed" in report.errors[0].message


def test_zone_size_multiple_of_packet_size() -> None:
    _, report = check(
        mirror(
            rfs='<rfs reipacketsize="8192" ruzone_blocksize="10000"><replicated dir="/d"/></rfs>'
        )
    )
    assert error_codes(report) == ["bad-combination"]


def test_legacy_flow_lan_is_checked() -> None:
    _, report = check(
        mirror(rfs='<rfs><replicated dir="/d"/><flow name="x"/></rfs>'), make_cluster()
    )
    assert error_codes(report) == ["unknown-lan"]


# -- scripts, errd ------------------------------------------------------------------------------------


def test_errd_needs_user() -> None:
    _, report = check(mirror('<errd><proc name="app" class="prim"/></errd>', user=""))
    assert error_codes(report) == ["errd-without-user"]


@pytest.mark.parametrize(
    ("proc", "code"),
    [
        ('<proc name="app" class="both"/>', "wrong-mode"),
        ('<proc name="app" class="prim" atleast="3" atmax="2"/>', "bad-combination"),
        ('<proc name="app" class="prim" action="/usr/bin/x"/>', "bad-value"),
        ('<proc name="app" class="prim" nameregex="[a-"/>', "bad-regex"),
        ('<proc name="app"/>', "missing-attribute"),
        ('<proc name="app" class="prim"/><proc name="app" class="prim"/>', "duplicate-name"),
    ],
)
def test_proc_rules(proc: str, code: str) -> None:
    _, report = check(mirror(f"<errd>{proc}</errd>"))
    assert error_codes(report) == [code]


def test_proc_warnings_for_windows_and_long_names() -> None:
    config, report = check(
        mirror(
            '<errd><proc name="app.exe" class="prim"/>'
            '<proc name="a_very_long_process_name" class="prim"/>'
            '<proc name="custom" class="myclass" action="handler"/></errd>'
        )
    )
    assert config is not None
    assert warning_codes(report) == ["windows-only", "long-name"]


def test_user_vars() -> None:
    _, report = check(
        mirror(user='<user><var name="A" value="1"/><var name="A" value="2"/></user>')
    )
    assert error_codes(report) == ["duplicate-name"]
    _, report = check(mirror(user='<user><var name="1A" value="1"/></user>'))
    assert error_codes(report) == ["bad-value"]


# -- checkers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checker", "code"),
    [
        ('<tcp ident="t" when="both"><to addr="h" port="1"/></tcp>', "wrong-mode"),
        (
            '<tcp ident="t" when="pre" action="restart"><to addr="h" port="1"/></tcp>',
            "bad-combination",
        ),
        ('<tcp ident="t" when="prim"/>', "missing-element"),
        ('<tcp ident="t" when="prim"><to addr="h"/></tcp>', "missing-attribute"),
        ('<tcp ident="t" when="prim"><to addr="h" port="99999"/></tcp>', "bad-port"),
        ('<ping ident="p"><to addr="h" interval="1us"/></ping>', "bad-duration"),
        ('<custom ident="c" when="prim" exec="/bin/true"/>', "bad-path"),
        ('<splitbrain ident="w" exec="ping" arg="1.2.3.999"/>', "bad-address"),
        ('<splitbrain ident="w" exec="curl" arg="h"/>', "bad-enum"),
        (
            '<splitbrain ident="a" exec="ping" arg="h"/><splitbrain ident="b" exec="ping" arg="h"/>',
            "duplicate-element",
        ),
        (
            '<ping ident="p"><to addr="h"/></ping><ping ident="p"><to addr="h"/></ping>',
            "duplicate-name",
        ),
        ("<check/>", "unknown-element"),
    ],
)
def test_checker_rules(checker: str, code: str) -> None:
    _, report = check(mirror(f"<check>{checker}</check>"))
    assert error_codes(report) == [code]


def test_splitbrain_is_mirror_only() -> None:
    _, report = check(farm('<check><splitbrain ident="w" exec="ping" arg="h"/></check>'))
    assert error_codes(report) == ["wrong-mode"]


def test_farm_checker_when() -> None:
    _, report = check(
        farm('<check><tcp ident="t" when="prim"><to addr="h" port="1"/></tcp></check>')
    )
    assert error_codes(report) == ["wrong-mode"]


# -- failover -----------------------------------------------------------------------------------------


def test_handle_time_multiple_of_period() -> None:
    _, report = check(mirror('<failover period="2s" handle_time="5s"/>'))
    assert error_codes(report) == ["bad-combination"]
    _, report = check(mirror('<failover period="0"/>'))
    assert error_codes(report) == ["bad-duration"]


def test_failover_rule_errors_are_located() -> None:
    text = mirror(
        "<failover><![CDATA[\n  ok: if (tcp.a == down) then stop();\n"
        "  bad: if (tcp.a == down) then explode();\n]]></failover>"
    )
    _, report = check(text)
    assert error_codes(report) == ["bad-rule"]
    failover_line = (
        text.splitlines().index(next(x for x in text.splitlines() if "<failover>" in x)) + 1
    )
    assert report.errors[0].line == failover_line + 2


def test_inherited_heartbeat_timing_is_reported_once() -> None:
    heart = (
        '<heart pulse="1s" timeout="2s"><heartbeat name="default"/>'
        '<heartbeat name="private"/></heart>'
    )
    _, report = check(mirror(heart=heart))
    assert error_codes(report) == ["heartbeat-timing"]


def test_zero_heartbeat_pulse() -> None:
    _, report = check(mirror(heart='<heart><heartbeat name="default" pulse="0"/></heart>'))
    assert error_codes(report) == ["bad-duration"]


def test_two_flow_heartbeats() -> None:
    heart = (
        '<heart><heartbeat name="default" ident="flow"/>'
        '<heartbeat name="private" ident="flow"/></heart>'
    )
    _, report = check(mirror(heart=heart))
    assert error_codes(report) == ["duplicate-name"]


def test_upper_case_keywords_are_read_with_a_warning() -> None:
    config, report = check(mirror(service='boot="ON" failover="Off"'))
    assert config is not None and config.service.boot == "on" and not config.service.failover
    assert warning_codes(report) == ["case", "case"]


def test_rfs_refuses_a_fifth_replicated_directory() -> None:
    four = "".join(f'<replicated dir="/srv/d{i}"/>' for i in range(4))
    config, report = check(mirror(rfs=f"<rfs>{four}</rfs>"))
    assert config is not None, report.render()
    _, report = check(mirror(rfs=f'<rfs>{four}<replicated dir="/srv/d4"/></rfs>'))
    assert error_codes(report) == ["too-many"]
    assert "at most 4 replicated directories" in report.errors[0].message
    assert report.errors[0].line is not None
