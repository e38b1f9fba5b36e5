"""The FUSE operations pyfuse3 does not register (``fallocate``, ``lseek``), added under it.

Theory of operation: pyfuse3 3.5 hands libfuse an operation table without ``fallocate`` and
``lseek``. ``csrc/fuseshim.c`` (built with the package as ``hakit.replication._fuseshim``)
defines libfuse's ``fuse_session_new``; loaded here with ``RTLD_GLOBAL`` before pyfuse3 first
calls it, it is the definition pyfuse3 binds to. It completes the table and creates the session
with libfuse's real function. Each ``fallocate``/``lseek`` request then reaches the handler
registered with :meth:`Shim.set_handlers`: a plain function called on the thread that processes
requests (pyfuse3's event loop), which must not block: it starts the work (an asyncio task) and
the work replies with :meth:`Shim.reply_err` / :meth:`Shim.reply_lseek`, exactly once.

:func:`load` is called when this package is imported (``hakit/replication/__init__.py``), so
the shim is in place before any mount. :meth:`Shim.sessions` tells whether pyfuse3's session
really went through it (the mount logs it if not: the operations are then answered by the
kernel as before, ``EOPNOTSUPP`` for ``fallocate``).

``FUSE_HANDLE_KILLPRIV_V2``: the shim also wraps ``fuse_session_mount`` and puts a custom I/O under
the session (see ``csrc/fuseshim.c``) that adds the flag to the INIT reply when the kernel offers
it (libfuse 3.14 and pyfuse3 do not know it). The kernel then stops asking for
``security.capability`` before every write, and leaves killing suid/sgid to the server: it flags
the WRITE, SETATTR (truncate, chown) and OPEN/CREATE (``O_TRUNC``) requests of callers without
``CAP_FSETID``. Neither libfuse nor pyfuse3 passes those flags on, so the shim notes them as it
reads each request, and :meth:`Shim.request` returns them for the request being handled. That is
safe because pyfuse3 (3.5, ``_session_loop``) reads one request, calls the C handler, which
creates the handler coroutine, and awaits that coroutine at once: the coroutine runs on the same
thread, before any worker reads another request, until it first suspends. A handler must thus
call :meth:`Shim.request` before its first ``await`` that can suspend; it checks the opcode and
the inode or file handle against its own arguments (:meth:`Shim.kill_flag`).

``HAKIT_RFS_KILLPRIV=0`` in the environment (read when the mount starts) keeps libfuse's own I/O,
as before: the kernel then asks for ``security.capability`` before each write and kills
suid/sgid itself (with a ``chmod`` sent as SETATTR).
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Request = int
"""A libfuse request handle (``fuse_req_t``), opaque: pass it back to exactly one reply."""

FallocateHandler = Callable[[Request, int, int, int, int, int], None]
"""``(req, ino, mode, offset, length, fh)``."""
LseekHandler = Callable[[Request, int, int, int, int], None]
"""``(req, ino, offset, whence, fh)``."""

_FALLOCATE = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
    ctypes.c_uint64,
)  # fmt: skip
_LSEEK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int, ctypes.c_uint64
)


OPCODES = {
    1: "lookup", 2: "forget", 3: "getattr", 4: "setattr", 5: "readlink", 6: "symlink",
    8: "mknod", 9: "mkdir", 10: "unlink", 11: "rmdir", 12: "rename", 13: "link", 14: "open",
    15: "read", 16: "write", 17: "statfs", 18: "release", 20: "fsync", 21: "setxattr",
    22: "getxattr", 23: "listxattr", 24: "removexattr", 25: "flush", 26: "init", 27: "opendir",
    28: "readdir", 29: "releasedir", 30: "fsyncdir", 31: "getlk", 32: "setlk", 33: "setlkw",
    34: "access", 35: "create", 36: "interrupt", 37: "bmap", 38: "destroy", 39: "ioctl",
    40: "poll", 41: "notify_reply", 42: "batch_forget", 43: "fallocate", 44: "readdirplus",
    45: "rename2", 46: "lseek", 47: "copy_file_range", 48: "setupmapping",
    49: "removemapping", 50: "syncfs", 51: "tmpfile", 52: "statx",
}  # fmt: skip
"""FUSE opcodes (``include/uapi/linux/fuse.h``), for the request counts logged at unmount."""

OP_SETATTR = 4
OP_OPEN = 14
OP_WRITE = 16
OP_CREATE = 35
_N_OPCODES = 64

KILLPRIV_ENV = "HAKIT_RFS_KILLPRIV"
"""``0`` turns the ``FUSE_HANDLE_KILLPRIV_V2`` negotiation off (see the module doc)."""


class _LastRequest(ctypes.Structure):
    _fields_ = (
        ("opcode", ctypes.c_uint32),
        ("kill", ctypes.c_uint32),
        ("unique", ctypes.c_uint64),
        ("nodeid", ctypes.c_uint64),
        ("fh", ctypes.c_uint64),
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("padding", ctypes.c_uint32),
    )


@dataclass(frozen=True)
class IoState:
    """What the shim's custom I/O saw of the current session (:meth:`Shim.io_state`)."""

    installed: int  # 1: in place; 0: not asked for; negative: -errno of fuse_session_custom_io
    offered: bool  # the kernel offered FUSE_HANDLE_KILLPRIV_V2 in INIT
    replied: bool  # the INIT reply went out
    killpriv_v2: bool  # ... with FUSE_HANDLE_KILLPRIV_V2
    kernel_flags: int


