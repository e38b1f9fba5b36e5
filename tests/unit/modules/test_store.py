"""install / uninstall / list / package on one node."""

from __future__ import annotations

import datetime as dt
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from module_helpers import Entry, make_zip, minimal_module, tree_snapshot

from hakit.errors import LocalSystemError, NotFoundError, UserConfigError
from hakit.modules import install, list_modules, package, uninstall
from hakit.modules.archive import ArchiveError
from hakit.modules.ids import load_ids
from hakit.paths import NodePaths

NOW = dt.datetime(2026, 11, 22, 3, 4, 5, tzinfo=dt.UTC)


def _install(paths: NodePaths, name: str, data: bytes | None = None, **kw: object) -> int:
    result = install(paths, name, io.BytesIO(data or minimal_module()), **kw)  # type: ignore[arg-type]
    return result.module_id


def _hidden(directory: Path) -> list[str]:
    return (
        [p.name for p in directory.iterdir() if p.name.startswith(".")]
        if directory.is_dir()
        else []
    )


def test_install_writes_the_source_and_assigns_an_id(paths: NodePaths, tmp_path: Path) -> None:
    safe = tmp_path / "pg.safe"
    safe.write_bytes(minimal_module())
    result = install(paths, "pg", safe)
    assert result.module_id == 1 and not result.replaced
    assert result.source_dir == paths.module_source("pg")
    assert (result.source_dir / "conf/userconfig.xml").is_file()
    assert stat.S_IMODE((result.source_dir / "bin/start_both").stat().st_mode) == 0o755
    assert load_ids(paths.module_ids) == {"pg": 1}
    assert not paths.module_active("pg").exists()  # only `hakit config` activates
    assert _hidden(paths.modules) == []


def test_package_then_install_elsewhere_gives_the_same_tree(
    paths: NodePaths, tmp_path: Path
) -> None:
    data = minimal_module(
        Entry("bin/helper.sh", b"f() { :; }\n", stat.S_IFREG | 0o644),
        Entry("conf/extra/", b"", stat.S_IFDIR | 0o755),
        Entry("conf/extra/app.conf", b"k=v\n"),
    )
    _install(paths, "app", data)
    out = tmp_path / "app.safe"
    package(paths, "app", out)
    again = tmp_path / "again.safe"
    package(paths, "app", again)
    assert out.read_bytes() == again.read_bytes()  # deterministic

    other = NodePaths(tmp_path / "other")
    install(other, "app", out)
    assert tree_snapshot(other.module_source("app")) == tree_snapshot(paths.module_source("app"))
    assert stat.S_IMODE((other.module_source("app") / "bin/helper.sh").stat().st_mode) == 0o644
    assert stat.S_IMODE((other.module_source("app") / "bin/start_both").stat().st_mode) == 0o755


def test_package_of_unknown_module_and_bad_output(paths: NodePaths, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="module 'nope' is not installed"):
        package(paths, "nope", tmp_path / "x.safe")
    _install(paths, "a")
    with pytest.raises(UserConfigError, match="outside the module"):
        package(paths, "a", paths.module_source("a") / "conf" / "a.safe")
    with pytest.raises(NotFoundError, match="no such directory"):
        package(paths, "a", tmp_path / "missing" / "a.safe")


def test_install_over_an_existing_module_needs_replace_which_keeps_the_id(
    paths: NodePaths,
) -> None:
    assert _install(paths, "a") == 1
    assert _install(paths, "b") == 2
    with pytest.raises(UserConfigError, match=r"'a' is already installed \(id 1\).*--replace"):
        _install(paths, "a")
    new = minimal_module(Entry("bin/new_script", b"#!/bin/sh\n"))
    result = install(paths, "a", io.BytesIO(new), replace=True)
    assert result.replaced and result.module_id == 1
    assert (paths.module_source("a") / "bin/new_script").exists()
    assert load_ids(paths.module_ids) == {"a": 1, "b": 2}
    with pytest.raises(UserConfigError, match="has id 1 and --replace keeps it"):
        _install(paths, "a", replace=True, module_id=5)
    assert _hidden(paths.modules) == []


def test_id_rules_freed_ids_are_reused_and_m_collides(paths: NodePaths) -> None:
    assert _install(paths, "a") == 1
    assert _install(paths, "b") == 2
    uninstall(paths, "a", now=NOW)
    # The rule: the smallest id not held by an installed module (a's id is free again).
    assert _install(paths, "c") == 1
    assert _install(paths, "d", module_id=7) == 7
    assert _install(paths, "e") == 3
    with pytest.raises(UserConfigError, match="module id 7 is already used by module 'd'"):
        _install(paths, "f", module_id=7)
    assert not paths.module_source("f").exists()
    assert load_ids(paths.module_ids) == {"b": 2, "c": 1, "d": 7, "e": 3}


