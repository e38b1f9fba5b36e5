"""The incarnation number of this node's datagram streams: strictly increasing across restarts.

Receivers reject datagrams of an older incarnation (see :mod:`hakit.net.auth`), so a node that came
back with a *smaller* number would be deaf-muted until its number caught up. Two sources, combined:

* the wall clock in nanoseconds (``time.time_ns()``): increasing across restarts as long as the
  clock is not stepped back, and needs no writable disk;
* a counter persisted in ``/var/lib/hakit/incarnation``: survives a clock stepped back (dead RTC
  battery, bad NTP server), but not a re-installation that wipes ``/var/lib/hakit``.

The incarnation is ``max(clock, last persisted + 1)``, then persisted: it only goes wrong if both
fail at once. Wall-clock time is fine here: it is an identifier, never a duration.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hakit.daemon.files import write_atomically

log = logging.getLogger(__name__)

_U64_MAX = 2**64 - 1


def next_incarnation(path: Path, now_ns: int) -> int:
    """Return the next incarnation, persisting it in ``path`` (best effort, see module doc)."""
    previous = _read(path)
    value = max(now_ns, previous + 1) if previous is not None else now_ns
    if value > _U64_MAX:
        raise ValueError(f"{path}: incarnation {value} does not fit in 64 bits; delete the file")
    try:
        write_atomically(path, f"{value}\n".encode())
    except OSError as exc:
        # Not fatal: the clock alone is still a sound source; say what is lost.
        log.warning(
            "cannot persist the incarnation in %s (%s): restarts now rely on the clock only",
            path,
            exc.strerror or exc,
        )
    return value


def _read(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable incarnation file %s: %s", path, exc)
        return None
    if not text.isdigit():
        log.warning("ignoring incarnation file %s: %r is not a number", path, text[:40])
        return None
    return int(text)
