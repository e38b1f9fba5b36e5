"""What bringing a returning secondary up to date costs, measured in the lab, against a raw copy.

Setup: a 2-node lab (:mod:`hakit.lab`, lab ``hkreint``, hakitd on both nodes) and a mirror module
``reintbench`` whose only resource is ``<rfs><replicated dir="/srv/data"/></rfs>`` (plus a VIP).
The dataset (``--size-mib``, 1024 by default: 4 MiB files in 16 directories, plus 256 small
files, a symlink and an empty directory) is written into node1's ``/srv/data`` before the module
first starts.

Cases, in one run, in this order:

* ``raw_copy``: ``cp -a`` of the dataset between two plain directories of node1 (the lab's
  ``/srv``, one file system), then the copy is removed: what moving these bytes costs locally.
* ``full_empty``: the first start: node1 PRIM, node2 SECOND with an empty ``/srv/data``. Timed
  from ``hakit second`` to node2 SECOND Ready.
* ``incremental``: node2 stopped cleanly, ``--fraction`` of the dataset (1%) modified through the
  mount on node1 (scattered 16-256 KiB writes at random offsets, plus creates, deletes, renames:
  ``reintegration.py modify``), then ``hakit start`` on node2, timed to SECOND Ready.
* ``full_identical``: node2 stopped cleanly (the trees are identical), then ``hakit second
  fullsync`` on node2: a full synchronization by block hashes, timed to SECOND Ready.

For each: seconds, MiB/s of the dataset size, and the bytes node1's replicator sent: the file
data of the copy (``rfs.0.copied_bytes``) and everything on the wire (``rfs.0.bytes``: frames,
hashes, listings), from node1's module resources. After each resync the two trees are compared
by digest (recorded; the bench does not fail on it: tests/integration/test_reintegration_lab.py
does).

Run as root from the repository: ``.venv/bin/python bench/reintegration.py`` (``--size-mib 64``
to check the harness). Results: ``bench/results/reintegration-<UTC time>.json`` and a Markdown
table on stdout (copied into docs/performance.md).

Subcommands used on a node by the bench and the lab tests (stdout: one JSON line):
``dataset DIR --size-mib N --seed S`` writes the dataset; ``modify DIR --fraction F --seed S``
modifies it and reports ``modified_bytes`` (bytes written by the scattered writes plus the bytes
of new files), ``renamed_bytes`` (renamed files are resent whole: journal.py's known cost).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import HAKIT, REPO, fresh_lab, git_state, hakit, run_on

LAB = "hkreint"
MODULE = "reintbench"
DATA_DIR = "/srv/data"
MIB = 1024 * 1024
BIG_FILE = 4 * MIB
BIG_DIRS = 16
SMALL_FILES = 256


# ---- dataset and modification (run on a node, or on the host side before the first start) -----


def make_dataset(root: Path, size: int, seed: int) -> dict[str, int]:
    """Write a dataset of about ``size`` bytes under ``root``: ``big/dNN/fNNN`` files of 4 MiB
    (incompressible, seeded), ``small/`` with files of 1-64 KiB, a symlink, an empty directory."""
    rng = random.Random(seed)
    files = total = 0
    small_budget = min(size // 16, SMALL_FILES * 32 * 1024)
    small = root / "small"
    (small / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(SMALL_FILES):
        n = rng.randint(1024, 64 * 1024)
        if total + n > small_budget:
            break
        where = small / "sub" if i % 4 == 0 else small
        (where / f"s{i:03d}").write_bytes(rng.randbytes(n))
        files, total = files + 1, total + n
    (root / "empty").mkdir(exist_ok=True)
    link = root / "small" / "link"
    if not link.is_symlink():
        link.symlink_to("s000")
    i = 0
    while total < size:
        n = min(BIG_FILE, size - total)
        d = root / "big" / f"d{i % BIG_DIRS:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}").write_bytes(rng.randbytes(n))
        files, total, i = files + 1, total + n, i + 1
    return {"files": files, "bytes": total}


def modify(root: Path, fraction: float, seed: int) -> dict[str, int]:
    """Change ``fraction`` of the dataset's bytes under ``root``, through whatever is mounted.

    90% of the budget goes to writes of 16-256 KiB at random offsets of random big files (inside
    them: no file grows), 10% to new files; plus deletes (one big file, a few small ones) and
    renames (a few small files, and the small ``sub`` directory) that move no data here.
    """
    rng = random.Random(seed)
    big = sorted(p for p in (root / "big").rglob("f*") if p.is_file())
    total = sum(p.stat().st_size for p in big) + sum(
        p.stat().st_size for p in (root / "small").rglob("*") if p.is_file() and not p.is_symlink()
    )
    budget = int(total * fraction)
    written = writes = 0
    victim = big.pop(rng.randrange(len(big)))  # deleted below: not written to
    while written < budget * 0.9:
        path = rng.choice(big)
        n = rng.randint(16 * 1024, 256 * 1024)
        size = path.stat().st_size
        if size <= n:
            continue
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, rng.randbytes(n), rng.randrange(size - n))
        finally:
            os.close(fd)
        written, writes = written + n, writes + 1
    created = 0
    new = root / "new"
    new.mkdir(exist_ok=True)
    while created < budget * 0.1:
        n = rng.randint(4 * 1024, 128 * 1024)
        (new / f"n{created:09d}").write_bytes(rng.randbytes(n))
        created += n
    deleted_bytes = victim.stat().st_size
    victim.unlink()
    small = sorted(p for p in (root / "small").glob("s*") if p.is_file())
    deleted = [small.pop(rng.randrange(len(small))) for _ in range(min(5, len(small) // 2))]
    for p in deleted:
        p.unlink()
    renamed = 0
    for p in rng.sample(small, min(3, len(small))):
        renamed += p.stat().st_size
        p.rename(p.with_name(p.name + ".renamed"))
    sub = root / "small" / "sub"
    if sub.is_dir():
        renamed += sum(p.stat().st_size for p in sub.rglob("*") if p.is_file())
        sub.rename(root / "small" / "sub-renamed")
    os.sync()
    return {
        "dataset_bytes": total,
        "writes": writes,
        "written_bytes": written,
        "created_bytes": created,
        "modified_bytes": written + created,
        "renamed_bytes": renamed,
        "deleted_bytes": deleted_bytes,
    }


# ---- lab helpers -------------------------------------------------------------------------------


def module_state(lab: Any, node: str) -> dict[str, Any]:
    r = lab.run(node, [HAKIT, "state", "-m", MODULE, "--json"], timeout=30, cwd="/")
    if r.returncode != 0:
        return {"state": "UNKNOWN", "readiness": "Unknown", "resources": {}}
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def wait_state(lab: Any, node: str, state: str, limit: float = 900.0) -> float:
    """Seconds until ``node`` is ``state`` Ready; RuntimeError with the module logs after ``limit``."""
    t0 = time.monotonic()
    last: dict[str, Any] = {}
    while time.monotonic() - t0 < limit:
        last = module_state(lab, node)
        if (last.get("state"), last.get("readiness")) == (state, "Ready"):
            return time.monotonic() - t0
        time.sleep(0.2)
    log = lab.run(node, [HAKIT, "log", "-m", MODULE, "-A", "-s", "40"], cwd="/").stdout
    raise RuntimeError(f"{node} not {state} Ready within {limit} s: {last.get('state')}\n{log}")


def sent_counters(lab: Any) -> dict[str, int]:
    """node1's replicator counters (copied file data) and node1's NIC bytes sent (everything on
    the wire: frames, hashes, listings, and the heartbeats, a few KiB/s)."""
    time.sleep(2.5)  # the replicator reports its counters to the engine once a second
    res = module_state(lab, "node1").get("resources", {})
    out = {k: int(res.get(f"rfs.0.{k}", 0)) for k in ("copied_bytes", "copied_files")}
    out["tx_bytes"] = nic_tx_bytes(lab, "node1")
    return out


def nic_tx_bytes(lab: Any, node: str) -> int:
    """Bytes sent by ``node``'s lab NIC (``eth0`` in its network namespace)."""
    stats = json.loads(run_on(lab, node, ["ip", "-j", "-s", "link", "show", "dev", "eth0"]))
    return int(stats[0]["stats64"]["tx"]["bytes"])


