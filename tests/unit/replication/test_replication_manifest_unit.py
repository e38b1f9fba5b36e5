"""Manifests of replicated trees: two trees built alike, then one of them perturbed one way at a
time, must differ by exactly the expected difference (hakit.replication.manifest)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hakit.config.model import NotReplicated
from hakit.errors import LocalSystemError, PeerProtocolError, UserConfigError
from hakit.replication.manifest import (
    DiffKind,
    Entry,
    FileType,
    ManifestTotals,
    NotReplicatedMatcher,
    decode_stream,
    diff_manifests,
    encode_line,
    encode_stream,
    sort_key,
    walk_manifest,
)

T0 = 1_700_000_000_123_456_789  # every mtime of a freshly built tree (ns)
DIR_TIME = 1_700_000_100_000_000_001
ODD = b"caf\xe9-latin1.txt"  # not UTF-8
IS_ROOT = os.geteuid() == 0


def _set_time(path: Path | bytes, ns: int = T0) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def _fix_dir_times(root: Path) -> None:
    """Every directory's mtime to DIR_TIME (creating entries changes them)."""
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        _set_time(Path(dirpath), DIR_TIME)


def _xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


def build(root: Path) -> Path:
    """A small tree with one object of every kind."""
    root.mkdir()
    os.chmod(root, 0o755)
    (root / "docs").mkdir()
    (root / "docs" / "sub").mkdir()
    (root / "docs-extra").mkdir()  # sorts between "docs" and "docs/..." by bytes, not by walk
    (root / "f.txt").write_bytes(b"hello world\n")
    (root / "docs" / "a.bin").write_bytes(bytes(range(256)) * 40)
    (root / "docs" / "sub" / "empty").write_bytes(b"")
    os.chmod(root / "docs" / "a.bin", 0o640)
    os.link(root / "f.txt", root / "docs" / "hard")
    os.symlink("../f.txt", root / "docs" / "link")
    os.mkfifo(root / "fifo")
    with open(os.fsencode(root) + b"/" + ODD, "wb") as f:
        f.write(b"latin-1 name\n")
    os.symlink(ODD, root / "to-odd")
    for entry in (root / "f.txt", root / "docs" / "a.bin", root / "docs" / "sub" / "empty"):
        _set_time(entry)
    _set_time(os.fsencode(root) + b"/" + ODD)
    _set_time(root / "docs" / "link")
    _set_time(root / "to-odd")
    _set_time(root / "fifo")
    _fix_dir_times(root)
    return root


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    return build(tmp_path / "a"), build(tmp_path / "b")


def diffs(a: Path, b: Path, **kwargs: bool) -> list[tuple[bytes, DiffKind]]:
    return [(d.path, d.what) for d in diff_manifests(walk_manifest(a), walk_manifest(b), **kwargs)]


# -- identical trees ---------------------------------------------------------------------------


def test_identical_trees_have_no_difference(trees: tuple[Path, Path]) -> None:
    a, b = trees
    assert diffs(a, b) == []


def test_walk_records_every_kind_in_component_order(trees: tuple[Path, Path]) -> None:
    entries = list(walk_manifest(trees[0]))
    paths = [e.path for e in entries]
    assert paths == [
        b"",
        ODD,
        b"docs",
        b"docs/a.bin",
        b"docs/hard",
        b"docs/link",
        b"docs/sub",
        b"docs/sub/empty",
        b"docs-extra",
        b"f.txt",
        b"fifo",
        b"to-odd",
    ]
    assert paths == sorted(paths, key=sort_key)
    by_path = {e.path: e for e in entries}
    assert by_path[b""].type is FileType.DIR and by_path[b""].mode == 0o755
    assert by_path[b""].size == 0 and by_path[b""].mtime_ns == DIR_TIME
    a_bin = by_path[b"docs/a.bin"]
    assert (a_bin.type, a_bin.mode, a_bin.size, a_bin.mtime_ns) == (FileType.FILE, 0o640, 10240, T0)
    assert a_bin.sha256 is not None and len(a_bin.sha256) == 64
    assert by_path[b"docs/link"].target == b"../f.txt"
    assert by_path[b"to-odd"].target == ODD
    assert by_path[b"fifo"].type is FileType.FIFO
    # Hard links: the later name (in walk order) points at the first one.
    assert by_path[b"docs/hard"].link is None and by_path[b"docs/hard"].nlink == 2
    assert by_path[b"f.txt"].link == b"docs/hard"


