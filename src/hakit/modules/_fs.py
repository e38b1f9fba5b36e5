"""File-system helpers shared by module management: the node lock, fsync, atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from hakit.errors import LocalSystemError
from hakit.paths import NodePaths

LOCK_FILE = ".modules.lock"


@contextlib.contextmanager
def modules_lock(paths: NodePaths) -> Iterator[None]:
    """Hold the node's module-management lock (install, uninstall and configure exclude each
    other, also across processes: the CLI, the API and the console may run at the same time)."""
    paths.lib.mkdir(parents=True, exist_ok=True)
    lock_path = paths.lib / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LocalSystemError(f"{lock_path}: cannot open the lock ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def fsync_dir(directory: Path) -> None:
    """Make a rename or creation inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (and ``root`` itself)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            fd = os.open(os.path.join(dirpath, filename), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def private_name(directory: Path, prefix: str) -> Path:
    """A fresh, unused hidden name in ``directory`` (``.<prefix>.<random>``)."""
    while True:
        candidate = directory / f".{prefix}.{secrets.token_hex(6)}"
        if not os.path.lexists(candidate):
            return candidate


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or directory tree if it exists."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path)


def atomic_write(target: Path, write: Callable[[IO[bytes]], object], mode: int = 0o644) -> None:
    """Write ``target`` through a temporary file renamed over it: readers see old or new, whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
