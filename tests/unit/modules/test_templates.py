"""The built-in mirror and farm templates: archive, configuration, scripts."""

from __future__ import annotations

import io
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from module_helpers import CLUSTER_XML, FARM_FILLED, MIRROR_FILLED, fill

from hakit.config.cluster import parse_cluster
from hakit.config.userconfig import parse_userconfig
from hakit.errors import NotFoundError
from hakit.modules import inspect_safe, template_archive, write_template
from hakit.modules.archive import extract_safe

SCRIPTS = {
    "mirror": ("prestart", "poststop", "start_prim", "stop_prim"),
    "farm": ("prestart", "poststop", "start_both", "stop_both"),
}
FILLED = {"mirror": MIRROR_FILLED, "farm": FARM_FILLED}


def _userconfig(kind: str) -> str:
    with zipfile.ZipFile(io.BytesIO(template_archive(kind))) as zf:
        return zf.read("conf/userconfig.xml").decode()


@pytest.mark.parametrize("kind", SCRIPTS)
def test_template_archive_is_a_valid_module(kind: str, tmp_path: Path) -> None:
    listing = inspect_safe(io.BytesIO(template_archive(kind)), label=kind)
    files = {m.path: m.mode for m in listing.members if not m.is_dir}
    assert files == {
        "conf/userconfig.xml": 0o644,
        **{f"bin/{script}": 0o755 for script in SCRIPTS[kind]},
    }
    assert listing.warnings == []
    out = write_template(kind, tmp_path / f"{kind}.safe")
    assert out.read_bytes() == template_archive(kind)


def test_unknown_template() -> None:
    with pytest.raises(NotFoundError, match="choose one of: mirror, farm"):
        template_archive("light")


@pytest.mark.parametrize("kind", SCRIPTS)
def test_filled_template_configuration_has_no_issue(kind: str) -> None:
    cluster, cluster_report = parse_cluster(CLUSTER_XML, "cluster.xml")
    assert cluster_report.ok
    config, report = parse_userconfig(
        fill(_userconfig(kind), FILLED[kind]), "userconfig.xml", cluster=cluster
    )
    assert list(report) == []
    assert config is not None and config.mode.value == kind


@pytest.mark.parametrize("kind", SCRIPTS)
def test_empty_vip_is_reported_as_a_template_placeholder(kind: str) -> None:
    values = {k: v for k, v in FILLED[kind].items() if k != 'addr=""'}
    _, report = parse_userconfig(fill(_userconfig(kind), values), "userconfig.xml")
    [error] = report.errors
    assert error.code == "template-placeholder"
    assert error.attribute == "addr" and error.element.endswith("virtual_addr")


# ------------------------------------------------------------------------------------- scripts

FAKE_SYSTEMCTL = """#!/bin/bash
# Test double of systemctl: logs each call; FAKE_ACTIVE/FAKE_ENABLED/FAKE_FAIL list unit names.
echo "systemctl $*" >>"$FAKE_LOG"
in_list() { [[ " ${!1:-} " == *" $2 "* ]]; }
case $1 in
    start) in_list FAKE_FAIL "$2" && exit 1; exit 0 ;;
    stop|kill) exit 0 ;;
    is-active) in_list FAKE_ACTIVE "${@: -1}" ;;
    is-enabled) in_list FAKE_ENABLED "${@: -1}" ;;
esac
"""
FAKE_HAKIT = """#!/bin/bash
echo "hakit $*" >>"$FAKE_LOG"
"""


@pytest.fixture
def bindir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """The template's scripts unpacked, as the engine would run them (kind from the test id)."""
    kind = request.node.callspec.params["kind"]
    module = tmp_path / "module"
    module.mkdir()
    extract_safe(io.BytesIO(template_archive(kind)), module)
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, text in (("systemctl", FAKE_SYSTEMCTL), ("hakit", FAKE_HAKIT)):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    return module / "bin"


