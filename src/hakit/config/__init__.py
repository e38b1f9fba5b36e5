"""Configuration: ``cluster.xml`` and ``userconfig.xml`` read into typed, validated models.

Every loader returns ``(model | None, ConfigReport)``: the model only when there is no error, the
report always, holding every error and warning with its file, line, element and attribute.
"""

from __future__ import annotations

from hakit.config.cluster import ClusterConfig, ClusterNode, Lan, load_cluster, parse_cluster
from hakit.config.model import Mode, UserConfig
from hakit.config.report import ConfigInvalid, ConfigReport, Issue, Severity
from hakit.config.userconfig import load_userconfig, parse_userconfig

__all__ = [
    "ClusterConfig",
    "ClusterNode",
    "ConfigInvalid",
    "ConfigReport",
    "Issue",
    "Lan",
    "Mode",
    "Severity",
    "UserConfig",
    "load_cluster",
    "load_userconfig",
    "parse_cluster",
    "parse_userconfig",
]
