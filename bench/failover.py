"""Failover time of a mirror module vs keepalived, in the same lab, in one run.

What is measured (per trial): a client in the lab's ``client`` host opens a new TCP connection to
the VIP every 20 ms (:mod:`hakit.testing.probe`); the current primary is frozen (SIGSTOP of all its
processes: a hung server) or its link is cut; the failover time is from the fault to the end of the
first connection, started after the fault, that the other node answers. Then the fault is
repaired, the pair settles again, and the next trial fails whichever node serves.

Cases:
* ``hakit-default``: pulse 700 ms, timeout 30 s (SafeKit's defaults);
* ``hakit-fast``: pulse 100 ms, timeout 500 ms;
* ``hakit-ultra``: pulse 50 ms, timeout 250 ms (for LANs you trust; check it with ``--soak``);
* ``keepalived``: keepalived 2.2 (Debian), VRRPv3, advert_int 0.1, the same application running on
  both nodes (keepalived only moves the address).

Soak (``--soak SECONDS``, ``--soak-profile fast|ultra``): that profile under full CPU and disk
load on both nodes; any state change of the pair is a false failover.

Run as root from the repository: ``.venv/bin/python bench/failover.py --trials 20`` (about 20
minutes; ``--cases hakit-fast,keepalived`` for a quick run). Results: a JSON file under
``bench/results/`` and a Markdown table on stdout (copied to docs/performance.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hakit.lab import Lab
from hakit.testing.probe import first_answer_after

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "integration"))
from mirror_app import APP_PORT, build_module  # noqa: E402

HAKIT = str(Path(sys.executable).parent / "hakit")
MODULE = "bench"
LAB = "hkbench"


@dataclass
class CaseResult:
    case: str
    fault: str
    samples: list[float] = field(default_factory=list)
    failures: int = 0

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples)
        if not s:
            return {}
        return {
            "n": len(s),
            "min": s[0],
            "p50": statistics.median(s),
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))],
            "max": s[-1],
        }


class Probe:
    """The connect-every-20-ms client running in the lab's client host."""

    def __init__(self, lab: Lab, vip: str, workdir: Path) -> None:
        self.out = workdir / "probe.jsonl"
        self.stop = workdir / "probe.stop"
        self.stop.unlink(missing_ok=True)
        self.out.unlink(missing_ok=True)
        self.proc = lab.popen(
            "client",
            [
                sys.executable,
                "-m",
                "hakit.testing.probe",
                vip,
                str(APP_PORT),
                "--stop",
                str(self.stop),
                "--out",
                str(self.out),
                "--timeout",
                "2",
            ],
        )

    def lines(self) -> list[dict[str, object]]:
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
        return rows

    def current(self, since: float) -> str | None:
        recent = [r for r in self.lines() if float(str(r["t0"])) >= since and r["who"]]
        return str(recent[-1]["who"]) if recent else None

    def wait_answer_from(self, node: str, since: float, limit: float) -> float | None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            delay = first_answer_after(self.lines(), node, since)
            if delay is not None:
                return delay
            time.sleep(0.05)
        return None

    def close(self) -> None:
        self.stop.touch()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def hakit(lab: Lab, node: str, *args: str) -> str:
    r = lab.run(node, [HAKIT, *args], timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"on {node}: hakit {' '.join(args)}: {r.stdout}{r.stderr}")
    return r.stdout


def module_state(lab: Lab, node: str) -> tuple[str, str]:
    r = lab.run(node, [HAKIT, "state", "-m", MODULE, "--json"], timeout=30)
    if r.returncode != 0:
        return ("UNKNOWN", "Unknown")
    d = json.loads(r.stdout)
    return (str(d.get("state")), str(d.get("readiness")))


