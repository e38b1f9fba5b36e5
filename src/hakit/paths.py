"""Where a node keeps its files.

Production layout (root ``/``)::

    /etc/hakit/cluster.xml        cluster configuration (installed by ``hakit cluster config``)
    /etc/hakit/cluster.key        cluster key (``hakit cluster genkey``), mode 0600
    /var/lib/hakit/modules/AM/    module source (conf/userconfig.xml, bin/*) -- what the admin edits
    /var/lib/hakit/active/AM      activated copy (symlink swapped atomically by ``hakit config``)
    /var/lib/hakit/backup/        archives of uninstalled modules
    /var/lib/hakit/modules.json   module name -> module id (stable)
    /var/lib/hakit/state/AM/      per-module runtime state (module db, ready.txt)
    /var/log/hakit/               daemon log, per-script logs
    /run/hakit/                   pid files, sockets

``HAKIT_ROOT`` prefixes all of these, so several nodes can live on one machine (the test lab binds a
node-private directory over one fixed ``HAKIT_ROOT`` path inside each node's mount namespace).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodePaths:
    """All file locations of one node, derived from a single root."""

    root: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> NodePaths:
        """Paths for the node this process acts on (``HAKIT_ROOT``, default ``/``)."""
        env = os.environ if environ is None else environ
        return cls(Path(env.get("HAKIT_ROOT") or "/"))

    @property
    def etc(self) -> Path:
        return self.root / "etc" / "hakit"

    @property
    def cluster_xml(self) -> Path:
        return self.etc / "cluster.xml"

    @property
    def cluster_key(self) -> Path:
        return self.etc / "cluster.key"

    @property
    def lib(self) -> Path:
        return self.root / "var" / "lib" / "hakit"

    @property
    def modules(self) -> Path:
        return self.lib / "modules"

    @property
    def active(self) -> Path:
        return self.lib / "active"

    @property
    def backup(self) -> Path:
        return self.lib / "backup"

    @property
    def module_ids(self) -> Path:
        return self.lib / "modules.json"

    @property
    def state(self) -> Path:
        return self.lib / "state"

    @property
    def log(self) -> Path:
        return self.root / "var" / "log" / "hakit"

    @property
    def run(self) -> Path:
        return self.root / "run" / "hakit"

    def module_source(self, module: str) -> Path:
        return self.modules / module

    def module_active(self, module: str) -> Path:
        return self.active / module

    def module_state(self, module: str) -> Path:
        return self.state / module

    def ensure(self) -> None:
        """Create the node's directories (idempotent)."""
        for p in (self.etc, self.modules, self.active, self.backup, self.state, self.log, self.run):
            p.mkdir(parents=True, exist_ok=True)


def node_name(environ: dict[str, str] | None = None) -> str:
    """The local node's name: ``HAKIT_NODE`` if set, else the host name (as SafeKit does)."""
    env = os.environ if environ is None else environ
    return env.get("HAKIT_NODE") or os.uname().nodename.split(".")[0]
