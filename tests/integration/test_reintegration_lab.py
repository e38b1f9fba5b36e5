"""Reintegration of a returning secondary (issue 5), on real processes in the lab.

A dataset (``DATASET_MIB``, written on node1's ``/srv/data`` from the host before the module first
starts, by ``bench/reintegration.py dataset``) is copied in full by the first pairing. Then node2
goes away and comes back; what node1's replicator sends for it is read from node1's module
resources (``rfs.0.copied_bytes``: file data copied; ``rfs.0.bytes``: everything on the wire),
and the trees are compared by an independent digest and by ``hakit rfsverify``.

The modification (``bench/reintegration.py modify``, through the mount on node1): 1% of the
dataset's bytes, 90% as 16-256 KiB writes at random offsets of random files, 10% as new files,
plus deletes and renames of small files and of a small directory. The bound checked is the
issue's: bytes sent <= 2 x modified bytes + 1 MiB (metadata, and the renamed small files, which
journal.py documents as resent whole).

Measured on a 2-core machine with ``DATASET_MIB`` = 256 (``HAKIT_REINT_MIB`` changes it): the
first full sync takes 7-10 s, the whole file 3-5 minutes. 1 GiB runs in bench/reintegration.py.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from test_mirror_lab import MODULE, Cluster
from test_replication_lab import DATA, PY, assert_identical, pair, rcluster, sh

__all__ = ["rcluster"]  # the fixture, imported for this module's tests

REPO = Path(__file__).resolve().parents[2]
BENCH = str(REPO / "bench" / "reintegration.py")
MIB = 1024 * 1024
DATASET_MIB = int(os.environ.get("HAKIT_REINT_MIB", "256"))


def make_dataset(c: Cluster, size_mib: int = DATASET_MIB) -> int:
    """The dataset on node1's /srv/data, written from the host before the module starts."""
    r = c.lab.run("node1", [PY, BENCH, "dataset", DATA, "--size-mib", str(size_mib)], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    total: int = json.loads(r.stdout)["bytes"]
    return total


def modify(c: Cluster, seed: int = 7) -> dict[str, int]:
    """1% of the dataset modified through the mount on node1."""
    r = c.lab.run("node1", [PY, BENCH, "modify", DATA, "--seed", str(seed)], timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    result: dict[str, int] = json.loads(r.stdout)
    return result


def sent(c: Cluster, node: str = "node1") -> dict[str, int]:
    """What ``node`` sent so far: its replicator's copied file data (``rfs.0.copied_bytes``,
    reported to the engine once a second) and its lab NIC's bytes (``tx``: everything on the wire,
    hashes and listings included, heartbeats too: a few KiB/s)."""
    time.sleep(2.5)
    resources = json.loads(c.hakit(node, "state", "-m", MODULE, "--json"))["resources"]
    nic = json.loads(sh(c, node, "ip -j -s link show dev eth0"))[0]["stats64"]["tx"]["bytes"]
    return {"copied_bytes": int(resources.get("rfs.0.copied_bytes", 0)), "tx": int(nic)}


def module_log(c: Cluster, node: str) -> str:
    return c.hakit(node, "log", "-m", MODULE, "-A", "-s", "200", check=False)


def wait_resynced(c: Cluster, limit: float = 300) -> None:
    """node2 SECOND Ready and node1 PRIM Ready; on failure node1's log too (the copier's side)."""
    try:
        c.wait_state("node2", "SECOND", limit=limit)
        c.wait_state("node1", "PRIM")
    except AssertionError as exc:
        # Where node1's processes wait (a replicator stuck in a system call stops everything).
        ps = c.lab.run("node1", ["ps", "-eo", "pid,stat,wchan:24,args"], timeout=30).stdout
        log = module_log(c, "node1")[-6000:]
        raise AssertionError(f"{exc}\nnode1:\n{log}\n{ps}") from None


def check_incremental_bound(
    before: dict[str, int], after: dict[str, int], mod: dict[str, int]
) -> None:
    copied = after["copied_bytes"] - before["copied_bytes"]
    wire = after["tx"] - before["tx"]
    bound = 2 * mod["modified_bytes"] + MIB
    print(
        f"modified {mod['modified_bytes']} B ({mod['writes']} writes, {mod['created_bytes']} B "
        f"created, {mod['renamed_bytes']} B renamed) of {mod['dataset_bytes']} B; copied "
        f"{copied} B, on the wire {wire} B; bound {bound} B"
    )
    assert copied <= bound, f"incremental copy sent {copied} B, more than {bound} B: {mod}"
    assert copied >= mod["modified_bytes"] // 2, f"only {copied} B copied for {mod}: no copy?"


def test_incremental_after_a_clean_stop_sends_only_what_changed(
    rcluster: Callable[..., Cluster],
) -> None:
    c = rcluster()
    size = make_dataset(c)
    t0 = time.monotonic()
    pair(c)
    print(f"first (full) sync of {size} B: {time.monotonic() - t0:.1f} s")
    assert_identical(c)
    c.hakit("node2", "stop", "-m", MODULE)
    c.wait_state("node1", "ALONE")
    mod = modify(c)
    before = sent(c)
    t0 = time.monotonic()
    c.hakit("node2", "start", "-m", MODULE)
    wait_resynced(c)
    print(f"incremental reintegration: {time.monotonic() - t0:.1f} s")
    check_incremental_bound(before, sent(c), mod)
    assert "Reintegration started (incremental)" in module_log(c, "node2")
    assert_identical(c)


def test_incremental_after_the_primary_crashed_while_the_secondary_was_away(
    rcluster: Callable[..., Cluster],
) -> None:
    c = rcluster()
    make_dataset(c)
    pair(c)
    c.hakit("node2", "stop", "-m", MODULE)
    c.wait_state("node1", "ALONE")
    mod = modify(c, seed=11)
    c.lab.kill("node1")  # power loss: the journal written while ALONE must be trusted after it
    c.lab.start("node1")
    # node1 holds the newest data: it must come back as primary, by itself (the module starts
    # at boot and finds its peer stopped) or, if it stays stopped, by an administrator's prim.
    how = "started by itself"
    deadline = time.monotonic() + 60
    while (state := c.state("node1")).get("state") != "ALONE":
        if state.get("state") == "STOP" or time.monotonic() > deadline:
            how = f"was {state.get('state')} {state.get('readiness')}: hakit prim"
            c.hakit("node1", "prim", "-m", MODULE)
            break
        time.sleep(0.2)
    c.wait_state("node1", "ALONE", limit=60)
    print(f"node1 after its power loss: {how}, ALONE Ready")
    before = sent(c)
    c.hakit("node2", "start", "-m", MODULE)
    wait_resynced(c)
    log2 = module_log(c, "node2")
    assert "Reintegration started (incremental)" in log2, log2
    check_incremental_bound(before, sent(c), mod)
    assert_identical(c)


def test_reintegration_while_the_application_keeps_writing(
    rcluster: Callable[..., Cluster],
) -> None:
    c = rcluster()
    make_dataset(c, 64)
    pair(c)
    c.hakit("node2", "stop", "-m", MODULE)
    c.wait_state("node1", "ALONE")
    modify(c, seed=13)
    writers = [
        c.lab.popen(
            "node1",
            [
                PY,
                "-m",
                "hakit.testing.workloads",
                "fsx",
                f"{DATA}/fsx",
                "--seed",
                "21",
                "--ops",
                "6000",
                "--files",
                "3",
            ],
        ),
        c.lab.popen(
            "node1",
            [
                PY,
                "-m",
                "hakit.testing.workloads",
                "fsstress",
                f"{DATA}/stress",
                "--seed",
                "22",
                "--ops",
                "6000",
            ],
        ),
    ]
    try:
        time.sleep(1.0)
        c.hakit("node2", "start", "-m", MODULE)
        wait_resynced(c, limit=120)
        running = [w.poll() is None for w in writers]
        print(f"node2 SECOND Ready; workloads still running: {running}")
        codes = [w.wait(timeout=300) for w in writers]
        assert codes == [0, 0], f"workloads exited with {codes}"
    finally:
        for w in writers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGKILL)
                w.wait()
    c.wait_state("node1", "PRIM")
    assert_identical(c)


def test_full_sync_of_identical_trees_sends_almost_nothing(
    rcluster: Callable[..., Cluster],
) -> None:
    c = rcluster()
    size = make_dataset(c)
    pair(c)
    c.hakit("node2", "stop", "-m", MODULE)
    c.wait_state("node1", "ALONE")
    before = sent(c)
    t0 = time.monotonic()
    c.hakit("node2", "second", "fullsync", "-m", MODULE)
    wait_resynced(c)
    after = sent(c)
    copied = after["copied_bytes"] - before["copied_bytes"]
    wire = after["tx"] - before["tx"]
    print(
        f"full sync of identical trees ({size} B): {time.monotonic() - t0:.1f} s, "
        f"copied {copied} B, on the wire {wire} B"
    )
    assert "Reintegration started (full)" in module_log(c, "node2")
    assert copied < size // 100, f"{copied} B of file data sent for identical trees"
    assert wire < size // 100, f"{wire} B on the wire for identical trees"
    assert_identical(c)


def test_split_brain_keeps_the_yielding_sides_writes_aside(
    rcluster: Callable[..., Cluster],
) -> None:
    c = rcluster()
    pair(c)
    sh(c, "node1", f"mkdir {DATA}/common && echo before > {DATA}/common/f")
    for node in ("node1", "node2"):
        c.lab.link(node, up=False)
    try:
        c.wait_state("node2", "ALONE", limit=30)
        c.wait_state("node1", "ALONE", limit=30)
        # Both sides acknowledge writes to their applications, each its own files.
        for node in ("node1", "node2"):
            sh(
                c,
                node,
                f"mkdir -p {DATA}/by-{node} && for i in 1 2 3; do "
                f"head -c 100000 /dev/urandom > {DATA}/by-{node}/f$i; done; "
                f"echo {node} > {DATA}/common/f; sync",
            )
    finally:
        for node in ("node1", "node2"):
            c.lab.link(node, up=True)
    deadline = time.monotonic() + 120
    roles: dict[str, object] = {}
    while time.monotonic() < deadline:
        roles = {
            n: (c.state(n).get("state"), c.state(n).get("readiness")) for n in ("node1", "node2")
        }
        if sorted(roles.values()) == [("PRIM", "Ready"), ("SECOND", "Ready")]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(
            f"no pair after the link came back: {roles}\n"
            + module_log(c, "node1")
            + module_log(c, "node2")
        )
    survivor = next(n for n, r in roles.items() if r[0] == "PRIM")
    yielder = next(n for n, r in roles.items() if r[0] == "SECOND")
    print(f"after the split brain: {survivor} kept its data, {yielder} yielded")
    log = module_log(c, yielder)
    assert "kept aside" in log, log
    divergent = json.loads(c.hakit(yielder, "rfsdiff", "-m", MODULE, "--json"))
    sets = _sets(divergent)
    assert sets, divergent
    kept = sets[-1]
    paths = set(kept["paths"])
    for i in (1, 2, 3):
        assert f"by-{yielder}/f{i}" in paths, kept
    assert "common/f" in paths, kept
    # The kept-aside copies hold what the yielding side's application was told was written.
    shown = sh(c, yielder, f"cat {kept['directory']}/files/common/f").strip()
    assert shown == yielder, shown
    # The survivor's data is the pair's now.
    assert sh(c, yielder, f"cat {DATA}/common/f").strip() == survivor
    assert sh(c, yielder, f"ls {DATA}").split().count(f"by-{yielder}") == 0
    if survivor == "node1":
        assert_identical(c)
    else:
        out = c.hakit(survivor, "rfsverify", "-m", MODULE)
        assert "identical" in out, out


def _sets(answer: object) -> list[dict[str, object]]:
    """Every kept-aside set (a dict with ``paths``) anywhere in the divergent answer."""
    found: list[dict[str, object]] = []
    if isinstance(answer, dict):
        if "paths" in answer and "directory" in answer:
            found.append(answer)
        for value in answer.values():
            found += _sets(value)
    elif isinstance(answer, list):
        for value in answer:
            found += _sets(value)
    return found


def test_interrupted_reintegration_resumes_without_starting_from_zero(
    rcluster: Callable[..., Cluster],
) -> None:
    # The copy is paced (reiallowedbw, KB/s) so that it can be interrupted in the middle.
    rate_kb = 4000
    c = rcluster(
        rfs=f'<rfs sendtimeout="3s" reiallowedbw="{rate_kb}"><replicated dir="{DATA}"/></rfs>'
    )
    pair(c)
    c.hakit("node2", "stop", "-m", MODULE)
    c.wait_state("node1", "ALONE")
    # 24 MiB of new data: about 6 s of copy at 4 MB/s.
    sh(c, "node1", f"for i in $(seq 24); do head -c 1048576 /dev/urandom > {DATA}/new$i; done")
    changed = 24 * MIB
    before = sent(c)
    c.hakit("node2", "start", "-m", MODULE)
    c.wait_state("node2", "SECOND", "Transient", limit=60)
    time.sleep(3.0)  # about half of it is across
    c.hakit("node2", "stop", "-m", MODULE)
    c.wait_state("node2", "STOP", "NotReady", limit=60)
    middle = sent(c)
    first = middle["copied_bytes"] - before["copied_bytes"]
    assert 0 < first < changed, f"the first attempt copied {first} B of {changed} B"
    # node2 knows its copy is incomplete (it would refuse `prim`, only `primforce` overrides).
    data = json.loads(c.hakit("node2", "state", "-m", MODULE, "--json"))["data"]
    assert data["interrupted_resync"] is True, data
    c.hakit("node2", "start", "-m", MODULE)
    wait_resynced(c)
    second = sent(c)["copied_bytes"] - middle["copied_bytes"]
    print(f"interrupted after {first} B of {changed} B; the resumed copy sent {second} B")
    # What the first attempt copied is not sent again (a little of it may: the last blocks
    # in flight when it stopped).
    assert second <= changed - first + 2 * MIB, (first, second)
    assert_identical(c)