@dataclass(frozen=True)
class Caller:
    """Who sent a request (what :meth:`PassthroughFS._refuse` logs)."""

    pid: int
    uid: int
    gid: int


class Shim:
    """The loaded shim library (one per process, like pyfuse3's session)."""

    def __init__(self, lib: ctypes.CDLL, path: str) -> None:
        self.path = path
        self._lib = lib
        lib.hakit_shim_set_handlers.argtypes = [_FALLOCATE, _LSEEK]
        lib.hakit_shim_set_handlers.restype = None
        lib.hakit_shim_sessions.argtypes = []
        lib.hakit_shim_sessions.restype = ctypes.c_int
        lib.hakit_reply_err.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.hakit_reply_err.restype = ctypes.c_int
        lib.hakit_reply_lseek.argtypes = [ctypes.c_void_p, ctypes.c_int64]
        lib.hakit_reply_lseek.restype = ctypes.c_int
        lib.hakit_req_caller.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64 * 3)]
        lib.hakit_req_caller.restype = None
        lib.hakit_shim_set_killpriv.argtypes = [ctypes.c_int]
        lib.hakit_shim_set_killpriv.restype = None
        lib.hakit_shim_io_state.argtypes = [ctypes.POINTER(ctypes.c_int64 * 5)]
        lib.hakit_shim_io_state.restype = None
        lib.hakit_shim_opcode_counts.argtypes = [ctypes.POINTER(ctypes.c_uint64 * _N_OPCODES)]
        lib.hakit_shim_opcode_counts.restype = None
        self._last = _LastRequest.in_dll(lib, "hakit_last_request")
        # The C side keeps raw pointers to these: they live as long as the shim.
        self._callbacks: tuple[object, object] | None = None

    def set_handlers(self, fallocate: FallocateHandler, lseek: LseekHandler) -> None:
        """Route the requests to these functions (replacing earlier ones)."""

        def on_fallocate(req: int, ino: int, mode: int, offset: int, length: int, fh: int) -> None:
            try:
                fallocate(req, ino, mode, offset, length, fh)
            except BaseException:
                log.exception("fallocate handler failed (the application gets EIO)")
                self.reply_err(req, errno.EIO)

        def on_lseek(req: int, ino: int, offset: int, whence: int, fh: int) -> None:
            try:
                lseek(req, ino, offset, whence, fh)
            except BaseException:
                log.exception("lseek handler failed (the application gets EIO)")
                self.reply_err(req, errno.EIO)

        callbacks = (_FALLOCATE(on_fallocate), _LSEEK(on_lseek))
        self._lib.hakit_shim_set_handlers(*callbacks)
        self._callbacks = callbacks

    def clear_handlers(self) -> None:
        """Back to the kernel's own answers (``EOPNOTSUPP``, ``ENOSYS``)."""
        self._lib.hakit_shim_set_handlers(_FALLOCATE(0), _LSEEK(0))
        self._callbacks = None

    def sessions(self) -> int:
        """How many FUSE sessions were created through the shim in this process."""
        return int(self._lib.hakit_shim_sessions())

    def reply_err(self, req: Request, err: int) -> None:
        """Answer ``req`` with ``err`` (0: success without data)."""
        ret = self._lib.hakit_reply_err(req, err)
        if ret != 0:
            log.error("fuse_reply_err failed: %s", os.strerror(-ret))

    def reply_lseek(self, req: Request, offset: int) -> None:
        """Answer an ``lseek`` request with the resulting offset."""
        ret = self._lib.hakit_reply_lseek(req, offset)
        if ret != 0:
            log.error("fuse_reply_lseek failed: %s", os.strerror(-ret))

    def set_killpriv(self, on: bool) -> None:
        """Whether the next mount negotiates ``FUSE_HANDLE_KILLPRIV_V2`` (custom I/O)."""
        self._lib.hakit_shim_set_killpriv(1 if on else 0)

    def io_state(self) -> IoState:
        """The custom I/O of the current session (meaningful once INIT was answered)."""
        out = (ctypes.c_int64 * 5)()
        self._lib.hakit_shim_io_state(ctypes.byref(out))
        return IoState(int(out[0]), bool(out[1]), bool(out[2]), bool(out[3]), int(out[4]))

    def opcode_counts(self) -> dict[str, int]:
        """Requests read since the mount, per operation (with the custom I/O only)."""
        out = (ctypes.c_uint64 * _N_OPCODES)()
        self._lib.hakit_shim_opcode_counts(ctypes.byref(out))
        return {OPCODES.get(i, f"op{i}"): int(n) for i, n in enumerate(out) if n}

    def kill_flag(
        self, opcode: int, nodeid: int | None = None, fh: int | None = None
    ) -> bool | None:
        """Whether the kernel asked to kill suid/sgid in the request being handled, which must be
        ``opcode`` on ``nodeid`` (or with file handle ``fh``); None if the last request read is
        not that one (it cannot be, see the module doc: the caller decides what to do then)."""
        last = self._last
        if last.opcode != opcode:
            return None
        if nodeid is not None and last.nodeid != nodeid:
            return None
        if fh is not None and last.fh != fh:
            return None
        return bool(last.kill)

    def last_caller(self) -> Caller:
        """The caller of the request being handled (the same rule as :meth:`kill_flag`)."""
        last = self._last
        return Caller(int(last.pid), int(last.uid), int(last.gid))

    def caller(self, req: Request) -> Caller:
        """The pid, uid and gid of the process that sent ``req``."""
        out = (ctypes.c_int64 * 3)()
        self._lib.hakit_req_caller(req, ctypes.byref(out))
        return Caller(int(out[0]), int(out[1]), int(out[2]))


_shim: Shim | None = None
_load_error: str | None = None


def load() -> Shim | None:
    """Load the shim once (``RTLD_GLOBAL``); None, with the reason in :func:`load_error`, if the
    package was installed without it."""
    global _shim, _load_error
    if _shim is not None or _load_error is not None:
        return _shim
    spec = importlib.util.find_spec("hakit.replication._fuseshim")
    if spec is None or spec.origin is None:
        _load_error = (
            "hakit.replication._fuseshim is not built (reinstall hakit with libfuse3-dev and a C "
            "compiler present: `make install`)"
        )
        return None
    try:
        lib = ctypes.CDLL(spec.origin, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    except OSError as exc:
        _load_error = f"{spec.origin}: {exc}"
        return None
    _shim = Shim(lib, spec.origin)
    return _shim


def load_error() -> str | None:
    """Why :func:`load` returned None (None if it did not)."""
    return _load_error
