"""Reading ``/proc`` of the real host: which processes belong to which lab host.

A process belongs to a lab host when its PID namespace is the one of the host's anchor
(``/proc/<pid>/ns/pid`` names the same namespace). Zombies are never counted: they are already
dead, only waiting for their parent (which may be a slow init on the real host).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def all_pids() -> list[int]:
    """Every process id of the real host, in increasing order."""
    return sorted(int(name) for name in os.listdir(PROC) if name.isdigit())


def ns_id(pid: int, kind: str) -> str | None:
    """``net:[4026531840]``-style identity of ``pid``'s namespace of ``kind``, None if gone."""
    try:
        return os.readlink(PROC / str(pid) / "ns" / kind)
    except OSError:
        return None


def file_ns_id(path: str) -> str | None:
    """Identity of the namespace bound at ``path`` (e.g. ``/run/netns/x``), in ns_id's format."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"net:[{st.st_ino}]"


def is_zombie(pid: int) -> bool:
    """True if ``pid`` is dead and only waits for its parent to reap it (or is gone)."""
    st = stat(pid)
    return st is None or st.state == "Z"


def pids_in_ns(kind: str, ns: str, exclude: int | None = None) -> list[int]:
    """Live processes whose ``kind`` namespace is ``ns`` (``exclude`` left out)."""
    return [
        pid
        for pid in all_pids()
        if pid != exclude and ns_id(pid, kind) == ns and not is_zombie(pid)
    ]


def cmdline(pid: int) -> list[str]:
    """The argument vector of ``pid`` (empty if gone or a kernel thread)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the lab needs."""

    state: str  # R, S, D, T (stopped), t, Z...
    start_time: int  # clock ticks after boot: with the pid, identifies one process for good


def stat(pid: int) -> ProcStat | None:
    """State and start time of ``pid``, None if it is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcStat(state=fields[0], start_time=int(fields[19]))


def is_alive(pid: int, start_time: int) -> bool:
    """True if ``pid`` still is the process that started at ``start_time`` (no pid reuse)."""
    st = stat(pid)
    return st is not None and st.start_time == start_time and st.state != "Z"


def mountinfo_mentions(pid: int, needles: tuple[str, ...]) -> list[str]:
    """Lines of ``pid``'s mount table whose mount point or root contains one of ``needles``."""
    try:
        lines = (PROC / str(pid) / "mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split()
        if any(n in fields[3] or n in fields[4] for n in needles):
            found.append(line)
    return found


def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state in ``pid``'s network namespace (IPv4 and IPv6)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
