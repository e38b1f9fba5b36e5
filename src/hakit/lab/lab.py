"""The test lab: several Linux "servers" on one machine, built from namespaces.

Theory of operation
-------------------
A lab called ``L`` (``HAKIT_LAB``, default ``hakit``) is:

* a switch: network namespace ``L-sw`` holding bridge ``br0`` (STP off, forwarding at once, no
  multicast snooping: a dumb switch). Nothing connects it to the real host, so the lab subnet is not
  routed from or to the host;
* per host (``node1``..``nodeN``, optionally ``client``): network namespace ``L-<host>`` whose
  ``eth0`` is one end of a veth pair; the other end, ``v-<host>``, is a port of ``br0``;
* per host an *anchor* (:mod:`hakit.lab.anchor`): PID 1 of the host's own PID namespace, also
  holding its mount and UTS namespaces. ``/srv`` and ``/run/hakit-node`` (the node's
  ``HAKIT_ROOT``) are host-private directories bound from ``/var/tmp/hakit-lab/L/<host>/``; every
  other path is the real host's. The anchor is the host's hardware: it lives as long as the host is
  powered;
* ``hakitd`` on every node, started through ``nsenter`` and re-parented to the anchor, as a real
  daemon is to init.

The state file ``/var/tmp/hakit-lab/L/lab.json`` records what exists; commands that change the lab
take an exclusive lock (``/var/tmp/hakit-lab/L.lock``) so that concurrent callers serialize.

Faults: ``kill`` is a power loss (every process but the anchor gets SIGKILL, and the host's NIC
goes dark so its kernel stops answering for addresses it held); ``start`` after a kill is the power
coming back (a fresh boot: new anchor, so new PID and mount namespaces without the mounts of the
previous life, runtime network state reset to the lab's own address, then ``hakitd``). ``freeze``
stops every process (the kernel still answers ARP and handshakes, as with a hung server);
``link down`` pulls the cable at the switch.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import hakit
from hakit.errors import HakitError, LocalSystemError, NotFoundError, UserConfigError
from hakit.lab import procs
from hakit.lab.mounts import NODE_ROOT, SRV
from hakit.lab.plan import (
    BRIDGE,
    CLIENT,
    DEFAULT_LAB,
    HOST_IFACE,
    SWITCH_SUFFIX,
    LabShape,
    check_lab_name,
    cluster_xml,
    lab_namespaces,
    netns_name,
    new_cluster_key,
    switch_port,
)
from hakit.lab.state import HostState, LabState, load_state, save_state
from hakit.paths import NodePaths

STATE_BASE = Path("/var/tmp/hakit-lab")
DEFAULT_HTTP_PORT = 9010
ANCHOR_TIMEOUT = 20.0  # seconds for all anchors of a lab to come up
HAKITD_EXEC_GRACE = 3.0  # seconds for the forked daemon to exec
HAKITD_READY_TIMEOUT = 30.0  # seconds for hakitd to listen on its HTTP port
SIGNAL_TIMEOUT = 10.0  # seconds for a node's processes to die or stop
POLL = 0.02


@dataclass(frozen=True)
class HostStatus:
    """What ``lab status`` reports about one host."""

    name: str
    role: str
    addr: str
    netns: str
    anchor_pid: int
    alive: bool  # the anchor (the host's hardware) exists
    powered: bool
    link_up: bool  # switch-side port state
    frozen: bool
    processes: int  # processes of the host, anchor excluded
    hakitd_pid: int | None


@dataclass(frozen=True)
class LabStatus:
    """What ``lab status`` reports."""

    lab: str
    subnet: str
    state_dir: str
    hakitd: bool  # False: a lab of bare hosts (`up --no-hakitd`)
    hosts: tuple[HostStatus, ...]
    vip_free: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``lab status --json``)."""
        return asdict(self)


@dataclass(frozen=True)
class UpResult:
    """Outcome of ``lab up``: the lab, and whether this call created it."""

    state: LabState
    created: bool


