"""A fake monotonic clock: time moves only when a test says so."""

from __future__ import annotations


class FakeClock:
    """Callable like :func:`time.monotonic`; :meth:`advance` moves it forward.

    Code under test takes a ``clock: Callable[[], float]``; tests pass a ``FakeClock`` and make time
    pass explicitly, so no assertion depends on how fast the machine is.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current fake time in seconds."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (never backward: it is monotonic) and return it."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self._now += seconds
        return self._now