def test_failed_install_leaves_nothing(paths: NodePaths) -> None:
    hostile = minimal_module(Entry("bin/../../../../tmp/evil", b"x"))
    with pytest.raises(ArchiveError):
        _install(paths, "x", hostile)
    assert not paths.module_source("x").exists()
    assert load_ids(paths.module_ids) == {}
    assert _hidden(paths.modules) == []


def test_failed_replace_keeps_the_old_module_intact(paths: NodePaths) -> None:
    _install(paths, "a")
    before = tree_snapshot(paths.module_source("a"))
    broken = make_zip([Entry("bin/start_both", b"#!/bin/sh\n")])  # no conf/userconfig.xml
    with pytest.raises(ArchiveError, match=r"missing entry 'conf/userconfig\.xml'"):
        _install(paths, "a", broken, replace=True)
    assert tree_snapshot(paths.module_source("a")) == before
    assert load_ids(paths.module_ids) == {"a": 1}
    assert _hidden(paths.modules) == []


def test_invalid_name_is_refused_before_anything(paths: NodePaths) -> None:
    with pytest.raises(UserConfigError, match=r"invalid module name '\.\./x'"):
        _install(paths, "../x")
    assert not paths.root.exists()


def test_uninstall_backs_up_then_removes_and_frees_the_id(paths: NodePaths) -> None:
    _install(paths, "a")
    (paths.module_source("a") / "conf/userconfig.xml").write_text("<safe>edited</safe>")
    result = uninstall(paths, "a", now=NOW)
    assert result.module_id == 1
    assert result.backup_file == paths.backup / "a_20261122_030405.safe"
    with zipfile.ZipFile(result.backup_file) as zf:
        assert zf.read("conf/userconfig.xml") == b"<safe>edited</safe>"
        assert zf.getinfo("bin/start_both").external_attr >> 16 & 0o111
    assert not paths.module_source("a").exists()
    assert load_ids(paths.module_ids) == {}
    # A second uninstall in the same second does not overwrite the first backup.
    _install(paths, "a")
    assert uninstall(paths, "a", now=NOW).backup_file == paths.backup / "a_20261122_030405_2.safe"
    with pytest.raises(NotFoundError, match="module 'a' is not installed"):
        uninstall(paths, "a", now=NOW)


def test_uninstall_refuses_a_running_module(paths: NodePaths) -> None:
    _install(paths, "a")
    state = paths.module_state("a")
    state.mkdir(parents=True)
    (state / "state").write_text("PRIM Ready\n")
    with pytest.raises(LocalSystemError, match=r"module 'a' is running \(its state is PRIM"):
        uninstall(paths, "a", now=NOW)
    assert paths.module_source("a").exists()
    assert not paths.backup.exists() or list(paths.backup.iterdir()) == []
    (state / "state").write_text("STOP NotReady\n")
    uninstall(paths, "a", now=NOW)


def test_running_marker_with_live_pid_blocks_and_stale_pid_does_not(paths: NodePaths) -> None:
    from hakit.modules import running_reason

    active = paths.module_active("a")
    active.mkdir(parents=True)
    (active / "RUNNING").write_text(f"{os.getpid()}\n")
    assert "running engine process" in (running_reason(paths, "a") or "")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)  # reaped: this pid names no process now
    (active / "RUNNING").write_text(f"{pid}\n")
    assert running_reason(paths, "a") is None
    (active / "RUNNING").write_text("")
    assert running_reason(paths, "a") is not None


def test_list_reports_ids_modes_and_problems(paths: NodePaths) -> None:
    assert list_modules(paths) == []
    _install(paths, "b")
    _install(paths, "a")
    rows = list_modules(paths)
    assert [(r.name, r.module_id, r.installed, r.configured) for r in rows] == [
        ("a", 2, True, False),
        ("b", 1, True, False),
    ]
    assert rows[0].source_signature and not rows[0].modified
    assert rows[0].to_dict()["modified_since_config"] is False
    # A source removed behind hakit's back shows as a problem, not as a crash.
    os.rename(paths.module_source("b"), paths.modules / "elsewhere")
    row = next(r for r in list_modules(paths) if r.name == "b")
    assert not row.installed and any("missing" in p for p in row.problems)
