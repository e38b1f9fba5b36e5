"""The secondary's applier on real temporary trees (as root): every message, resync, tolerance."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.replication.applier import WRITE_CACHE_SIZE, Applier, HashesResult
from hakit.replication.hashsync import PUNCH_HOLE, block_digests
from hakit.replication.messages import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Create,
    DirEntry,
    DirListing,
    Fallocate,
    Fsync,
    Hashes,
    Link,
    Message,
    Mkdir,
    Mknod,
    Need,
    RemoveXattr,
    Rename,
    ResyncBegin,
    ResyncEnd,
    Rmdir,
    SetAttr,
    SetXattr,
    Symlink,
    Truncate,
    Unlink,
    Write,
    decode,
    dirlisting_frames,
    encode,
)
from hakit.replication.sink import NewNode
from hakit.replication.wire import Frame, ProtocolError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the applier sets owners: needs root")

T0 = 1_600_000_000_123_456_789  # times with nanoseconds, distinct from "now"
T1 = 1_650_000_000_987_654_321
T2 = 1_700_000_000_000_000_001
OLD = -86_400_000_000_123  # before 1970: times are signed
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


@pytest.fixture(autouse=True)
def hostile_umask() -> Iterator[None]:
    """Modes must be set explicitly, whatever the process umask."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def _open_root(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    backing = tmp_path / "backing"
    backing.mkdir()
    return backing


@pytest.fixture
def applier(root: Path) -> Iterator[Applier]:
    fd = _open_root(root)
    applier = Applier(fd)
    yield applier
    applier.close()
    os.close(fd)


def apply(applier: Applier, *messages: Message) -> ResyncEnd | HashesResult | None:
    """Apply through the wire codec, as the receiver does."""
    result = None
    for msg in messages:
        frame_type, header, payload = encode(msg)
        result = applier.apply(decode(Frame(frame_type, 1, header, payload)))
    return result


def node(path: bytes, mode: int, uid: int = 1000, gid: int = 1000, rdev: int = 0) -> NewNode:
    return NewNode(path, mode, uid, gid, rdev, T0, T1, T2)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


# ---- creation ------------------------------------------------------------------------------------


def test_create_sets_mode_with_setuid_owner_times_and_parent_mtime(
    applier: Applier, root: Path
) -> None:
    os.utime(root, ns=(T0, T0))
    apply(applier, Create(node(b"f", stat.S_IFREG | 0o6750)))
    st = os.lstat(root / "f")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o6750
    assert (st.st_uid, st.st_gid, st.st_size) == (1000, 1000, 0)
    assert (st.st_atime_ns, st.st_mtime_ns) == (T0, T1)
    parent = os.lstat(root)
    assert (parent.st_atime_ns, parent.st_mtime_ns) == (T0, T2)  # the atime is kept
    assert applier.counters["CREATE"] == 1


def test_create_over_an_existing_name_fails_while_in_sync(applier: Applier, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        apply(applier, Create(node(b"f", stat.S_IFREG | 0o644)))
    assert applier.tolerated == 0 and applier.counters["CREATE"] == 0


def test_mknod_every_kind(applier: Applier, root: Path) -> None:
    os.mkdir(root / "d")
    apply(
        applier,
        Mknod(node(b"d/fifo", stat.S_IFIFO | 0o640, 1, 2)),
        Mknod(node(b"d/sock", stat.S_IFSOCK | 0o600)),
        Mknod(node(b"d/null", stat.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3))),
        Mknod(node(b"d/blk", stat.S_IFBLK | 0o660, 0, 6, os.makedev(7, 0))),
        Mknod(node(b"d/reg", stat.S_IFREG | 0o2755)),
    )
    kinds = {
        "fifo": (stat.S_IFIFO, 0o640, 1, 2, 0),
        "sock": (stat.S_IFSOCK, 0o600, 1000, 1000, 0),
        "null": (stat.S_IFCHR, 0o666, 0, 0, os.makedev(1, 3)),
        "blk": (stat.S_IFBLK, 0o660, 0, 6, os.makedev(7, 0)),
        "reg": (stat.S_IFREG, 0o2755, 1000, 1000, 0),
    }
    for name, (kind, mode, uid, gid, rdev) in kinds.items():
        st = os.lstat(root / "d" / name)
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode)) == (kind, mode), name
        assert (st.st_uid, st.st_gid, st.st_rdev) == (uid, gid, rdev), name
        assert (st.st_atime_ns, st.st_mtime_ns) == (T0, T1), name
    assert os.lstat(root / "d").st_mtime_ns == T2
    assert applier.counters["MKNOD"] == 5