def lab_name_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The lab name: ``HAKIT_LAB``, default ``hakit``."""
    env = os.environ if environ is None else environ
    return check_lab_name(env.get("HAKIT_LAB") or DEFAULT_LAB)


def is_hakitd(argv: Sequence[str]) -> bool:
    """True if ``argv`` is a hakitd process: the console script, ``python -m``, or being launched.

    Only the program (and for Python, the script or module) counts, so that ``pgrep hakitd`` or
    ``tail hakitd.out`` running on a node are not mistaken for the daemon.
    """
    args = list(argv)
    if args and os.path.basename(args[0]) == "setsid":  # how the lab launches it
        args = args[1:]
        while args and args[0].startswith("-"):
            args = args[1:]
    if not args:
        return False
    if os.path.basename(args[0]) == "hakitd":
        return True
    if os.path.basename(args[0]).startswith("python") and len(args) > 1:
        return os.path.basename(args[1]) == "hakitd" or args[1:3] == ["-m", "hakit.daemon.main"]
    return False


def _run(argv: Sequence[str], what: str, timeout: float = 30.0) -> str:
    """Run a system command; a failure raises LocalSystemError naming the command and its error."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        raise LocalSystemError(f"{what}: `{argv[0]}` is not installed (make install)") from None
    except subprocess.TimeoutExpired:
        raise LocalSystemError(f"{what}: `{' '.join(argv)}` timed out after {timeout} s") from None
    if res.returncode != 0:
        raise LocalSystemError(
            f"{what}: `{' '.join(argv)}` failed (exit {res.returncode}): {res.stderr.strip()}"
        )
    return res.stdout


def _ip(*args: str, what: str) -> str:
    return _run(["ip", *args], what)


