"""Where the replication layer keeps its per-module files on a node.

The replicator writes them, the engine acts on them and the API reads them: all three take the
locations from here, so they cannot drift apart.

* ``<state>/<module>/rfs<INDEX>.journal``: the dirty-zone journal of replicated directory
  ``INDEX`` (what a reintegration must copy; :mod:`hakit.replication.journal`);
* ``<state>/<module>/divergent/``: the sets of files kept aside before a resync overwrote them
  (:mod:`hakit.replication.keepaside`). It is outside every replicated tree, so a resync never
  touches it, and under the module's state, so ``hakit`` finds it without any configuration.
"""

from __future__ import annotations

from pathlib import Path

from hakit.paths import NodePaths


def journal_path(paths: NodePaths, module: str, index: int) -> Path:
    """The dirty-zone journal of replicated directory ``index`` (from 0) of ``module``."""
    return paths.module_state(module) / f"rfs{index}.journal"


def divergent_dir(paths: NodePaths, module: str) -> Path:
    """The directory holding ``module``'s kept-aside (divergent) file sets."""
    return paths.module_state(module) / "divergent"
