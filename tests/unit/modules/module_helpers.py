"""Helpers of the module tests: zip builders, filled-in templates, tree snapshots."""

from __future__ import annotations

import io
import stat
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MIRROR_FILLED = {
    'addr=""': 'addr="192.168.56.99"',
    'dir=""': 'dir="/srv/app/data"',
}
FARM_FILLED = {
    'addr=""': 'addr="192.168.56.100"',
    'port=""': 'port="80"',
}

CLUSTER_XML = """<cluster>
  <lans>
    <lan name="default">
      <node name="node1" addr="192.168.56.11"/>
      <node name="node2" addr="192.168.56.12"/>
    </lan>
  </lans>
</cluster>
"""


@dataclass(frozen=True)
class Entry:
    """One entry of a hand-made zip: name, content, Unix mode (None = no Unix mode recorded)."""

    name: str
    data: bytes = b""
    mode: int | None = stat.S_IFREG | 0o644
    flag_bits: int = 0


def make_zip(entries: Iterable[Entry]) -> bytes:
    """A zip archive holding exactly ``entries`` (no check of any kind)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=(2020, 1, 1, 0, 0, 0))
            if entry.mode is None:
                info.create_system = 0
                info.external_attr = 0x10 if entry.name.endswith("/") else 0
            else:
                info.create_system = 3
                info.external_attr = entry.mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # duplicate names are wanted by some tests
                zf.writestr(info, entry.data)
            if entry.flag_bits:
                info.flag_bits |= entry.flag_bits
    return buffer.getvalue()


USERCONFIG = b'<!DOCTYPE safe>\n<safe><service mode="light"/></safe>\n'


def minimal_module(*extra: Entry) -> bytes:
    """A small valid archive: conf/userconfig.xml and one script."""
    return make_zip(
        [
            Entry("conf/userconfig.xml", USERCONFIG),
            Entry("bin/start_both", b"#!/bin/sh\necho start\n", stat.S_IFREG | 0o755),
            *extra,
        ]
    )


def fill(text: str, values: dict[str, str]) -> str:
    """``text`` with each placeholder replaced (each must be present exactly once)."""
    for old, new in values.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def tree_snapshot(root: Path) -> dict[str, tuple[str, object]]:
    """Every entry under ``root`` (not following links): kind, mode/target and bytes."""
    snap: dict[str, tuple[str, object]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            snap[rel] = ("link", str(path.readlink()))
        elif stat.S_ISDIR(st.st_mode):
            snap[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            snap[rel] = ("file", (stat.S_IMODE(st.st_mode), path.read_bytes()))
    return snap
