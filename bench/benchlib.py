"""What the lab benchmarks share: running commands on lab nodes, and which commit was measured."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HAKIT = str(Path(sys.executable).parent / "hakit")


@contextlib.contextmanager
def fresh_lab(name: str, *, hakitd: bool, module: str | None = None) -> Iterator[Any]:
    """A fresh 2-node lab ``name`` (what a crashed run left is removed first), removed afterwards
    whatever happens (SIGTERM included); with ``module``, that module is stopped on node2 then
    node1 before the lab goes."""
    from hakit.lab import Lab  # not needed by the benches' subcommands run inside a node

    lab = Lab(name)
    with contextlib.suppress(Exception):
        lab.down()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        lab.up(nodes=2, client=False, hakitd=hakitd)
        yield lab
    finally:
        try:
            if hakitd and module is not None:
                for node in ("node2", "node1"):
                    with contextlib.suppress(Exception):
                        lab.run(node, [HAKIT, "stop", "-m", module], timeout=60, cwd="/")
        finally:
            lab.down()
            signal.signal(signal.SIGTERM, previous)


def run_on(lab: Any, node: str, argv: list[str], timeout: float = 120.0) -> str:
    """Run ``argv`` on ``node``; its stdout, or RuntimeError with its output."""
    r = lab.run(node, argv, timeout=timeout, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"on {node}: {' '.join(argv)} -> {r.returncode}\n{r.stdout}{r.stderr}")
    return str(r.stdout)


def hakit(lab: Any, node: str, *args: str) -> str:
    """``hakit ARGS`` on ``node``."""
    return run_on(lab, node, [HAKIT, *args])


def git_state() -> dict[str, Any]:
    """The commit measured, and the files changed since (the numbers are of the working tree)."""

    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return r.stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "changed": git("status", "--porcelain", "src").splitlines(),
    }
