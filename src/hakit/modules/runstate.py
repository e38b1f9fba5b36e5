"""Is a module running on this node? (the one question module management asks the engine)

The module engine does not exist yet; this module defines the contract it will fulfil, so that
``hakit module uninstall`` and ``hakit config`` already refuse to pull files from under a running
module. The engine owns this file from the moment it lands, and may replace the checks below by
a question to the daemon, as long as :func:`running_reason` keeps its meaning.

A module counts as running when either:

* ``active/NAME/RUNNING`` exists (the engine creates it before the first script and removes it
  after ``poststop``). If it holds a process id and no such process exists, the marker is stale
  (the engine crashed; nothing runs) and is ignored; or
* ``state/NAME/state`` exists and its first word is a state other than ``STOP`` (the engine
  writes e.g. ``PRIM Ready`` there on each state change, and ``STOP NotReady`` when stopped).
"""

from __future__ import annotations

import os
from pathlib import Path

from hakit.paths import NodePaths

RUNNING_MARKER = "RUNNING"
STATE_FILE = "state"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _marker_reason(marker: Path) -> str | None:
    try:
        text = marker.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{marker} exists but is unreadable ({exc.strerror})"
    first = text.split()[0] if text else ""
    if first.isdigit():
        if not _pid_alive(int(first)):
            return None
        return f"{marker} names running engine process {first}"
    return f"{marker} exists"


def _state_reason(state_file: Path) -> str | None:
    try:
        text = state_file.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{state_file} exists but is unreadable ({exc.strerror})"
    state = text.split()[0] if text else "STOP"
    if state.upper() == "STOP":
        return None
    return f"its state is {state} ({state_file})"


def running_reason(paths: NodePaths, name: str) -> str | None:
    """Why module ``name`` counts as running on this node, or None when it is stopped."""
    return _marker_reason(paths.module_active(name) / RUNNING_MARKER) or _state_reason(
        paths.module_state(name) / STATE_FILE
    )
