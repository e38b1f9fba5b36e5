"""Checking a module's configuration with :mod:`hakit.config` (the one userconfig parser)."""

from __future__ import annotations

import os
from pathlib import Path

from hakit.config.cluster import load_cluster
from hakit.config.model import UserConfig
from hakit.config.report import ConfigReport
from hakit.config.tree import read_tree
from hakit.config.userconfig import load_userconfig
from hakit.config.xmlsource import parse_xml
from hakit.paths import NodePaths


def check_module_config(
    paths: NodePaths, conf_file: Path
) -> tuple[UserConfig | None, ConfigReport]:
    """Load and validate ``conf_file``; with the node's installed ``cluster.xml`` when there is
    one, so heartbeat/farm lan names and node names are cross-checked against it.

    The report holds the issues of ``cluster.xml`` too (an invalid cluster makes the module's
    check fail). Without ``cluster.xml`` the names cannot be checked, which the report says.
    """
    report = ConfigReport(file=str(conf_file))
    cluster = None
    if paths.cluster_xml.exists():
        cluster, cluster_report = load_cluster(paths.cluster_xml)
        report.extend(cluster_report)
        if cluster is None:
            return None, report
    else:
        report.add_warning(
            f"no {paths.cluster_xml} on this node: lan and node names of the module are not "
            "checked",
            hint="install the cluster configuration first with `hakit cluster config`",
            code="no-cluster",
        )
    config, module_report = load_userconfig(conf_file, cluster=cluster)
    report.extend(module_report)
    return (config if report.ok else None), report


def source_mode(source_dir: Path) -> str | None:
    """The ``<service mode>`` of a module source, or None when it cannot be read.

    Only the configuration loader's first (schema) pass runs, so a module whose file still has
    errors, such as a template not filled in yet, shows its mode too.
    """
    conf_file = source_dir / "conf" / "userconfig.xml"
    try:
        data = conf_file.read_bytes()
    except OSError:
        return None
    report = ConfigReport(file=str(conf_file))
    document = parse_xml(data, report, root_tag="safe", allow_strays=True)
    if document is None:
        return None
    return read_tree(document, report, os.environ).mode
