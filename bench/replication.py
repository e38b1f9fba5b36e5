"""What synchronous replication costs an application, measured in the lab, raw vs replicated, in one run.

Setup: a 2-node lab (:mod:`hakit.lab`, lab ``hkrepl``, hakitd on both nodes) and a mirror module
``repbench`` whose only resource is ``<rfs><replicated dir="/srv/data"/></rfs>`` (plus a VIP, as a
real module has); node1 is PRIM, node2 SECOND, both Ready (the initial synchronization is over)
before anything is measured.

Cases, both on node1, both on the same file system (the lab's ``/srv`` of node1, a directory
under ``/var/tmp`` of the real machine):

* ``raw``: ``/srv/raw``, a plain directory;
* ``replicated``: ``/srv/data`` seen through the replicated mount (``fuse.hakit-rfs``, checked in
  node1's mount table before measuring), every mutation acknowledged by node2 before it returns;
* ``alone`` (with ``--alone``, after the rounds above): the module is stopped on node2, node1 goes
  ALONE and keeps the mount with no peer to wait for: what the interception alone costs. Its rounds
  alternate with raw again.

Workload (``python -m hakit.testing.workloads bench-io DIR`` run on node1, which prints JSON):
1 MiB sequential writes then one fsync (MiB/s); 4 KiB writes at random aligned offsets of a 64 MiB
file, one thread (IOPS); 4 KiB write + fsync latency (p50/p99 µs); metadata: create, rename and
unlink of 1000 files (ops/s). The two cases alternate for ``--rounds`` rounds (raw first in each)
so that drift in the machine's load hits both alike; each metric is the median over the rounds
and each case's ratio is to the median of the raw rounds it alternated with.

After the measurements, a consistency check: ``fsx`` on ``/srv/data/verify`` through the mount on
node1, then the tree digests (:mod:`hakit.testing.workloads`) of ``/srv/data`` on node1 and node2
are compared; the result is recorded (the benchmark does not fail on it: the lab tests do).

Run as root from the repository: ``.venv/bin/python bench/replication.py`` (a few minutes;
``--quick`` for tiny workloads that only check the harness; ``--raw-only`` measures the raw case
alone, without any module). Results: ``bench/results/replication-<UTC time>.json`` and a Markdown
table on stdout (copied into docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import HAKIT, REPO, fresh_lab, git_state, hakit, run_on

from hakit.lab import Lab
from hakit.testing.lab_module import mirror_userconfig, replicated, write_safe
from hakit.testing.workloads import compare_digests

LAB = "hkrepl"
MODULE = "repbench"
RAW_DIR = "/srv/raw"
DATA_DIR = "/srv/data"
FSTYPE = "fuse.hakit-rfs"

METRICS = {  # name: (label, higher is better)
    "seq_mib_s": ("1 MiB sequential writes + fsync, MiB/s", True),
    "rand4k_iops": ("4 KiB random writes, IOPS (1 thread)", True),
    "fsync4k_p50_us": ("4 KiB write+fsync p50, µs", False),
    "fsync4k_p99_us": ("4 KiB write+fsync p99, µs", False),
    "meta_ops_s": ("create/rename/unlink, ops/s", True),
}
FULL = {
    "seq-mib": 256,
    "rand-ops": 4000,
    "rand-file-mib": 64,
    "fsync-ops": 1000,
    "meta-files": 1000,
}
QUICK = {"seq-mib": 8, "rand-ops": 200, "rand-file-mib": 4, "fsync-ops": 50, "meta-files": 50}


def build_module(out: Path, vip: str, rfs_async: str | None) -> Path:
    """Write the module archive (the lab template, one replicated directory, no scripts)."""
    attrs = f' async="{rfs_async}"' if rfs_async else ""
    conf = mirror_userconfig(vip=vip, rfs=replicated(DATA_DIR, attrs))
    return write_safe(out, conf)


# ---- lab helpers ------------------------------------------------------------------------------


def module_state(lab: Lab, node: str) -> tuple[str, str]:
    r = lab.run(node, [HAKIT, "state", "-m", MODULE, "--json"], timeout=30, cwd="/")
    if r.returncode != 0:
        return ("UNKNOWN", "Unknown")
    d = json.loads(r.stdout)
    return (str(d.get("state")), str(d.get("readiness")))


def wait_pair(lab: Lab, limit: float = 300.0) -> None:
    """Wait until node1 is PRIM Ready and node2 SECOND Ready (the initial sync is over)."""
    deadline = time.monotonic() + limit
    s1 = s2 = ("UNKNOWN", "Unknown")
    while time.monotonic() < deadline:
        s1, s2 = module_state(lab, "node1"), module_state(lab, "node2")
        if (s1, s2) == (("PRIM", "Ready"), ("SECOND", "Ready")):
            return
        time.sleep(0.5)
    logs = "\n".join(
        lab.run(n, [HAKIT, "log", "-m", MODULE, "-A", "-s", "30"], cwd="/").stdout
        for n in ("node1", "node2")
    )
    raise RuntimeError(f"no node1 PRIM / node2 SECOND within {limit} s: {s1} {s2}\n{logs}")


def mount_type(lab: Lab, node: str, path: str) -> str | None:
    """The file system type mounted exactly on ``path`` in ``node``'s mount namespace."""
    fstype = None
    for line in run_on(lab, node, ["cat", "/proc/self/mountinfo"]).splitlines():
        fields = line.split(" ")
        if fields[4] == path:
            fstype = fields[fields.index("-") + 1]  # the last mount on a path is the visible one
    return fstype


