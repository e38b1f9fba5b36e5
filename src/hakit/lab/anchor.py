"""The anchor: the "hardware" of one lab host.

Run as ``ip netns exec <lab>-<host> python -m hakit.lab.anchor --lab L --host H --srv DIR
--root DIR --pidfile FILE`` (``ip netns exec`` puts us in the host's network namespace and mounts a
``/sys`` that shows that namespace's interfaces). The launcher then:

1. unshares a mount, a UTS and a PID namespace (Python 3.11 has no ``os.unshare``: ctypes);
2. makes every mount private, so nothing done here leaks to the real host or to other hosts, and
   drops its copies of the ``nsfs`` mounts that keep named network namespaces alive;
3. binds the host-private directories over ``/srv`` and ``/run/hakit-node`` (the node's
   ``HAKIT_ROOT``) and sets the host name;
4. forks. The child is PID 1 of the new PID namespace: it mounts a fresh ``/proc`` (so ``ps`` shows
   only this host's processes), detaches from every file descriptor, ignores the polite signals and
   reaps children forever (it is init: orphans are reparented to it). Only SIGKILL from outside the
   namespace ends it, and the kernel then kills every process of the host at once.
5. the launcher writes the child's PID (as seen from the real host) to ``--pidfile`` once the child
   reports that ``/proc`` is mounted, and exits.

This module must stay importable quickly and depend on nothing but the standard library: it runs
once per host each time a lab comes up.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import re
import select
import signal
import socket
import sys

from hakit.lab.mounts import NODE_ROOT, SRV

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

READY = b"ok"
READY_TIMEOUT = 10.0

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """``unshare(2)``."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    """``mount(2)`` without filesystem data."""

    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    result = _libc.mount(
        enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), ctypes.c_void_p(None)
    )
    _check(result, f"mount {source} on {target}")


def _unescape(field: str) -> str:
    """Mount points in mountinfo have space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def detach_namespace_mounts() -> None:
    """Lazily unmount every ``nsfs`` mount (``/run/netns/*``...) of this mount namespace.

    The new mount namespace starts as a copy of the real host's, including the bind mounts that
    keep named network namespaces alive. A copy held here would keep another lab's namespaces
    (and their interfaces) alive after that lab's ``down``, for as long as this host lives.
    """
    with open("/proc/self/mountinfo") as f:
        lines = f.read().splitlines()
    targets = []
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "nsfs":
            targets.append(_unescape(left.split()[4]))
    for target in sorted(targets, key=len, reverse=True):
        _check(_libc.umount2(target.encode(), ctypes.c_int(MNT_DETACH)), f"umount {target}")


def _be_init(ready_fd: int) -> None:
    """PID 1 of the host: mount /proc, report ready, then reap children forever."""
    try:
        os.setsid()
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)
        # Block SIGCHLD before the first reap so that no exit can slip between reap and wait.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        os.chdir("/")
    except OSError as exc:
        os.write(ready_fd, f"anchor init failed: {exc}".encode())
        os._exit(1)
    os.write(ready_fd, READY)
    os.closerange(3, 65536)  # also closes ready_fd: no descriptor of the launcher stays open
    while True:
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        signal.sigwait({signal.SIGCHLD})


def launch(host: str, srv: str, root: str, pidfile: str) -> int:
    """Create the host's namespaces and its init process; return the exit status."""
    unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    detach_namespace_mounts()
    for target in (SRV, NODE_ROOT):
        os.makedirs(target, exist_ok=True)
    mount(srv, SRV, None, MS_BIND | MS_REC)
    mount(root, NODE_ROOT, None, MS_BIND | MS_REC)
    socket.sethostname(host)
    rfd, wfd = os.pipe()
    child = os.fork()  # the first child after unshare(CLONE_NEWPID) is PID 1 of the namespace
    if child == 0:
        os.close(rfd)
        _be_init(wfd)
        os._exit(0)  # not reached
    os.close(wfd)
    readable, _, _ = select.select([rfd], [], [], READY_TIMEOUT)
    answer = os.read(rfd, 4096) if readable else b""
    if answer != READY:
        os.kill(child, signal.SIGKILL)
        reason = answer.decode(errors="replace") or f"no answer within {READY_TIMEOUT:.0f} s"
        print(f"hakit lab anchor {host}: {reason}", file=sys.stderr)
        return 1
    tmp = f"{pidfile}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{child}\n")
    os.replace(tmp, pidfile)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line of the anchor launcher (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m hakit.lab.anchor")
    parser.add_argument("--lab", required=True, help="lab name (lets `lab down` find orphans)")
    parser.add_argument("--host", required=True)
    parser.add_argument("--srv", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--pidfile", required=True)
    args = parser.parse_args(argv)
    try:
        return launch(args.host, args.srv, args.root, args.pidfile)
    except OSError as exc:
        print(f"hakit lab anchor {args.host}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
