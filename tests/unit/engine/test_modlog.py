"""Module log: the SQLite log and the in-memory fake honour one contract; format, purge, readers."""

from __future__ import annotations

import itertools
import logging
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import pytest

from hakit.engine.modlog import (
    MAIN_LEVELS,
    Level,
    LogRecord,
    ModuleLog,
    SqliteModuleLog,
    module_log_path,
    print_from_script,
)
from hakit.errors import LocalSystemError, NotFoundError, UserConfigError
from hakit.paths import NodePaths
from hakit.testing.fake_modlog import FakeModuleLog

T0 = 1_628_239_220.909224  # 2021-08-06 08:40:20.909224 UTC


def counting_clock(start: float) -> Callable[[], float]:
    ticks = itertools.count()
    return lambda: start + next(ticks)


@pytest.fixture(params=["sqlite", "fake"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ModuleLog]:
    if request.param == "fake":
        yield FakeModuleLog("mirror", wall=counting_clock(T0))
        return
    with SqliteModuleLog(tmp_path / "module.db", "mirror", wall=counting_clock(T0)) as db:
        yield db


# --- contract shared by both implementations ------------------------------------------------------


def test_append_returns_the_record_and_renders_in_safekit_format(log: ModuleLog) -> None:
    record = log.append("heart", "E", "Local state ALONE Ready", code="state.alone")
    assert record.id == 1 and record.level is Level.EVENT and record.code == "state.alone"
    assert (
        record.render(UTC) == "| 2021-08-06 08:40:20.909224 | heart | E | Local state ALONE Ready"
    )
    assert log.tail(1) == [record]


def test_tail_since_and_iter_with_level_filters(log: ModuleLog) -> None:
    log.append("engine", Level.USER, "Action start called by root")
    log.append("userplug", Level.SCRIPT, "Script prestart")
    log.append("engine", Level.DEBUG, "cycle 1")
    log.append("heart", Level.EVENT, "Local state WAIT NotReady")
    log.append("user", Level.INFO, "printi from a script")
    log.append("heart", Level.CRITICAL, "split brain")

    assert [r.id for r in log.tail(2)] == [5, 6]
    assert [r.message for r in log.tail(3, MAIN_LEVELS)] == [
        "Script prestart",
        "Local state WAIT NotReady",
        "split brain",
    ]
    assert [r.id for r in log.since(3)] == [4, 5, 6]
    assert [r.id for r in log.since(0, limit=2)] == [1, 2]
    assert [r.id for r in log.since(0, [Level.INFO, Level.DEBUG])] == [3, 5]
    assert [r.id for r in log.iter(levels=[Level.EVENT, Level.CRITICAL])] == [4, 6]
    assert [r.id for r in log.iter(after_id=4)] == [5, 6]
    assert log.tail(0) == [] and log.since(6) == [] and log.since(0, levels=[]) == []


def test_levels_and_components_are_checked(log: ModuleLog) -> None:
    with pytest.raises(UserConfigError, match="unknown log level 'W'"):
        log.append("heart", "W", "x")
    for component in ("", "a|b", " heart"):
        with pytest.raises(ValueError, match="component"):
            log.append(component, "E", "x")
    assert log.tail(10) == []
    assert log.append("heart", "e", "lower-case level letters are accepted").level is Level.EVENT


def test_multi_line_messages_render_as_one_line() -> None:
    record = LogRecord(1, 1_628_239_220_000_001, 0.0, "user", Level.INFO, None, "a\nb")
    assert record.render(UTC) == "| 2021-08-06 08:40:20.000001 | user | I | a\\nb"


def test_each_line_is_mirrored_to_the_process_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hakit.module")
    with SqliteModuleLog(tmp_path / "module.db", "mirror") as db:
        db.append("heart", "E", "Local state ALONE Ready")
        db.append("heart", "C", "split brain")
        db.append("engine", "D", "cycle")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("hakit.module", logging.INFO, "mirror | heart | Local state ALONE Ready"),
        ("hakit.module", logging.CRITICAL, "mirror | heart | split brain"),
        ("hakit.module", logging.DEBUG, "mirror | engine | cycle"),
    ]


def test_fake_helpers() -> None:
    fake = FakeModuleLog()
    fake.append("engine", "E", "Local state WAIT NotReady", code="state")
    fake.append("engine", "I", "no action")
    assert fake.codes() == ["state"]
    assert fake.messages([Level.INFO]) == ["no action"]
    assert fake.lines() == [
        "| 2021-08-06 08:40:20.000000 | engine | E | Local state WAIT NotReady",
        "| 2021-08-06 08:40:21.000000 | engine | I | no action",
    ]


# --- SQLite specifics -----------------------------------------------------------------------------


