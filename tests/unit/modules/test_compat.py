"""Archives shaped like real SafeKit 8.2 modules (real userconfig.xml files of ../shared/compat)."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from module_helpers import Entry, make_zip

from hakit.modules import install, list_modules
from hakit.paths import NodePaths

COMPAT = Path(__file__).resolve().parents[4] / "shared" / "compat"
LINUX_MODULES = sorted(COMPAT.glob("linux__*_userconfig.xml")) if COMPAT.is_dir() else []


@pytest.mark.skipif(not LINUX_MODULES, reason=f"SafeKit compatibility corpus absent ({COMPAT})")
@pytest.mark.parametrize("conf", LINUX_MODULES, ids=lambda p: p.name.split("__")[1])
def test_safekit_shaped_archive_installs_with_its_extras(paths: NodePaths, conf: Path) -> None:
    template = conf.with_name(conf.name + ".template")
    entries = [
        Entry("conf/", b"", None),
        Entry("conf/userconfig.xml", conf.read_bytes(), None),
        Entry("bin/", b"", None),
        # Written on Windows: no Unix mode at all; scripts must still become executable.
        Entry("bin/start_prim", b"#!/bin/bash\nexit 0\n", None),
        Entry("bin/module_scripts_utils", b"f() { :; }\n", None),
        Entry("web/", b"", None),
        Entry("web/index.html", b"<html/>", None),
    ]
    if template.exists():
        entries.append(Entry("conf/userconfig.xml.template", template.read_bytes(), None))
    result = install(paths, "am", io.BytesIO(make_zip(entries)))
    source = result.source_dir
    assert (source / "conf/userconfig.xml").read_bytes() == conf.read_bytes()
    assert (source / "conf/userconfig.xml.template").exists() == template.exists()
    for script in ("start_prim", "module_scripts_utils"):
        assert stat.S_IMODE((source / "bin" / script).stat().st_mode) == 0o755
    assert [w for w in result.warnings if "web/ is obsolete" in w]
    [row] = list_modules(paths)
    assert row.mode in ("mirror", "farm", "light")
