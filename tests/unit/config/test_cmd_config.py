"""``hakit confcheck``: output and exit codes."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from click.testing import CliRunner

from hakit.cli.main import cli

from .helpers import mirror

CLUSTER = (
    "<cluster><lans><lan name='default'><node name='node1' addr='10.0.0.1'/>"
    "<node name='node2' addr='10.0.0.2'/></lan></lans></cluster>"
)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["confcheck", *args])
    return result.exit_code, result.output


def test_valid_file_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "userconfig.xml"
    path.write_text(mirror())
    code, output = run(str(path))
    assert code == 0
    assert output.strip() == f"{path}: OK"


def test_errors_exit_2_and_are_all_printed(tmp_path: Path) -> None:
    path = tmp_path / "userconfig.xml"
    path.write_text(mirror(service='boot="x" maxloop="y"'))
    code, output = run(str(path))
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 3
    assert all(": error: " in line for line in lines[:2])
    assert lines[-1] == f"{path}: 2 errors, 0 warnings"


def test_warnings_alone_exit_0(tmp_path: Path) -> None:
    path = tmp_path / "userconfig.xml"
    path.write_text(mirror(rfs='<rfs mountover="off"><replicated dir="/d"/></rfs>'))
    code, output = run(str(path))
    assert code == 0
    assert ": warning: " in output


def test_cluster_option_enables_the_cross_checks(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.xml"
    cluster.write_text(CLUSTER)
    path = tmp_path / "userconfig.xml"
    path.write_text(mirror(heart='<heart><heartbeat name="private"/></heart>'))
    assert run(str(path))[0] == 0
    code, output = run(str(path), "--cluster", str(cluster))
    assert code == 2
    assert "no lan 'private' in cluster.xml" in output


def test_a_cluster_file_is_recognised(tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.xml"
    cluster.write_text("<!-- c -->\n" + CLUSTER.replace("10.0.0.2", "10.0.0.1"))
    code, output = run(str(cluster))
    assert code == 2
    assert "already used by node 'node1'" in output


def test_json_output(tmp_path: Path) -> None:
    path = tmp_path / "userconfig.xml"
    path.write_text("<safe><service mode='mirror'>")
    code, output = run(str(path), "--json")
    assert code == 2
    data = json.loads(output)
    assert data["ok"] is False and data["errors"] == 1
    assert data["issues"][0]["code"] == "xml-syntax"


def test_module_directory_and_safe_archive(tmp_path: Path) -> None:
    module = tmp_path / "mod"
    (module / "conf").mkdir(parents=True)
    (module / "conf" / "userconfig.xml").write_text(mirror())
    assert run(str(module))[0] == 0
    archive = tmp_path / "mod.safe"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("conf/userconfig.xml", mirror(service='boot="x"'))
    code, output = run(str(archive))
    assert code == 2
    assert "mod.safe!conf/userconfig.xml:" in output
    empty = tmp_path / "empty.safe"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("bin/start_prim", "")
    code, output = run(str(empty))
    assert code == 2 and "has no conf/userconfig.xml" in output


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    code, _ = run(str(tmp_path / "nope.xml"))
    assert code == 2