# -- one perturbation at a time ----------------------------------------------------------------


def _same_times(path: Path) -> None:
    _set_time(path)
    _fix_dir_times(path.parent)


def _content(b: Path) -> None:
    (b / "docs" / "a.bin").write_bytes(bytes(range(255, -1, -1)) * 40)
    _same_times(b / "docs" / "a.bin")


def _size(b: Path) -> None:
    (b / "docs" / "sub" / "empty").write_bytes(b"x")
    _same_times(b / "docs" / "sub" / "empty")


def _mode(b: Path) -> None:
    os.chmod(b / "docs" / "a.bin", 0o600)


def _mtime(b: Path) -> None:
    _set_time(b / "docs" / "a.bin", T0 + 1)


def _target(b: Path) -> None:
    (b / "docs" / "link").unlink()
    os.symlink("../f.tx", b / "docs" / "link")
    _same_times(b / "docs" / "link")


def _broken_hard_link(b: Path) -> None:
    (b / "f.txt").unlink()
    (b / "f.txt").write_bytes(b"hello world\n")
    os.chmod(b / "f.txt", (b / "docs" / "hard").stat().st_mode & 0o7777)
    _same_times(b / "f.txt")


def _extra_file(b: Path) -> None:
    (b / "docs" / "sub" / "new").write_bytes(b"")
    _same_times(b / "docs" / "sub" / "new")


def _missing_file(b: Path) -> None:
    (b / "docs" / "sub" / "empty").unlink()
    _fix_dir_times(b)


def _type_change(b: Path) -> None:
    (b / "docs" / "sub" / "empty").unlink()
    (b / "docs" / "sub" / "empty").mkdir()
    _fix_dir_times(b)


def _renamed_odd(b: Path) -> None:
    base = os.fsencode(b)
    os.rename(base + b"/" + ODD, base + b"/" + ODD.replace(b"\xe9", b"\xe8"))
    _fix_dir_times(b)


def _dir_mtime(b: Path) -> None:
    _set_time(b / "docs-extra", DIR_TIME + 5)


def _root_mode(b: Path) -> None:
    os.chmod(b, 0o700)


PERTURBATIONS: list[tuple[str, Callable[[Path], None], list[tuple[bytes, DiffKind]]]] = [
    ("content", _content, [(b"docs/a.bin", DiffKind.CONTENT)]),
    ("size", _size, [(b"docs/sub/empty", DiffKind.SIZE)]),
    ("mode", _mode, [(b"docs/a.bin", DiffKind.MODE)]),
    ("mtime", _mtime, [(b"docs/a.bin", DiffKind.MTIME)]),
    ("symlink target", _target, [(b"docs/link", DiffKind.TARGET)]),
    ("hard link broken", _broken_hard_link, [(b"f.txt", DiffKind.LINK)]),
    ("extra file", _extra_file, [(b"docs/sub/new", DiffKind.MISSING_ON_A)]),
    ("missing file", _missing_file, [(b"docs/sub/empty", DiffKind.MISSING_ON_B)]),
    ("type change", _type_change, [(b"docs/sub/empty", DiffKind.TYPE)]),
    (
        "non-UTF-8 name",
        _renamed_odd,
        [(ODD.replace(b"\xe9", b"\xe8"), DiffKind.MISSING_ON_A), (ODD, DiffKind.MISSING_ON_B)],
    ),
    ("directory mtime", _dir_mtime, [(b"docs-extra", DiffKind.MTIME)]),
    ("root mode", _root_mode, [(b"", DiffKind.MODE)]),
]


@pytest.mark.parametrize(
    ("perturb", "expected"),
    [(p, e) for _, p, e in PERTURBATIONS],
    ids=[name for name, _, _ in PERTURBATIONS],
)
def test_one_perturbation_gives_exactly_its_difference(
    trees: tuple[Path, Path],
    perturb: Callable[[Path], None],
    expected: list[tuple[bytes, DiffKind]],
) -> None:
    a, b = trees
    perturb(b)
    assert diffs(a, b) == expected


