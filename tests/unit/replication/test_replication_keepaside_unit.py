"""keep_aside / list_kept_aside on tmp trees: what a kept-aside set holds, and how it fails."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hakit.errors import LocalSystemError
from hakit.paths import NodePaths
from hakit.replication import keepaside
from hakit.replication.journal import Plan
from hakit.replication.keepaside import (
    FILES_DIR,
    MANIFEST_NAME,
    KeptAside,
    divergent_paths,
    keep_aside,
    list_kept_aside,
)
from hakit.replication.locations import divergent_dir, journal_path

NOW = datetime(2026, 11, 22, 6, 15, 2, tzinfo=UTC)
T0 = 1_700_000_000_123_456_789
MIB = 1024 * 1024
ROOT = os.geteuid() == 0


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A replicated directory's backing tree with a bit of everything."""
    root = tmp_path / "data"
    (root / "app" / "db").mkdir(parents=True)
    (root / "app" / "db" / "rows").write_bytes(b"rows\n" * 100)
    (root / "app" / "conf").write_text("port=80\n")
    os.chmod(root / "app" / "conf", 0o640)
    (root / "app" / "db" / "rows2").hardlink_to(root / "app" / "db" / "rows")
    os.symlink("db/rows", root / "app" / "latest")
    os.symlink("/etc/passwd", root / "app" / "outside")
    os.mkfifo(root / "app" / "pipe")
    os.chmod(root / "app" / "pipe", 0o620)
    with open(root / "sparse", "wb") as f:
        f.seek(4 * MIB)
        f.write(b"middle")
        f.truncate(16 * MIB)  # a hole at the end as well
    (root / "top").write_bytes(b"top")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(T0, T0), follow_symlinks=False)
    os.utime(root, ns=(T0, T0))
    return root


@pytest.fixture
def root_fd(tree: Path) -> Iterator[int]:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "state" / "web" / "divergent"


def _keep(root_fd: int, paths: list[bytes] | None, dest: Path, **kw: str) -> KeptAside:
    return keep_aside(
        root_fd,
        paths,
        dest,
        reason=kw.get("reason", "split brain"),
        generation=kw.get("generation", "node2.4.1"),
        since="node1.3.9",
        source="/srv/data",
        now=NOW,
    )


def test_the_whole_tree_is_kept_with_its_metadata(root_fd: int, tree: Path, dest: Path) -> None:
    kept = _keep(root_fd, None, dest)
    assert kept.directory == dest / "20261122T061502Z-node2.4.1"
    assert stat.S_IMODE(kept.directory.stat().st_mode) == 0o700
    copy = kept.directory / FILES_DIR
    assert (copy / "app" / "db" / "rows").read_bytes() == b"rows\n" * 100
    assert (copy / "top").read_bytes() == b"top"
    assert stat.S_IMODE((copy / "app" / "conf").stat().st_mode) == 0o640
    assert os.readlink(copy / "app" / "latest") == "db/rows"
    assert os.readlink(copy / "app" / "outside") == "/etc/passwd"  # a link, never followed
    assert stat.S_ISFIFO((copy / "app" / "pipe").lstat().st_mode)
    assert stat.S_IMODE((copy / "app" / "pipe").lstat().st_mode) == 0o620
    for path in (copy / "app" / "conf", copy / "app" / "latest", copy / "app", copy / "app" / "db"):
        assert path.lstat().st_mtime_ns == T0, path
    assert copy.stat().st_mtime_ns == T0  # the root's own times
    # 8 names (rows, rows2, conf, latest, outside, pipe, sparse, top); bytes: each inode once.
    assert kept.files == 8
    assert kept.bytes == 500 + 8 + 16 * MIB + 3
    assert not list(dest.glob("*.partial"))


def test_hard_links_stay_hard_links_within_the_copy(root_fd: int, dest: Path) -> None:
    copy = _keep(root_fd, None, dest).directory / FILES_DIR / "app" / "db"
    a, b = (copy / "rows").stat(), (copy / "rows2").stat()
    assert (a.st_ino, a.st_nlink) == (b.st_ino, 2)


def test_a_sparse_file_stays_sparse(root_fd: int, tree: Path, dest: Path) -> None:
    copy = _keep(root_fd, [b"sparse"], dest).directory / FILES_DIR / "sparse"
    st = copy.stat()
    assert st.st_size == 16 * MIB
    with open(copy, "rb") as f:
        f.seek(4 * MIB)
        assert f.read(6) == b"middle"
        f.seek(0)
        assert f.read(4096) == bytes(4096)
    source_blocks = (tree / "sparse").stat().st_blocks
    if source_blocks * 512 >= 16 * MIB:
        pytest.skip("this filesystem does not keep holes (the source is not sparse either)")
    assert st.st_blocks * 512 < MIB  # a few blocks of data, not 16 MiB


