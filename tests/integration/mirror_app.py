"""A mirror module for lab scenarios: a virtual IP and an HTTP "application" started by start_prim.

The application is :mod:`hakit.testing.hostname_server` on port 8080: a client that reaches it
through the VIP learns which node serves it. Scripts keep its pid in ``$SAFEUSERVAR/app.pid``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hakit.testing.lab_module import mirror_userconfig, write_safe

APP_PORT = 8080

START_PRIM = f"""#!/bin/bash
# start_prim CURRENT NEXT ACTION: start the application (detached: it outlives this script)
echo "start_prim $*"
if [ -e /srv/fail_start ]; then
    # SafeKit's way for a start script to give up: stop the module, identified as this script.
    "$SAFEBIN/hakit" printe "start_prim: /srv/fail_start exists, giving up"
    "$SAFEBIN/hakit" stop -i start_prim
    exit 1
fi
setsid {sys.executable} -m hakit.testing.hostname_server {APP_PORT} "$SAFEUSERVAR/app.pid" \\
    >>"$SAFEUSERVAR/app.out" 2>&1 < /dev/null &
for _ in $(seq 100); do
    if [ -s "$SAFEUSERVAR/app.pid" ]; then
        "$SAFEBIN/hakit" printi "application started (pid $(cat "$SAFEUSERVAR/app.pid"))"
        exit 0
    fi
    sleep 0.05
done
echo "application did not start"; exit 1
"""

STOP_PRIM = """#!/bin/bash
# stop_prim [force] CURRENT NEXT ACTION: stop the application (graceful, then force)
echo "stop_prim $*"
pidfile="$SAFEUSERVAR/app.pid"
[ -s "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if [ "$1" = force ]; then kill -9 "$pid" 2>/dev/null; else kill "$pid" 2>/dev/null; fi
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; exit 0; }; sleep 0.05; done
exit 0
"""


def build_module(
    out: Path,
    *,
    vip: str,
    pulse: str = "200ms",
    timeout: str = "2s",
    failover: str = "on",
    defaultprim: str = "alone",
    rfs: str = "",
) -> Path:
    """Write the module as a ``.safe`` archive at ``out`` and return it (``rfs``: an ``<rfs>``
    element to include, e.g. ``<rfs><replicated dir="/srv/data"/></rfs>``)."""
    conf = mirror_userconfig(
        vip=vip, pulse=pulse, timeout=timeout, failover=failover, defaultprim=defaultprim, rfs=rfs
    )
    return write_safe(out, conf, {"start_prim": START_PRIM, "stop_prim": STOP_PRIM})
