"""An in-memory :class:`~hakit.engine.modlog.ModuleLog` for engine tests."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC

from hakit.engine.modlog import Level, LogRecord, check_component, mirror_level, mirror_line


class FakeModuleLog:
    """Keeps lines in a list; same queries as the SQLite log, plus assertion helpers.

    The clocks default to counters (wall: 1 s per line from 2021-08-06 08:40:20 UTC, monotonic:
    0.001 s per line) so rendered lines are deterministic. ``mirror`` optionally receives the
    journald form of each line, as the real log sends it to the ``hakit.module`` logger.
    """

    def __init__(
        self,
        module: str = "mirror",
        *,
        wall: Callable[[], float] | None = None,
        monotonic: Callable[[], float] | None = None,
        mirror: logging.Logger | None = None,
    ) -> None:
        self.module = module
        self.records: list[LogRecord] = []
        ticks = itertools.count()
        self._wall = wall or (lambda: 1_628_239_220.0 + next(ticks))
        mono_ticks = itertools.count()
        self._monotonic = monotonic or (lambda: next(mono_ticks) / 1000)
        self._mirror = mirror
        self._ids = itertools.count(1)

    def append(
        self, component: str, level: Level | str, message: str, code: str | None = None
    ) -> LogRecord:
        """Add one line and return it."""
        record = LogRecord(
            next(self._ids),
            round(self._wall() * 1_000_000),
            self._monotonic(),
            check_component(component),
            Level.parse(level),
            code,
            message,
        )
        self.records.append(record)
        if self._mirror is not None:
            self._mirror.log(mirror_level(record.level), "%s", mirror_line(self.module, record))
        return record

    def tail(self, n: int, levels: Iterable[Level] | None = None) -> list[LogRecord]:
        """The last ``n`` lines (of the given levels), oldest first."""
        return self._select(levels)[-n:] if n > 0 else []

    def since(
        self, after_id: int, levels: Iterable[Level] | None = None, limit: int | None = None
    ) -> list[LogRecord]:
        """Lines with an id greater than ``after_id``, oldest first (at most ``limit``)."""
        rows = [r for r in self._select(levels) if r.id > after_id]
        return rows if limit is None else rows[:limit]

    def iter(self, levels: Iterable[Level] | None = None, after_id: int = 0) -> Iterator[LogRecord]:
        """Every line (of the given levels) after ``after_id``, oldest first."""
        return iter(self.since(after_id, levels))

    def codes(self) -> list[str]:
        """The decision codes logged so far, in order (lines without a code left out)."""
        return [r.code for r in self.records if r.code is not None]

    def messages(self, levels: Iterable[Level] | None = None) -> list[str]:
        """The messages logged so far (of the given levels), in order."""
        return [r.message for r in self._select(levels)]

    def lines(self) -> list[str]:
        """Every line rendered in SafeKit's format, in UTC."""
        return [r.render(UTC) for r in self.records]

    def _select(self, levels: Iterable[Level] | None) -> list[LogRecord]:
        if levels is None:
            return list(self.records)
        wanted = {Level.parse(level) for level in levels}
        return [r for r in self.records if r.level in wanted]
