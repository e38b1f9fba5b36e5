"""Atomic file installation and the incarnation counter."""

from __future__ import annotations

import stat
from pathlib import Path

from hakit.daemon.files import write_atomically
from hakit.daemon.incarnation import next_incarnation


def test_write_atomically_sets_mode_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "cluster.key"
    write_atomically(path, b"old", mode=0o600)
    write_atomically(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["cluster.key"]  # no temporary left


def test_incarnation_follows_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "incarnation"
    assert next_incarnation(path, 1_000) == 1_000
    assert next_incarnation(path, 5_000) == 5_000
    assert path.read_text().strip() == "5000"


def test_incarnation_increases_when_the_clock_went_back(tmp_path: Path) -> None:
    path = tmp_path / "incarnation"
    next_incarnation(path, 5_000)
    assert next_incarnation(path, 10) == 5_001  # clock stepped back: the counter still wins
    assert next_incarnation(path, 10) == 5_002


def test_unreadable_or_unwritable_counter_falls_back_to_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "incarnation"
    path.write_text("garbage")
    assert next_incarnation(path, 42) == 42
    blocked = tmp_path / "file" / "incarnation"
    (tmp_path / "file").write_text("not a directory")
    assert next_incarnation(blocked, 77) == 77
