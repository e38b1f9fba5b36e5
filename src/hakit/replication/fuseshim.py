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
"""

from __future__ import annotations

import ctypes
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
        # The C side keeps raw pointers to these: they live as long as the shim.
        self._callbacks: tuple[object, object] | None = None

    def set_handlers(self, fallocate: FallocateHandler, lseek: LseekHandler) -> None:
        """Route the requests to these functions (replacing earlier ones)."""

        def on_fallocate(req: int, ino: int, mode: int, offset: int, length: int, fh: int) -> None:
            try:
                fallocate(req, ino, mode, offset, length, fh)
            except BaseException:
                log.exception("fallocate handler failed (the application gets EIO)")
                self.reply_err(req, 5)  # EIO

        def on_lseek(req: int, ino: int, offset: int, whence: int, fh: int) -> None:
            try:
                lseek(req, ino, offset, whence, fh)
            except BaseException:
                log.exception("lseek handler failed (the application gets EIO)")
                self.reply_err(req, 5)

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
