"""Durations: SafeKit 8.2.5 suffixes, implicit units, and the round-to-zero refusal."""

from __future__ import annotations

import pytest

from hakit.config.units import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("raw", "unit", "seconds"),
    [
        ("700", "ms", 0.7),
        ("700ms", "ms", 0.7),
        ("30s", "ms", 30.0),
        ("24", "h", 86400.0),
        ("1d", "h", 86400.0),
        ("2m", "s", 120.0),
        ("1500us", "ms", 0.0015),
        ("0", "s", 0.0),
        (" 10 s ", "s", 10.0),
        ("1.5s", "s", 1.5),
    ],
)
def test_parse(raw: str, unit: str, seconds: float) -> None:
    assert parse_duration(raw, unit, "x") == pytest.approx(seconds)


def test_value_rounding_to_zero_is_refused_with_safekit_wording() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("500ms", "s", "boot_delay")
    assert str(caught.value) == (
        "invalid value '500ms' for the attribute boot_delay (expected time unit: 's')"
    )


@pytest.mark.parametrize("raw", ["", "abc", "-1", "10x", "5 min", "s"])
def test_malformed(raw: str) -> None:
    with pytest.raises(DurationError, match="invalid value"):
        parse_duration(raw, "s", "timeout")


def test_unknown_implicit_unit_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown implicit unit"):
        parse_duration("1", "fortnight", "x")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.7, "700ms"), (30, "30s"), (86400, "1d"), (90, "90s")]
)
def test_format(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
