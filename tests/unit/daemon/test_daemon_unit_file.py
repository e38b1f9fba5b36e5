"""The systemd unit shipped with hakitd has the settings the design relies on."""

from __future__ import annotations

import configparser
from importlib import resources


def unit() -> configparser.ConfigParser:
    text = resources.files("hakit.daemon").joinpath("hakit.service").read_text()
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(text)
    return parser


def test_unit_has_the_three_sections() -> None:
    assert unit().sections() == ["Unit", "Service", "Install"]


def test_service_settings() -> None:
    service = unit()["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"] == "/usr/local/bin/hakitd"
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "mixed"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_unit_starts_after_the_network_and_at_boot() -> None:
    parsed = unit()
    assert "network-online.target" in parsed["Unit"]["After"]
    assert parsed["Install"]["WantedBy"] == "multi-user.target"