@pytest.mark.skipif(not IS_ROOT, reason="changing a file's owner needs root")
def test_owner(trees: tuple[Path, Path]) -> None:
    a, b = trees
    os.chown(b / "docs" / "a.bin", 1000, 1000)
    [difference] = diff_manifests(walk_manifest(a), walk_manifest(b))
    assert (difference.path, difference.what) == (b"docs/a.bin", DiffKind.OWNER)
    assert (difference.a, difference.b) == ("0:0", "1000:1000")


def test_xattr(trees: tuple[Path, Path]) -> None:
    a, b = trees
    if not _xattrs_supported(b):
        pytest.skip("the test directory's filesystem has no user extended attributes")
    _fix_dir_times(b)
    os.setxattr(b / "docs" / "a.bin", "user.origin", b"node2")
    assert diffs(a, b) == [(b"docs/a.bin", DiffKind.XATTRS)]
    os.setxattr(a / "docs" / "a.bin", "user.origin", b"node2")
    assert diffs(a, b) == []
    os.setxattr(a / "docs" / "a.bin", "user.origin", b"node1")  # same name, another value
    assert diffs(a, b) == [(b"docs/a.bin", DiffKind.XATTRS)]
    os.setxattr(b / "f.txt", "user.x", b"")  # both names of the inode carry it
    assert diffs(a, b)[1:] == [(b"docs/hard", DiffKind.XATTRS), (b"f.txt", DiffKind.XATTRS)]


def test_ignore_dir_mtime_skips_directories_only(trees: tuple[Path, Path]) -> None:
    a, b = trees
    _dir_mtime(b)
    _set_time(b, DIR_TIME + 7)
    _mtime(b)
    assert diffs(a, b, ignore_dir_mtime=True) == [(b"docs/a.bin", DiffKind.MTIME)]
    assert diffs(a, b) == [
        (b"", DiffKind.MTIME),
        (b"docs/a.bin", DiffKind.MTIME),
        (b"docs-extra", DiffKind.MTIME),
    ]


def test_a_missing_directory_lists_its_whole_subtree(trees: tuple[Path, Path]) -> None:
    a, b = trees
    for name in ("empty",):
        (b / "docs" / "sub" / name).unlink()
    (b / "docs" / "sub").rmdir()
    _fix_dir_times(b)
    assert diffs(a, b) == [
        (b"docs/sub", DiffKind.MISSING_ON_B),
        (b"docs/sub/empty", DiffKind.MISSING_ON_B),
    ]


def test_difference_values_are_readable(trees: tuple[Path, Path]) -> None:
    a, b = trees
    _mode(b)
    _target(b)
    found = {d.what: d for d in diff_manifests(walk_manifest(a), walk_manifest(b))}
    assert (found[DiffKind.MODE].a, found[DiffKind.MODE].b) == ("0640", "0600")
    assert (found[DiffKind.TARGET].a, found[DiffKind.TARGET].b) == ("../f.txt", "../f.tx")
    assert found[DiffKind.TARGET].to_json() == {
        "path": "docs/link",
        "what": "target",
        "a": "../f.txt",
        "b": "../f.tx",
    }


# -- walking -----------------------------------------------------------------------------------


def test_walk_follows_no_symlink_but_a_symlinked_root(tmp_path: Path) -> None:
    real = build(tmp_path / "real")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"s")
    os.symlink(tmp_path / "outside", real / "escape")
    os.symlink(real, tmp_path / "alias")
    paths = [e.path for e in walk_manifest(tmp_path / "alias")]
    assert b"escape" in paths and b"escape/secret" not in paths
    assert paths == [e.path for e in walk_manifest(real)]


def test_walk_leaves_out_what_exclude_says_without_entering_it(trees: tuple[Path, Path]) -> None:
    asked: list[tuple[bytes, bool]] = []

    def exclude(path: bytes, is_dir: bool) -> bool:
        asked.append((path, is_dir))
        return path in (b"docs", b"fifo")

    paths = [e.path for e in walk_manifest(trees[0], exclude=exclude)]
    assert paths == [b"", ODD, b"docs-extra", b"f.txt", b"to-odd"]
    assert (b"docs", True) in asked and (b"f.txt", False) in asked
    assert not any(p.startswith(b"docs/") for p, _ in asked)


