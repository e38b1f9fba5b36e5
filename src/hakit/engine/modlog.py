"""The module log: what happened to one module, in SafeKit's format, kept in the module database.

Theory of operation
-------------------
Every decision record, state change, script run and admin action of a module is one row of table
``log`` in ``$HAKIT_ROOT/var/lib/hakit/state/<module>/module.db`` (the module's SQLite database,
shared with other tables owned by other parts of the engine). Rows are never updated; ids only grow
(``AUTOINCREMENT``), so a reader polls with :meth:`SqliteModuleLog.since` and never misses or repeats
a row.

Levels are SafeKit's: ``C`` critical, ``E`` event (the main log: states, actions, failovers),
``I`` information and ``D`` debug (verbose log only), plus ``U`` (admin/user actions) and ``S``
(scripts) that the console filters on. Rendered lines keep SafeKit's raw format::

    | 2021-08-06 08:40:20.909224 | heart | E | Local state ALONE Ready

Each appended row is mirrored to the ``hakit.module`` Python logger as
``<module> | <component> | <message>`` so the daemon's journald/syslog output reads like
``journalctl -t safekit``.

Concurrency: the engine is the main writer; ``hakit printi``/``printe`` run inside scripts and append
from their own process; the CLI and the API read. WAL mode lets readers run while a writer commits,
a busy timeout serialises the rare concurrent writers, and ``synchronous=NORMAL`` makes a commit cost
no fsync (a power loss may lose the last rows, never corrupt the file). The table keeps the last
``keep_rows`` rows; older ones are deleted in batches, not one per append.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from types import TracebackType
from typing import Protocol

from hakit.errors import LocalSystemError, NotFoundError, UserConfigError
from hakit.paths import NodePaths

MODULE_DB = "module.db"
MIRROR_LOGGER = "hakit.module"
USER_COMPONENT = "user"  # component of the lines scripts write with printi / printe


class Level(enum.Enum):
    """Severity/kind of a module log line (SafeKit's letters)."""

    CRITICAL = "C"
    EVENT = "E"
    INFO = "I"
    DEBUG = "D"
    USER = "U"  # an action asked by an administrator or a command
    SCRIPT = "S"  # a script started or ended

    @classmethod
    def parse(cls, value: Level | str) -> Level:
        """``Level.EVENT`` from ``"E"``, ``"e"`` or ``Level.EVENT``; a clear error otherwise."""
        if isinstance(value, Level):
            return value
        try:
            return cls(value.upper())
        except ValueError:
            letters = ", ".join(level.value for level in cls)
            raise UserConfigError(f"unknown log level {value!r}: use one of {letters}") from None


MAIN_LEVELS = frozenset({Level.CRITICAL, Level.EVENT, Level.USER, Level.SCRIPT})
VERBOSE_LEVELS = frozenset(Level)

# Where each level goes in syslog terms: E lines are normal events ("Local state ALONE Ready"), not
# warnings; I and D are the verbose log, which journald need not keep by default.
_PY_LEVELS = {
    Level.CRITICAL: logging.CRITICAL,
    Level.EVENT: logging.INFO,
    Level.USER: logging.INFO,
    Level.SCRIPT: logging.INFO,
    Level.INFO: logging.DEBUG,
    Level.DEBUG: logging.DEBUG,
}


@dataclass(frozen=True)
class LogRecord:
    """One line of a module log."""

    id: int
    ts_wall: int  # microseconds since the Unix epoch: display only, never for ordering or timeouts
    ts_mono: float  # time.monotonic() of the writer (CLOCK_MONOTONIC: comparable across processes)
    component: str  # heart, engine, user, userplug, reintegre...
    level: Level
    code: str | None  # stable code of a decision record (tests and API clients match on it)
    message: str

    @property
    def wall(self) -> datetime:
        """The wall-clock time of the line, timezone-aware (UTC)."""
        seconds, micros = divmod(self.ts_wall, 1_000_000)
        return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)

    def render(self, tz: tzinfo | None = None) -> str:
        """SafeKit's raw line: ``| 2021-08-06 08:40:20.909224 | heart | E | Local state ...``.

        ``tz`` defaults to the local time zone, as SafeKit's logs show local time.
        """
        when = self.wall.astimezone(tz)
        # A line is one record: an embedded newline would read as a second, unformatted line.
        text = self.message.replace("\n", "\\n")
        return f"| {when:%Y-%m-%d %H:%M:%S.%f} | {self.component} | {self.level.value} | {text}"