class Lab:
    """One named lab. Every method is idempotent; errors say what to do next.

    ``base`` is where state lives (``/var/tmp/hakit-lab``); ``environ`` is the environment given to
    the processes the lab starts (default: this process's).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        base: Path = STATE_BASE,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.name = check_lab_name(name) if name else lab_name_from_env()
        self.base = base
        self.dir = base / self.name
        self.state_file = self.dir / "lab.json"
        self.lock_file = base / f"{self.name}.lock"
        self._environ = dict(os.environ if environ is None else environ)

    # ------------------------------------------------------------------ paths and environment

    def host_dir(self, host: str) -> Path:
        """Real-host directory holding ``host``'s private files."""
        return self.dir / host

    def node_root(self, host: str) -> Path:
        """Real-host path of ``host``'s ``HAKIT_ROOT`` (seen as /run/hakit-node on the host)."""
        return self.host_dir(host) / "root"

    def node_srv(self, host: str) -> Path:
        """Real-host path of ``host``'s ``/srv``."""
        return self.host_dir(host) / "srv"

    def environment(self, host: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment of a command run on ``host``: ``base`` plus the host's own settings."""
        env = dict(self._environ if base is None else base)
        env.update(HAKIT_ROOT=NODE_ROOT, HAKIT_NODE=host, HAKIT_LAB_HOST=host, HAKIT_LAB=self.name)
        return env

    # ------------------------------------------------------------------ reading the lab

    def load(self) -> LabState | None:
        """The lab's recorded state, None if the lab is not up."""
        return load_state(self.state_file)

    def require(self) -> LabState:
        """The lab's state; raises NotFoundError if there is no lab."""
        state = self.load()
        if state is None:
            raise NotFoundError(
                f"no lab {self.name!r} is up (no {self.state_file}): run `hakit lab up` first"
            )
        return state

    def host(self, name: str, state: LabState | None = None) -> HostState:
        """Host ``name`` of the lab, checked to be alive."""
        hs = self._record(name, state or self.require())
        if not procs.is_alive(hs.anchor_pid, hs.anchor_start):
            raise LocalSystemError(
                f"lab {self.name!r}: host {name} lost its anchor process {hs.anchor_pid} "
                "(killed from outside the lab?); run `hakit lab down` then `hakit lab up`"
            )
        return hs

    def _record(self, name: str, state: LabState) -> HostState:
        """Host ``name`` as recorded (alive or not); NotFoundError naming the lab's hosts."""
        hs = state.host(name)
        if hs is None:
            names = ", ".join(h.name for h in state.hosts)
            raise NotFoundError(f"lab {self.name!r} has no host {name!r} (hosts: {names})")
        return hs

    def processes(self, host: str) -> list[int]:
        """Real-host pids of ``host``'s processes (its PID namespace), the anchor excluded."""
        return self._pids_of(self.host(host))

    def hakitd_pid(self, host: str) -> int | None:
        """Real-host pid of ``host``'s hakitd, None if it does not run."""
        return self._hakitd_of(self.host(host))

    def status(self) -> LabStatus:
        """The lab as it is now (raises NotFoundError if there is none)."""
        state = self.require()
        links = self._switch_links()
        hosts = []
        used: set[str] = set()
        for hs in state.hosts:
            alive = procs.is_alive(hs.anchor_pid, hs.anchor_start)
            pids = self._pids_of(hs) if alive else []
            states = [s.state for s in map(procs.stat, pids) if s is not None]
            hosts.append(
                HostStatus(
                    name=hs.name,
                    role=hs.role,
                    addr=hs.addr,
                    netns=hs.netns,
                    anchor_pid=hs.anchor_pid,
                    alive=alive,
                    powered=hs.powered,
                    link_up=links.get(switch_port(hs.name), False),
                    frozen=bool(states) and all(s in "Tt" for s in states),
                    processes=len(pids),
                    hakitd_pid=self._hakitd_of(hs) if alive and hs.is_node else None,
                )
            )
            used |= self._addresses(hs.netns)
        free = tuple(a for a in state.shape.vip_candidates() if a not in used)
        return LabStatus(
            lab=self.name,
            subnet=state.shape.subnet,
            state_dir=str(self.dir),
            hakitd=state.shape.hakitd,
            hosts=tuple(hosts),
            vip_free=free,
        )

    # ------------------------------------------------------------------ running commands on hosts

    def command(self, host: str, argv: Sequence[str], cwd: str | None = None) -> list[str]:
        """The real-host command line that runs ``argv`` on ``host`` in directory ``cwd``.

        ``cwd`` defaults to the caller's; it is resolved inside the host (``/srv`` is the host's).
        """
        hs = self.host(host)
        wd = cwd or os.getcwd()
        if not os.path.isdir(f"/proc/{hs.anchor_pid}/root{wd}"):
            raise NotFoundError(f"directory {wd} does not exist on {host}: cd elsewhere (e.g. /)")
        args = list(argv) or [self._environ.get("SHELL") or "/bin/sh"]
        return [
            "nsenter",
            "-t",
            str(hs.anchor_pid),
            "-n",
            "-m",
            "-p",
            "-u",
            f"--wdns={wd}",
            "--",
            *args,
        ]

    def exec(self, host: str, argv: Sequence[str]) -> NoReturn:
        """Replace this process by ``argv`` run on ``host`` (streams and exit code pass through)."""
        cmd = self.command(host, argv)
        env = self.environment(host)
        try:
            os.execvpe(cmd[0], cmd, env)
        except OSError as exc:
            raise LocalSystemError(f"cannot run nsenter: {exc} (install util-linux)") from None

    def popen(
        self, host: str, argv: Sequence[str], *, cwd: str | None = None, **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``host`` in the background, in its own process group.

        Stop it with ``os.killpg(proc.pid, sig)``: the group holds both nsenter and the command.
        """
        kwargs.setdefault("env", self.environment(host))
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(host, argv, cwd), **kwargs)

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on ``host`` and capture its output (text).

        On timeout the whole process group is killed, so nothing is left running in the host.
        With ``check``, a non-zero exit raises HakitError with the command's stderr.
        """
        cmd = self.command(host, argv, cwd)
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.environment(host, env),
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise HakitError(f"on {host}: `{' '.join(argv)}` timed out after {timeout} s") from None
        result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and result.returncode != 0:
            raise HakitError(
                f"on {host}: `{' '.join(argv)}` exited {result.returncode}: {err.strip()}"
            )
        return result

    # ------------------------------------------------------------------ up / down

    def up(
        self,
        nodes: int = 2,
        client: bool = False,
        subnet: str | None = None,
        hakitd: bool = True,
    ) -> UpResult:
        """Create the lab (or report the existing one if it has the same shape).

        With ``hakitd=False`` the nodes are bare hosts (no daemon is started, now or by ``start``).
        """
        shape = LabShape.parse(nodes, client, subnet, hakitd)
        with self._locked():
            existing = self.load()
            if existing is not None:
                return UpResult(self._check_same(existing, shape), created=False)
            leftovers = lab_namespaces(self.name, self._netns_list())
            if leftovers or self._orphan_anchors():
                raise LocalSystemError(
                    f"lab {self.name!r} has leftovers of an earlier run "
                    f"({', '.join(leftovers) or 'anchor processes'}) but no state file: "
                    "run `hakit lab down` first"
                )
            self._preflight()
            daemon = self._hakitd_path() if shape.hakitd else ""
            try:
                state = self._create(shape)
                if daemon:
                    self._start_hakitd([h for h in state.hosts if h.is_node], daemon)
            except BaseException:
                # Never leave half a lab behind (also on Ctrl-C): remove what was created.
                with contextlib.suppress(Exception):
                    self._down_locked()
                raise
            return UpResult(state, created=True)

    def down(self) -> list[str]:
        """Remove the lab and any leftover of a crashed run; returns what was removed."""
        with self._locked():
            return self._down_locked()

    # ------------------------------------------------------------------ faults

    def kill(self, host: str) -> int:
        """Power loss: SIGKILL every process of ``host`` (not the anchor), cut its NIC.

        Returns the number of processes killed.
        """
        with self._locked():
            state = self.require()
            hs = self.host(host, state)
            killed = self._signal_until(hs, signal.SIGKILL, done=lambda pids: not pids)
            _ip("-n", hs.netns, "link", "set", HOST_IFACE, "down", what=f"power off {host}")
            save_state(self.state_file, state.with_host(replace(hs, powered=False)))
            return killed

    def freeze(self, host: str) -> int:
        """SIGSTOP every process of ``host``; returns how many processes are stopped."""
        with self._locked():
            hs = self.host(host)

            def all_stopped(pids: list[int]) -> bool:
                return all(_state(p) in ("T", "t", None) for p in pids)

            self._signal_until(hs, signal.SIGSTOP, done=all_stopped)
            return len(self._pids_of(hs))

    def thaw(self, host: str) -> int:
        """SIGCONT every process of ``host``; returns how many processes were resumed."""
        with self._locked():
            hs = self.host(host)
            pids = self._pids_of(hs)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            return len(pids)

    def link(self, host: str, up: bool) -> None:
        """Plug (``up``) or pull (not ``up``) ``host``'s cable at the switch: both directions."""
        with self._locked():
            self.host(host)
            state = "up" if up else "down"
            _ip(
                "-n",
                netns_name(self.name, SWITCH_SUFFIX),
                "link",
                "set",
                switch_port(host),
                state,
                what=f"link {host} {state}",
            )

    def start(self, host: str) -> str:
        """Power ``host`` on after a kill (fresh boot), or start its hakitd if it is not running.

        Returns a one-line description of what was done.
        """
        with self._locked():
            state = self.require()
            hs = self._record(host, state)
            runs_hakitd = hs.is_node and state.shape.hakitd
            # A host whose anchor died (killed from outside the lab) boots like after a power loss.
            if not hs.powered or not procs.is_alive(hs.anchor_pid, hs.anchor_start):
                hakitd = self._hakitd_path() if runs_hakitd else ""
                hs = self._boot(hs)
                save_state(self.state_file, state.with_host(hs))
                if hakitd:
                    self._start_hakitd([hs], hakitd)
                    return f"{host}: powered on, hakitd started"
                return f"{host}: powered on"
            if not runs_hakitd:
                return f"{host}: already running (it runs no hakitd)"
            if self._hakitd_of(hs) is not None:
                return f"{host}: hakitd already running"
            self._start_hakitd([hs], self._hakitd_path())
            return f"{host}: hakitd started"

    # ------------------------------------------------------------------ internals: creation

    def _preflight(self) -> None:
        if os.geteuid() != 0:
            raise LocalSystemError("the lab needs root (network namespaces): run as root")
        for tool in ("ip", "nsenter", "setsid"):
            if shutil.which(tool) is None:
                raise LocalSystemError(f"`{tool}` is not installed: run `make install`")

    def _hakitd_path(self) -> str:
        """Path of the hakitd executable; a clear error if this installation has none."""
        if importlib.util.find_spec("hakit.daemon.main") is None:
            raise LocalSystemError(
                "hakitd is not available: module hakit.daemon.main is missing from this "
                "installation; the lab starts the real daemon on every node"
            )
        beside = Path(sys.executable).parent / "hakitd"
        if beside.is_file():
            return str(beside)
        found = shutil.which("hakitd", path=self._environ.get("PATH"))
        if found is None:
            raise LocalSystemError(
                f"hakitd not found next to {sys.executable} nor on PATH: run `make install`"
            )
        return found

    def _check_same(self, existing: LabState, shape: LabShape) -> LabState:
        if existing.shape != shape:
            raise UserConfigError(
                f"lab {self.name!r} is already up with {existing.shape.describe()}, not "
                f"{shape.describe()}: run `hakit lab down` first"
            )
        for hs in existing.hosts:
            self.host(hs.name, existing)  # raises if an anchor is gone
        return existing

    def _create(self, shape: LabShape) -> LabState:
        hosts = shape.host_names()
        self.dir.mkdir(parents=True, exist_ok=True)
        key = new_cluster_key()
        xml = cluster_xml(shape)
        for host in hosts:
            self.node_srv(host).mkdir(parents=True, exist_ok=True)
            paths = NodePaths(self.node_root(host))
            paths.ensure()
            if host != CLIENT:
                paths.cluster_xml.write_text(xml)
                fd = os.open(paths.cluster_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(key + "\n")
        # Bind targets must exist on the real host (empty directories: nothing is mounted there).
        for target in (SRV, NODE_ROOT):
            os.makedirs(target, exist_ok=True)
        sw = netns_name(self.name, SWITCH_SUFFIX)
        what = f"create lab {self.name!r}"
        _ip("netns", "add", sw, what=what)
        _ip("-n", sw, "link", "set", "lo", "up", what=what)
        _ip(
            "-n", sw, "link", "add", BRIDGE, "type", "bridge",
            "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0", what=what,
        )  # fmt: skip
        _ip("-n", sw, "link", "set", BRIDGE, "up", what=what)
        for host in hosts:
            ns = netns_name(self.name, host)
            port = switch_port(host)
            _ip("netns", "add", ns, what=what)
            _ip(
                "-n", sw, "link", "add", port, "type", "veth",
                "peer", "name", HOST_IFACE, "netns", ns, what=what,
            )  # fmt: skip
            _ip("-n", sw, "link", "set", port, "master", BRIDGE, "up", what=what)
            self._net_boot(ns, f"{shape.address(host)}/{shape.prefixlen}")
        anchors = self._start_anchors(hosts)
        state = LabState(
            lab=self.name,
            shape=shape,
            hosts=tuple(
                HostState(
                    name=h,
                    role="client" if h == CLIENT else "node",
                    addr=shape.address(h),
                    netns=netns_name(self.name, h),
                    anchor_pid=anchors[h][0],
                    anchor_start=anchors[h][1],
                )
                for h in hosts
            ),
        )
        save_state(self.state_file, state)
        return state

    def _net_boot(self, ns: str, cidr: str) -> None:
        """Network state of a freshly booted host: lo up, its one address on eth0, eth0 up."""
        what = f"configure {ns}"
        _ip("-n", ns, "link", "set", "lo", "up", what=what)
        _ip("-n", ns, "addr", "replace", cidr, "dev", HOST_IFACE, what=what)
        _ip("-n", ns, "link", "set", HOST_IFACE, "up", what=what)

    def _start_anchors(self, hosts: Sequence[str]) -> dict[str, tuple[int, int]]:
        """Start one anchor per host (in parallel); returns host -> (pid, start time)."""
        env = dict(self._environ)
        # The anchor must import this very hakit, even when it is not installed in site-packages.
        src = str(Path(hakit.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        launched: dict[str, tuple[subprocess.Popen[str], Path]] = {}
        for host in hosts:
            pidfile = self.host_dir(host) / "anchor.pid"
            pidfile.unlink(missing_ok=True)
            argv = [
                "ip", "netns", "exec", netns_name(self.name, host),
                sys.executable, "-m", "hakit.lab.anchor", "--lab", self.name, "--host", host,
                "--srv", str(self.node_srv(host)), "--root", str(self.node_root(host)),
                "--pidfile", str(pidfile),
            ]  # fmt: skip
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            launched[host] = (proc, pidfile)
        result: dict[str, tuple[int, int]] = {}
        errors: list[str] = []
        deadline = time.monotonic() + ANCHOR_TIMEOUT
        for host, (proc, pidfile) in launched.items():
            try:
                _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                errors.append(f"{host}: anchor did not start within {ANCHOR_TIMEOUT:.0f} s")
                continue
            if proc.returncode != 0:
                errors.append(f"{host}: {err.strip() or f'anchor exited {proc.returncode}'}")
                continue
            pid = int(pidfile.read_text())
            st = procs.stat(pid)
            if st is None:
                errors.append(f"{host}: anchor {pid} died right after starting")
                continue
            result[host] = (pid, st.start_time)
        if errors:
            raise LocalSystemError("cannot start lab hosts: " + "; ".join(errors))
        return result

    def _boot(self, hs: HostState) -> HostState:
        """Power-on after a kill: new anchor, runtime network state back to the lab's own."""
        if procs.is_alive(hs.anchor_pid, hs.anchor_start):
            os.kill(hs.anchor_pid, signal.SIGKILL)  # PID 1 dies: the kernel kills the rest
            self._wait(
                lambda: not procs.is_alive(hs.anchor_pid, hs.anchor_start),
                f"old anchor of {hs.name} to exit",
            )
        state = self.require()
        self._net_reset(hs.netns, hs.addr)
        _ip("-n", hs.netns, "neigh", "flush", "all", what=f"boot {hs.name}")  # ARP cache is RAM
        if shutil.which("nft"):
            # A farm module leaves nftables rules behind; a rebooted server has none.
            _run(["ip", "netns", "exec", hs.netns, "nft", "flush", "ruleset"], f"boot {hs.name}")
        self._net_boot(hs.netns, f"{hs.addr}/{state.shape.prefixlen}")
        pid, start = self._start_anchors([hs.name])[hs.name]
        return replace(hs, anchor_pid=pid, anchor_start=start, powered=True)

    def _net_reset(self, ns: str, own_addr: str) -> None:
        """Delete every address the host's software added (virtual IPs...): a reboot loses them."""
        out = _ip("-j", "-n", ns, "addr", "show", what=f"read addresses of {ns}")
        for link in json.loads(out or "[]"):
            ifname = link.get("ifname", "")
            for info in link.get("addr_info", []):
                local = info.get("local", "")
                keep = (
                    info.get("scope") == "link"
                    or (ifname == "lo" and local in ("127.0.0.1", "::1"))
                    or (ifname == HOST_IFACE and local == own_addr)
                )
                if not keep:
                    cidr = f"{local}/{info.get('prefixlen')}"
                    _ip("-n", ns, "addr", "del", cidr, "dev", ifname, what=f"reset {ns}")

    # ------------------------------------------------------------------ internals: hakitd

    def _hakitd_of(self, hs: HostState) -> int | None:
        for pid in self._pids_of(hs):
            if is_hakitd(procs.cmdline(pid)):
                return pid
        return None

    def _start_hakitd(self, hosts: Sequence[HostState], hakitd: str) -> None:
        """Start hakitd on ``hosts`` (detached, child of the host's init), wait until it listens."""
        port = int(self._environ.get("HAKIT_HTTP_PORT") or DEFAULT_HTTP_PORT)
        for hs in hosts:
            log = NodePaths(self.node_root(hs.name)).log / "hakitd.out"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:
                # setsid -f: the daemon is forked away from nsenter, re-parented to the anchor
                # (as to init on a real server), and nsenter returns at once.
                argv = self.command(hs.name, ["setsid", "-f", hakitd], cwd="/")
                res = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    env=self.environment(hs.name),
                    timeout=30,
                )
            if res.returncode != 0:
                raise LocalSystemError(f"cannot start hakitd on {hs.name} (see {log})")
        pending = {hs.name: hs for hs in hosts}
        started = time.monotonic()
        deadline = started + HAKITD_READY_TIMEOUT
        while pending:
            for name, hs in list(pending.items()):
                # `setsid -f` returns before its child has exec'ed hakitd: give it a moment
                # before calling its absence an exit.
                if self._hakitd_of(hs) is None and time.monotonic() - started > HAKITD_EXEC_GRACE:
                    raise LocalSystemError(
                        f"hakitd on {name} exited during startup; its last output:\n"
                        f"{self._log_tail(name)}"
                    )
                if port in procs.listening_tcp_ports(hs.anchor_pid):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                names = ", ".join(sorted(pending))
                raise LocalSystemError(
                    f"hakitd on {names} does not listen on port {port} after "
                    f"{HAKITD_READY_TIMEOUT:.0f} s; last output of {sorted(pending)[0]}:\n"
                    f"{self._log_tail(sorted(pending)[0])}"
                )
            if pending:
                time.sleep(0.05)

    def _hakitd_log(self, host: str) -> Path:
        return NodePaths(self.node_root(host)).log / "hakitd.out"

    def _log_tail(self, host: str, lines: int = 15) -> str:
        try:
            text = self._hakitd_log(host).read_text(errors="replace")
        except OSError:
            return "(no output)"
        return "\n".join(text.splitlines()[-lines:]) or "(no output)"

    # ------------------------------------------------------------------ internals: processes

    def _pids_of(self, hs: HostState) -> list[int]:
        if not procs.is_alive(hs.anchor_pid, hs.anchor_start):
            # The anchor is gone and its pid may now be another lab's anchor: never signal
            # processes through a recycled pid.
            return []
        pidns = procs.ns_id(hs.anchor_pid, "pid")
        if pidns is None:
            return []
        if pidns == procs.ns_id(os.getpid(), "pid"):
            # Would select (and signal) every process of the machine.
            raise LocalSystemError(
                f"lab {self.name!r}: anchor {hs.anchor_pid} of {hs.name} is not in a PID namespace "
                "of its own; run `hakit lab down` then `hakit lab up`"
            )
        return procs.pids_in_ns("pid", pidns, exclude=hs.anchor_pid)

    def _signal_until(self, hs: HostState, sig: int, done: Any) -> int:
        """Send ``sig`` to the host's processes until ``done(pids)``; processes may fork."""
        signalled: set[int] = set()
        deadline = time.monotonic() + SIGNAL_TIMEOUT
        while True:
            pids = self._pids_of(hs)
            if done(pids):
                return len(signalled)
            if time.monotonic() > deadline:
                raise LocalSystemError(
                    f"{hs.name}: processes {pids[:10]} still there after "
                    f"{SIGNAL_TIMEOUT:.0f} s of {signal.Signals(sig).name} (stuck in the kernel?)"
                )
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                signalled.add(pid)
            time.sleep(POLL)

    def _wait(self, cond: Any, what: str, timeout: float = SIGNAL_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise LocalSystemError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(POLL)

    def _orphan_anchors(self) -> list[int]:
        """Anchor processes of this lab, whether or not the state file knows them."""
        found = []
        for pid in procs.all_pids():
            argv = procs.cmdline(pid)
            if "hakit.lab.anchor" in argv and _follows(argv, "--lab", self.name):
                found.append(pid)
        return found

    # ------------------------------------------------------------------ internals: network

    def _netns_list(self) -> list[str]:
        out = _ip("netns", "list", what="list network namespaces")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def _switch_links(self) -> dict[str, bool]:
        sw = netns_name(self.name, SWITCH_SUFFIX)
        try:
            out = _ip("-j", "-n", sw, "link", "show", what="read switch ports")
        except LocalSystemError:
            return {}
        return {link["ifname"]: "UP" in link.get("flags", []) for link in json.loads(out or "[]")}

    def _addresses(self, ns: str) -> set[str]:
        try:
            out = _ip("-j", "-n", ns, "addr", "show", what=f"read addresses of {ns}")
        except LocalSystemError:
            return set()
        return {
            info.get("local", "")
            for link in json.loads(out or "[]")
            for info in link.get("addr_info", [])
        }

    # ------------------------------------------------------------------ internals: teardown

    def _down_locked(self) -> list[str]:
        removed: list[str] = []
        state = None
        with contextlib.suppress(LocalSystemError):
            state = self.load()
        namespaces = lab_namespaces(self.name, self._netns_list())
        anchors = set(self._orphan_anchors())
        if state is not None:
            anchors |= {
                h.anchor_pid for h in state.hosts if procs.is_alive(h.anchor_pid, h.anchor_start)
            }
        # Everything living in one of the lab's namespaces goes: the anchors' PID namespaces (the
        # nodes' processes), and any process that joined a lab network or mount namespace.
        doomed_ns = {procs.ns_id(p, "pid") for p in anchors} | {
            procs.ns_id(p, "mnt") for p in anchors
        }
        doomed_ns |= {procs.file_ns_id(f"/run/netns/{ns}") for ns in namespaces}
        doomed_ns.discard(None)
        me = os.getpid()
        # Never the real host's own namespaces: an anchor launcher caught mid-start still lives in
        # them, and matching them would kill every process of the machine.
        doomed_ns -= {procs.ns_id(me, kind) for kind in ("pid", "mnt", "net")}

        def lab_processes() -> list[int]:
            return [
                pid
                for pid in procs.all_pids()
                if pid != me
                and (
                    pid in anchors
                    or any(procs.ns_id(pid, k) in doomed_ns for k in ("pid", "mnt", "net"))
                )
                and not procs.is_zombie(pid)
            ]

        victims = lab_processes()
        for pid in anchors:  # PID 1 first: the kernel then kills its whole namespace at once
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + SIGNAL_TIMEOUT
        while pids := lab_processes():
            if time.monotonic() > deadline:
                raise LocalSystemError(
                    f"lab {self.name!r}: processes {pids[:10]} survive SIGKILL; "
                    "retry `hakit lab down` in a moment"
                )
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(POLL)
        if victims:
            removed.append(f"{len(victims)} processes ({len(anchors)} anchors)")
        for ns in namespaces:
            _ip("netns", "delete", ns, what=f"remove lab {self.name!r}")
        if namespaces:
            removed.append(f"{len(namespaces)} namespaces ({', '.join(namespaces)})")
        # Nothing of the lab is mounted in the real host's namespace; unmount what a crash left.
        for line in procs.mountinfo_mentions(os.getpid(), (f"{self.dir}/",)):
            _run(["umount", "-l", line.split()[4]], f"remove lab {self.name!r}")
            removed.append(f"mount {line.split()[4]}")
        if self.dir.exists():
            shutil.rmtree(self.dir)
            removed.append(str(self.dir))
        self._remove_shared_dirs()
        # Removed while we hold it: a waiter notices the file changed and locks the new one.
        self.lock_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.base.rmdir()  # only when empty: other labs keep their files
        return removed

    def _remove_shared_dirs(self) -> None:
        """Remove /run/hakit-node once no lab is left (other labs' nodes have mounts on it)."""
        others = [p for p in self.base.iterdir() if p.is_dir()] if self.base.exists() else []
        if not others:
            # Never while another lab is up: removing a directory that is a mount point in other
            # mount namespaces silently detaches those mounts.
            with contextlib.suppress(OSError):
                os.rmdir(NODE_ROOT)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock of this lab's lock file (held across processes)."""
        if os.geteuid() != 0:
            raise LocalSystemError("the lab needs root (network namespaces): run as root")
        while True:
            self.base.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.lock_file).st_ino
            except FileNotFoundError:
                current = -1
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # someone removed the file while we waited: lock the new one
        try:
            yield
        finally:
            os.close(fd)


def _follows(argv: list[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(argv))


def _state(pid: int) -> str | None:
    st = procs.stat(pid)
    return None if st is None else st.state


__all__ = ["HostStatus", "Lab", "LabStatus", "UpResult", "lab_name_from_env"]
