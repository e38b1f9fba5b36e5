"""The replication pass-through filesystem, mounted for real over a directory that holds files.

Each test runs ``python -m hakit.replication.passthrough DIR --record JOURNAL`` as its own process
(as the replicator will), works through the mount as root and as an unprivileged user, and checks
the backing directory after unmounting: nothing renamed, everything written through the mount
there, ownership and permissions as the kernel would give them, and the recorded mutations in
order. Skipped (with the reason) without root, /dev/fuse or fusermount3.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("pyfuse3", reason="pyfuse3 is not installed (pip install pyfuse3)")

from hakit.replication.passthrough import (
    FSTYPE,
    clean_stale_mounts,
    find_mounts,
    is_stale,
)


def _why_no_fuse() -> str | None:
    if os.geteuid() != 0:
        return "the pass-through tests need root (mount, allow_other, chown)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 missing (apt-get install fuse3)"
    if shutil.which("setpriv") is None:
        return "setpriv missing (util-linux)"
    return None


pytestmark = pytest.mark.skipif(_why_no_fuse() is not None, reason=str(_why_no_fuse()))

NOBODY = 65534
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), ctypes.c_uint(flags)):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@dataclass
class Mount:
    """A running pass-through server over ``dir`` and the journal of its mutation reports."""

    dir: Path
    journal: Path
    proc: subprocess.Popen[bytes]
    early_output: str  # what the server printed before "mounted"

    def mutations(self) -> list[tuple[str, list[object]]]:
        lines = self.journal.read_text().splitlines() if self.journal.exists() else []
        return [(d["op"], d["args"]) for d in map(json.loads, lines)]

    def stop(self) -> str:
        """SIGTERM: the server unmounts and exits 0; returns its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        raw, _ = self.proc.communicate(timeout=10)
        out = raw.decode()
        assert self.proc.returncode == 0, out
        assert find_mounts(self.dir) == []
        return self.early_output + out

    def kill(self) -> None:
        """SIGKILL: the server dies without unmounting (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=10)


def start(directory: Path, *extra: str, env: dict[str, str] | None = None) -> Mount:
    journal = directory.parent / f"{directory.name}.journal"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hakit.replication.passthrough",
            str(directory),
            "--record",
            str(journal),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,  # unbuffered: communicate() reads the descriptor, it would miss read-ahead
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.stdout is not None
    early = []
    line = proc.stdout.readline().decode()  # "mounted DIR" once the mount is in place
    while line and not line.startswith("mounted "):
        early.append(line)
        line = proc.stdout.readline().decode()
    if not line:
        proc.communicate(timeout=10)
        raise AssertionError(f"the pass-through did not mount (exit {proc.returncode}): {early}")
    assert [m.fstype for m in find_mounts(directory)] == [FSTYPE]
    return Mount(directory, journal, proc, "".join(early))


@pytest.fixture
def base() -> Iterator[Path]:
    """A unique directory under /tmp, traversable by everybody; nothing left mounted after."""
    path = Path(tempfile.mkdtemp(prefix="hakit-pt-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.iterdir():
            while find_mounts(sub):
                subprocess.run(["fusermount3", "-u", "-z", str(sub)], check=False)
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def mounted(directory: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[Mount]:
    m = start(directory, *extra, env=env)
    try:
        yield m
    finally:
        if m.proc.poll() is None:
            m.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.communicate(timeout=10)
        m.kill()


def as_nobody(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet as uid/gid 65534 with no supplementary groups."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            script,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def make_data_dir(base: Path) -> Path:
    d = base / "data"
    d.mkdir()
    (d / "old.txt").write_text("written before the mount\n")
    (d / "olddir").mkdir()
    (d / "olddir" / "inner").write_bytes(b"x" * 10000)
    return d


def test_existing_files_stay_and_writes_land_in_the_real_directory(base: Path) -> None:
    d = make_data_dir(base)
    before = os.stat(d)
    with mounted(d) as m:
        assert os.stat(d).st_dev != before.st_dev  # we are looking through the mount
        assert (d / "old.txt").read_text() == "written before the mount\n"
        assert (d / "olddir" / "inner").read_bytes() == b"x" * 10000
        assert sorted(os.listdir(d)) == ["old.txt", "olddir"]
        (d / "new.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
        content = (d / "new.bin").read_bytes()
        with open(d / "old.txt", "a") as f:
            f.write("appended through the mount\n")
        (d / "olddir" / "made").mkdir()
        m.stop()
    after = os.stat(d)
    assert (after.st_dev, after.st_ino) == (
        before.st_dev,
        before.st_ino,
    )  # same directory, not renamed
    assert sorted(os.listdir(d)) == ["new.bin", "old.txt", "olddir"]
    assert sorted(os.listdir(base)) == ["data", "data.journal"]  # nothing set aside or renamed
    assert (d / "new.bin").read_bytes() == content
    assert (d / "old.txt").read_text() == "written before the mount\nappended through the mount\n"
    assert (d / "olddir" / "made").is_dir()


def test_every_operation_through_the_mount_is_applied_and_reported_in_order(base: Path) -> None:
    d = make_data_dir(base)
    with mounted(d) as m:
        # files: create, write, read, pwrite, ftruncate, truncate, fsync
        fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o640)
        assert os.write(fd, b"hello world") == 11
        assert os.pwrite(fd, b"W", 6) == 1
        assert os.pread(fd, 11, 0) == b"hello World"
        os.ftruncate(fd, 5)
        os.fsync(fd)
        os.close(fd)
        os.truncate(d / "f", 8)
        assert (d / "f").read_bytes() == b"hello\0\0\0"
        # attributes
        os.chmod(d / "f", 0o600)
        os.chown(d / "f", 1234, 5678)
        os.utime(d / "f", ns=(1_000_000_123, 2_000_000_456))
        st = os.stat(d / "f")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1234, 5678)
        assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
        # special files, directories
        os.mkfifo(d / "fifo", 0o644)
        os.mkdir(d / "dir", 0o750)
        os.mkdir(d / "dir" / "sub")
        os.rmdir(d / "dir" / "sub")
        # links
        os.link(d / "f", d / "dir" / "hard")
        os.symlink("../f", d / "dir" / "soft")
        assert os.readlink(d / "dir" / "soft") == "../f"
        assert os.stat(d / "dir" / "hard").st_nlink == 2
        assert os.stat(d / "dir" / "hard").st_ino == os.stat(d / "f").st_ino
        assert (d / "dir" / "soft").read_bytes() == b"hello\0\0\0"
        os.chown(d / "dir" / "soft", 42, 43, follow_symlinks=False)
        assert os.lstat(d / "dir" / "soft").st_uid == 42
        # rename: plain, over an existing target, NOREPLACE refused, EXCHANGE swaps
        (d / "a").write_text("A")
        (d / "b").write_text("B")
        os.rename(d / "a", d / "dir" / "a2")
        os.rename(d / "dir" / "a2", d / "b")  # replaces b
        assert (d / "b").read_text() == "A"
        (d / "c").write_text("C")
        with pytest.raises(FileExistsError):
            renameat2(d / "c", d / "b", RENAME_NOREPLACE)
        renameat2(d / "c", d / "b", RENAME_EXCHANGE)
        assert ((d / "b").read_text(), (d / "c").read_text()) == ("C", "A")
        os.unlink(d / "c")
        # extended attributes
        os.setxattr(d / "b", "user.color", b"blue")
        assert os.getxattr(d / "b", "user.color") == b"blue"
        assert os.listxattr(d / "b") == ["user.color"]
        os.removexattr(d / "b", "user.color")
        with pytest.raises(OSError) as exc:
            os.getxattr(d / "b", "user.color")
        assert exc.value.errno == errno.ENODATA
        # readdir, statfs
        assert sorted(os.listdir(d)) == ["b", "dir", "f", "fifo", "old.txt", "olddir"]
        assert sorted(os.listdir(d / "dir")) == ["hard", "soft"]
        assert os.statvfs(d).f_blocks == os.statvfs(base).f_blocks
        ops = m.mutations()
        m.stop()

    # the backing directory holds exactly that
    assert (d / "f").read_bytes() == b"hello\0\0\0"
    st = os.lstat(d / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_nlink) == (0o600, 1234, 5678, 2)
    assert st.st_mtime_ns == 2_000_000_456
    assert os.lstat(d / "dir" / "hard").st_ino == st.st_ino
    assert os.readlink(d / "dir" / "soft") == "../f"
    assert stat.S_ISFIFO(os.lstat(d / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(d / "dir").st_mode) == 0o750
    assert (d / "b").read_text() == "C"
    assert os.listxattr(d / "b") == []
    assert sorted(os.listdir(d)) == ["b", "dir", "f", "fifo", "old.txt", "olddir"]

    names = [op for op, _ in ops]
    assert names[:9] == [
        "create",
        "write",
        "write",
        "truncate",
        "fsync",
        "truncate",
        "chmod",
        "chown",
        "utimens",
    ]
    assert ops[0][1][0]["path"] == "f" and ops[0][1][0]["mode"] == stat.S_IFREG | 0o640
    assert ops[1][1][1:] == ["f", 0, 11] and ops[2][1][1:] == ["f", 6, 1]
    assert ops[6][1] == ["f", 0o600] and ops[7][1] == ["f", 1234, 5678]
    assert ops[8][1] == ["f", 1_000_000_123, 2_000_000_456]
    rest = [(op, args) for op, args in ops[9:] if op not in ("write",)]
    expected_namespace = [
        ("mknod", "fifo"),
        ("mkdir", "dir"),
        ("mkdir", "dir/sub"),
        ("rmdir", ["dir/sub"]),
        ("link", ["f", "dir/hard"]),
        ("symlink", "dir/soft"),
        ("chown", ["dir/soft", 42, 43]),
        ("create", "a"),
        ("create", "b"),
        ("rename", ["a", "dir/a2", 0]),
        ("rename", ["dir/a2", "b", 0]),
        ("create", "c"),
        ("rename", ["c", "b", RENAME_EXCHANGE]),
        ("unlink", ["c"]),
        ("setxattr", ["b", "user.color", "blue"]),
        ("removexattr", ["b", "user.color"]),
    ]
    got = []
    for op, args in rest:
        if op in ("mknod", "mkdir", "create", "symlink"):
            got.append((op, args[0]["path"]))
        else:
            got.append((op, args))
    assert got == expected_namespace


def test_a_non_root_user_creates_files_it_owns_and_is_held_to_permissions(base: Path) -> None:
    d = make_data_dir(base)
    (d / "shared").mkdir(mode=0o777)
    (d / "shared").chmod(0o777)
    (d / "rootonly").write_text("secret")
    (d / "rootonly").chmod(0o600)
    (d / "readable").write_text("public")
    (d / "readable").chmod(0o644)
    (d / "setgid").mkdir()
    os.chown(d / "setgid", 0, 4321)
    (d / "setgid").chmod(0o2777)
    with mounted(d) as m:
        script = """
