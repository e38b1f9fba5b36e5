"""cluster.xml: the model, its helpers and every validation rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config.cluster import ClusterConfig, load_cluster, parse_cluster
from hakit.config.report import ConfigReport

GOOD = """<!DOCTYPE safe>
<cluster>
  <lans port="4900" pulse="200" mlost_count="40" slost_count="20">
    <lan name="default">
      <node name="node1" addr="192.168.1.67"/>
      <node name="node2" addr="192.168.1.68"/>
    </lan>
    <lan name="repli" command="on">
      <node name="node1" addr="[fd00::1]" laddr="10.0.0.1"/>
      <node name="node2" addr="node2.example.com"/>
    </lan>
  </lans>
</cluster>
"""


def lans(body: str, lans_attrs: str = "") -> str:
    return f"<cluster>\n<lans {lans_attrs}>\n{body}\n</lans>\n</cluster>\n"


def parse_errors(text: str) -> tuple[ClusterConfig | None, ConfigReport]:
    config, report = parse_cluster(text, "cluster.xml")
    return config, report


def codes(report: ConfigReport) -> list[str]:
    return [i.code for i in report.errors]


def test_good_file_gives_the_model() -> None:
    config, report = parse_cluster(GOOD, "cluster.xml")
    assert report.ok and not report.issues
    assert config is not None
    assert (config.port, config.pulse, config.mlost_count, config.slost_count) == (
        4900,
        0.2,
        40,
        20,
    )
    assert config.node_names() == ["node1", "node2"]
    assert config.command_lan().name == "repli"
    assert config.lan("default") is not None and config.lan("nope") is None
    assert config.addrs_of("node1") == {"default": "192.168.1.67", "repli": "[fd00::1]"}
    repli = config.lan("repli")
    assert repli is not None and repli.nodes[0].laddr == "10.0.0.1"


def test_defaults_and_first_lan_as_command_lan() -> None:
    config, report = parse_cluster(
        lans(
            '<lan name="a"><node name="n1" addr="10.0.0.1"/></lan>'
            '<lan name="b"><node name="n1" addr="10.1.0.1"/></lan>'
        ),
        "c.xml",
    )
    assert config is not None and report.ok
    assert (config.port, config.pulse, config.mlost_count, config.slost_count) == (
        4800,
        0.1,
        20,
        10,
    )
    assert config.command_lan().name == "a"


def test_malformed_xml_is_one_located_error() -> None:
    config, report = parse_cluster("<cluster>\n<lans>\n</cluster>", "c.xml")
    assert config is None
    assert len(report.errors) == 1
    assert report.errors[0].code == "xml-syntax"
    assert report.errors[0].line == 3


def test_wrong_root() -> None:
    _, report = parse_cluster("<safe/>", "c.xml")
    assert codes(report) == ["wrong-root"]


def test_no_lan_is_an_error() -> None:
    _, report = parse_cluster(lans(""), "c.xml")
    assert codes(report) == ["missing-element"]
    _, report = parse_cluster("<cluster/>", "c.xml")
    assert codes(report) == ["missing-element"]


def test_duplicate_lan_and_node_names_and_addresses() -> None:
    config, report = parse_cluster(
        lans(
            '<lan name="a"><node name="n1" addr="10.0.0.1"/><node name="n1" addr="10.0.0.2"/>'
            '<node name="n2" addr="10.0.0.1"/></lan>\n'
            '<lan name="a"><node name="n1" addr="10.0.0.1"/></lan>'
        ),
        "c.xml",
    )
    assert config is None
    assert sorted(codes(report)) == ["duplicate-address", "duplicate-name", "duplicate-name"]


def test_command_lan_rules() -> None:
    _, report = parse_cluster(
        lans(
            '<lan name="a" command="on"><node name="n1" addr="10.0.0.1"/></lan>'
            '<lan name="b" command="on"><node name="n1" addr="10.1.0.1"/>'
            '<node name="n2" addr="10.1.0.2"/></lan>'
        ),
        "c.xml",
    )
    assert sorted(codes(report)) == ["command-lan-incomplete", "duplicate-command-lan"]


def test_bad_command_value() -> None:
    _, report = parse_cluster(
        lans('<lan name="a" command="yes"><node name="n" addr="h"/></lan>'), "c"
    )
    assert codes(report) == ["bad-enum"]


def test_node_name_must_mean_the_same_server_on_every_lan() -> None:
    _, report = parse_cluster(
        lans(
            '<lan name="a"><node name="n1" addr="10.0.0.1"/><node name="n2" addr="10.0.0.2"/></lan>'
            '<lan name="b"><node name="n2" addr="10.0.0.1"/><node name="N1" addr="10.0.0.9"/></lan>'
        ),
        "c.xml",
    )
    assert codes(report) == ["inconsistent-node", "inconsistent-node"]
    assert report.errors[0].line == 3


@pytest.mark.parametrize(
    "addr",
    ["", "1.2.3.999", "[10.0.0.1]", "fe80::zz", "bad_host name", "[fe80::1"],
)
def test_bad_addresses(addr: str) -> None:
    _, report = parse_cluster(lans(f'<lan name="a"><node name="n" addr="{addr}"/></lan>'), "c")
    assert codes(report) == ["bad-address"]
    assert report.errors[0].attribute == "addr"


@pytest.mark.parametrize("addr", ["10.0.0.1", "fe80::1", "[fe80::1]", "srv-1.example.com", "srv1"])
def test_good_addresses(addr: str) -> None:
    config, report = parse_cluster(lans(f'<lan name="a"><node name="n" addr="{addr}"/></lan>'), "c")
    assert report.ok, report.render()
    assert config is not None


def test_missing_addr_and_bad_laddr() -> None:
    _, report = parse_cluster(
        lans('<lan name="a"><node name="n"/><node name="m" addr="h" laddr="1.1.1.300"/></lan>'), "c"
    )
    assert codes(report) == ["missing-attribute", "bad-address"]


@pytest.mark.parametrize(
    ("attrs", "attribute"),
    [
        ('port="0"', "port"),
        ('port="70000"', "port"),
        ('pulse="1us"', "pulse"),
        ('pulse="abc"', "pulse"),
        ('mlost_count="0"', "mlost_count"),
        ('slost_count="x"', "slost_count"),
    ],
)
def test_bad_lans_attributes(attrs: str, attribute: str) -> None:
    _, report = parse_cluster(lans('<lan name="a"><node name="n" addr="h"/></lan>', attrs), "c")
    assert [i.attribute for i in report.errors] == [attribute]


def test_unknown_elements_and_attributes() -> None:
    _, report = parse_cluster(
        lans('<lan name="a" colour="red"><node name="n" addr="h" port="3"/><host/></lan><x/>'), "c"
    )
    assert sorted(codes(report)) == [
        "unknown-attribute",
        "unknown-attribute",
        "unknown-element",
        "unknown-element",
    ]
    unknown = next(i for i in report.errors if i.attribute == "colour")
    assert unknown.hint is not None and "name, command" in unknown.hint


def test_obsolete_attributes_are_warnings() -> None:
    config, report = parse_cluster(
        lans(
            '<lan name="a" console="on" framework="on" connect="off" command="on">'
            '<node name="n" addr="h"/></lan>'
        ),
        "c",
    )
    assert config is not None
    assert [i.attribute for i in report.warnings] == ["console", "framework", "connect"]
    assert all("obsolete since SafeKit 8.2, ignored" in i.message for i in report.warnings)


def test_spaces_around_a_node_name_are_trimmed_with_a_warning() -> None:
    config, report = parse_cluster(lans('<lan name="a"><node name=" Inst1" addr="h"/></lan>'), "c")
    assert config is not None and config.node_names() == ["Inst1"]
    assert [i.code for i in report.warnings] == ["trimmed"]


def test_every_problem_is_reported_in_one_run() -> None:
    _, report = parse_cluster(
        lans(
            '<lan name="a"><node name="n" addr="1.2.3.256"/><node name="" addr="h"/></lan>',
            'port="-1"',
        ),
        "c",
    )
    assert len(report.errors) == 3


def test_load_cluster_reads_files_and_reports_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "cluster.xml"
    path.write_text(GOOD)
    config, report = load_cluster(path)
    assert config is not None and report.ok
    config, report = load_cluster(tmp_path / "missing.xml")
    assert config is None and codes(report) == ["unreadable"]


def test_no_entity_expansion(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("leak")
    text = (
        f'<!DOCTYPE cluster [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<cluster><lans><lan name="a"><node name="n" addr="&x;"/></lan></lans></cluster>'
    )
    config, _ = parse_cluster(text, "c")
    assert config is None or all(n.addr != "leak" for n in config.lans[0].nodes)