def tree_differences(lab: Any) -> list[str]:
    """How node2's tree differs from node1's (by digest); empty when identical."""
    from hakit.testing.workloads import compare_digests

    argv = [sys.executable, "-m", "hakit.testing.workloads", "tree-digest", DATA_DIR]
    digests = [run_on(lab, n, argv, timeout=900).splitlines() for n in ("node1", "node2")]
    return compare_digests(digests[0], digests[1], names=("node1", "node2"))


def timed_resync(lab: Any, name: str, size: int, action: list[str]) -> dict[str, Any]:
    """Run ``hakit <action>`` on node2, time it to SECOND Ready, and what node1 sent meanwhile."""
    before = sent_counters(lab)
    t0 = time.monotonic()
    hakit(lab, "node2", *action)
    wait_state(lab, "node2", "SECOND")
    seconds = time.monotonic() - t0
    wait_state(lab, "node1", "PRIM", limit=60)
    after = sent_counters(lab)
    row = {
        "case": name,
        "seconds": round(seconds, 2),
        "mib_s": round(size / MIB / seconds, 1),
        "copied_bytes": after["copied_bytes"] - before["copied_bytes"],
        "copied_files": after["copied_files"] - before["copied_files"],
        "wire_bytes": after["tx_bytes"] - before["tx_bytes"],
    }
    differences = tree_differences(lab)
    row.update(identical=not differences, differences=differences[:20])
    # What the engine said about this resync (kind, fallbacks, copy summary).
    log = run_on(lab, "node2", [HAKIT, "log", "-m", MODULE, "-A", "-s", "40"])
    row["log_node2"] = [
        line for line in log.splitlines() if "Reintegration" in line or "rfs" in line
    ][-8:]
    print(f"{name}: {row}", file=sys.stderr, flush=True)
    return row