import errno, os
def code(f):
    try:
        f(); return 0
    except OSError as e:
        return e.errno
fd = os.open("shared/mine", os.O_CREAT | os.O_WRONLY, 0o640)
os.write(fd, b"by nobody"); os.close(fd)
os.mkdir("shared/mydir", 0o700)
os.symlink("mine", "shared/mylink")
fd = os.open("setgid/f", os.O_CREAT | os.O_WRONLY, 0o644); os.close(fd)
os.mkdir("setgid/d")
print(code(lambda: open("rootonly").read()))
print(code(lambda: open("readable", "a")))
print(code(lambda: os.chmod("readable", 0o777)))
print(code(lambda: os.chown("shared/mine", 0, 0)))
print(code(lambda: os.open("newfile-in-root", os.O_CREAT | os.O_WRONLY, 0o644)))
print(code(lambda: os.unlink("readable")))
print(open("readable").read())
os.chmod("shared/mine", 0o600)
"""
        done = as_nobody(script, d)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.split()
        assert lines[:6] == [
            str(errno.EACCES),
            str(errno.EACCES),
            str(errno.EPERM),
            str(errno.EPERM),
            str(errno.EACCES),
            str(errno.EACCES),
        ]
        assert lines[6] == "public"
        # seen through the mount as the kernel reports it
        st = os.stat(d / "shared" / "mine")
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, 0o600)
        mutations = m.mutations()
        m.stop()
    for rel, mode in (("shared/mine", 0o600), ("shared/mydir", 0o700)):
        st = os.lstat(d / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (NOBODY, NOBODY, mode)
    assert os.lstat(d / "shared" / "mylink").st_uid == NOBODY
    assert (d / "shared" / "mine").read_bytes() == b"by nobody"
    # set-group-ID directory: new entries take its group; subdirectories inherit the bit
    assert (os.stat(d / "setgid" / "f").st_uid, os.stat(d / "setgid" / "f").st_gid) == (
        NOBODY,
        4321,
    )
    assert os.stat(d / "setgid" / "d").st_gid == 4321
    assert os.stat(d / "setgid" / "d").st_mode & stat.S_ISGID
    assert (d / "rootonly").read_text() == "secret"
    assert not (d / "newfile-in-root").exists()
    creates = [args[0] for op, args in mutations if op == "create"]
    assert {(c["path"], c["uid"], c["gid"]) for c in creates} == {
        ("shared/mine", NOBODY, NOBODY),
        ("setgid/f", NOBODY, 4321),
    }


def test_sparse_files_keep_their_holes(base: Path) -> None:
    d = base / "data"
    d.mkdir()
    with mounted(d) as m:
        with open(d / "sparse", "wb") as f:
            f.seek(64 * 1024 * 1024)
            f.write(b"end")
        (d / "grown").touch()
        os.truncate(d / "grown", 32 * 1024 * 1024)
        st = os.stat(d / "sparse")
        assert st.st_size == 64 * 1024 * 1024 + 3
        assert st.st_blocks * 512 <= 64 * 1024
        m.stop()
    for name, size in (("sparse", 64 * 1024 * 1024 + 3), ("grown", 32 * 1024 * 1024)):
        st = os.stat(d / name)
        assert st.st_size == size
        assert st.st_blocks * 512 <= 64 * 1024  # holes, not zeros written
        fd = os.open(d / name, os.O_RDONLY)
        try:
            assert os.lseek(fd, 0, os.SEEK_HOLE) == 0  # starts with a hole in the backing file
        finally:
            os.close(fd)


def seek(fd: int, offset: int, whence: int) -> int | str:
    """lseek's result, or the name of its error."""
    try:
        return os.lseek(fd, offset, whence)
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]


