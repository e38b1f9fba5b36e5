"""What the lab benchmarks share: running commands on lab nodes, and which commit was measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HAKIT = str(Path(sys.executable).parent / "hakit")


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