class ModuleLog(Protocol):
    """The module log as the engine, the API and the CLI use it."""

    module: str

    def append(
        self, component: str, level: Level | str, message: str, code: str | None = None
    ) -> LogRecord:
        """Add one line and return it (with its id)."""
        ...

    def tail(self, n: int, levels: Iterable[Level] | None = None) -> list[LogRecord]:
        """The last ``n`` lines (of the given levels), oldest first."""
        ...

    def since(
        self, after_id: int, levels: Iterable[Level] | None = None, limit: int | None = None
    ) -> list[LogRecord]:
        """Lines with an id greater than ``after_id``, oldest first (at most ``limit``)."""
        ...

    def iter(self, levels: Iterable[Level] | None = None, after_id: int = 0) -> Iterator[LogRecord]:
        """Every line (of the given levels) after ``after_id``, oldest first."""
        ...


def module_log_path(paths: NodePaths, module: str) -> Path:
    """``$HAKIT_ROOT/var/lib/hakit/state/<module>/module.db``."""
    return paths.module_state(module) / MODULE_DB


def check_component(component: str) -> str:
    """``component`` if it can be shown between ``|`` separators, else a :class:`ValueError`."""
    if not component or any(c in component for c in "|\n\r") or component != component.strip():
        raise ValueError(f"log component {component!r} must be a non-empty word without '|'")
    return component


def mirror_level(level: Level) -> int:
    """The Python logging level a module log level is mirrored at."""
    return _PY_LEVELS[level]


