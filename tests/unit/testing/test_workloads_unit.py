"""The replication workloads on a local directory: they pass on a correct file system, are
deterministic, and their checks catch every kind of damage they claim to."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hakit.testing import workloads as wl

ROOT = os.geteuid() == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hakit.testing.workloads", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------------------------------- fsx


def test_fsx_passes_and_leaves_the_modelled_files(tmp_path: Path) -> None:
    counts = wl.fsx(tmp_path, seed=3, ops=1500, files=3, log=tmp_path / "ops.log")
    assert sum(counts.values()) == 1500
    assert all(counts[k] > 0 for k in ("write", "read", "truncate", "ftruncate", "fsync"))
    assert sorted(p.name for p in tmp_path.glob("fsx.*")) == ["fsx.0", "fsx.1", "fsx.2"]
    assert len((tmp_path / "ops.log").read_text().splitlines()) == 1500


def test_fsx_is_deterministic(tmp_path: Path) -> None:
    wl.fsx(tmp_path / "a", seed=9, ops=800, files=2)
    wl.fsx(tmp_path / "b", seed=9, ops=800, files=2)
    wl.fsx(tmp_path / "c", seed=10, ops=800, files=2)
    ignore = ("mtime_ns",)
    a, b, c = (wl.digest_lines(tmp_path / x) for x in "abc")
    assert wl.compare_digests(a, b, ignore=ignore) == []
    assert wl.compare_digests(a, c, ignore=ignore) != []


def test_fsx_makes_holes(tmp_path: Path) -> None:
    wl.fsx(tmp_path, seed=1, ops=400, max_len=1 << 20, max_io=4096)
    st = os.stat(tmp_path / "fsx.0")
    assert st.st_blocks * 512 < st.st_size  # sparse: writes landed past EOF


def test_fsx_reports_the_op_and_offset_of_a_mismatch(tmp_path: Path) -> None:
    """A file system that damages one byte of every 20th write (simulated by a write hook)."""
    real = os.pwrite
    seen = {"n": 0}

    def lossy(fd: int, data: bytes | memoryview, offset: int) -> int:
        seen["n"] += 1
        if seen["n"] % 20 == 0:
            damaged = bytearray(data)
            damaged[0] ^= 0xFF
            return real(fd, damaged, offset)
        return real(fd, data, offset)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wl.os, "pwrite", lossy)
        with pytest.raises(
            wl.WorkloadFailure, match=r"fsx (op \d+|final check).*offset \d+: expected"
        ):
            wl.fsx(tmp_path, seed=2, ops=500, max_len=8192, max_io=4096)


# ----------------------------------------------------------------------------------- fsstress


def test_fsstress_passes_and_leaves_a_nontrivial_tree(tmp_path: Path) -> None:
    summary = wl.fsstress(tmp_path / "t", seed=5, ops=2000)
    assert summary["expected_errors"] > 0  # the model predicted failures, and they happened
    assert summary["files"] >= 10 and summary["dirs"] >= 5
    assert summary["symlinks"] > 0 and summary["fifos"] > 0
    digest = [json.loads(line) for line in wl.digest_lines(tmp_path / "t")]
    assert any("link" in e for e in digest), "no hard links left"
    assert any("xattrs" in e for e in digest), "no user xattrs left"
    if ROOT:
        assert {e["uid"] for e in digest} >= {0, 1000, 1001}


def test_fsstress_is_deterministic(tmp_path: Path) -> None:
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        wl.fsstress(tmp_path / name, seed=seed, ops=1200)
    a, b, c = (wl.digest_lines(tmp_path / x) for x in "abc")
    # mtimes the workload did not set are the clock's; everything else must be identical.
    assert wl.compare_digests(a, b, ignore=("mtime_ns",)) == []
    assert wl.compare_digests(a, c, ignore=("mtime_ns",)) != []


def test_fsstress_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(wl.UserConfigError, match="empty directory"):
        wl.fsstress(tmp_path, ops=10)


def test_fsstress_detects_a_call_that_does_not_fail_as_the_model_says(tmp_path: Path) -> None:
    """A file system whose rmdir removes non-empty directories (simulated with ``rm -rf``)."""

    def bad_rmdir(path: str) -> None:
        subprocess.run(["rm", "-rf", path], check=True)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wl.os, "rmdir", bad_rmdir)
        with pytest.raises(wl.WorkloadFailure, match=r"rmdir .*succeeded, the model expected"):
            wl.fsstress(tmp_path / "t", seed=5, ops=3000)


def test_fsstress_detects_a_tree_that_differs_from_the_model(tmp_path: Path) -> None:
    """A rename that leaves the source behind (copy instead of move) is caught by the final check
    or by a later call whose outcome the model predicts differently."""
    real_rename = os.rename

    def copying_rename(src: str, dst: str) -> None:
        if os.path.isfile(src) and not os.path.islink(src) and not os.path.exists(dst):
            shutil.copy2(src, dst)
            return
        real_rename(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(wl.os, "rename", copying_rename)
        with pytest.raises(wl.WorkloadFailure, match="fsstress"):
            wl.fsstress(tmp_path / "t", seed=5, ops=2000)


# ------------------------------------------------------------------------------------ records


def test_records_confirmed_numbers_are_checked(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "confirmed"
    data.mkdir()
    assert wl.records(data, log, ops=50) == 50
    assert wl.records(data, log, ops=10) == 10  # continues after the last record
    check = wl.check_records(data, log)
    assert (check.confirmed, check.present, check.ok) == (60, 60, True)
    assert log.read_text().split() == [str(i) for i in range(60)]


def test_check_records_reports_missing_and_damaged_records(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "confirmed"
    data.mkdir()
    wl.records(data, log, ops=20)
    path = data / wl.RECORDS_FILE
    with path.open("r+b") as f:
        f.seek(7 * wl.RECORD_SIZE + 30)
        f.write(b"X")  # record 7 damaged
        f.truncate(17 * wl.RECORD_SIZE + 5)  # records 17..19 lost, 17 torn
    check = wl.check_records(data, log)
    assert check.missing == (17, 18, 19)
    assert check.corrupt == (7,)
    assert not check.ok
    r = run_cli("check-records", str(data), "--log", str(log))
    assert r.returncode == 1
    assert "3 confirmed records missing [17, 18, 19], 1 damaged [7]" in r.stderr


def test_check_records_ignores_an_unfinished_confirmation(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "confirmed"
    data.mkdir()
    wl.records(data, log, ops=3)
    with log.open("a") as f:
        f.write("3")  # the client died while writing this line: not confirmed
    assert wl.check_records(data, log).ok


def test_records_cuts_a_torn_tail_before_appending(tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "confirmed"
    data.mkdir()
    wl.records(data, log, ops=4)
    with (data / wl.RECORDS_FILE).open("ab") as f:
        f.write(b"half a rec")
    wl.records(data, log, ops=2)
    assert (data / wl.RECORDS_FILE).stat().st_size == 6 * wl.RECORD_SIZE
    assert wl.check_records(data, log).ok


def test_record_bytes_are_fixed_size_and_distinct() -> None:
    assert len(wl.record_bytes(0)) == len(wl.record_bytes(10**9)) == wl.RECORD_SIZE
    assert wl.record_bytes(1) != wl.record_bytes(2)
    assert wl.record_bytes(5, 64).endswith(b"\n") and len(wl.record_bytes(5, 64)) == 64


# -------------------------------------------------------------------------------- tree compare


def make_tree(root: Path) -> None:
    root.mkdir()
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"hello")
    (root / "g").write_bytes(b"x" * 10)
    os.link(root / "g", root / "d" / "g2")
    os.symlink("d/f", root / "s")
    os.mkfifo(root / "p")
    os.setxattr(root / "g", "user.k", b"v")
    for p in (root / "d" / "f", root / "g", root / "p"):
        os.utime(p, ns=(10**18, 10**18))
    os.utime(root / "s", ns=(10**18, 10**18), follow_symlinks=False)


def copy_tree(src: Path, dst: Path) -> None:
    make_tree(dst)
    os.chmod(dst, os.stat(src).st_mode)


@pytest.fixture
def twins(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    copy_tree(a, b)
    return a, b


def test_identical_trees_compare_equal(twins: tuple[Path, Path]) -> None:
    a, b = twins
    assert wl.tree_compare(a, b) == []
    r = run_cli("tree-compare", str(a), str(b))
    assert (r.returncode, r.stdout) == (0, "")


def test_digest_records_the_hard_link_structure(twins: tuple[Path, Path]) -> None:
    a, _ = twins
    by_path = {e["path"]: e for e in wl.tree_digest(a)}
    assert by_path["d/g2"]["link"] == by_path["g"]["link"] == "d/g2"
    assert "link" not in by_path["d/f"]
    assert by_path["s"]["target"] == "d/f"
    assert by_path["g"]["xattrs"] == {"user.k": b"v".hex()}
    assert by_path["p"]["type"] == "fifo"


def damage_content(b: Path) -> None:
    (b / "d" / "f").write_bytes(b"hellO")
    os.utime(b / "d" / "f", ns=(10**18, 10**18))


def damage_size(b: Path) -> None:
    os.truncate(b / "d" / "f", 4)
    os.utime(b / "d" / "f", ns=(10**18, 10**18))


def damage_mode(b: Path) -> None:
    os.chmod(b / "g", 0o600)


def damage_owner(b: Path) -> None:
    os.chown(b / "g", 1000, 1001)


def damage_mtime(b: Path) -> None:
    os.utime(b / "g", ns=(10**18, 10**18 + 1))


def damage_type(b: Path) -> None:
    os.unlink(b / "p")
    (b / "p").write_bytes(b"")
    os.utime(b / "p", ns=(10**18, 10**18))


def damage_symlink(b: Path) -> None:
    os.unlink(b / "s")
    os.symlink("d/g2", b / "s")
    os.utime(b / "s", ns=(10**18, 10**18), follow_symlinks=False)


def damage_hardlink(b: Path) -> None:
    # Same content, mode and times, but a copy instead of a second name of the same inode.
    os.unlink(b / "d" / "g2")
    shutil.copy2(b / "g", b / "d" / "g2")


def damage_xattr(b: Path) -> None:
    os.setxattr(b / "g", "user.k", b"w")


def damage_missing(b: Path) -> None:
    os.unlink(b / "d" / "f")


def damage_extra(b: Path) -> None:
    os.mkdir(b / "new")


def damage_root_mode(b: Path) -> None:
    os.chmod(b, 0o700 if os.stat(b).st_mode & 0o777 != 0o700 else 0o755)


DAMAGE = {
    "content": (damage_content, "d/f: sha256"),
    "size": (damage_size, "d/f: size 5"),
    "mode": (damage_mode, "g: mode"),
    "owner": (damage_owner, "g: uid"),
    "mtime": (damage_mtime, "g: mtime_ns"),
    "type": (damage_type, "p: type fifo"),
    "symlink": (damage_symlink, "s: target d/f"),
    "hardlink": (damage_hardlink, "d/g2: nlink 2"),
    "xattr": (damage_xattr, "g: xattrs"),
    "missing": (damage_missing, "only in A: d/f (file)"),
    "extra": (damage_extra, "only in B: new (dir)"),
    "root": (damage_root_mode, ".: mode"),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_tree_compare_detects(kind: str, twins: tuple[Path, Path]) -> None:
    a, b = twins
    damage, expected = DAMAGE[kind]
    if kind == "owner" and not ROOT:
        pytest.skip("chown to another uid needs root")
    damage(b)
    diffs = wl.compare_digests(wl.digest_lines(a), wl.digest_lines(b))
    assert any(line.startswith(expected) for line in diffs), diffs
    r = run_cli("tree-compare", str(a), str(b))
    assert r.returncode == 1 and r.stdout.strip()


def test_compare_digests_ignores_named_fields(twins: tuple[Path, Path]) -> None:
    a, b = twins
    damage_mtime(b)
    assert wl.compare_digests(wl.digest_lines(a), wl.digest_lines(b), ignore=("mtime_ns",)) == []


def test_tree_digest_cli_prints_json_lines(twins: tuple[Path, Path]) -> None:
    a, b = twins
    ra, rb = run_cli("tree-digest", str(a)), run_cli("tree-digest", str(b))
    assert ra.returncode == 0
    assert ra.stdout.splitlines() == wl.digest_lines(a)
    assert wl.compare_digests(ra.stdout.splitlines(), rb.stdout.splitlines()) == []


# ---------------------------------------------------------------------------------------- fio


def test_fio_args_write_and_verify_with_a_run_pattern(tmp_path: Path) -> None:
    args = wl.fio_verify_args(tmp_path, "1m", 3, run_id=0xABCD)
    assert args[0] == "fio"
    assert "--verify=pattern" in args and "--verify_pattern=0x0000abcd%o" in args
    assert "--verify_only=1" not in args
    check = wl.fio_verify_args(tmp_path, "1m", 3, verify_only=True)
    assert {"--verify_only=1", "--readonly", "--rw=read"} <= set(check)  # runs on a secondary
    assert f"--directory={tmp_path}" in args


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (apt install fio)")
def test_fio_job_catches_a_stale_block(tmp_path: Path) -> None:
    def fio(run_id: int, verify_only: bool = False) -> int:
        argv = wl.fio_verify_args(tmp_path, "1m", 3, run_id=run_id, verify_only=verify_only)
        return subprocess.run(argv, capture_output=True, cwd=tmp_path, timeout=120).returncode

    path = tmp_path / "fio-verify.3"
    assert fio(1) == 0
    round1 = path.read_bytes()
    assert fio(2) == 0
    assert fio(2, verify_only=True) == 0
    with path.open("r+b") as f:  # one 4 KiB block goes back to the first round's content
        f.seek(40960)
        f.write(round1[40960 : 40960 + 4096])
    assert fio(2, verify_only=True) != 0


# ----------------------------------------------------------------------------------- bench-io


def test_bench_io_reports_every_metric_and_cleans_up(tmp_path: Path) -> None:
    r = run_cli(
        "bench-io",
        str(tmp_path),
        "--seq-mib",
        "2",
        "--rand-ops",
        "50",
        "--rand-file-mib",
        "1",
        "--fsync-ops",
        "20",
        "--meta-files",
        "10",
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result) == {
        "seq_mib_s",
        "rand4k_iops",
        "fsync4k_p50_us",
        "fsync4k_p99_us",
        "meta_ops_s",
    }
    assert all(v > 0 for v in result.values())
    assert result["fsync4k_p99_us"] >= result["fsync4k_p50_us"]
    assert list(tmp_path.iterdir()) == []


def test_cli_workloads_print_their_summary(tmp_path: Path) -> None:
    r = run_cli("fsx", str(tmp_path / "x"), "--ops", "200", "--seed", "4")
    assert r.returncode == 0, r.stderr
    assert sum(json.loads(r.stdout).values()) == 200
    r = run_cli("fsstress", str(tmp_path / "y"), "--ops", "300")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ops"] == 300
    r = run_cli("records", str(tmp_path / "x"))
    assert r.returncode == 2 and "needs --log FILE" in r.stderr
