"""The ``hakit module ...`` and ``hakit config -m`` commands, end to end on a node root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from module_helpers import CLUSTER_XML, MIRROR_FILLED, fill

from hakit.paths import NodePaths


def hakit(
    paths: NodePaths, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ``hakit`` entry point (exit codes included) against ``paths``."""
    return subprocess.run(
        [sys.executable, "-c", "from hakit.cli.main import main; main()", *args],
        env={"HAKIT_ROOT": str(paths.root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_module_life_cycle_through_the_cli(paths: NodePaths, tmp_path: Path) -> None:
    r = hakit(paths, "module", "template", "mirror", str(tmp_path / "mirror.safe"))
    assert r.returncode == 0, r.stderr
    assert "wrote the generic mirror module" in r.stdout

    r = hakit(paths, "module", "install", "-m", "pg", str(tmp_path / "mirror.safe"))
    assert r.returncode == 0, r.stderr
    assert "installed module pg (id 1)" in r.stdout and "hakit config -m pg" in r.stdout

    r = hakit(paths, "module", "install", "-m", "web", "--template", "farm", "-M", "5")
    assert r.returncode == 0, r.stderr
    assert "installed module web (id 5) from template farm" in r.stdout

    # The template as delivered is refused: placeholders listed, exit 2, nothing activated.
    r = hakit(paths, "config", "-m", "pg")
    assert r.returncode == 2
    assert "template-placeholder" not in r.stderr  # the message, not the code, is shown
    assert "this file is a template; fill in addr" in r.stderr
    assert "nothing was changed" in r.stderr
    assert not paths.module_active("pg").exists()

    conf = paths.module_source("pg") / "conf" / "userconfig.xml"
    conf.write_text(fill(conf.read_text(), MIRROR_FILLED))
    paths.cluster_xml.write_text(CLUSTER_XML)
    r = hakit(paths, "config", "-m", "pg")
    assert r.returncode == 0, r.stderr
    assert "configured module pg (id 1, mirror), active copy at" in r.stdout
    assert "heartbeat UDP 8888, replication TCP 5600" in r.stdout

    r = hakit(paths, "module", "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["pg"]["configured"] and rows["pg"]["id"] == 1 and rows["pg"]["mode"] == "mirror"
    assert not rows["web"]["configured"] and rows["web"]["mode"] == "farm"

    r = hakit(paths, "module", "list")
    assert "pg" in r.stdout and "not configured" in r.stdout

    r = hakit(paths, "module", "getports", "-m", "web", "--json")
    assert json.loads(r.stdout)["farm_udp"] == 4803 + 4 * 3

    r = hakit(paths, "module", "getports", "-i", "2")
    assert "replication TCP 5604" in r.stdout

    r = hakit(paths, "module", "package", "-m", "pg", "pg.safe", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pg.safe").is_file()

    r = hakit(paths, "module", "uninstall", "-m", "pg")
    assert r.returncode == 0, r.stderr
    assert "uninstalled module pg (id 1 is free again); saved as" in r.stdout
    assert not paths.module_active("pg").exists()


def test_cli_errors_have_their_exit_codes(paths: NodePaths, tmp_path: Path) -> None:
    r = hakit(paths, "module", "install", "-m", "bad/name", "--template", "mirror")
    assert r.returncode == 2 and "invalid module name" in r.stderr
    r = hakit(paths, "module", "install", "-m", "x")
    assert r.returncode == 2 and "either a .safe file or --template" in r.stderr
    r = hakit(paths, "module", "install", "-m", "x", str(tmp_path / "missing.safe"))
    assert r.returncode == 3 and "no such file" in r.stderr
    r = hakit(paths, "module", "uninstall", "-m", "x")
    assert r.returncode == 3 and "not installed" in r.stderr
    r = hakit(paths, "config", "-m", "x")
    assert r.returncode == 3
    r = hakit(paths, "module", "getports", "-m", "x")
    assert r.returncode == 3
    r = hakit(paths, "module", "list")
    assert r.returncode == 0 and "no module installed" in r.stdout