def mirror_line(module: str, record: LogRecord) -> str:
    """The journald/syslog form of a line: ``mirror | heart | Local state ALONE Ready``."""
    return f"{module} | {record.component} | {record.message}"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    ts_wall   INTEGER NOT NULL,  -- microseconds since the Unix epoch
    ts_mono   REAL    NOT NULL,  -- writer's CLOCK_MONOTONIC, seconds
    component TEXT    NOT NULL,
    level     TEXT    NOT NULL CHECK (level IN ('C', 'E', 'I', 'D', 'U', 'S')),
    code      TEXT,
    message   TEXT    NOT NULL
)
"""
_COLUMNS = "id, ts_wall, ts_mono, component, level, code, message"
_PAGE = 1000  # rows fetched per query by iter(): short read transactions never hold up checkpoints


class SqliteModuleLog:
    """:class:`ModuleLog` kept in the module's SQLite database.

    ``keep_rows`` bounds the table; when it holds more than ``keep_rows + purge_batch`` rows the
    oldest are deleted down to ``keep_rows``; the check runs every ``check_every`` appends and on
    opening. ``readonly`` opens an existing database for reading only (CLI, API), without creating it.
    """

    def __init__(
        self,
        path: Path,
        module: str,
        *,
        readonly: bool = False,
        keep_rows: int = 100_000,
        purge_batch: int = 1_000,
        check_every: int = 256,
        busy_timeout: float = 5.0,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        mirror: logging.Logger | None = None,
    ) -> None:
        if keep_rows < 1 or purge_batch < 1 or check_every < 1:
            raise ValueError("keep_rows, purge_batch and check_every must be at least 1")
        self.module = module
        self.path = path
        self._readonly = readonly
        self._keep = keep_rows
        self._batch = purge_batch
        self._check_every = check_every
        self._appends = 0
        self._wall = wall
        self._monotonic = monotonic
        self._mirror = logging.getLogger(MIRROR_LOGGER) if mirror is None else mirror
        self._db = self._connect(busy_timeout)

    @classmethod
    def for_module(
        cls, paths: NodePaths, module: str, *, readonly: bool = False
    ) -> SqliteModuleLog:
        """The log of ``module`` on the node described by ``paths``, with default bounds."""
        return cls(module_log_path(paths, module), module, readonly=readonly)

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        if self._readonly and not self.path.exists():
            raise NotFoundError(
                f"module {self.module}: no module log at {self.path} "
                "(is the module installed and was it started once on this node?)"
            )
        try:
            if self._readonly:
                db = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=busy_timeout
                )
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, timeout=busy_timeout)
            # Autocommit: each append is its own short transaction; readers never wait on us.
            db.isolation_level = None
            if not self._readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise LocalSystemError(
                f"module {self.module}: cannot open the module log {self.path}: {exc}"
            ) from exc
        if not self._readonly:
            self._purge_if_needed(db)
        return db

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> SqliteModuleLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def append(
        self, component: str, level: Level | str, message: str, code: str | None = None
    ) -> LogRecord:
        """Add one line, mirror it to the ``hakit.module`` logger, and return it."""
        lvl = Level.parse(level)
        check_component(component)
        ts_wall = round(self._wall() * 1_000_000)
        ts_mono = self._monotonic()
        try:
            cur = self._db.execute(
                "INSERT INTO log (ts_wall, ts_mono, component, level, code, message)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (ts_wall, ts_mono, component, lvl.value, code, message),
            )
        except sqlite3.Error as exc:
            raise LocalSystemError(
                f"module {self.module}: cannot write to the module log {self.path}: {exc}"
            ) from exc
        assert cur.lastrowid is not None  # an INSERT into a rowid table always sets it
        record = LogRecord(cur.lastrowid, ts_wall, ts_mono, component, lvl, code, message)
        self._mirror.log(mirror_level(lvl), "%s", mirror_line(self.module, record))
        self._appends += 1
        if self._appends % self._check_every == 0:
            self._purge_if_needed(self._db)
        return record

    def tail(self, n: int, levels: Iterable[Level] | None = None) -> list[LogRecord]:
        """The last ``n`` lines (of the given levels), oldest first."""
        if n <= 0:
            return []
        where, params = _level_filter(levels)
        rows = self._query(
            f"SELECT {_COLUMNS} FROM log {where} ORDER BY id DESC LIMIT ?", (*params, n)
        )
        rows.reverse()
        return rows

    def since(
        self, after_id: int, levels: Iterable[Level] | None = None, limit: int | None = None
    ) -> list[LogRecord]:
        """Lines with an id greater than ``after_id``, oldest first (at most ``limit``)."""
        where, params = _level_filter(levels, after_id)
        return self._query(
            f"SELECT {_COLUMNS} FROM log {where} ORDER BY id LIMIT ?",
            (*params, -1 if limit is None else limit),
        )

    def iter(self, levels: Iterable[Level] | None = None, after_id: int = 0) -> Iterator[LogRecord]:
        """Every line (of the given levels) after ``after_id``, oldest first, read page by page."""
        wanted = None if levels is None else frozenset(levels)
        while True:
            page = self.since(after_id, wanted, _PAGE)
            yield from page
            if len(page) < _PAGE:
                return
            after_id = page[-1].id

    def last_id(self) -> int:
        """The id of the newest line (0 when the log is empty)."""
        row = self._db.execute("SELECT max(id) FROM log").fetchone()
        return int(row[0] or 0)

    def purge(self) -> int:
        """Delete all but the newest ``keep_rows`` lines now; the number of lines deleted."""
        return self._purge(self._db, self._keep)

    def _purge_if_needed(self, db: sqlite3.Connection) -> None:
        low, high = db.execute("SELECT min(id), max(id) FROM log").fetchone()
        # Ids are contiguous except below the purge point (only purges delete), so the span is the
        # row count without a full COUNT(*) scan.
        if low is not None and high - low + 1 > self._keep + self._batch:
            self._purge(db, self._keep)

    def _purge(self, db: sqlite3.Connection, keep: int) -> int:
        high = db.execute("SELECT max(id) FROM log").fetchone()[0]
        if high is None:
            return 0
        try:
            return db.execute("DELETE FROM log WHERE id <= ?", (high - keep,)).rowcount
        except sqlite3.Error as exc:
            raise LocalSystemError(
                f"module {self.module}: cannot purge the module log {self.path}: {exc}"
            ) from exc

    def _query(self, sql: str, params: tuple[object, ...]) -> list[LogRecord]:
        try:
            rows = self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []  # read-only view of a database the engine has not initialised yet
            raise LocalSystemError(
                f"module {self.module}: cannot read the module log {self.path}: {exc}"
            ) from exc
        return [
            LogRecord(row[0], row[1], row[2], row[3], Level(row[4]), row[5], row[6]) for row in rows
        ]


def _level_filter(
    levels: Iterable[Level] | None, after_id: int | None = None
) -> tuple[str, tuple[object, ...]]:
    clauses: list[str] = []
    params: list[object] = []
    if after_id is not None:
        clauses.append("id > ?")
        params.append(after_id)
    if levels is not None:
        letters = sorted({Level.parse(level).value for level in levels})
        clauses.append(f"level IN ({', '.join('?' * len(letters))})" if letters else "0")
        params.extend(letters)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def print_from_script(
    module: str | None, level: Level | str, text: str, paths: NodePaths
) -> LogRecord:
    """``hakit printi|printe "text"``: append a ``user`` line to the log of ``module``.

    Scripts run with ``SAFEMODULE`` and ``HAKIT_ROOT`` set; the CLI passes them here (``-m`` may
    override the module). The line is written straight into the module database: it works whether
    or not the engine is running (``prestart``, ``poststop``) and needs no round trip through it.
    """
    if not module:
        raise UserConfigError(
            "printi/printe needs a module: run it from a module script ($SAFEMODULE is set there) "
            "or name the module with -m"
        )
    lvl = Level.parse(level)
    if lvl not in (Level.INFO, Level.EVENT):
        raise UserConfigError(f"scripts print at level I (printi) or E (printe), not {lvl.value}")
    state = paths.module_state(module)
    if not paths.module_source(module).is_dir() and not state.is_dir():
        raise NotFoundError(
            f"module {module} is not installed on this node (no {paths.module_source(module)}); "
            "check $SAFEMODULE / -m and HAKIT_ROOT"
        )
    with SqliteModuleLog(module_log_path(paths, module), module) as log:
        return log.append(USER_COMPONENT, lvl, text)