@pytest.mark.skipif(not ROOT, reason="giving a file to uid 1000 needs root")
def test_owners_are_kept(root_fd: int, tree: Path, dest: Path) -> None:
    os.chown(tree / "app" / "conf", 1000, 1000)
    os.chown(tree / "app" / "latest", 1000, 1001, follow_symlinks=False)
    os.chown(tree / "app", 1000, 1000)
    os.chmod(tree / "app" / "conf", 0o4750)  # chown clears set-uid: it must be set afterwards
    copy = _keep(root_fd, [b"app/conf", b"app/latest"], dest).directory / FILES_DIR
    st = (copy / "app" / "conf").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4750)
    assert (copy / "app" / "latest").lstat().st_gid == 1001
    assert (copy / "app").stat().st_uid == 1000  # a parent directory, recreated as it is


def test_listed_paths_missing_and_nested(root_fd: int, dest: Path) -> None:
    kept = _keep(root_fd, [b"app/db/rows", b"app/db", b"gone", b"app/gone/x", b"top"], dest)
    copy = kept.directory / FILES_DIR
    assert sorted(p.name for p in (copy / "app").iterdir()) == ["db"]
    assert sorted(p.name for p in (copy / "app" / "db").iterdir()) == ["rows", "rows2"]
    assert (copy / "top").exists() and not (copy / "gone").exists()
    manifest = json.loads((kept.directory / MANIFEST_NAME).read_text())
    assert manifest["paths"] == ["app/db", "top"]  # app/db/rows is under app/db: copied once
    assert manifest["skipped"] == ["app/gone/x", "gone"]
    assert (manifest["files"], manifest["bytes"]) == (kept.files, kept.bytes) == (3, 503)
    assert manifest["reason"] == "split brain"
    assert (manifest["generation"], manifest["since"]) == ("node2.4.1", "node1.3.9")
    assert manifest["time"] == "2026-11-22T06:15:02Z"


def test_a_symlinked_directory_in_the_tree_is_not_followed(
    root_fd: int, tree: Path, tmp_path: Path, dest: Path
) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret").write_text("not in the tree")
    os.symlink(tmp_path / "elsewhere", tree / "via")
    kept = _keep(root_fd, [b"via/secret", b"via"], dest)
    copy = kept.directory / FILES_DIR
    assert (copy / "via").is_symlink()
    assert os.readlink(copy / "via") == str(tmp_path / "elsewhere")
    assert json.loads((kept.directory / MANIFEST_NAME).read_text())["paths"] == ["via"]
    # Through a symlinked parent, the path is not in the tree: skipped, nothing copied.
    alone = _keep(root_fd, [b"via/secret"], dest)
    names = [f for _, _, files in os.walk(alone.directory / FILES_DIR) for f in files]
    assert names == [] and alone.files == 0
    assert json.loads((alone.directory / MANIFEST_NAME).read_text())["skipped"] == ["via/secret"]


def test_dotdot_is_refused(root_fd: int, dest: Path) -> None:
    with pytest.raises(LocalSystemError, match=r"'\.\./etc'.*leave the replicated tree"):
        _keep(root_fd, [b"../etc"], dest)


def test_root_path_means_the_whole_tree(root_fd: int, dest: Path) -> None:
    kept = _keep(root_fd, [b"top", b"."], dest)
    assert (kept.directory / FILES_DIR / "sparse").exists()
    assert json.loads((kept.directory / MANIFEST_NAME).read_text())["paths"] == ["."]