def table(rows: list[dict[str, Any]], size: int) -> str:
    lines = [
        f"| case ({size // MIB} MiB dataset) | seconds | MiB/s of the dataset | file data sent | "
        "bytes on the wire |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        sent = "—" if r.get("copied_bytes") is None else f"{r['copied_bytes'] / MIB:,.2f} MiB"
        wire = "—" if r.get("wire_bytes") is None else f"{r['wire_bytes'] / MIB:,.2f} MiB"
        lines.append(f"| {r['label']} | {r['seconds']:.2f} | {r['mib_s']:,.1f} | {sent} | {wire} |")
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> int:
    size = args.size_mib * MIB
    info: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpus": os.cpu_count(),
        "kernel": os.uname().release,
        "loadavg_before": os.getloadavg(),
        "size_mib": args.size_mib,
        "fraction": args.fraction,
        "seed": args.seed,
        "git": git_state(),
    }
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="hakit-reintbench-", dir="/tmp") as tmp,
        fresh_lab(LAB, hakitd=True, module=MODULE) as lab,
    ):
        srv = lab.node_srv("node1")
        info["dataset"] = make_dataset(srv / "data", size, args.seed)
        (lab.node_srv("node2") / "data").mkdir(exist_ok=True)
        os.sync()
        # Raw copy on node1, same file system, page cache dropped first as before each resync.
        run_on(lab, "node1", ["bash", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
        t0 = time.monotonic()
        run_on(lab, "node1", ["bash", "-c", f"cp -a {DATA_DIR} /srv/rawcopy && sync"], timeout=1800)
        raw_s = time.monotonic() - t0
        run_on(lab, "node1", ["rm", "-rf", "/srv/rawcopy"])
        rows.append(
            {
                "case": "raw_copy",
                "label": "raw copy (`cp -a` + sync on node1)",
                "seconds": round(raw_s, 2),
                "mib_s": round(size / MIB / raw_s, 1),
                "copied_bytes": None,
                "wire_bytes": None,
            }
        )
        print(f"raw_copy: {rows[-1]}", file=sys.stderr, flush=True)

        work = Path(tmp)
        os.chmod(work, 0o755)
        vip = lab.status().vip_free[0]
        safe = work / f"{MODULE}.safe"
        from hakit.testing.lab_module import mirror_userconfig, replicated, write_safe

        write_safe(safe, mirror_userconfig(vip=vip, rfs=replicated(DATA_DIR)))
        for node in ("node1", "node2"):
            hakit(lab, node, "module", "install", "-m", MODULE, str(safe))
            hakit(lab, node, "config", "-m", MODULE)
        for node in ("node1", "node2"):
            wait_state_stop(lab, node)
        hakit(lab, "node1", "prim", "-m", MODULE)
        wait_state(lab, "node1", "ALONE", limit=60)
        drop = ["bash", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"]
        run_on(lab, "node1", drop)
        rows.append(timed_resync(lab, "full_empty", size, ["second", "-m", MODULE]))
        rows[-1]["label"] = "full sync to an empty secondary"

        # The trees are identical now: a forced full sync compares every block and moves none.
        hakit(lab, "node2", "stop", "-m", MODULE)
        wait_state(lab, "node1", "ALONE", limit=60)
        run_on(lab, "node1", drop)
        rows.append(timed_resync(lab, "full_identical", size, ["second", "fullsync", "-m", MODULE]))
        rows[-1]["label"] = "full sync of identical trees (`second fullsync`)"

        hakit(lab, "node2", "stop", "-m", MODULE)
        wait_state(lab, "node1", "ALONE", limit=60)
        script = [
            sys.executable,
            str(REPO / "bench" / "reintegration.py"),
            "modify",
            DATA_DIR,
            "--fraction",
            str(args.fraction),
            "--seed",
            str(args.seed + 1),
        ]
        info["modification"] = json.loads(run_on(lab, "node1", script, timeout=900))
        run_on(lab, "node1", drop)
        rows.append(timed_resync(lab, "incremental", size, ["start", "-m", MODULE]))
        mod = info["modification"]["modified_bytes"] / MIB
        rows[-1]["label"] = f"incremental after {args.fraction:.0%} modified ({mod:.1f} MiB)"
    info.update(loadavg_after=os.getloadavg(), results=rows)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"reintegration-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(table(rows, size))
    bad = [r["case"] for r in rows if r.get("identical") is False]
    print(f"\ntrees identical after every resync: {'no: ' + ', '.join(bad) if bad else 'yes'}")
    print(f"\n(raw data: {out.relative_to(REPO)})")
    return 0


def wait_state_stop(lab: Any, node: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while module_state(lab, node).get("state") != "STOP":
        if time.monotonic() > deadline:
            raise RuntimeError(f"module {MODULE} not installed and STOP on {node} after {limit} s")
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("dataset", help="write the dataset into DIR (one JSON line)")
    p.add_argument("dir", type=Path)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("modify", help="modify a fraction of the dataset in DIR (one JSON line)")
    p.add_argument("dir", type=Path)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=2)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.cmd == "dataset":
        print(json.dumps(make_dataset(args.dir, args.size_mib * MIB, args.seed)))
        return 0
    if args.cmd == "modify":
        print(json.dumps(modify(args.dir, args.fraction, args.seed)))
        return 0
    if os.geteuid() != 0:
        print("run as root (the lab creates namespaces)", file=sys.stderr)
        return 2
    return bench(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (subprocess.SubprocessError, RuntimeError) as exc:
        print(f"reintegration bench: {exc}", file=sys.stderr)
        sys.exit(1)