def test_three_names_of_one_inode_all_point_at_the_first(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    (root / "c").write_bytes(b"x")
    os.link(root / "c", root / "a")
    os.link(root / "c", root / "b")
    links = {e.path: e.link for e in walk_manifest(root)}
    assert links == {b"": None, b"a": None, b"b": b"a", b"c": b"a"}


def test_walk_of_a_missing_or_non_directory_root_names_it(tmp_path: Path) -> None:
    with pytest.raises(LocalSystemError, match="nowhere"):
        list(walk_manifest(tmp_path / "nowhere"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(LocalSystemError, match="not a directory"):
        list(walk_manifest(tmp_path / "file"))


@pytest.mark.skipif(IS_ROOT, reason="root reads everything")
def test_unreadable_directory_names_the_path(trees: tuple[Path, Path]) -> None:
    os.chmod(trees[0] / "docs", 0o000)
    try:
        with pytest.raises(LocalSystemError, match="docs"):
            list(walk_manifest(trees[0]))
    finally:
        os.chmod(trees[0] / "docs", 0o755)


# -- the wire form -----------------------------------------------------------------------------


def test_stream_roundtrip_is_lossless_with_non_utf8_names(trees: tuple[Path, Path]) -> None:
    entries = list(walk_manifest(trees[0]))
    stream = b"".join(encode_stream(entries, batch=3))
    assert stream.isascii()
    totals = ManifestTotals()
    back = list(decode_stream(stream.splitlines(), "test", totals))
    assert back == entries
    assert next(e for e in back if e.path == ODD).path == ODD
    assert next(e for e in back if e.path == b"to-odd").target == ODD
    assert totals.entries == len(entries)
    assert totals.bytes == sum(e.size for e in entries if e.type is FileType.FILE)
    trailer = json.loads(stream.splitlines()[-1])
    assert trailer == {"end": {"entries": totals.entries, "bytes": totals.bytes}}


def test_encode_stream_batches_lines() -> None:
    entry = Entry(b"x", FileType.FILE, 0o644, 0, 0, 1, T0, sha256="00" * 32)
    chunks = list(encode_stream([entry] * 5, batch=2))
    assert [c.count(b"\n") for c in chunks] == [2, 2, 2]  # the last chunk holds the trailer


def test_entry_json_leaves_out_unset_fields() -> None:
    entry = Entry(b"d", FileType.DIR, 0o755, 0, 0, 0, T0, nlink=2)
    assert json.loads(encode_line(entry)) == {
        "path": "d",
        "type": "dir",
        "mode": 0o755,
        "uid": 0,
        "gid": 0,
        "size": 0,
        "mtime_ns": T0,
        "nlink": 2,
    }


def test_a_failed_walk_ends_the_stream_with_its_error() -> None:
    def failing() -> Iterator[Entry]:
        yield Entry(b"", FileType.DIR, 0o755, 0, 0, 0, T0)
        raise LocalSystemError("cannot read /srv/data/x: Permission denied")

    stream = b"".join(encode_stream(failing()))
    with pytest.raises(PeerProtocolError, match="node2: the manifest failed: cannot read /srv"):
        list(decode_stream(stream.splitlines(), "node2"))


def test_a_truncated_stream_is_refused(trees: tuple[Path, Path]) -> None:
    lines = b"".join(encode_stream(walk_manifest(trees[0]))).splitlines()
    with pytest.raises(PeerProtocolError, match="without its trailer"):
        list(decode_stream(lines[:-1], "node2"))
    with pytest.raises(PeerProtocolError, match="does not match"):
        list(decode_stream([*lines[:-2], lines[-1]], "node2"))


def test_a_malformed_line_names_its_number() -> None:
    with pytest.raises(PeerProtocolError, match="line 2"):
        root = encode_line(Entry(b"", FileType.DIR, 0o755, 0, 0, 0, T0))
        list(decode_stream([root, b"[1]"], "node2"))
    with pytest.raises(PeerProtocolError, match="line 1"):
        list(decode_stream(['{"path": "x", "type": "weird"}'], "node2"))
    with pytest.raises(PeerProtocolError, match="line 1"):
        list(decode_stream(['{"path": "", "type": "dir"'], "node2"))


def test_an_out_of_order_stream_is_refused() -> None:
    a = Entry(b"a", FileType.FILE, 0o644, 0, 0, 0, T0)
    b = Entry(b"b", FileType.FILE, 0o644, 0, 0, 0, T0)
    with pytest.raises(PeerProtocolError, match="manifest b is not in manifest order at 'a'"):
        list(diff_manifests([a, b], [b, a]))


def test_sort_key_orders_by_components() -> None:
    assert sorted([b"a-c", b"a/b", b"", b"a"], key=sort_key) == [b"", b"a", b"a/b", b"a-c"]


# -- notreplicated -----------------------------------------------------------------------------


def test_path_rule_excludes_the_path_and_its_subtree_only() -> None:
    m = NotReplicatedMatcher([NotReplicated(path="logs"), NotReplicated(path="./var/tmp/")])
    assert m(b"logs", is_dir=True)
    assert m(b"logs/a/b.txt")
    assert not m(b"logs2") and not m(b"other/logs")
    assert m(b"var/tmp") and m(b"var/tmp/x") and not m(b"var") and not m(b"var/tmpx")
    assert not m(b"")


def test_regexpath_is_a_full_match_on_the_relative_path() -> None:
    m = NotReplicatedMatcher([NotReplicated(regexpath=r".*\.tmp")])
    assert m(b"a.tmp") and m(b"dir/b.tmp")
    assert not m(b"a.tmp.keep")
    # A matching directory takes its subtree with it.
    assert m(b"cache.tmp/inner.dat")


def test_only_rules_keep_matching_files_and_every_directory() -> None:
    m = NotReplicatedMatcher([NotReplicated(regexpath=r"(.*/)?[^/]*\.db", only=True)])
    assert not m(b"main.db") and not m(b"data/x.db")
    assert m(b"notes.txt") and m(b"data/notes.txt")
    assert not m(b"data", is_dir=True)
    assert m(b"data")  # a path of unknown type is taken for a file


def test_exclusions_win_over_only_rules() -> None:
    m = NotReplicatedMatcher(
        [NotReplicated(regexpath=r".*\.db", only=True), NotReplicated(path="old")]
    )
    assert m(b"old/x.db") and not m(b"new/x.db")


def test_excludes_entry_does_not_look_at_the_parents() -> None:
    m = NotReplicatedMatcher([NotReplicated(path="logs")])
    assert m.excludes_entry(b"logs", True)
    assert not m.excludes_entry(b"", True)
    assert m(b"logs/x") and m.excludes_entry(b"logs/x", False)  # prefix rules see the path


def test_non_utf8_paths_are_matched_losslessly() -> None:
    m = NotReplicatedMatcher([NotReplicated(regexpath="caf\udce9.*")])
    assert m(ODD) and not m(b"cafe.txt")


def test_an_invalid_regex_names_the_rule() -> None:
    with pytest.raises(UserConfigError, match=r"regexpath='\(unclosed'"):
        NotReplicatedMatcher([NotReplicated(regexpath="(unclosed")])


def test_an_empty_matcher_is_false() -> None:
    assert not NotReplicatedMatcher([])
    assert NotReplicatedMatcher([NotReplicated(path="x")])


def test_walk_with_a_matcher(trees: tuple[Path, Path]) -> None:
    m = NotReplicatedMatcher([NotReplicated(path="docs/sub"), NotReplicated(regexpath=r".*\.txt")])
    paths = [e.path for e in walk_manifest(trees[0], exclude=m.excludes_entry)]
    kept = [b"", b"docs", b"docs/a.bin", b"docs/hard", b"docs/link", b"docs-extra", b"fifo"]
    assert paths == [*kept, b"to-odd"]


def test_entries_that_vanish_during_the_walk_are_skipped(trees: tuple[Path, Path]) -> None:
    root = trees[0]

    def exclude(path: bytes, is_dir: bool) -> bool:
        if path == b"docs-extra":
            (root / "fifo").unlink()  # a later sibling, gone before its lstat
        if path == b"f.txt":
            (root / "f.txt").unlink()  # gone between its lstat and its hashing
        return False

    paths = [e.path for e in walk_manifest(root, exclude=exclude)]
    assert b"fifo" not in paths and b"f.txt" not in paths
    assert paths[-1] == b"to-odd"