def test_fallocate_and_seek_hole_reach_the_backing_file_and_are_reported(base: Path) -> None:
    from hakit.testing.workloads import (
        FALLOC_FL_KEEP_SIZE,
        FALLOC_FL_PUNCH_HOLE,
        FALLOC_FL_ZERO_RANGE,
        fallocate,
    )

    d = make_data_dir(base)
    mib = 1024 * 1024
    punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    backing_dir = os.open(d, os.O_RDONLY | os.O_DIRECTORY)  # the real directory, under the mount
    try:
        with mounted(d) as m:
            assert "not served" not in m.early_output, m.early_output
            fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
            backing = os.open("f", os.O_RDONLY, dir_fd=backing_dir)
            try:
                os.pwrite(fd, b"x" * (2 * mib), 0)
                fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 8 * mib)  # allocated, size unchanged
                assert os.fstat(fd).st_size == 2 * mib
                fallocate(fd, 0, 2 * mib, mib)  # grows the file by an allocated (zero) range
                assert os.fstat(fd).st_size == 3 * mib
                fallocate(fd, FALLOC_FL_ZERO_RANGE, 4096, 4096)
                fallocate(fd, punch, mib, 256 * 1024)  # a hole inside the data
                assert os.pread(fd, 8192, 0) == b"x" * 4096 + bytes(4096)
                assert os.pread(fd, 4, mib) == bytes(4)
                assert os.pread(backing, 8192, 0) == b"x" * 4096 + bytes(4096)
                assert os.fstat(backing).st_blocks * 512 >= 8 * mib - 256 * 1024
                # SEEK_HOLE/SEEK_DATA through the mount give the backing file's own answers.
                for offset in (0, 4096, mib - 1, mib, mib + 4096, 2 * mib, 3 * mib - 1):
                    for whence in (os.SEEK_HOLE, os.SEEK_DATA):
                        assert seek(fd, offset, whence) == seek(backing, offset, whence)
                assert os.lseek(fd, mib, os.SEEK_HOLE) == mib
                assert os.lseek(fd, mib, os.SEEK_DATA) >= mib + 256 * 1024
                with pytest.raises(OSError) as past_end:
                    os.lseek(fd, 3 * mib, os.SEEK_DATA)
                assert past_end.value.errno == errno.ENXIO
            finally:
                os.close(fd)
                os.close(backing)
            m.stop()
    finally:
        os.close(backing_dir)
    fallocs = [args for op, args in m.mutations() if op == "fallocate"]
    assert [(a[1], a[2], a[3], a[4]) for a in fallocs] == [
        ("f", FALLOC_FL_KEEP_SIZE, 0, 8 * mib),
        ("f", 0, 2 * mib, mib),
        ("f", FALLOC_FL_ZERO_RANGE, 4096, 4096),
        ("f", punch, mib, 256 * 1024),
    ]


