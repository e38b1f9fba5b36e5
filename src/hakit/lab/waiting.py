"""Polling with a deadline, for lab scenarios ("within 5 s node2 sees node3 lost")."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hakit.errors import HakitError

T = TypeVar("T")


def wait_for(
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``probe`` until it returns a truthy value, and return that value.

    Raises HakitError naming ``what`` and the last value seen if ``timeout`` seconds (of the
    monotonic ``clock``) pass first. The probe is always called at least once, and once more at
    the deadline, so a slow probe cannot make the wait fail without a last look.
    """
    deadline = clock() + timeout
    while True:
        value = probe()
        if value:
            return value
        if clock() >= deadline:
            raise HakitError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        sleep(min(interval, max(0.0, deadline - clock())))
