"""Integration tests run on the hakit test lab: real namespaces, real processes, real packets.

Fixtures:

* ``make_lab(nodes=2, client=False, subnet=None, hakitd=True) -> Lab``: brings up this session's
  lab with that shape (removing a lab of another shape first) and returns the :class:`Lab`, whose
  ``run(host, argv)`` runs a command on a host and captures its output. The lab is always removed
  after the test, also when it fails or is interrupted.
* ``lab_name``: the session's lab name (``hkt<pid>``: unique, short). Labs left by earlier
  sessions that died without cleaning up (their pid is gone) are removed first.

Every test here is skipped, with the reason, when the machine cannot host a lab (not root, or no
``ip netns``/``nsenter``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hakit.lab import Lab
from hakit.lab.lab import STATE_BASE

HERE = Path(__file__).resolve().parent


def _why_no_lab() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (they create network namespaces)"
    for tool in ("ip", "nsenter", "setsid"):
        if shutil.which(tool) is None:
            return f"integration tests need `{tool}` (make install)"
    try:
        subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"integration tests need `ip netns` ({exc})"
    return None


WHY_NO_LAB = _why_no_lab()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test of this directory ``lab`` (select or deselect them with ``-m lab``)."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.lab)


@pytest.fixture(autouse=True)
def _lab_capable() -> None:
    if WHY_NO_LAB:
        pytest.skip(WHY_NO_LAB)


def _safe_down(name: str) -> None:
    with contextlib.suppress(Exception):
        Lab(name).down()


def _remove_labs_of_dead_sessions() -> None:
    """Labs ``hkt<pid>...`` whose pytest process is gone (killed with SIGKILL, machine crash...)."""
    names = set(re.findall(r"^(hkt\d+b?)-", _run_text(["ip", "netns", "list"]), re.MULTILINE))
    if STATE_BASE.is_dir():
        names |= {p.name for p in STATE_BASE.iterdir() if re.fullmatch(r"hkt\d+b?", p.name)}
    for name in sorted(names):
        pid = re.sub(r"\D", "", name)
        if not Path(f"/proc/{pid}").exists():
            _safe_down(name)


def _run_text(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


@pytest.fixture(scope="session")
def lab_name() -> Iterator[str]:
    """This session's lab name; the lab is removed at session end and at interpreter exit."""
    _remove_labs_of_dead_sessions()
    name = f"hkt{os.getpid()}"
    atexit.register(_safe_down, name)  # also after Ctrl-C, when fixtures may not be finalized
    try:
        yield name
    finally:
        _safe_down(name)


@pytest.fixture
def make_lab(lab_name: str) -> Iterator[Callable[..., Lab]]:
    """Factory: ``make_lab(nodes=2, client=False, subnet=None, hakitd=True)`` -> a lab that is up."""
    lab = Lab(lab_name)

    def make(
        nodes: int = 2, client: bool = False, subnet: str | None = None, hakitd: bool = True
    ) -> Lab:
        if lab.load() is not None:
            lab.down()
        lab.up(nodes=nodes, client=client, subnet=subnet, hakitd=hakitd)
        return lab

    try:
        yield make
    finally:
        lab.down()