def test_a_file_capability_set_after_writes_is_seen_and_cleared_by_a_write(base: Path) -> None:
    # The kernel asks for security.capability before every write; the answer "none" is
    # remembered per inode, which setxattr must forget.
    d = make_data_dir(base)
    caps = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)  # v2, effective, NET_BIND_SERVICE
    with mounted(d) as m:
        f = d / "tool"
        f.write_bytes(b"#!/bin/sh\n")
        with open(f, "ab") as out:
            out.write(b"true\n")  # asked (and answered "none") before this write
        with pytest.raises(OSError):
            os.getxattr(f, "security.capability")
        os.setxattr(f, "security.capability", caps)
        assert os.getxattr(f, "security.capability") == caps
        m.stop()
    assert os.getxattr(d / "tool", "security.capability") == caps
    with mounted(d) as m:
        f.chmod(0o777)
        proc = as_nobody("open('tool', 'ab').write(b'# x\\n')", d)
        assert proc.returncode == 0, proc.stderr
        with pytest.raises(OSError) as gone:  # the write by another user removed it
            os.getxattr(f, "security.capability")
        assert gone.value.errno == errno.ENODATA
        m.stop()
    removed = [args for op, args in m.mutations() if op == "removexattr"]
    assert [a[1] for a in removed] == ["security.capability"]


