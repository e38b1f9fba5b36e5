"""Durations as SafeKit 8.2.5 writes them: ``700ms``, ``30s``, ``24h``, or a bare number.

A bare number is in the attribute's *implicit unit* (the unit of its documented default:
``pulse="700"`` is milliseconds, ``boot_delay="10"`` seconds, ``loop_interval="24"`` hours).
SafeKit stores each duration as an integer of that implicit unit, so a non-zero value that rounds
to 0 there is refused with SafeKit's own wording::

    invalid value '500ms' for the attribute boot_delay (expected time unit: 's')

hakit keeps durations as float seconds (monotonic-clock arithmetic), without rounding them: the
rounding rule is only used to refuse what SafeKit would have turned into 0.
"""

from __future__ import annotations

import re

#: Seconds per unit suffix.
UNIT_SECONDS: dict[str, float] = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
    "us": 0.000001,
}

# "ms"/"us" must be tried before "m"/"s": the alternation is ordered.
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|us|d|h|m|s)?\s*$")


class DurationError(ValueError):
    """A duration text that cannot be used; ``str()`` is the user-facing message."""


def parse_duration(raw: str, implicit_unit: str, attribute: str) -> float:
    """Return ``raw`` in seconds; ``implicit_unit`` applies to a bare number.

    Raises :class:`DurationError` for a malformed or negative value, or a non-zero value that
    would round to 0 in ``implicit_unit``.
    """
    if implicit_unit not in UNIT_SECONDS:
        raise ValueError(f"unknown implicit unit {implicit_unit!r}")  # a bug in a schema table
    match = _DURATION.match(raw)
    if not match:
        raise DurationError(
            f"invalid value '{raw}' for the attribute {attribute} "
            f"(expected a duration: a number, optionally followed by one of "
            f"{', '.join(UNIT_SECONDS)}; a bare number is in '{implicit_unit}')"
        )
    number = float(match.group(1))
    unit = match.group(2) or implicit_unit
    seconds = number * UNIT_SECONDS[unit]
    in_implicit = seconds / UNIT_SECONDS[implicit_unit]
    if number != 0 and round(in_implicit) == 0:
        raise DurationError(
            f"invalid value '{raw}' for the attribute {attribute} "
            f"(expected time unit: '{implicit_unit}')"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Shortest exact SafeKit spelling of a duration (``0.7`` -> ``700ms``, ``86400`` -> ``1d``)."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s", "ms", "us"):
        count = seconds / UNIT_SECONDS[unit]
        if abs(count - round(count)) < 1e-9 and round(count) >= 1:
            return f"{round(count)}{unit}"
    return f"{seconds}s"