def _run(bindir: Path, script: str, *args: str, **env: str) -> tuple[int, str, list[str]]:
    fakes = bindir.parent.parent / "fakes"
    log = bindir.parent.parent / "calls.log"
    log.unlink(missing_ok=True)
    full_env = {
        "PATH": f"{fakes}:/usr/bin:/bin",
        "SAFEMODULE": "app",
        "SAFEUSERBIN": str(bindir),
        "FAKE_LOG": str(log),
        **env,
    }
    proc = subprocess.run(
        [str(bindir / script), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, proc.stdout + proc.stderr, calls


def _names(kind: str) -> tuple[str, str]:
    return ("start_prim", "stop_prim") if kind == "mirror" else ("start_both", "stop_both")


@pytest.mark.parametrize("kind", SCRIPTS)
def test_scripts_are_valid_bash(kind: str, bindir: Path) -> None:
    for script in SCRIPTS[kind]:
        subprocess.run(["bash", "-n", str(bindir / script)], check=True, timeout=30)
        assert os.access(bindir / script, os.X_OK)


@pytest.mark.parametrize("kind", SCRIPTS)
def test_start_starts_services_in_order(kind: str, bindir: Path) -> None:
    start, _ = _names(kind)
    code, out, calls = _run(
        bindir, start, "WAIT", "ALONE", "start", SERVICES="a, b c", FAKE_ACTIVE="a b c"
    )
    assert code == 0, out
    assert calls == [
        "systemctl start a",
        "systemctl is-active --quiet a",
        "systemctl start b",
        "systemctl is-active --quiet b",
        "systemctl start c",
        "systemctl is-active --quiet c",
    ]
    assert "WAIT -> ALONE (start)" in out


@pytest.mark.parametrize("kind", SCRIPTS)
def test_start_failure_asks_hakit_to_stop_the_module(kind: str, bindir: Path) -> None:
    start, _ = _names(kind)
    code, out, calls = _run(
        bindir, start, "WAIT", "ALONE", "start", SERVICES="a b c", FAKE_ACTIVE="a", FAKE_FAIL="b"
    )
    assert code == 1
    assert calls[-1] == f"hakit stop -m app -i {start}"
    assert "systemctl start c" not in calls
    assert "systemctl start b failed" in out


@pytest.mark.parametrize("kind", SCRIPTS)
def test_start_failure_uses_the_hakit_of_safebin(kind: str, bindir: Path, tmp_path: Path) -> None:
    start, _ = _names(kind)
    safebin = tmp_path / "safebin"
    safebin.mkdir()
    (safebin / "hakit").write_text('#!/bin/bash\necho "safebin-hakit $*" >>"$FAKE_LOG"\n')
    (safebin / "hakit").chmod(0o755)
    _, _, calls = _run(bindir, start, "WAIT", "PRIM", "start", SERVICES="a", SAFEBIN=str(safebin))
    assert calls[-1] == f"safebin-hakit stop -m app -i {start}"  # a is not active: failure


@pytest.mark.parametrize("kind", SCRIPTS)
def test_graceful_stop_stops_services_in_reverse_order(kind: str, bindir: Path) -> None:
    _, stop = _names(kind)
    code, out, calls = _run(bindir, stop, "ALONE", "WAIT", "stop", SERVICES="a,b,c")
    assert code == 0, out
    assert calls == ["systemctl stop c", "systemctl stop b", "systemctl stop a"]
    assert "(graceful)" in out


@pytest.mark.parametrize("kind", SCRIPTS)
def test_force_stop_only_checks_and_kills_what_is_left(kind: str, bindir: Path) -> None:
    _, stop = _names(kind)
    code, out, calls = _run(
        bindir, stop, "force", "ALONE", "STOP", "stop", SERVICES="a b c", FAKE_ACTIVE="b"
    )
    assert code == 0, out
    assert calls == [
        "systemctl is-active --quiet c",
        "systemctl is-active --quiet b",
        "systemctl kill --signal=SIGKILL b",
        "systemctl stop b",
        "systemctl is-active --quiet a",
    ]
    assert "(force): ALONE -> STOP (stop)" in out
    assert "b is still active: killing it" in out


@pytest.mark.parametrize("kind", SCRIPTS)
def test_scripts_with_no_services_do_nothing(kind: str, bindir: Path) -> None:
    start, stop = _names(kind)
    for args in ([start], [stop], [stop, "force"], ["poststop"]):
        code, out, calls = _run(bindir, *args, "WAIT", "STOP", "stop")
        assert (code, calls) == (0, []), out


@pytest.mark.parametrize("kind", SCRIPTS)
def test_prestart_stops_gracefully_then_forcefully_and_warns_on_boot_units(
    kind: str, bindir: Path
) -> None:
    code, out, calls = _run(
        bindir, "prestart", "STOP", "WAIT", "start", SERVICES="a b", FAKE_ENABLED="b"
    )
    assert code == 0, out
    assert calls == [
        "systemctl stop b",
        "systemctl stop a",
        "systemctl is-active --quiet b",
        "systemctl is-active --quiet a",
        "systemctl is-enabled --quiet a",
        "systemctl is-enabled --quiet b",
    ]
    assert "b is enabled at boot" in out