def test_mkdir_with_setgid_and_sticky(applier: Applier, root: Path) -> None:
    apply(applier, Mkdir(node(b"d", stat.S_IFDIR | 0o3775, 1000, 100)))
    apply(applier, Mkdir(node(b"d/e", stat.S_IFDIR | 0o500, 0, 0)))
    st = os.lstat(root / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o3775
    assert (st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (1000, 100, T0, T2)
    assert stat.S_IMODE(os.lstat(root / "d" / "e").st_mode) == 0o500


def test_symlink_owner_and_times_are_the_link_s_own(applier: Applier, root: Path) -> None:
    (root / "target").write_bytes(b"t")
    apply(applier, Symlink(node(b"l", stat.S_IFLNK | 0o777), b"target"))
    apply(applier, Symlink(node(b"dangling", stat.S_IFLNK | 0o777), b"/nonexistent/\xff"))
    st = os.lstat(root / "l")
    assert stat.S_ISLNK(st.st_mode)
    assert (st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns) == (1000, 1000, T0, T1)
    assert os.readlink(root / "l") == "target"
    assert os.readlink(os.fsencode(root / "dangling")) == b"/nonexistent/\xff"
    target = os.lstat(root / "target")
    assert (target.st_uid, target.st_mtime_ns) == (0, target.st_mtime_ns)
    assert target.st_mtime_ns != T1


def test_link_unlink_rmdir_and_parent_mtimes(applier: Applier, root: Path) -> None:
    os.mkdir(root / "d")
    (root / "f").write_bytes(b"data")
    os.symlink("f", root / "sl")
    apply(applier, Link(b"f", b"d/g", T1), Link(b"sl", b"d/sl2", T1))
    assert os.lstat(root / "d" / "g").st_ino == os.lstat(root / "f").st_ino
    assert os.lstat(root / "f").st_nlink == 2
    assert os.lstat(root / "d" / "sl2").st_ino == os.lstat(root / "sl").st_ino  # not followed
    assert os.lstat(root / "d").st_mtime_ns == T1
    apply(applier, Unlink(b"d/g", T2))
    assert not (root / "d" / "g").exists() and os.lstat(root / "f").st_nlink == 1
    assert os.lstat(root / "d").st_mtime_ns == T2
    apply(applier, Unlink(b"d/sl2", T2), Rmdir(b"d", OLD))
    assert not (root / "d").exists()
    assert os.lstat(root).st_mtime_ns == OLD


def test_rename_plain_noreplace_and_exchange(applier: Applier, root: Path) -> None:
    os.mkdir(root / "a")
    os.mkdir(root / "b")
    (root / "a" / "x").write_bytes(b"x")
    (root / "b" / "y").write_bytes(b"y")
    (root / "z").write_bytes(b"z")
    apply(applier, Rename(b"a/x", b"b/x", 0, T0, T1))
    assert (root / "b" / "x").read_bytes() == b"x" and not (root / "a" / "x").exists()
    assert (os.lstat(root / "a").st_mtime_ns, os.lstat(root / "b").st_mtime_ns) == (T0, T1)
    with pytest.raises(FileExistsError, match=r"File exists \(RENAME b'z' -> b'b/y'\)"):
        apply(applier, Rename(b"z", b"b/y", RENAME_NOREPLACE, T2, T2))
    assert (root / "b" / "y").read_bytes() == b"y" and (root / "z").read_bytes() == b"z"
    apply(applier, Rename(b"z", b"b/y", RENAME_EXCHANGE, T2, T0))
    assert (root / "b" / "y").read_bytes() == b"z" and (root / "z").read_bytes() == b"y"
    apply(applier, Rename(b"z", b"b/y", 0, T1, T2))  # replaces
    assert (root / "b" / "y").read_bytes() == b"y" and not (root / "z").exists()
    apply(applier, Rename(b"b", b"a/c", RENAME_NOREPLACE, T0, T1))
    assert sorted(os.listdir(root / "a" / "c")) == ["x", "y"]
    assert os.lstat(root).st_mtime_ns == T0 and os.lstat(root / "a").st_mtime_ns == T1


# ---- data ----------------------------------------------------------------------------------------


def test_write_keeps_atime_sets_mtime_and_holes(applier: Applier, root: Path) -> None:
    apply(applier, Create(node(b"f", stat.S_IFREG | 0o444)))  # read-only: root writes anyway
    apply(applier, Write(b"f", 0, T2, b"hello"), Write(b"f", 64 * 2**20, OLD, b"end"))
    st = os.lstat(root / "f")
    assert st.st_size == 64 * 2**20 + 3
    assert st.st_blocks * 512 < 1024 * 1024  # a hole, not 64 MiB of zeros
    assert (st.st_atime_ns, st.st_mtime_ns) == (T0, OLD)
    with open(root / "f", "rb") as f:
        assert f.read(5) == b"hello"
        f.seek(64 * 2**20 - 2)
        assert f.read() == b"\0\0end"
    assert applier.counters["WRITE"] == 2 and applier.counters["bytes"] == 8


def test_truncate_and_fallocate(applier: Applier, root: Path) -> None:
    (root / "f").write_bytes(b"a" * 100_000)
    apply(applier, Truncate(b"f", 10, T1))
    st = os.lstat(root / "f")
    assert (st.st_size, st.st_mtime_ns) == (10, T1)
    apply(applier, Truncate(b"f", 10 * 2**20, T2))
    st = os.lstat(root / "f")
    assert (st.st_size, st.st_mtime_ns) == (10 * 2**20, T2) and st.st_blocks < 64
    apply(applier, Fallocate(b"f", 0, 0, 2**20, T0))
    st = os.lstat(root / "f")
    assert st.st_blocks * 512 >= 2**20 and st.st_mtime_ns == T0
    apply(applier, Fallocate(b"f", FALLOC_FL_KEEP_SIZE, 10 * 2**20, 2**20, T1))
    assert os.lstat(root / "f").st_size == 10 * 2**20  # kept
    before = os.lstat(root / "f").st_blocks
    apply(applier, Fallocate(b"f", FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 2**20, T2))
    st = os.lstat(root / "f")
    assert st.st_blocks < before and st.st_mtime_ns == T2
    assert (root / "f").read_bytes()[:10] == b"\0" * 10


def test_fallocate_invalid_mode_raises(applier: Applier, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    with pytest.raises(OSError) as info:  # PUNCH_HOLE without KEEP_SIZE is invalid
        apply(applier, Fallocate(b"f", FALLOC_FL_PUNCH_HOLE, 0, 1, T0))
    assert info.value.errno == errno.EOPNOTSUPP or info.value.errno == errno.EINVAL


def test_setattr_chown_then_chmod_keeps_setuid(applier: Applier, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    apply(applier, SetAttr(b"f", mode=0o4755, uid=1000, gid=1000))
    st = os.lstat(root / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4755, 1000, 1000)
    apply(applier, SetAttr(b"f", gid=50))  # uid unchanged
    st = os.lstat(root / "f")
    assert (st.st_uid, st.st_gid) == (1000, 50)
    apply(applier, SetAttr(b"f", mtime_ns=T1))  # atime unchanged
    before_atime = st.st_atime_ns
    st = os.lstat(root / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (before_atime, T1)
    apply(applier, SetAttr(b"f", atime_ns=OLD, mtime_ns=T2), SetAttr(b"", mode=0o711))
    st = os.lstat(root / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (OLD, T2)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o711


def test_setattr_on_a_symlink_changes_the_link_not_its_target(applier: Applier, root: Path) -> None:
    (root / "target").write_bytes(b"x")
    os.chmod(root / "target", 0o600)
    os.symlink("target", root / "l")
    apply(applier, SetAttr(b"l", mode=0o755, uid=1000, gid=1000, atime_ns=T0, mtime_ns=T1))
    link, target = os.lstat(root / "l"), os.lstat(root / "target")
    assert (link.st_uid, link.st_gid, link.st_atime_ns, link.st_mtime_ns) == (1000, 1000, T0, T1)
    assert (target.st_uid, stat.S_IMODE(target.st_mode)) == (0, 0o600)
    assert target.st_mtime_ns != T1


def test_xattrs_on_files_dirs_and_symlinks(applier: Applier, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    os.symlink("f", root / "l")
    apply(
        applier,
        SetXattr(b"f", b"user.k\xff", b"\x00\xffvalue"),
        SetXattr(b"", b"user.dir", b""),
        SetXattr(b"l", b"user.k", b"v"),  # Linux refuses user.* on symlinks: skipped
        SetXattr(b"l", b"trusted.k", b"on the link"),
    )
    assert os.getxattr(root / "f", os.fsdecode(b"user.k\xff")) == b"\x00\xffvalue"
    assert os.getxattr(root, "user.dir") == b""
    assert os.listxattr(root / "l", follow_symlinks=False) == ["trusted.k"]
    assert os.getxattr(root / "l", "trusted.k", follow_symlinks=False) == b"on the link"
    assert "trusted.k" not in os.listxattr(root / "f")
    apply(applier, RemoveXattr(b"f", b"user.k\xff"), RemoveXattr(b"l", b"trusted.k"))
    assert os.listxattr(root / "f") == [] and os.listxattr(root / "l", follow_symlinks=False) == []
    with pytest.raises(OSError) as info:
        apply(applier, RemoveXattr(b"f", b"user.absent"))
    assert info.value.errno == errno.ENODATA


def test_fsync_files_directories_and_the_root(applier: Applier, root: Path) -> None:
    os.mkdir(root / "d")
    (root / "d" / "f").write_bytes(b"x")
    apply(applier, Fsync(b"d/f", False), Fsync(b"d/f", True), Fsync(b"d", False), Fsync(b"", True))
    assert applier.counters["FSYNC"] == 4
    with pytest.raises(FileNotFoundError):
        apply(applier, Fsync(b"absent", False))


# ---- the write descriptor cache ------------------------------------------------------------------


def test_write_after_rename_goes_to_the_renamed_file(applier: Applier, root: Path) -> None:
    apply(applier, Create(node(b"a", stat.S_IFREG | 0o644)), Write(b"a", 0, T1, b"first"))
    apply(applier, Rename(b"a", b"b", 0, T1, T1), Create(node(b"a", stat.S_IFREG | 0o644)))
    apply(applier, Write(b"b", 5, T1, b"+second"), Write(b"a", 0, T1, b"new a"))
    assert (root / "b").read_bytes() == b"first+second"
    assert (root / "a").read_bytes() == b"new a"
    apply(applier, Unlink(b"a", T1), Link(b"b", b"a", T1), Write(b"a", 0, T1, b"FIRST"))
    assert (root / "b").read_bytes() == b"FIRST+second"


def test_write_cache_is_bounded_and_closed(applier: Applier, root: Path) -> None:
    baseline = _fd_count()
    for i in range(WRITE_CACHE_SIZE * 2):
        apply(applier, Create(node(os.fsencode(f"f{i}"), stat.S_IFREG | 0o644)))
    for i in range(WRITE_CACHE_SIZE * 2):
        apply(applier, Write(os.fsencode(f"f{i}"), 0, T1, str(i).encode()))
        apply(applier, Write(os.fsencode(f"f{i}"), 10, T1, b"!"))
    assert _fd_count() - baseline == WRITE_CACHE_SIZE
    for i in range(WRITE_CACHE_SIZE * 2):
        assert (root / f"f{i}").read_bytes() == str(i).encode().ljust(10, b"\0") + b"!"
    apply(applier, Mkdir(node(b"d", stat.S_IFDIR | 0o755)))  # a namespace op drops the cache
    assert _fd_count() == baseline
    apply(applier, Write(b"f0", 0, T1, b"0"))
    assert _fd_count() == baseline + 1
    applier.close()
    assert _fd_count() == baseline


# ---- errors and tolerance ------------------------------------------------------------------------


def test_errors_raise_while_in_sync(applier: Applier, root: Path) -> None:
    for msg in (
        Unlink(b"absent", T0),
        Write(b"absent", 0, T0, b"x"),
        Rmdir(b"absent", T0),
        SetAttr(b"absent", mode=0o644),
    ):
        with pytest.raises(FileNotFoundError):
            apply(applier, msg)
    os.mkdir(root / "d")
    (root / "d" / "f").write_bytes(b"")
    with pytest.raises(OSError) as info:
        apply(applier, Rmdir(b"d", T0))
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(IsADirectoryError):
        apply(applier, Write(b"d", 0, T0, b"x"))
    assert applier.tolerated == 0


def test_tolerated_errors_while_a_resync_runs(applier: Applier, root: Path) -> None:
    os.mkdir(root / "d")
    (root / "d" / "f").write_bytes(b"")
    os.symlink("d", root / "l")
    os.mkfifo(root / "fifo")
    apply(applier, ResyncBegin("full", "3"))
    assert not applier.in_sync
    tolerated: list[Message] = [
        Unlink(b"absent", T0),  # ENOENT
        Mkdir(node(b"d", stat.S_IFDIR | 0o755)),  # EEXIST
        Rmdir(b"d", T0),  # ENOTEMPTY
        Write(b"d/f/x", 0, T0, b"x"),  # ENOTDIR
        Write(b"d", 0, T0, b"x"),  # EISDIR
        Write(b"l", 0, T0, b"x"),  # ELOOP: the last component is never followed
    ]
    for msg in tolerated:
        assert apply(applier, msg) is None
    assert applier.tolerated == len(tolerated)
    with pytest.raises(OSError) as info:  # a FIFO with no reader: not a "tree differs" error
        apply(applier, Write(b"fifo", 0, T0, b"x"))
    assert info.value.errno == errno.ENXIO
    end = ResyncEnd("full", 0, 0)
    assert apply(applier, end) == end
    assert applier.in_sync
    with pytest.raises(FileNotFoundError):
        apply(applier, Unlink(b"absent", T0))
    assert applier.tolerated == len(tolerated)


def test_out_of_sync_from_the_start(root: Path) -> None:
    fd = _open_root(root)
    try:
        applier = Applier(fd, in_sync=False)
        assert apply(applier, Unlink(b"absent", T0)) is None
        assert applier.tolerated == 1
        applier.in_sync = True
        with pytest.raises(FileNotFoundError):
            apply(applier, Unlink(b"absent", T0))
    finally:
        os.close(fd)


def test_an_interrupted_listing_is_a_protocol_error(applier: Applier) -> None:
    entry = DirEntry(b"x", stat.S_IFREG | 0o644, 0, 0, 0, 0, T0, T0)
    apply(applier, ResyncBegin("full", "1"), DirListing(b"", 0o40755, 0, 0, (entry,), True))
    with pytest.raises(ProtocolError, match="still expects"):
        apply(applier, DirListing(b"other", 0o40755, 0, 0, (), False))
    with pytest.raises(ProtocolError, match="RESYNC_END while the listing"):
        apply(applier, ResyncEnd("full", 0, 0))


def test_a_listing_naming_an_entry_twice_is_refused(applier: Applier) -> None:
    entry = DirEntry(b"x", stat.S_IFREG | 0o644, 0, 0, 0, 0, T0, T0)
    apply(applier, DirListing(b"", 0o40755, 0, 0, (entry,), True))
    with pytest.raises(ProtocolError, match="twice"):
        apply(applier, DirListing(b"", 0o40755, 0, 0, (entry,), False))


# ---- resync: a stream generated from a real tree, applied onto a messy one -----------------------


def _read_noatime(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def resync_stream(src: Path, limit: int) -> list[Message]:
    """What a primary sends to copy ``src``: listings (parents first), xattrs, data (holes kept),
    then directory times, deepest first."""
    base = os.fsencode(src)
    messages: list[Message] = [ResyncBegin("full", "7")]
    first_name: dict[tuple[int, int], bytes] = {}
    dir_times: list[SetAttr] = []
    files = data_bytes = 0

    def join(rel: bytes, name: bytes) -> bytes:
        return rel + b"/" + name if rel else name

    def xattrs(rel: bytes) -> None:
        for attr in sorted(os.listxattr(base + b"/" + rel, follow_symlinks=False)):
            value = os.getxattr(base + b"/" + rel, attr, follow_symlinks=False)
            messages.append(SetXattr(rel, os.fsencode(attr), value))

    def walk(rel: bytes) -> None:
        nonlocal files, data_bytes
        path = base + b"/" + rel if rel else base
        st = os.lstat(path)
        entries: list[DirEntry] = []
        subdirs: list[bytes] = []
        contents: list[tuple[bytes, os.stat_result]] = []
        for name in sorted(os.listdir(path)):
            child = join(rel, name)
            cst = os.lstat(base + b"/" + child)
            link_to = None
            if not stat.S_ISDIR(cst.st_mode) and cst.st_nlink > 1:
                link_to = first_name.get((cst.st_dev, cst.st_ino))
                first_name.setdefault((cst.st_dev, cst.st_ino), child)
            target = os.readlink(base + b"/" + child) if stat.S_ISLNK(cst.st_mode) else b""
            entries.append(
                DirEntry(
                    name,
                    cst.st_mode,
                    cst.st_uid,
                    cst.st_gid,
                    cst.st_rdev,
                    cst.st_size if stat.S_ISREG(cst.st_mode) else 0,
                    cst.st_atime_ns,
                    cst.st_mtime_ns,
                    target,
                    link_to,
                )
            )
            files += 1
            if stat.S_ISDIR(cst.st_mode):
                subdirs.append(child)
            elif link_to is None and stat.S_ISREG(cst.st_mode):
                contents.append((child, cst))
        messages.extend(dirlisting_frames(rel, st.st_mode, st.st_uid, st.st_gid, entries, limit))
        for entry in entries:
            if entry.link_to is None and not stat.S_ISDIR(entry.mode):
                xattrs(join(rel, entry.name))
        for child, cst in contents:
            data = _read_noatime(base + b"/" + child)
            for offset in range(0, len(data), 2**20):
                chunk = data[offset : offset + 2**20]
                if chunk.count(0) != len(chunk):  # all zeros: leave a hole
                    messages.append(Write(child, offset, cst.st_mtime_ns, chunk))
                    data_bytes += len(chunk)
        for child in subdirs:
            walk(child)
        xattrs(rel)
        dir_times.append(SetAttr(rel, atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns))

    walk(b"")
    messages.extend(dir_times)
    messages.append(ResyncEnd("full", files, data_bytes))
    return messages


def snapshot(tree: Path) -> dict[bytes, tuple[object, ...]]:
    """Everything replication must reproduce, per relative path (hard links by first name).

    Directory and symlink atimes are left out: listing a directory or reading a link updates
    them (relatime), here and in the walk that generated the stream."""
    base = os.fsencode(tree)
    result: dict[bytes, tuple[object, ...]] = {}
    first_name: dict[tuple[int, int], bytes] = {}

    def visit(rel: bytes) -> None:
        path = base + b"/" + rel if rel else base
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        common = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
        xattrs = tuple(
            (a, os.getxattr(path, a, follow_symlinks=False))
            for a in sorted(os.listxattr(path, follow_symlinks=False))
        )
        link = first_name.setdefault((st.st_dev, st.st_ino), rel)
        if stat.S_ISDIR(kind):
            names = sorted(os.listdir(path))
            result[rel] = (*common, xattrs, tuple(names))
            for name in names:
                visit(rel + b"/" + name if rel else name)
        elif stat.S_ISLNK(kind):
            result[rel] = (*common, link, os.readlink(path))
        elif stat.S_ISREG(kind):
            digest = hashlib.sha256(_read_noatime(path)).hexdigest()
            result[rel] = (*common, st.st_atime_ns, link, xattrs, st.st_size, digest)
        else:
            result[rel] = (*common, st.st_atime_ns, link, xattrs, st.st_rdev)

    visit(b"")
    return result


def build_primary(src: Path) -> None:
    src.mkdir()
    os.chmod(src, 0o751)
    (src / "file1").write_bytes(b"hello world")
    os.chown(src / "file1", 1000, 1000)
    os.chmod(src / "file1", 0o4750)
    os.setxattr(src / "file1", "user.color", b"blue")
    with open(src / "sparse", "wb") as f:
        f.seek(3 * 2**20)
        f.write(b"tail")
    (src / "hl1").write_bytes(b"linked content")
    (src / "sep1").write_bytes(b"one")
    (src / "sep2").write_bytes(b"two")
    os.symlink("file1", src / "link")
    os.symlink("/nonexistent/target", src / "dangling")
    os.lchown(src / "link", 1000, 1000)
    os.mkfifo(src / "fifo")
    os.chmod(src / "fifo", 0o620)
    os.mknod(src / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mkdir(src / "sub")
    os.chown(src / "sub", 0, 1000)
    os.chmod(src / "sub", 0o2775)
    os.link(src / "hl1", src / "sub" / "hl2")
    os.makedirs(src / "sub" / "deep" / "er")
    (src / "sub" / "deep" / "er" / "leaf").write_bytes(b"leaf")
    os.mkdir(src / "dirA")
    (src / "fileB").write_bytes(b"B was a directory on the secondary")
    os.symlink("sub", src / "symC")
    os.mkdir(src / "many")
    for i in range(300):
        (src / "many" / f"entry-{i:03d}").write_bytes(str(i).encode())
    os.setxattr(src / "many", "user.dir", b"listing")
    os.mkdir(src / "empty")
    for i, path in enumerate(sorted(src.rglob("*"), reverse=True)):
        os.utime(path, ns=(T0 + i, T1 + 7 * i), follow_symlinks=False)
    os.utime(src, ns=(T0, OLD))


def build_messy_secondary(dst: Path, outside: Path) -> None:
    dst.mkdir()
    (dst / "extra.txt").write_bytes(b"not on the primary")
    os.makedirs(dst / "extradir" / "nested" / "deeper")
    (dst / "extradir" / "nested" / "deeper" / "f").write_bytes(b"x")
    os.symlink("/", dst / "extradir" / "root-link")  # removing must not follow it
    (dst / "dirA").write_bytes(b"a file where a directory belongs")
    os.makedirs(dst / "fileB" / "inside")
    os.mkdir(dst / "symC")
    outside.mkdir()
    (outside / "keep").write_bytes(b"outside the replicated dir")
    os.symlink(outside, dst / "sub")  # where the primary has a directory
    (dst / "sep1").write_bytes(b"shared")
    os.link(dst / "sep1", dst / "sep2")  # separate files on the primary
    (dst / "hl1").write_bytes(b"stale")
    os.symlink("wrong", dst / "link")
    os.mknod(dst / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    (dst / "fifo").write_bytes(b"a regular file")
    (dst / "file1").write_bytes(b"a much longer stale content than the primary has")
    os.setxattr(dst / "file1", "user.color", b"red")
    os.chmod(dst / "file1", 0o600)
    os.mkdir(dst / "many")
    for i in range(0, 400, 3):
        (dst / "many" / f"entry-{i:03d}").write_bytes(b"stale")
    os.symlink("entry-000", dst / "many" / "entry-001")
    os.mkdir(dst / "empty")
    (dst / "empty" / "not-empty").write_bytes(b"")


def test_resync_turns_a_messy_tree_into_exactly_the_primary_s(tmp_path: Path) -> None:
    src, dst, outside = tmp_path / "primary", tmp_path / "secondary", tmp_path / "outside"
    build_primary(src)
    build_messy_secondary(dst, outside)
    stream = resync_stream(src, limit=2048)
    listings = [m for m in stream if isinstance(m, DirListing)]
    assert sum(m.more for m in listings) >= 5  # "many" is split over several frames
    expected = snapshot(src)
    assert snapshot(dst) != expected
    fd = _open_root(dst)
    try:
        applier = Applier(fd)
        results = [apply(applier, m) for m in stream]
        applier.close()
    finally:
        os.close(fd)
    assert results[-1] == stream[-1] and results[:-1] == [None] * (len(stream) - 1)
    assert applier.in_sync and applier.tolerated == 0
    assert snapshot(dst) == expected
    assert (outside / "keep").read_bytes() == b"outside the replicated dir"
    assert os.path.isdir("/") and os.lstat(dst / "sparse").st_blocks < 64
    assert os.lstat(dst / "hl1").st_ino == os.lstat(dst / "sub" / "hl2").st_ino
    assert os.lstat(dst / "sep1").st_ino != os.lstat(dst / "sep2").st_ino
    assert applier.counters["DIRLIST"] == len(listings)


def test_resync_onto_an_empty_tree_and_again_onto_itself(tmp_path: Path) -> None:
    src, dst = tmp_path / "primary", tmp_path / "secondary"
    build_primary(src)
    dst.mkdir()
    stream = resync_stream(src, limit=64 * 1024)
    expected = snapshot(src)
    fd = _open_root(dst)
    try:
        for _ in range(2):  # the second run finds everything in place and keeps it
            applier = Applier(fd)
            for msg in stream:
                apply(applier, msg)
            applier.close()
            assert snapshot(dst) == expected
    finally:
        os.close(fd)


# ---- a recorded live stream applied twice gives identical trees ----------------------------------


def recorded_stream() -> list[Message]:
    def n(path: bytes, mode: int, t: int) -> NewNode:
        return NewNode(path, mode, 1000, 100, 0, t, t + 1, t + 2)

    return [
        Mkdir(n(b"app", stat.S_IFDIR | 0o2770, T0)),
        Create(n(b"app/db", stat.S_IFREG | 0o640, T0)),
        Write(b"app/db", 0, T1, b"header" * 1000),
        Write(b"app/db", 2**24, T1 + 1, b"far away"),
        Create(n(b"app/tmp", stat.S_IFREG | 0o600, T1)),
        Write(b"app/tmp", 0, T1, b"new content"),
        Fsync(b"app/tmp", True),
        Rename(b"app/tmp", b"app/config", 0, T2, T2),
        Write(b"app/config", 11, T2, b" appended"),
        Link(b"app/config", b"config.hard", T2 + 5),
        Symlink(n(b"current", stat.S_IFLNK | 0o777, T1), b"app/config"),
        Mknod(n(b"app/pipe", stat.S_IFIFO | 0o660, T0)),
        SetXattr(b"app/db", b"user.checksum", b"\x01\x02"),
        SetXattr(b"app", b"trusted.policy", b"keep"),
        Truncate(b"app/db", 5000, T2),
        Fallocate(b"app/db", FALLOC_FL_KEEP_SIZE, 0, 2**16, T2 + 3),
        SetAttr(b"app/config", mode=0o4755, uid=0, gid=0),
        SetAttr(b"current", uid=1000, gid=1000, atime_ns=T0, mtime_ns=T0),
        Create(n(b"app/junk", stat.S_IFREG | 0o644, T0)),
        Rename(b"app/junk", b"app/pipe", RENAME_EXCHANGE, T1, T1),
        Unlink(b"app/pipe", T2 + 10),
        Mkdir(n(b"gone", stat.S_IFDIR | 0o755, T0)),
        Rmdir(b"gone", T2 + 20),
        RemoveXattr(b"app/db", b"user.checksum"),
        SetAttr(b"app", atime_ns=T0, mtime_ns=T2 + 30),
        SetAttr(b"", mode=0o755, mtime_ns=T2 + 40),
    ]


def test_a_recorded_stream_applied_into_two_directories_gives_identical_trees(
    tmp_path: Path,
) -> None:
    snapshots = []
    for side in ("one", "two"):
        tree = tmp_path / side
        tree.mkdir()
        fd = _open_root(tree)
        try:
            applier = Applier(fd)
            for msg in recorded_stream():
                assert apply(applier, msg) is None
            applier.close()
        finally:
            os.close(fd)
        snapshots.append(snapshot(tree))
    assert snapshots[0] == snapshots[1]
    result = snapshots[0]
    assert sorted(result) == [
        b"",
        b"app",
        b"app/config",
        b"app/db",
        b"app/junk",
        b"config.hard",
        b"current",
    ]
    assert result[b"app/junk"][0] == stat.S_IFIFO  # exchanged with the pipe, then the file unlinked
    assert result[b"config.hard"][6] == b"app/config"  # one inode, two names
    assert result[b"app/config"][1] == 0o4755
    assert result[b"app/db"][-2] == 5000
    assert result[b""][4] == T2 + 40
    assert result[b"current"][2:5] == (1000, 1000, T0)


# ---- block-hash sync: HASHES answered with the blocks that differ --------------------------------

BLOCK = 4096


def _hashes_of(path: Path, name: bytes, block: int = BLOCK) -> Hashes:
    """The HASHES request the primary would send for the file at ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        count = -(-size // block)
        return Hashes(name, block, size, tuple(block_digests(fd, block, size, 0, count)))
    finally:
        os.close(fd)


def test_hashes_of_an_identical_file_need_nothing_and_keep_atime(
    applier: Applier, root: Path, tmp_path: Path
) -> None:
    data = os.urandom(5 * BLOCK + 100)
    (tmp_path / "primary").write_bytes(data)
    (root / "f").write_bytes(data)
    os.utime(root / "f", ns=(T0, T1))
    result = apply(applier, _hashes_of(tmp_path / "primary", b"f"))
    assert result == HashesResult(b"f", ())
    assert isinstance(result, HashesResult)
    assert result.need(17) == Need(17, b"f", ())
    assert os.stat(root / "f").st_atime_ns == T0  # read with O_NOATIME
    assert (root / "f").read_bytes() == data  # nothing changed
    assert applier.counters["HASHES"] == 1


def test_hashes_find_the_changed_blocks_including_a_short_last_one(
    applier: Applier, root: Path, tmp_path: Path
) -> None:
    data = bytearray(os.urandom(5 * BLOCK + 100))
    (tmp_path / "primary").write_bytes(data)
    data[BLOCK + 7] ^= 1
    data[-1] ^= 1
    (root / "f").write_bytes(data)
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", (1, 5))


def test_hashes_count_blocks_past_the_local_end_as_differing(
    applier: Applier, root: Path, tmp_path: Path
) -> None:
    data = os.urandom(6 * BLOCK)
    (tmp_path / "primary").write_bytes(data)
    (root / "f").write_bytes(data[: 3 * BLOCK + 10])  # block 3 only partly here
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", (3, 4, 5))
    (root / "f").write_bytes(data + b"longer here")  # the extra bytes are the TRUNCATE's job
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", ())


def test_hashes_match_holes_against_written_zeros_both_ways(
    applier: Applier, root: Path, tmp_path: Path
) -> None:
    with open(tmp_path / "primary", "wb") as f:  # a hole, one block of data, a hole
        f.truncate(8 * BLOCK)
        f.seek(4 * BLOCK)
        f.write(b"d" * BLOCK)
    (root / "f").write_bytes(bytes(4 * BLOCK) + b"d" * BLOCK + bytes(3 * BLOCK))
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", ())
    assert apply(applier, _hashes_of(root / "f", b"f")) == HashesResult(b"f", ())


def test_hashes_of_a_missing_or_other_kind_of_node_need_every_block(
    applier: Applier, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "primary").write_bytes(os.urandom(3 * BLOCK))
    every = (0, 1, 2)
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", every)
    os.mkdir(root / "f")
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", every)
    os.rmdir(root / "f")
    os.symlink("elsewhere", root / "f")
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", every)
    os.unlink(root / "f")
    os.mkfifo(root / "f")  # never blocks the receiver
    assert apply(applier, _hashes_of(tmp_path / "primary", b"f")) == HashesResult(b"f", every)
    assert applier.counters["HASHES"] == 4 and applier.tolerated == 0


def test_a_punched_hole_zeroes_the_range_and_keeps_the_size(applier: Applier, root: Path) -> None:
    (root / "f").write_bytes(b"x" * (4 * BLOCK))
    apply(applier, Fallocate(b"f", PUNCH_HOLE, BLOCK, 2 * BLOCK, T1))
    assert (root / "f").read_bytes() == b"x" * BLOCK + bytes(2 * BLOCK) + b"x" * BLOCK
    assert os.stat(root / "f").st_mtime_ns == T1