def test_read_only_mount_refuses_and_logs_changes(base: Path) -> None:
    d = make_data_dir(base)
    with mounted(d, "--read-only") as m:
        assert (d / "old.txt").read_text() == "written before the mount\n"
        for attempt in (
            lambda: (d / "new").write_text("no"),
            lambda: os.open(d / "old.txt", os.O_WRONLY | os.O_APPEND),
            lambda: os.unlink(d / "old.txt"),
            lambda: os.mkdir(d / "nodir"),
            lambda: os.chmod(d / "old.txt", 0o777),
            lambda: os.rename(d / "old.txt", d / "moved"),
        ):
            with pytest.raises(OSError) as exc:
                attempt()
            assert exc.value.errno == errno.EROFS
        assert m.mutations() == []
        log = m.stop()
    assert "refused create of b'new' by pid" in log
    assert "read-only on the secondary" in log
    assert sorted(os.listdir(d)) == ["old.txt", "olddir"]


def test_a_stale_mount_left_by_a_killed_server_is_detected_and_cleaned(base: Path) -> None:
    d = make_data_dir(base)
    m = start(d)
    try:
        (d / "written").write_text("before the crash")
        m.kill()
        assert is_stale(d)
        assert [e.fstype for e in find_mounts(d)] == [FSTYPE]
        with pytest.raises(OSError) as exc:
            os.listdir(d)
        assert exc.value.errno == errno.ENOTCONN
        assert clean_stale_mounts(d) == 1
        assert find_mounts(d) == []
        assert sorted(os.listdir(d)) == ["old.txt", "olddir", "written"]
        assert (d / "written").read_text() == "before the crash"
        # a new server after a crash cleans up by itself and serves again
        m2 = start(d)
        m2.kill()
        with mounted(d) as m3:
            assert (d / "written").read_text() == "before the crash"
            log = m3.stop()
        assert "detached a stale replication mount left by a crash" in log
    finally:
        m.kill()


