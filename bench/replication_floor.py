"""The floor under issue 4's speed targets: synchronous replication with no interception at all.

``bench/replication.py`` measures hakit (FUSE + Python replicator) against the raw directory.
This benchmark measures, in the same kind of lab, what the *semantics alone* cost: a C program
(``bench/replication_floor.c``, compiled here with ``cc -O2``) that does only the work RPO 0
demands, with no FUSE, no Python and the simplest possible protocol:

* ``raw-fsync`` / ``raw-seq``: node1 alone (the baseline of issue 4's ratios): 1000 × (4 KiB
  pwrite at a random aligned offset of a 64 MiB file + fdatasync), p50/p99 µs; 256 × 1 MiB
  sequential pwrite + fdatasync, MiB/s. Files in node1's ``/srv``.
* ``repl-fsync`` / ``repl-seq``: the same on node1, and each write also sent over TCP to node2
  (before the local pwrite, so that both copies are made at the same time), which acknowledges
  on receipt (``async="second"``) and then pwrite()s it into its own ``/srv``; the write
  "returns" when the local pwrite is done and the ack arrived. The fsync sends FSYNC to node2, runs the
  local fdatasync meanwhile, and returns when node2 acknowledged its own fdatasync: both servers
  have the data on disk (what issue 4 asks of fsync).

Raw and replicated alternate for ``--rounds`` rounds; medians and ratios as in
``bench/replication.py``. If the replicated floor is already above issue 4's targets (write+fsync
p50 ≤ 1.5× raw, sequential ≥ 0.8× raw), no implementation can meet them in this lab: both lab
"servers" share one virtual disk and two vCPUs.

Run as root from the repository: ``.venv/bin/python bench/replication_floor.py`` (about a
minute). Results: ``bench/results/replication_floor-<UTC time>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import REPO, fresh_lab, git_state, run_on

from hakit.lab import Lab

LAB = "hkfloor"
PORT = 7777
SOURCE = REPO / "bench" / "replication_floor.c"
CASES = ("fsync", "seq")


def build(out: Path) -> Path:
    binary = out / "replication_floor"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
    return binary


def one(lab: Lab, binary: Path, case: str, peer: str) -> dict[str, float]:
    """One run of ``case`` (e.g. ``repl-fsync``) on node1; the peer serves on node2."""
    server = None
    if case.startswith("repl-"):
        server = lab.popen(
            "node2",
            [str(binary), "serve", str(PORT), "/srv/floor.peer"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        if server.stdout.readline().strip() != "listening":
            raise RuntimeError("the floor peer did not start on node2")
    try:
        out = run_on(
            lab, "node1", [str(binary), "run", peer, str(PORT), "/srv/floor.local", case], 600
        )
    finally:
        if server is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (the lab needs namespaces)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hakit-floor-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        binary = build(Path(tmp))
        with fresh_lab(LAB, hakitd=False) as lab:
            peer = next(h.addr for h in lab.status().hosts if h.name == "node2")
            for r in range(args.rounds):
                for kind in CASES:
                    for mode in ("raw", "repl"):
                        case = f"{mode}-{kind}"
                        result = one(lab, binary, case, peer)
                        runs.setdefault(case, []).append(result)
                        print(f"round {r + 1} {case}: {result}", flush=True)
    med = {
        case: {k: statistics.median(x[k] for x in results) for k in results[0]}
        for case, results in runs.items()
    }
    ratios = {
        "fsync_p50": med["repl-fsync"]["p50_us"] / med["raw-fsync"]["p50_us"],
        "fsync_p99": med["repl-fsync"]["p99_us"] / med["raw-fsync"]["p99_us"],
        "seq": med["repl-seq"]["mib_s"] / med["raw-seq"]["mib_s"],
    }
    lines = [
        "| metric (C, no FUSE) | raw | replicated floor | ratio | issue 4 target |",
        "|---|---|---|---|---|",
        f"| 4 KiB write+fsync p50, µs | {med['raw-fsync']['p50_us']:.0f} | "
        f"{med['repl-fsync']['p50_us']:.0f} | {ratios['fsync_p50']:.2f}× | ≤ 1.5× |",
        f"| 4 KiB write+fsync p99, µs | {med['raw-fsync']['p99_us']:.0f} | "
        f"{med['repl-fsync']['p99_us']:.0f} | {ratios['fsync_p99']:.2f}× | — |",
        f"| 1 MiB sequential writes + fsync, MiB/s | {med['raw-seq']['mib_s']:.0f} | "
        f"{med['repl-seq']['mib_s']:.0f} | {ratios['seq']:.2f}× | ≥ 0.8× |",
    ]
    print("\n".join(lines))
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    out = REPO / "bench" / "results" / f"replication_floor-{stamp}.json"
    record: dict[str, Any] = {
        "bench": "replication_floor",
        "when": stamp,
        "git": git_state(),
        "load_average": os.getloadavg(),
        "rounds": args.rounds,
        "runs": runs,
        "medians": med,
        "ratios": ratios,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\n(raw data: {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