def bench_io(lab: Lab, directory: str, params: dict[str, int], seed: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "hakit.testing.workloads", "bench-io", directory]
    argv += ["--seed", str(seed)]
    for key, value in params.items():
        argv += [f"--{key}", str(value)]
    out = run_on(lab, "node1", argv, timeout=1800)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def start_module(lab: Lab, work: Path, rfs_async: str | None) -> None:
    vip = lab.status().vip_free[0]
    safe = build_module(work / f"{MODULE}.safe", vip, rfs_async)
    for node in ("node1", "node2"):
        run_on(lab, node, ["mkdir", "-p", DATA_DIR])
        hakit(lab, node, "module", "install", "-m", MODULE, str(safe))
        hakit(lab, node, "config", "-m", MODULE)
    time.sleep(2)
    hakit(lab, "node1", "prim", "-m", MODULE)
    hakit(lab, "node2", "second", "-m", MODULE)
    wait_pair(lab)
    fstype = mount_type(lab, "node1", DATA_DIR)
    if fstype != FSTYPE:
        raise RuntimeError(
            f"node1 is PRIM but {DATA_DIR} is not a {FSTYPE} mount there ({fstype or 'no mount'}): "
            "measuring it would measure the raw directory"
        )


def measure_rounds(
    lab: Lab, cases: list[str], params: dict[str, int], count: int, seed: int
) -> list[dict[str, dict[str, float]]]:
    """``count`` rounds of bench-io in each case's directory on node1, cases alternating."""
    rows = []
    for i in range(count):
        row: dict[str, dict[str, float]] = {}
        for case in cases:
            directory = RAW_DIR if case == "raw" else DATA_DIR
            row[case] = bench_io(lab, f"{directory}/bench", params, seed + i)
            shown = {k: round(v) for k, v in row[case].items()}
            print(f"round {i + 1} {case}: {shown}", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def make_alone(lab: Lab, limit: float = 120.0) -> None:
    """Stop the module on node2: node1 goes ALONE and keeps its mount, with no peer to wait for."""
    hakit(lab, "node2", "stop", "-m", MODULE)
    deadline = time.monotonic() + limit
    while module_state(lab, "node1") != ("ALONE", "Ready"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"node1 not ALONE Ready {limit} s after node2 stopped")
        time.sleep(0.5)
    fstype = mount_type(lab, "node1", DATA_DIR)
    if fstype != FSTYPE:
        raise RuntimeError(f"node1 is ALONE but {DATA_DIR} is not a {FSTYPE} mount ({fstype})")


def consistency(lab: Lab, seed: int, ops: int) -> dict[str, Any]:
    """fsx through the mount on node1, then node1's and node2's trees compared.

    Findings are recorded, not raised: the measurements above stay valid and get written.
    """
    workloads = [sys.executable, "-m", "hakit.testing.workloads"]
    fsx_argv = [*workloads, "fsx", f"{DATA_DIR}/verify", "--seed", str(seed), "--ops", str(ops)]
    r = lab.run("node1", [*fsx_argv, "--files", "2"], timeout=900, cwd="/")
    fsx: dict[str, Any] = (
        {"ok": True, "counts": json.loads(r.stdout)}
        if r.returncode == 0
        else {"ok": False, "exit": r.returncode, "error": (r.stderr or r.stdout).strip()}
    )
    digests = {
        node: run_on(lab, node, [*workloads, "tree-digest", DATA_DIR], timeout=600).splitlines()
        for node in ("node1", "node2")
    }
    diffs = compare_digests(digests["node1"], digests["node2"], names=("node1", "node2"))
    return {
        "fsx": fsx,
        "entries": len(digests["node1"]),
        "identical": not diffs,
        "differences": diffs[:50],
    }


# ---- report -------------------------------------------------------------------------------------


def medians(
    rounds: list[dict[str, dict[str, float]]], case: str, paired_with: str | None = None
) -> dict[str, float]:
    """Median of each metric of ``case`` over the rounds (only those that also ran
    ``paired_with``: the raw baseline of a case is the raw measured in the same rounds)."""
    rows = [r for r in rounds if case in r and (paired_with is None or paired_with in r)]
    return {m: statistics.median(r[case][m] for r in rows) for m in METRICS}


def table(results: dict[str, dict[str, float]], ratios: dict[str, dict[str, float]]) -> str:
    """Markdown: each case next to the raw rounds it alternated with, and their ratio."""
    if not ratios:
        head, cells_by_metric = (
            ["metric", "raw"],
            {m: [f"{results['raw'][m]:,.0f}"] for m in METRICS},
        )
    else:
        head, cells_by_metric = ["metric"], {m: [] for m in METRICS}
    for case in ratios:
        head += [f"raw ({case} rounds)", case]
        for m in METRICS:
            ratio = f" ({ratios[case][m]:.2f}×)" if m in ratios[case] else ""
            cells_by_metric[m] += [
                f"{results[f'raw_paired_with_{case}'][m]:,.0f}",
                f"{results[case][m]:,.0f}{ratio}",
            ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, (label, _higher) in METRICS.items():
        lines.append("| " + " | ".join([label, *cells_by_metric[m]]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="raw/replicated alternations")
    parser.add_argument("--quick", action="store_true", help="tiny workloads: check the harness")
    parser.add_argument("--raw-only", action="store_true", help="the raw case only, no module")
    parser.add_argument(
        "--rfs-async", choices=("second", "none"), help="<rfs async=...> (default: SafeKit's)"
    )
    parser.add_argument(
        "--alone",
        action="store_true",
        help="then stop node2 and measure node1 ALONE (the mount without a peer) against raw",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verify-ops", type=int, default=3000, help="fsx ops of the final check")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (the lab creates namespaces)", file=sys.stderr)
        return 2
    params = QUICK if args.quick else FULL
    if args.raw_only and args.alone:
        parser.error("--alone needs the replicated module: drop --raw-only")
    cases = ["raw"] if args.raw_only else ["raw", "replicated"]
    rounds: list[dict[str, dict[str, float]]] = []
    info: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "loadavg_before": os.getloadavg(),
        "params": params,
        "rounds_requested": args.rounds,
        "rfs_async": args.rfs_async or "default",
        "cases": {"raw": f"node1:{RAW_DIR}", "replicated": f"node1:{DATA_DIR} ({FSTYPE})"},
        "git": git_state(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="hakit-replbench-", dir="/tmp") as tmp,
        fresh_lab(LAB, hakitd=not args.raw_only, module=MODULE) as lab,
    ):
        work = Path(tmp)
        os.chmod(work, 0o755)
        run_on(lab, "node1", ["mkdir", "-p", RAW_DIR])
        srv = lab.node_srv("node1")
        if not args.raw_only:
            start_module(lab, work, args.rfs_async)
            # From the real host, node1's /srv/data is the backing directory (the FUSE mount
            # lives in node1's mount namespace): both cases must sit on one file system.
            info["same_filesystem"] = (srv / "raw").stat().st_dev == (srv / "data").stat().st_dev
        rounds += measure_rounds(lab, cases, params, args.rounds, args.seed)
        if not args.raw_only:
            info["consistency"] = consistency(lab, args.seed, args.verify_ops)
            info["final_states"] = {n: module_state(lab, n) for n in ("node1", "node2")}
        if args.alone:
            make_alone(lab)
            rounds += measure_rounds(lab, ["raw", "alone"], params, args.rounds, args.seed)
            cases.append("alone")
    results = {case: medians(rounds, case) for case in cases}
    ratios = {}
    for case in cases[1:]:
        baseline = medians(rounds, "raw", paired_with=case)
        results[f"raw_paired_with_{case}"] = baseline
        ratios[case] = {m: results[case][m] / baseline[m] for m in METRICS if baseline[m]}
    info.update(
        loadavg_after=os.getloadavg(),
        rounds=rounds,
        results=results,
        ratios_vs_raw=ratios,
    )
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"replication-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(table(results, ratios))
    if "consistency" in info:
        c = info["consistency"]
        verdict = "identical" if c["identical"] else f"{len(c['differences'])}+ differences"
        if not c["fsx"]["ok"]:
            print(f"\nfsx through the mount on node1 FAILED: {c['fsx']['error']}")
        print(f"\nnode1 vs node2 after fsx ({c['entries']} entries): {verdict}")
        for line in c["differences"][:10]:
            print(f"  {line}")
    print(f"\n(raw data: {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.SubprocessError as exc:
        print(f"replication bench: {exc}", file=sys.stderr)
        sys.exit(1)
