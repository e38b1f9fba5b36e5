"""The report: how issues read and how errors become one exception."""

from __future__ import annotations

import pytest

from hakit.config.report import ConfigInvalid, ConfigReport, Issue, Severity
from hakit.errors import UserConfigError


def test_issue_reads_like_a_compiler_diagnostic() -> None:
    issue = Issue(
        Severity.ERROR, "u.xml", 12, "safe/service/heart", "pulse", "7x", "bad value", "use 700ms"
    )
    assert (
        str(issue)
        == "u.xml:12: error: <safe/service/heart> @pulse='7x': bad value (hint: use 700ms)"
    )


def test_issue_without_location_details_stays_readable() -> None:
    issue = Issue(Severity.WARNING, "c.xml", None, "", None, None, "something odd", None)
    assert str(issue) == "c.xml: warning: something odd"


def test_report_separates_errors_and_warnings() -> None:
    report = ConfigReport(file="f.xml")
    report.add_warning("w", line=1)
    assert report.ok
    report.add_error("e1", line=2, element="safe")
    report.add_error("e2", line=3, element="safe")
    assert not report.ok
    assert [i.message for i in report.errors] == ["e1", "e2"]
    assert [i.message for i in report.warnings] == ["w"]
    assert report.summary() == "f.xml: 2 errors, 1 warning"
    assert report.render().splitlines()[-1] == "f.xml: 2 errors, 1 warning"


def test_raise_if_errors_lists_every_error() -> None:
    report = ConfigReport(file="f.xml")
    report.raise_if_errors()  # nothing to raise
    report.add_error("first", line=2)
    report.add_error("second", line=9)
    with pytest.raises(ConfigInvalid) as caught:
        report.raise_if_errors()
    assert isinstance(caught.value, UserConfigError)
    assert caught.value.exit_code == 2
    assert "f.xml:2: error: first" in str(caught.value)
    assert "f.xml:9: error: second" in str(caught.value)
    assert caught.value.report is report


def test_to_dict_is_json_ready() -> None:
    report = ConfigReport(file="f.xml")
    report.add_error("e", line=2, code="x")
    data = report.to_dict()
    assert data["ok"] is False
    assert data["issues"][0]["severity"] == "error"
    assert data["issues"][0]["code"] == "x"
