"""``hakit config -m NAME``: validation, then an atomic switch of the active copy."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from module_helpers import CLUSTER_XML, MIRROR_FILLED, fill, tree_snapshot

from hakit.config.report import ConfigInvalid
from hakit.errors import LocalSystemError, NotFoundError
from hakit.modules import activate as activate_mod
from hakit.modules import configure, install, lastconfig_dir, list_modules, template_archive
from hakit.modules.archive import tree_signature
from hakit.paths import NodePaths

T0 = dt.datetime(2026, 11, 22, 3, 0, 0, tzinfo=dt.UTC)


def _conf(paths: NodePaths, name: str) -> Path:
    return paths.module_source(name) / "conf" / "userconfig.xml"


def _mirror(
    paths: NodePaths, name: str = "pg", *, filled: bool = True, cluster: bool = True
) -> None:
    install(paths, name, io.BytesIO(template_archive("mirror")))
    if filled:
        _conf(paths, name).write_text(fill(_conf(paths, name).read_text(), MIRROR_FILLED))
    if cluster:
        paths.cluster_xml.parent.mkdir(parents=True, exist_ok=True)
        paths.cluster_xml.write_text(CLUSTER_XML)


def _set_services(paths: NodePaths, name: str, value: str) -> None:
    conf = _conf(paths, name)
    text = conf.read_text()
    start = text.index('<var name="SERVICES" value="')
    end = text.index('"/>', start)
    conf.write_text(text[:start] + f'<var name="SERVICES" value="{value}' + text[end:])


def _state(paths: NodePaths) -> dict[str, Any]:
    """Everything configure may touch: the active directory and the saved configurations."""
    return {
        "active": tree_snapshot(paths.active),
        "lastconfig": tree_snapshot(lastconfig_dir(paths))
        if lastconfig_dir(paths).exists()
        else {},
    }


def test_good_config_activates_a_versioned_copy(paths: NodePaths) -> None:
    _mirror(paths)
    result = configure(paths, "pg", now=T0)
    link = paths.module_active("pg")
    assert link.is_symlink()
    target = os.readlink(link)
    assert target.startswith(".pg.") and "/" not in target
    assert result.version_dir == paths.active / target
    assert (link / "conf/userconfig.xml").read_bytes() == _conf(paths, "pg").read_bytes()
    for script in ("prestart", "poststop", "start_prim", "stop_prim"):
        assert stat.S_IMODE((link / "bin" / script).stat().st_mode) == 0o755
    meta = json.loads((link / "module.json").read_text())
    assert meta["id"] == 1 and meta["mode"] == "mirror" and meta["name"] == "pg"
    assert meta["ports"] == {"heartbeat_udp": 8888, "replication_tcp": 5600, "farm_udp": 4803}
    assert meta["signature"] == tree_signature(paths.module_source("pg")) == result.signature
    assert meta["configured_at"] == "2026-11-22T03:00:00+00:00"
    assert result.report.ok and result.report.warnings == []
    assert result.lastconfig_file == lastconfig_dir(paths) / "pg_20261122_030000.safe"
    assert result.lastconfig_file.is_file()
    [row] = list_modules(paths)
    assert row.configured and row.mode == "mirror" and not row.modified
    _set_services(paths, "pg", "nginx")
    [row] = list_modules(paths)
    assert row.modified and row.to_dict()["modified_since_config"] is True


def test_bad_config_leaves_the_previous_active_copy_byte_identical(paths: NodePaths) -> None:
    _mirror(paths)
    configure(paths, "pg", now=T0)
    before = _state(paths)
    conf = _conf(paths, "pg")
    conf.write_text(conf.read_text().replace('addr="192.168.56.99"', 'addr=""'))
    with pytest.raises(ConfigInvalid) as err:
        configure(paths, "pg", now=T0 + dt.timedelta(hours=1))
    codes = [i.code for i in err.value.report.errors]
    assert codes == ["template-placeholder"]
    assert err.value.report.errors[0].attribute == "addr"
    assert _state(paths) == before


def test_unfilled_template_is_refused_with_placeholder_errors(paths: NodePaths) -> None:
    _mirror(paths, filled=False)
    with pytest.raises(ConfigInvalid) as err:
        configure(paths, "pg", now=T0)
    assert {(i.code, i.attribute) for i in err.value.report.errors} == {
        ("template-placeholder", "addr"),
        ("template-placeholder", "dir"),
    }
    assert not paths.module_active("pg").exists()
    assert [p.name for p in paths.active.iterdir()] == []


def test_lan_names_are_checked_against_the_installed_cluster(paths: NodePaths) -> None:
    _mirror(paths)
    conf = _conf(paths, "pg")
    conf.write_text(
        conf.read_text().replace('<heartbeat name="default"/>', '<heartbeat name="repli"/>')
    )
    with pytest.raises(ConfigInvalid) as err:
        configure(paths, "pg", now=T0)
    assert any("repli" in str(i) for i in err.value.report.errors)


def test_without_cluster_xml_a_warning_says_names_were_not_checked(paths: NodePaths) -> None:
    _mirror(paths, cluster=False)
    result = configure(paths, "pg", now=T0)
    assert [i.code for i in result.report.warnings] == ["no-cluster"]


def test_reconfigure_replaces_the_version_and_removes_the_old_one(paths: NodePaths) -> None:
    _mirror(paths)
    first = configure(paths, "pg", now=T0)
    _set_services(paths, "pg", "postgresql")
    second = configure(paths, "pg", now=T0 + dt.timedelta(seconds=1))
    assert first.version_dir != second.version_dir
    assert not first.version_dir.exists()
    assert sorted(p.name for p in paths.active.iterdir()) == sorted(["pg", second.version_dir.name])
    assert 'value="postgresql"' in (paths.module_active("pg") / "conf/userconfig.xml").read_text()


def test_last_three_configurations_are_kept(paths: NodePaths) -> None:
    _mirror(paths)
    for minute in range(5):
        configure(paths, "pg", now=T0 + dt.timedelta(minutes=minute))
    kept = sorted(p.name for p in lastconfig_dir(paths).iterdir())
    assert kept == [f"pg_20261122_03{m:02d}00.safe" for m in (2, 3, 4)]


def test_unknown_module_and_running_module_are_refused(paths: NodePaths) -> None:
    with pytest.raises(NotFoundError, match="module 'nope' is not installed"):
        configure(paths, "nope")
    _mirror(paths)
    configure(paths, "pg", now=T0)
    (paths.module_active("pg") / "RUNNING").write_text("")
    before = _state(paths)
    _set_services(paths, "pg", "x")
    with pytest.raises(LocalSystemError, match=r"module 'pg' is running.*stop it"):
        configure(paths, "pg", now=T0)
    assert _state(paths) == before


def test_a_real_directory_at_the_active_path_is_not_replaced(paths: NodePaths) -> None:
    _mirror(paths)
    paths.module_active("pg").mkdir(parents=True)
    (paths.module_active("pg") / "keep").write_text("mine")
    with pytest.raises(LocalSystemError, match="not a symbolic link"):
        configure(paths, "pg", now=T0)
    assert (paths.module_active("pg") / "keep").read_text() == "mine"


@pytest.mark.parametrize("step", ["fsync_tree", "swap_link"])
def test_an_error_at_any_step_changes_nothing(
    paths: NodePaths, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    _mirror(paths)
    configure(paths, "pg", now=T0)
    _set_services(paths, "pg", "changed")
    before = _state(paths)

    def boom(*_: object) -> None:
        raise OSError(28, "No space left on device")

    target = activate_mod._fs if step == "fsync_tree" else activate_mod
    monkeypatch.setattr(target, step, boom)
    with pytest.raises(OSError, match="No space left"):
        configure(paths, "pg", now=T0 + dt.timedelta(hours=1))
    assert _state(paths) == before


def _crash_in(name: str, when: Callable[..., bool] = lambda *a: True) -> Callable[[], None]:
    """Make the next matching call of ``name`` (dotted attribute path) kill the process."""

    def install_crash() -> None:
        owner_path, _, attr = name.rpartition(".")
        owner: Any = {"activate": activate_mod, "fs": activate_mod._fs, "os": os}[owner_path]
        real = getattr(owner, attr)

        def crash(*args: object, **kw: object) -> object:
            if when(*args):
                os._exit(17)  # like kill -9: no cleanup, no finally
            return real(*args, **kw)

        setattr(owner, attr, crash)

    return install_crash


CRASH_POINTS = {
    # crash point: (how to crash, which configuration must be active afterwards)
    "building the version": (_crash_in("activate.write_module_json"), "old"),
    "writing lastconfig": (_crash_in("activate._write_durably"), "old"),
    "before the rename": (_crash_in("os.replace"), "old"),
    "after the rename": (_crash_in("fs.remove_tree", lambda p, *a: ".pg." in str(p)), "new"),
    "publishing lastconfig": (_crash_in("activate.archive_name"), "new"),
}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_a_crash_leaves_the_old_or_the_new_configuration_never_half(
    paths: NodePaths, point: str
) -> None:
    _mirror(paths)
    configure(paths, "pg", now=T0)
    old = tree_snapshot(paths.module_active("pg").resolve())
    _set_services(paths, "pg", "after-crash")
    new_conf = _conf(paths, "pg").read_bytes()
    crash, expected = CRASH_POINTS[point]

    pid = os.fork()
    if pid == 0:  # the child: configure and die at the chosen point
        try:
            crash()
            configure(paths, "pg", now=T0 + dt.timedelta(hours=1))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 17, "the crash point was not reached"

    active = paths.module_active("pg").resolve()
    if expected == "old":
        assert tree_snapshot(active) == old
    else:
        assert (active / "conf/userconfig.xml").read_bytes() == new_conf
        meta = json.loads((active / "module.json").read_text())
        assert meta["signature"] == tree_signature(paths.module_source("pg"))
        assert {p.name for p in (active / "bin").iterdir()} >= {"start_prim", "stop_prim"}

    # The next configuration tidies up whatever the crash left behind.
    result = configure(paths, "pg", now=T0 + dt.timedelta(hours=2))
    assert sorted(p.name for p in paths.active.iterdir()) == sorted(["pg", result.version_dir.name])
    assert [p for p in lastconfig_dir(paths).iterdir() if p.name.startswith(".")] == []