def test_database_location_schema_and_durability_settings(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    path = module_log_path(paths, "mirror")
    assert path == tmp_path / "var/lib/hakit/state/mirror/module.db"
    with SqliteModuleLog.for_module(paths, "mirror") as db:
        db.append("heart", "E", "Local state ALONE Ready", code="state")
        assert db._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db._db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    raw = sqlite3.connect(path)
    try:
        columns = [row[1] for row in raw.execute("PRAGMA table_info(log)")]
        rows = raw.execute("SELECT component, level, code, message FROM log").fetchall()
    finally:
        raw.close()
    assert columns == ["id", "ts_wall", "ts_mono", "component", "level", "code", "message"]
    assert rows == [("heart", "E", "state", "Local state ALONE Ready")]
    # Reopened: the rows are still there and ids continue.
    with SqliteModuleLog.for_module(paths, "mirror") as db:
        assert db.append("heart", "E", "again").id == 2


def test_purge_keeps_the_newest_rows_in_batches(tmp_path: Path) -> None:
    with SqliteModuleLog(
        tmp_path / "module.db", "m", keep_rows=10, purge_batch=5, check_every=1
    ) as db:
        for i in range(1, 16):
            db.append("engine", "D", f"line {i}")
        assert [r.id for r in db.since(0)] == list(range(1, 16))  # 15 = keep + batch: not yet
        db.append("engine", "D", "line 16")
        assert [r.id for r in db.since(0)] == list(range(7, 17))
        assert db.append("engine", "D", "line 17").id == 17  # ids never reused
        assert db.purge() == 1
        assert [r.id for r in db.tail(100)] == list(range(8, 18))
        assert db.last_id() == 17


def test_purge_check_on_open_bounds_one_shot_writers(tmp_path: Path) -> None:
    path = tmp_path / "module.db"
    with SqliteModuleLog(path, "m", keep_rows=1000, check_every=10_000) as db:
        for i in range(30):
            db.append("engine", "D", f"line {i}")
    with SqliteModuleLog(path, "m", keep_rows=10, purge_batch=5) as db:
        assert len(db.tail(100)) == 10


def test_iter_reads_page_by_page(tmp_path: Path) -> None:
    with SqliteModuleLog(tmp_path / "module.db", "m") as db:
        for i in range(2500):
            db.append("engine", "I" if i % 2 else "E", str(i))
        assert [r.message for r in db.iter()] == [str(i) for i in range(2500)]
        assert len(list(db.iter(levels=[Level.INFO]))) == 1250


def test_readonly_reader(tmp_path: Path) -> None:
    path = tmp_path / "mirror" / "module.db"
    with pytest.raises(NotFoundError, match="module mirror: no module log"):
        SqliteModuleLog(path, "mirror", readonly=True)
    with SqliteModuleLog(path, "mirror") as writer:
        writer.append("heart", "E", "Local state ALONE Ready")
        with SqliteModuleLog(path, "mirror", readonly=True) as reader:
            assert [r.message for r in reader.tail(5)] == ["Local state ALONE Ready"]
            writer.append("heart", "E", "Remote state SECOND Ready")
            assert [r.id for r in reader.since(1)] == [2]
            with pytest.raises(LocalSystemError, match="cannot write to the module log"):
                reader.append("heart", "E", "x")
    # A database another part of the engine created without the log table reads as empty.
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    with SqliteModuleLog(other, "other", readonly=True) as reader:
        assert reader.tail(5) == []


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from hakit.engine.modlog import SqliteModuleLog
    path, component, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    with SqliteModuleLog(path, "mirror") as log:
        for i in range(count):
            log.append(component, "I", str(i))
    """
)


def test_concurrent_writers_and_a_polling_reader(tmp_path: Path) -> None:
    path = tmp_path / "module.db"
    SqliteModuleLog(path, "mirror").close()  # created by the engine before anyone reads it
    count = 400
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)])
        for name in ("engine", "user")
    ]
    seen: list[LogRecord] = []
    try:
        with SqliteModuleLog(path, "mirror", readonly=True) as reader:
            # Poll like `hakit log -f` does, while both writers run.
            while len(seen) < 2 * count:
                seen.extend(reader.since(seen[-1].id if seen else 0))
                if any(w.poll() not in (None, 0) for w in writers):
                    break
    finally:
        for writer in writers:
            writer.wait(timeout=60)
    assert [w.returncode for w in writers] == [0, 0]
    assert [r.id for r in seen] == list(range(1, 2 * count + 1))  # no gap, no repeat
    for component in ("engine", "user"):
        assert [r.message for r in seen if r.component == component] == [
            str(i) for i in range(count)
        ]


# --- printi / printe ------------------------------------------------------------------------------


def test_print_from_script_appends_user_lines(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    paths.module_source("mirror").mkdir(parents=True)
    info = print_from_script("mirror", "I", "database started", paths)
    event = print_from_script("mirror", Level.EVENT, "service degraded", paths)
    assert (info.component, info.level) == ("user", Level.INFO)
    assert (event.component, event.level, event.id) == ("user", Level.EVENT, 2)
    with SqliteModuleLog.for_module(paths, "mirror", readonly=True) as log:
        assert [r.message for r in log.tail(5)] == ["database started", "service degraded"]


def test_print_from_script_errors_say_what_to_do(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    for module in (None, ""):
        with pytest.raises(UserConfigError, match=r"\$SAFEMODULE"):
            print_from_script(module, "I", "x", paths)
    with pytest.raises(NotFoundError, match="module ghost is not installed"):
        print_from_script("ghost", "I", "x", paths)
    paths.module_source("mirror").mkdir(parents=True)
    with pytest.raises(UserConfigError, match="not C"):
        print_from_script("mirror", "C", "x", paths)
