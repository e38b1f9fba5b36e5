"""The classic failover-rule language."""

from __future__ import annotations

import pytest

from hakit.config.rules import is_lua, parse_rules


def test_parses_rules_and_comments() -> None:
    text = """
    /* restart the app when its checker is down */
    app_down: if (custom.app == down) then restart();
    // two resources
    both: if ((tcp.* == down || ping.? == down) && !(remote.state.x != up)) then stopstart();
    sync: if (heartbeat.* == down && cluster() == down) then rfs.uptodate = up;
    """
    rules, problems = parse_rules(text)
    assert problems == []
    assert [r.label for r in rules] == ["app_down", "both", "sync"]
    assert rules[0].condition == "(custom.app == down)"
    assert rules[0].action == "restart()"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("r: if (tcp.a == down) then reboot();", "unknown action reboot()"),
        ("r: if tcp.a == down then stop();", "in parentheses"),
        ("r: if (tcp.a == broken) then stop();", "'broken' is not a state"),
        ("r: if (tcp.a down) then stop();", "expected == or !="),
        ("r: if (tcp == down) then stop();", "not a resource"),
        ("r: if ((tcp.a == down) then stop();", "missing ')'"),
        ("this is not a rule", "not a rule"),
        ("r: if (tcp.a == down) then stop(); r: if (ip.a == down) then wait();", "more than once"),
    ],
)
def test_reports_bad_rules(text: str, fragment: str) -> None:
    _, problems = parse_rules(text)
    assert problems, text
    assert fragment in problems[0].message


def test_lua_is_recognised() -> None:
    assert is_lua("--Lua Rules\nRules = Rules + {}")
    assert not is_lua("a: if (tcp.a == down) then stop();")
