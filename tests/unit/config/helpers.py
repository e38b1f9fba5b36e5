"""Shared builders of small, valid configuration files for the config tests."""

from __future__ import annotations

from hakit.config.cluster import ClusterConfig, parse_cluster
from hakit.config.model import UserConfig
from hakit.config.report import ConfigReport
from hakit.config.userconfig import parse_userconfig


def make_cluster(nodes: int = 2, lans: tuple[str, ...] = ("default", "private")) -> ClusterConfig:
    """A valid cluster of ``nodes`` nodes named node1..N on the given lans."""
    body = "".join(
        f'<lan name="{lan}">'
        + "".join(f'<node name="node{n}" addr="10.{i}.0.{n}"/>' for n in range(1, nodes + 1))
        + "</lan>"
        for i, lan in enumerate(lans)
    )
    config, report = parse_cluster(f"<cluster><lans>{body}</lans></cluster>", "cluster.xml")
    assert config is not None, report.render()
    return config


def mirror(
    inner: str = "",
    *,
    service: str = "",
    heart: str = '<heart><heartbeat name="default"/></heart>',
    rfs: str = '<rfs><replicated dir="/srv/data"/></rfs>',
    user: str = "<user/>",
    macros: str = "",
) -> str:
    """A valid mirror userconfig.xml, with ``inner`` added inside <service>."""
    return (
        "<!DOCTYPE safe>\n<safe>\n"
        f"{macros}\n"
        f'<service mode="mirror" {service}>\n'
        f"{heart}\n{rfs}\n{user}\n{inner}\n"
        "</service>\n</safe>\n"
    )


FARM_VIP = (
    "<vip><interface_list><interface><virtual_interface type='vmac_directed'>"
    "<virtual_addr addr='10.0.0.100' where='alias'/></virtual_interface></interface>"
    "</interface_list><loadbalancing_list><group name='web'>"
    "<rule port='80' proto='tcp' filter='on_addr'/></group></loadbalancing_list></vip>"
)


def farm(inner: str = "", *, service: str = "", vip: str = FARM_VIP) -> str:
    """A valid farm userconfig.xml, with ``inner`` added inside <service>."""
    return (
        "<safe>\n"
        f'<service mode="farm" {service}>\n'
        '<farm><lan name="default"/></farm>\n'
        f"{vip}\n<user/>\n{inner}\n"
        "</service>\n</safe>\n"
    )


def check(
    text: str, cluster: ClusterConfig | None = None, environ: dict[str, str] | None = None
) -> tuple[UserConfig | None, ConfigReport]:
    """Parse ``text`` as userconfig.xml with an empty environment unless given."""
    return parse_userconfig(text, "userconfig.xml", cluster, {} if environ is None else environ)


def error_codes(report: ConfigReport) -> list[str]:
    return [issue.code for issue in report.errors]


def warning_codes(report: ConfigReport) -> list[str]:
    return [issue.code for issue in report.warnings]