def test_a_second_server_on_a_live_mount_is_refused(base: Path) -> None:
    d = make_data_dir(base)
    with mounted(d) as m:
        again = subprocess.run(
            [sys.executable, "-m", "hakit.replication.passthrough", str(d)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.returncode == 4
        assert "already served by a running hakit replicator" in again.stderr
        assert (d / "old.txt").exists()  # the live mount still works
        m.stop()


def test_many_concurrent_writers_all_land(base: Path) -> None:
    d = base / "data"
    d.mkdir()
    script = """
import os, sys, threading
def work(i):
    with open(f"w{i}", "wb") as f:
        for j in range(200):
            f.write(bytes([i]) * 4096)
        f.flush(); os.fsync(f.fileno())
threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
for t in threads: t.start()
for t in threads: t.join()
"""
    with mounted(d) as m:
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=d, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        writes = [args for op, args in m.mutations() if op == "write"]
        m.stop()
    for i in range(8):
        assert (d / f"w{i}").read_bytes() == bytes([i]) * 4096 * 200
    assert sum(args[3] for args in writes) == 8 * 200 * 4096


def test_a_removed_name_of_a_hard_linked_file_reports_the_surviving_name(base: Path) -> None:
    d = base / "data"
    d.mkdir()
    with mounted(d) as m:
        (d / "sub").mkdir()
        (d / "a").write_bytes(b"content")
        os.link(d / "a", d / "sub" / "b")
        os.link(d / "a", d / "c")
        os.unlink(d / "a")  # lives on as sub/b and c
        (d / "x").write_bytes(b"x")
        os.rename(d / "x", d / "c")  # c replaced: the file lives on as sub/b
        m.stop()
    survivors = [args for op, args in m.mutations() if op == "survivor"]
    assert survivors[0][0] == "a" and survivors[0][1] in ("sub/b", "c")
    assert survivors[1] == ["c", "sub/b"]
    assert (d / "sub" / "b").read_bytes() == b"content"


# ---- killing privileges (FUSE_HANDLE_KILLPRIV_V2 negotiated by the shim, or the kernel alone) ----

KILLPRIV = {"on": {}, "off": {"HAKIT_RFS_KILLPRIV": "0"}}


def requests_served(log: str) -> dict[str, int]:
    """The request counts the server logs at unmount (with the shim's custom I/O)."""
    for line in log.splitlines():
        if "requests served: " in line:
            items = line.split("requests served: ", 1)[1].split(", ")
            return {op: int(n) for op, n in (item.split(" ") for item in items)}
    raise AssertionError(f"no request counts in the log: {log}")


def test_after_the_first_write_no_getxattr_request_precedes_writes(base: Path) -> None:
    d = base / "data"
    d.mkdir()
    with mounted(d) as m:
        fd = os.open(d / "f", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            for i in range(500):
                os.pwrite(fd, b"x" * 4096, i * 4096)
        finally:
            os.close(fd)
        log = m.stop()
    assert "FUSE_HANDLE_KILLPRIV_V2 on" in log, log
    served = requests_served(log)
    assert served["write"] >= 500
    assert served.get("getxattr", 0) <= 1, served  # asked once for the new inode, then never
    assert (d / "f").read_bytes() == b"x" * 4096 * 500


def test_killpriv_off_keeps_libfuse_own_io(base: Path) -> None:
    d = base / "data"
    d.mkdir()
    with mounted(d, env=KILLPRIV["off"]) as m:
        (d / "f").write_bytes(b"y" * 4096)
        log = m.stop()
    assert "FUSE_HANDLE_KILLPRIV_V2 off" in log, log
    assert "requests served" not in log  # libfuse's own I/O: nothing counted


# Starting modes (files of root) changed by nobody; what Linux does to them is measured on a plain
# ext4 directory (reference_modes). S_ISGID without S_IXGRP stays only for a caller in the file's
# group: the file "in-group" belongs to nobody's group.
SUID_CASES = {
    "6777": (0o6777, 0),
    "6766": (0o6766, 0),
    "4757": (0o4757, 0),
    "2777": (0o2777, 0),
    "0777": (0o0777, 0),
    "2766": (0o2766, 0),
    "in-group": (0o2766, NOBODY),
}


def make_suid_files(directory: Path) -> None:
    for name, (mode, gid) in SUID_CASES.items():
        f = directory / name
        f.write_bytes(b"content")
        os.chown(f, 0, gid)
        f.chmod(mode)


def modes(directory: Path) -> dict[str, int]:
    return {name: stat.S_IMODE(os.stat(directory / name).st_mode) for name in SUID_CASES}


def reference_modes(base: Path, how: str) -> dict[str, int]:
    """Modes after ``how`` by nobody on plain ext4 (no FUSE)."""
    ref = base / f"ref-{how}"
    ref.mkdir()
    ref.chmod(0o777)
    make_suid_files(ref)
    done = as_nobody(SCRIPTS[how].format(names=list(SUID_CASES)), ref)
    assert done.returncode == 0, done.stderr
    return modes(ref)


SCRIPTS = {
    "write": "import os\nfor n in {names}:\n    fd = os.open(n, os.O_WRONLY)\n"
    "    os.pwrite(fd, b'x', 0); os.close(fd)\n",
    "truncate": "import os\nfor n in {names}:\n    os.truncate(n, 3)\n",
    "otrunc": "import os\nfor n in {names}:\n    os.close(os.open(n, os.O_WRONLY | os.O_TRUNC))\n",
}


# Without KILLPRIV_V2 the kernel's FUSE code kills by itself, and not quite as Linux does on a
# local filesystem: S_ISGID without group execute goes only by the group-execute rule (kept even
# for a caller outside the group), and an O_TRUNC open kills nothing. Compared only where it
# agrees; with KILLPRIV_V2 (on) every case matches plain ext4.
OFF_AGREES = ("6777", "4757", "2777", "0777", "in-group")


@pytest.mark.parametrize(
    ("how", "killpriv"),
    [("write", "on"), ("truncate", "on"), ("otrunc", "on"), ("write", "off"), ("truncate", "off")],
)
def test_an_unprivileged_change_kills_suid_sgid_as_linux_does(
    base: Path, how: str, killpriv: str
) -> None:
    expected = reference_modes(base, how)
    # what Linux does: S_ISGID without group execute stays only for a member of the group
    assert (expected["6777"], expected["2766"], expected["in-group"]) == (0o777, 0o766, 0o2766)
    d = base / "data"
    d.mkdir()
    d.chmod(0o777)
    make_suid_files(d)
    with mounted(d, env=KILLPRIV[killpriv]) as m:
        done = as_nobody(SCRIPTS[how].format(names=list(SUID_CASES)), d)
        assert done.returncode == 0, done.stderr
        seen = modes(d)  # at once through the mount (the kernel's cached mode is refreshed)
        mutations = m.mutations()
        log = m.stop()
    assert f"FUSE_HANDLE_KILLPRIV_V2 {killpriv}" in log, log
    after = modes(d)
    if killpriv == "off":
        expected, seen, after = ({n: m[n] for n in OFF_AGREES} for m in (expected, seen, after))
    assert seen == expected
    assert after == expected
    if killpriv == "off":
        return  # the kernel sent the chmods itself
    chmods = {args[0]: args[1] for op, args in mutations if op == "chmod"}
    assert chmods == {n: m for n, m in expected.items() if m != SUID_CASES[n][0]}


@pytest.mark.parametrize("killpriv", ["on", "off"])
def test_root_writes_keep_suid_sgid(base: Path, killpriv: str) -> None:
    d = base / "data"
    d.mkdir()
    f = d / "f"
    f.write_bytes(b"content")
    f.chmod(0o6777)
    with mounted(d, env=KILLPRIV[killpriv]) as m:
        with open(f, "r+b") as out:
            out.write(b"root")
        os.truncate(f, 2)
        os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o6777
        mutations = m.mutations()
        m.stop()
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o6777
    assert [op for op, _ in mutations if op in ("chmod", "removexattr")] == []


@pytest.mark.parametrize("who", ["root", "nobody"])
def test_any_write_removes_a_file_capability_and_reports_it(base: Path, who: str) -> None:
    d = base / "data"
    d.mkdir()
    caps = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
    for name in ("w", "t"):
        (d / name).write_bytes(b"#!/bin/sh\n")
        (d / name).chmod(0o777)
        os.setxattr(d / name, "security.capability", caps)
    script = (
        "import os\nfd = os.open('w', os.O_WRONLY); os.pwrite(fd, b'#', 0); os.close(fd)\n"
        "os.close(os.open('t', os.O_WRONLY | os.O_TRUNC))\n"
    )
    with mounted(d) as m:
        if who == "root":
            done = subprocess.run(
                [sys.executable, "-c", script], cwd=d, capture_output=True, text=True
            )
        else:
            done = as_nobody(script, d)
        assert done.returncode == 0, done.stderr
        mutations = m.mutations()
        m.stop()
    for name in ("w", "t"):
        assert os.listxattr(d / name) == [], name
    removed = sorted(args[0] for op, args in mutations if op == "removexattr")
    assert removed == ["t", "w"]


def test_chown_through_the_mount_gives_the_mode_plain_ext4_gives(base: Path) -> None:
    modes = (0o6777, 0o6755, 0o2745, 0o4700, 0o0755)
    ref = base / "ref"
    ref.mkdir()
    d = base / "data"
    d.mkdir()
    for parent in (ref, d):
        for mode in modes:
            f = parent / f"{mode:o}"
            f.write_bytes(b"x")
            f.chmod(mode)
        (parent / "dir").mkdir()
        (parent / "dir").chmod(0o6777)
    for mode in modes:
        os.chown(ref / f"{mode:o}", 1234, 5678)
    os.chown(ref / "dir", 1234, 5678)
    expected = {n: stat.S_IMODE(os.stat(ref / n).st_mode) for n in os.listdir(ref)}
    assert expected["6777"] == 0o0777 and expected["2745"] == 0o2745 and expected["dir"] == 0o6777
    with mounted(d) as m:
        for name in expected:
            os.chown(d / name, 1234, 5678)
        seen = {n: stat.S_IMODE(os.stat(d / n).st_mode) for n in expected}
        mutations = m.mutations()
        m.stop()
    assert seen == expected
    assert {n: stat.S_IMODE(os.stat(d / n).st_mode) for n in expected} == expected
    chowns = [args[0] for op, args in mutations if op == "chown"]
    assert sorted(chowns) == sorted(expected)
    # The peer learns the new mode (a chmod before the chown; its own chown as root agrees).
    chmods = {args[0]: args[1] for op, args in mutations if op == "chmod"}
    assert chmods == {n: m for n, m in expected.items() if n != "dir" and m != int(n, 8)}