def test_non_utf8_names(root_fd: int, tree: Path, dest: Path) -> None:
    (tree / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1")
    kept = _keep(root_fd, [b"caf\xe9"], dest)
    assert (kept.directory / FILES_DIR / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin-1"
    info = list_kept_aside(dest)[0]
    assert info.paths[0].encode("utf-8", "surrogateescape") == b"caf\xe9"


def test_two_sets_in_the_same_second_get_distinct_names(root_fd: int, dest: Path) -> None:
    first = _keep(root_fd, [b"top"], dest)
    second = _keep(root_fd, [b"top"], dest)
    assert second.directory.name == first.directory.name + "-2"


def test_generation_is_made_safe_for_a_name(root_fd: int, dest: Path) -> None:
    assert _keep(root_fd, [b"top"], dest, generation="a/b c").directory.name.endswith("-a_b_c")
    assert _keep(root_fd, [b"top"], dest, generation="").directory.name.endswith("-none")


def test_list_kept_aside(root_fd: int, dest: Path, tmp_path: Path) -> None:
    assert list_kept_aside(tmp_path / "nothing") == []
    older = keep_aside(
        root_fd,
        [b"top"],
        dest,
        reason="diverged",
        generation="node2.1.1",
        now=datetime(2026, 1, 1, tzinfo=UTC),
    )
    newer = _keep(root_fd, [b"app/conf"], dest)
    (dest / "20270101T000000Z-x.partial").mkdir()  # interrupted by a crash: not a set
    (dest / "20270101T000001Z-broken").mkdir()
    (dest / "20270101T000001Z-broken" / MANIFEST_NAME).write_text("{not json")
    sets = list_kept_aside(dest)
    assert [s.directory for s in sets] == [
        older.directory,
        newer.directory,
        dest / "20270101T000001Z-broken",
    ]
    assert (sets[0].reason, sets[0].generation, sets[0].files, sets[0].bytes) == (
        "diverged",
        "node2.1.1",
        1,
        3,
    )
    assert sets[1].source == "/srv/data" and sets[1].paths == ("app/conf",)
    assert sets[2].error is not None and "malformed" in sets[2].error
    body = sets[1].to_json()
    assert body["name"] == newer.directory.name and body["files"] == 1 and "error" not in body


def test_disk_full_names_the_path_and_removes_the_partial_set(
    root_fd: int, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keepaside.os, "copy_file_range", full)
    monkeypatch.setattr(keepaside.os, "pwrite", full)
    with pytest.raises(LocalSystemError) as caught:
        _keep(root_fd, [b"app/conf"], dest)
    message = str(caught.value)
    assert "no space left while writing" in message
    assert "files/app/conf" in message and "/srv/data" in message
    assert list(dest.iterdir()) == []


def test_copy_without_copy_file_range(
    root_fd: int, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(*args: object) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(keepaside.os, "copy_file_range", unsupported)
    kept = _keep(root_fd, [b"app/db/rows", b"sparse"], dest)
    assert (kept.directory / FILES_DIR / "app" / "db" / "rows").read_bytes() == b"rows\n" * 100
    with open(kept.directory / FILES_DIR / "sparse", "rb") as f:
        f.seek(4 * MIB)
        assert f.read(6) == b"middle"


def test_an_unreadable_destination_is_a_clear_error(root_fd: int, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LocalSystemError, match=r"cannot keep aside .* /srv/data in .*file"):
        _keep(root_fd, [b"top"], tmp_path / "file" / "divergent")


def test_locations(tmp_path: Path) -> None:
    paths = NodePaths(tmp_path)
    assert journal_path(paths, "web", 1) == paths.module_state("web") / "rfs1.journal"
    assert divergent_dir(paths, "web") == paths.module_state("web") / "divergent"


def test_extended_attributes_are_kept(root_fd: int, tree: Path, dest: Path) -> None:
    try:
        os.setxattr(tree / "top", "user.origin", b"node2")
        os.setxattr(tree / "app", "user.kind", b"dir")
    except OSError as exc:
        pytest.skip(f"this filesystem refuses user.* extended attributes: {exc}")
    copy = _keep(root_fd, [b"top", b"app/conf"], dest).directory / FILES_DIR
    assert os.getxattr(copy / "top", "user.origin") == b"node2"
    assert os.getxattr(copy / "app", "user.kind") == b"dir"


def test_divergent_paths_are_the_journal_files() -> None:
    plan = Plan(
        listings=[b"", b"app"],
        attrs=[b"", b"app/conf"],
        files={b"app/db/rows": [0, 3], b"top": None, b"": None},
    )
    assert divergent_paths(plan) == [b"app/db/rows", b"top"]


def test_describe_is_the_module_log_line(root_fd: int, dest: Path) -> None:
    kept = _keep(root_fd, [b"top"], dest)
    assert kept.describe() == (
        f"Divergent data kept aside: 1 file (3 bytes) in {kept.directory}; merge what must be "
        "kept into the primary's data, then delete it"
    )


def test_a_really_full_filesystem(root_fd: int, tree: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    (tree / "big").write_bytes(os.urandom(MIB))
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)]
    if not ROOT or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (and mount permission)")
    try:
        with pytest.raises(LocalSystemError, match=r"no space left while writing .*files/big"):
            _keep(root_fd, [b"top", b"big"], small / "divergent")
        assert list((small / "divergent").iterdir()) == []  # the partial set is gone
    finally:
        subprocess.run(["umount", str(small)], check=True)
