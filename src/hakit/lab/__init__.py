"""The test lab: nodes and a client as namespaces on one machine (see :mod:`hakit.lab.lab`)."""

from __future__ import annotations

from hakit.lab.lab import HostStatus, Lab, LabStatus, UpResult, lab_name_from_env
from hakit.lab.plan import LabShape
from hakit.lab.state import HostState, LabState
from hakit.lab.waiting import wait_for

__all__ = [
    "HostState",
    "HostStatus",
    "Lab",
    "LabShape",
    "LabState",
    "LabStatus",
    "UpResult",
    "lab_name_from_env",
    "wait_for",
]
