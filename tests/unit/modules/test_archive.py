"""Reading .safe archives defensively, writing them deterministically."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from module_helpers import USERCONFIG, Entry, make_zip, minimal_module

from hakit.errors import NotFoundError
from hakit.modules.archive import (
    ArchiveError,
    extract_safe,
    inspect_safe,
    tree_signature,
    write_safe,
)


def _extract(data: bytes, dest: Path, **kw: int) -> list[str]:
    dest.mkdir(exist_ok=True)
    return extract_safe(io.BytesIO(data), dest, label="test.safe", **kw).warnings


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../evil", "'..'"),
        ("conf/../../evil", "'..'"),
        ("bin/../../../etc/cron.d/x", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:/Windows/x", "absolute"),
        ("bin\\start_prim", "'\\\\'"),
        ("bin/./x", "'.'"),
        ("bin//x", "empty"),
        ("etc/shadow", "outside the module layout"),
        ("README", "outside the module layout"),
        ("conf", "outside the module layout"),
        ("bin/a\nb", "control character"),
    ],
)
def test_hostile_names_are_refused_and_nothing_is_written(
    tmp_path: Path, name: str, why: str
) -> None:
    data = minimal_module(Entry(name, b"x"))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError) as err:
        _extract(data, dest)
    message = str(err.value)
    assert "test.safe" in message
    assert why.strip("'").replace("\\\\", "\\") in message
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    data = minimal_module(Entry("bin/link", b"/etc/passwd", stat.S_IFLNK | 0o777))
    with pytest.raises(ArchiveError, match=r"'bin/link' is a symbolic link"):
        _extract(data, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("kind", [stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK])
def test_device_fifo_socket_entries_are_refused(tmp_path: Path, kind: int) -> None:
    data = minimal_module(Entry("bin/dev", b"", kind | 0o666))
    with pytest.raises(ArchiveError, match="device, fifo or socket"):
        _extract(data, tmp_path / "out")


def test_missing_userconfig_names_archive_and_entry(tmp_path: Path) -> None:
    data = make_zip([Entry("bin/start_prim", b"#!/bin/sh\n")])
    with pytest.raises(ArchiveError, match=r"test\.safe: missing entry 'conf/userconfig\.xml'"):
        _extract(data, tmp_path / "out")


def test_userconfig_as_directory_is_missing_userconfig(tmp_path: Path) -> None:
    data = make_zip([Entry("conf/userconfig.xml/", b"", stat.S_IFDIR | 0o755)])
    with pytest.raises(ArchiveError, match="missing entry"):
        _extract(data, tmp_path / "out")


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    data = minimal_module(Entry("bin/x", b"1"), Entry("bin/x", b"2"))
    with pytest.raises(ArchiveError, match="appears twice"):
        _extract(data, tmp_path / "out")


def test_file_used_as_directory_is_refused(tmp_path: Path) -> None:
    data = minimal_module(Entry("bin/x", b"1"), Entry("bin/x/y", b"2"))
    with pytest.raises(ArchiveError, match="which is a file"):
        _extract(data, tmp_path / "out")


def test_encrypted_entry_is_refused(tmp_path: Path) -> None:
    data = minimal_module(Entry("bin/secret", b"x", flag_bits=0x1))
    with pytest.raises(ArchiveError, match="encrypted"):
        _extract(data, tmp_path / "out")


def test_zip_bomb_by_declared_size_is_refused_before_writing(tmp_path: Path) -> None:
    # 2 MiB of zeros compresses to a few KiB: the declared size is what counts.
    data = minimal_module(Entry("bin/big", bytes(2 * 1024 * 1024)))
    assert len(data) < 64 * 1024
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError, match="zip bomb"):
        _extract(data, dest, max_total=1024 * 1024)
    assert list(dest.iterdir()) == []


def test_too_many_entries_is_refused(tmp_path: Path) -> None:
    data = minimal_module(*(Entry(f"bin/f{i}", b"") for i in range(20)))
    with pytest.raises(ArchiveError, match="22 entries"):
        _extract(data, tmp_path / "out", max_entries=10)


def _patch_uncompressed_size(data: bytes, name: bytes, size: int) -> bytes:
    """Make the headers of entry ``name`` declare ``size`` bytes (a lying archive)."""
    raw = bytearray(data)
    local = raw.find(b"PK\x03\x04" + bytes(0))
    while local != -1:
        name_len = struct.unpack_from("<H", raw, local + 26)[0]
        if raw[local + 30 : local + 30 + name_len] == name:
            struct.pack_into("<I", raw, local + 22, size)
        local = raw.find(b"PK\x03\x04", local + 4)
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", raw, central + 28)[0]
        if raw[central + 46 : central + 46 + name_len] == name:
            struct.pack_into("<I", raw, central + 24, size)
        central = raw.find(b"PK\x01\x02", central + 4)
    return bytes(raw)


def test_entry_inflating_beyond_its_declared_size_is_refused(tmp_path: Path) -> None:
    data = minimal_module(Entry("bin/liar", bytes(100_000)))
    lying = _patch_uncompressed_size(data, b"bin/liar", 10)
    assert zipfile.ZipFile(io.BytesIO(lying)).getinfo("bin/liar").file_size == 10
    with pytest.raises(ArchiveError, match="bin/liar"):
        _extract(lying, tmp_path / "out")
    liar = tmp_path / "out" / "bin" / "liar"
    assert not liar.exists() or liar.stat().st_size <= 10


def test_not_a_zip_and_missing_file(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.safe"
    bogus.write_text("hello")
    with pytest.raises(ArchiveError, match=r"bogus\.safe: not a readable zip archive"):
        inspect_safe(bogus)
    with pytest.raises(NotFoundError, match=r"nothere\.safe: no such file"):
        inspect_safe(tmp_path / "nothere.safe")


def test_safekit_extras_are_kept_and_web_is_warned(tmp_path: Path) -> None:
    data = minimal_module(
        Entry("conf/userconfig.xml.template", b"<safe/>"),
        Entry("manifest.xml", b"<manifest/>"),
        Entry("web/", b"", stat.S_IFDIR | 0o755),
        Entry("web/index.html", b"<html/>"),
    )
    warnings = _extract(data, tmp_path / "out")
    out = tmp_path / "out"
    assert (out / "conf/userconfig.xml.template").read_bytes() == b"<safe/>"
    assert (out / "manifest.xml").read_bytes() == b"<manifest/>"
    assert (out / "web/index.html").exists()
    assert len(warnings) == 1 and "web/ is obsolete" in warnings[0]


def test_modes_exec_bits_kept_scripts_made_executable_nothing_dangerous(tmp_path: Path) -> None:
    data = make_zip(
        [
            Entry("conf/userconfig.xml", USERCONFIG, stat.S_IFREG | 0o666),
            Entry("conf/helper", b"x", stat.S_IFREG | 0o4775),  # setuid: dropped
            Entry("bin/from_windows", b"echo", None),  # no Unix mode: a script of bin/
            Entry("bin/script_0644", b"#!/bin/bash\n", stat.S_IFREG | 0o644),  # shebang
            Entry("bin/data_0644", b"key=value\n", stat.S_IFREG | 0o644),
            Entry("bin/exec_0700", b"\x7fELF", stat.S_IFREG | 0o700),
        ]
    )
    _extract(data, tmp_path / "out")
    out = tmp_path / "out"

    def mode(rel: str) -> int:
        return stat.S_IMODE((out / rel).stat().st_mode)

    assert mode("conf/userconfig.xml") == 0o644
    assert mode("conf/helper") == 0o755
    assert mode("bin/from_windows") == 0o755
    assert mode("bin/script_0644") == 0o755
    assert mode("bin/data_0644") == 0o644
    assert mode("bin/exec_0700") == 0o755


def _tree(root: Path) -> None:
    (root / "conf").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "conf/userconfig.xml").write_bytes(USERCONFIG)
    (root / "bin/start_prim").write_text("#!/bin/bash\necho hi\n")
    (root / "bin/start_prim").chmod(0o755)
    (root / "bin/notes").write_text("data\n")
    (root / "bin/notes").chmod(0o644)


def test_write_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    _tree(tmp_path / "a")
    (tmp_path / "a/stray.txt").write_text("not part of a module")
    first, second = io.BytesIO(), io.BytesIO()
    skipped = write_safe(tmp_path / "a", first)
    write_safe(tmp_path / "a", second)
    assert first.getvalue() == second.getvalue()
    assert any("stray.txt" in s for s in skipped)
    names = zipfile.ZipFile(io.BytesIO(first.getvalue())).namelist()
    assert names == sorted(names)
    _extract(first.getvalue(), tmp_path / "b")
    assert tree_signature(tmp_path / "a") == tree_signature(tmp_path / "b")
    assert stat.S_IMODE((tmp_path / "b/bin/start_prim").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b/bin/notes").stat().st_mode) == 0o644


def test_signature_sees_content_and_exec_bit_changes(tmp_path: Path) -> None:
    _tree(tmp_path / "a")
    base = tree_signature(tmp_path / "a")
    (tmp_path / "a/bin/notes").chmod(0o755)
    changed_mode = tree_signature(tmp_path / "a")
    (tmp_path / "a/bin/notes").write_text("other\n")
    changed_data = tree_signature(tmp_path / "a")
    assert len({base, changed_mode, changed_data}) == 3


def test_symlinks_in_a_tree_are_not_packaged(tmp_path: Path) -> None:
    _tree(tmp_path / "a")
    (tmp_path / "a/bin/passwd").symlink_to("/etc/passwd")
    out = io.BytesIO()
    skipped = write_safe(tmp_path / "a", out)
    assert any("symbolic link" in s for s in skipped)
    assert "bin/passwd" not in zipfile.ZipFile(io.BytesIO(out.getvalue())).namelist()