def wait_pair(lab: Lab, limit: float = 180.0) -> str:
    """Wait until one node is PRIM Ready and the other SECOND Ready; return the primary."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        s1, s2 = module_state(lab, "node1"), module_state(lab, "node2")
        if {s1, s2} == {("PRIM", "Ready"), ("SECOND", "Ready")}:
            return "node1" if s1[0] == "PRIM" else "node2"
        time.sleep(0.2)
    raise RuntimeError(f"no PRIM/SECOND pair within {limit} s: {s1} {s2}")


def inject(lab: Lab, fault: str, node: str) -> None:
    if fault == "freeze":
        lab.freeze(node)
    else:
        lab.link(node, up=False)


def repair(lab: Lab, fault: str, node: str) -> None:
    if fault == "freeze":
        lab.thaw(node)
    else:
        lab.link(node, up=True)


@contextlib.contextmanager
def lab_up() -> Iterator[Lab]:
    lab = Lab(LAB)
    with contextlib.suppress(Exception):
        lab.down()
    lab.up(nodes=2, client=True)
    try:
        yield lab
    finally:
        lab.down()


def run_hakit(
    profile: str, pulse: str, timeout: str, fault: str, trials: int, work: Path
) -> CaseResult:
    result = CaseResult(f"hakit-{profile}", fault)
    limit = float(timeout.rstrip("ms")) / (1000 if timeout.endswith("ms") else 1) + 30
    with lab_up() as lab:
        vip = lab.status().vip_free[0]
        safe = build_module(work / "bench.safe", vip=vip, pulse=pulse, timeout=timeout)
        for node in ("node1", "node2"):
            hakit(lab, node, "module", "install", "-m", MODULE, str(safe))
            hakit(lab, node, "config", "-m", MODULE)
        time.sleep(2)
        hakit(lab, "node1", "prim", "-m", MODULE)
        hakit(lab, "node2", "second", "-m", MODULE)
        probe = Probe(lab, vip, work)
        try:
            for i in range(trials):
                primary = wait_pair(lab)
                other = "node2" if primary == "node1" else "node1"
                t0 = time.monotonic()
                inject(lab, fault, primary)
                delay = probe.wait_answer_from(other, t0, limit)
                repair(lab, fault, primary)
                if delay is None:
                    result.failures += 1
                    print(f"  {result.case} trial {i}: no answer from {other}", file=sys.stderr)
                else:
                    result.samples.append(delay)
                    print(f"  {result.case} {fault} trial {i}: {delay:.3f} s", file=sys.stderr)
        finally:
            probe.close()
    return result


KEEPALIVED_CONF = """
global_defs {{
  vrrp_version 3
  script_user root
  enable_script_security
}}
vrrp_instance VI_1 {{
  state {state}
  interface eth0
  virtual_router_id 51
  priority {priority}
  advert_int 0.1
  virtual_ipaddress {{
    {vip}/24
  }}
}}
"""


def run_keepalived(fault: str, trials: int, work: Path) -> CaseResult:
    if shutil.which("keepalived") is None:
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "keepalived"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    result = CaseResult("keepalived", fault)
    with lab_up() as lab:
        vip = lab.status().vip_free[0]
        for node, state, prio in (("node1", "MASTER", 150), ("node2", "BACKUP", 100)):
            d = work / node
            d.mkdir(exist_ok=True)
            (d / "keepalived.conf").write_text(
                KEEPALIVED_CONF.format(state=state, priority=prio, vip=vip)
            )
            lab.popen(node, [sys.executable, "-m", "hakit.testing.hostname_server", str(APP_PORT)])
            lab.popen(
                node,
                [
                    "keepalived",
                    "-n",
                    "-l",
                    "-D",
                    "-f",
                    str(d / "keepalived.conf"),
                    "-p",
                    str(d / "k.pid"),
                    "-r",
                    str(d / "r.pid"),
                    "-c",
                    str(d / "c.pid"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        probe = Probe(lab, vip, work)
        try:
            for i in range(trials):
                # node1 (priority 150) preempts back after each repair.
                deadline = time.monotonic() + 60
                while probe.current(time.monotonic() - 0.5) != "node1":
                    if time.monotonic() > deadline:
                        raise RuntimeError("keepalived: node1 never served the VIP")
                    time.sleep(0.1)
                time.sleep(1.0)
                t0 = time.monotonic()
                inject(lab, fault, "node1")
                delay = probe.wait_answer_from("node2", t0, 30)
                repair(lab, fault, "node1")
                if delay is None:
                    result.failures += 1
                else:
                    result.samples.append(delay)
                    print(f"  keepalived {fault} trial {i}: {delay:.3f} s", file=sys.stderr)
        finally:
            probe.close()
    return result


PROFILES = {"default": ("700ms", "30s"), "fast": ("100ms", "500ms"), "ultra": ("50ms", "250ms")}


def soak(seconds: float, work: Path, profile: str = "fast") -> dict[str, object]:
    """Fast profile, full CPU + disk load on both nodes: count state changes (false failovers)."""
    load = textwrap.dedent(
        """
        import os, sys, time, multiprocessing
        end = time.monotonic() + float(sys.argv[1])
        def cpu():
            while time.monotonic() < end:
                pass
        def disk():
            buf = os.urandom(1 << 20)
            while time.monotonic() < end:
                with open("/srv/load.bin", "wb") as f:
                    for _ in range(64):
                        f.write(buf)
                    f.flush(); os.fsync(f.fileno())
        procs = [multiprocessing.Process(target=cpu) for _ in range(os.cpu_count() or 2)]
        procs.append(multiprocessing.Process(target=disk))
        [p.start() for p in procs]; [p.join() for p in procs]
        """
    )
    script = work / "load.py"
    script.write_text(load)
    with lab_up() as lab:
        vip = lab.status().vip_free[0]
        pulse, timeout = PROFILES[profile]
        safe = build_module(work / "soak.safe", vip=vip, pulse=pulse, timeout=timeout)
        for node in ("node1", "node2"):
            hakit(lab, node, "module", "install", "-m", MODULE, str(safe))
            hakit(lab, node, "config", "-m", MODULE)
        time.sleep(2)
        hakit(lab, "node1", "prim", "-m", MODULE)
        hakit(lab, "node2", "second", "-m", MODULE)
        wait_pair(lab)
        loads = [
            lab.popen(n, [sys.executable, str(script), str(seconds)]) for n in ("node1", "node2")
        ]
        changes: list[str] = []
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            s1, s2 = module_state(lab, "node1"), module_state(lab, "node2")
            if (s1, s2) != (("PRIM", "Ready"), ("SECOND", "Ready")) and "UNKNOWN" not in (
                s1[0],
                s2[0],
            ):
                changes.append(f"{time.monotonic():.1f}: node1 {s1} node2 {s2}")
            time.sleep(1.0)
        for p in loads:
            p.wait(timeout=seconds + 60)
        lost = hakit(lab, "node2", "log", "-m", MODULE, "-A").count("no heartbeat")
    return {
        "profile": profile,
        "seconds": seconds,
        "state_changes": changes,
        "peer_lost_events": lost,
    }


def table(results: list[CaseResult]) -> str:
    lines = [
        "| case | fault | n | min | p50 | p90 | max | failed trials |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        if s:
            lines.append(
                f"| {r.case} | {r.fault} | {s['n']:.0f} | {s['min']:.3f} s | {s['p50']:.3f} s | "
                f"{s['p90']:.3f} s | {s['max']:.3f} s | {r.failures} |"
            )
        else:
            lines.append(f"| {r.case} | {r.fault} | 0 | | | | | {r.failures} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--cases", default="hakit-default,hakit-fast,keepalived")
    parser.add_argument("--faults", default="freeze")
    parser.add_argument(
        "--soak", type=float, default=0.0, help="seconds of the load soak (0: skip)"
    )
    parser.add_argument("--soak-profile", default="fast", choices=sorted(PROFILES))
    args = parser.parse_args()
    results: list[CaseResult] = []
    extra: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="hakit-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        for fault in args.faults.split(","):
            for case in args.cases.split(","):
                print(f"== {case} / {fault}", file=sys.stderr)
                if case.startswith("hakit-") and case[6:] in PROFILES:
                    pulse, timeout = PROFILES[case[6:]]
                    results.append(run_hakit(case[6:], pulse, timeout, fault, args.trials, work))
                elif case == "keepalived":
                    results.append(run_keepalived(fault, args.trials, work))
                else:
                    raise SystemExit(f"unknown case {case}")
        if args.soak:
            print(f"== soak {args.soak:g} s", file=sys.stderr)
            extra["soak"] = soak(args.soak, work, args.soak_profile)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = out_dir / f"failover-{stamp}.json"
    out.write_text(
        json.dumps(
            {"results": [asdict(r) | {"summary": r.summary()} for r in results], **extra}, indent=1
        )
    )
    print(table(results))
    if extra:
        print(json.dumps(extra, indent=1))
    print(f"\n(raw data: {out.relative_to(REPO)})")


if __name__ == "__main__":
    main()
