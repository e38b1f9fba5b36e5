"""Replicated directories of a mirror module, as ``hakit rfsverify`` reads them on each node.

::

    GET /api/v1/modules/{m}/rfs                      the module's replicated directories
    GET /api/v1/modules/{m}/rfs/manifest?dir=INDEX   JSON-lines manifest of one of them, this node

The manifest is walked at the directory's configured path: on the primary that is the replication
mount, on the secondary the read-only mount, so both show the data as replication keeps it. Paths
excluded by the directory's ``<notreplicated>`` rules are left out. The walk runs in worker threads
(the stream is produced in batches, each in a thread): hashing a large tree never blocks the daemon.
The format is :mod:`hakit.replication.manifest`'s (entries, then an ``end`` or ``error`` trailer).

Errors before the stream starts are the API's usual JSON errors: 404 ``not_found`` for an unknown
module, a module without ``<rfs>`` or a directory index out of range; 500 ``local_system_error``
when the directory cannot be read.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from hakit.config.model import Replicated, Rfs
from hakit.config.userconfig import load_userconfig
from hakit.errors import LocalSystemError, NotFoundError, UserConfigError
from hakit.modules.ids import check_module_name
from hakit.paths import NodePaths, node_name
from hakit.replication.manifest import NotReplicatedMatcher, encode_stream, walk_manifest

MANIFEST_MEDIA_TYPE = "application/x-ndjson"


def module_rfs(paths: NodePaths, module: str) -> Rfs:
    """The ``<rfs>`` of ``module``'s active configuration on this node (blocking: reads files).

    :class:`NotFoundError` when the module is not configured here or has no replicated directory;
    :class:`UserConfigError` when its active configuration is invalid.
    """
    check_module_name(module)
    conf = paths.module_active(module) / "conf" / "userconfig.xml"
    if not conf.is_file():
        raise NotFoundError(
            f"module {module} is not configured on this node (no {conf}): install it and run "
            f"`hakit config -m {module}`"
        )
    config, report = load_userconfig(conf)
    if config is None:
        raise UserConfigError(f"module {module}: invalid active configuration:\n{report.render()}")
    if config.rfs is None or not config.rfs.replicated:
        raise NotFoundError(
            f"module {module} has no replicated directory (no <rfs><replicated> in {conf})"
        )
    return config.rfs


def replicated_dir(paths: NodePaths, module: str, index: int) -> Replicated:
    """The ``index``-th (from 0) replicated directory of ``module`` (NotFoundError if none)."""
    replicated = module_rfs(paths, module).replicated
    if not 0 <= index < len(replicated):
        raise NotFoundError(
            f"module {module} has {len(replicated)} replicated director"
            f"{'y' if len(replicated) == 1 else 'ies'} (dir=0..{len(replicated) - 1}); "
            f"there is no dir={index}"
        )
    return replicated[index]


def describe(index: int, rep: Replicated) -> dict[str, Any]:
    """One replicated directory as ``GET .../rfs`` lists it."""
    return {
        "index": index,
        "dir": rep.dir,
        "notreplicated": [
            {"path": n.path, "regexpath": n.regexpath, "only": n.only} for n in rep.notreplicated
        ],
    }


def _check_root(module: str, root: Path) -> None:
    """Fail before streaming (a clean HTTP error) when the directory cannot be walked at all."""
    try:
        st = os.stat(root)
        os.close(os.open(root, os.O_RDONLY | os.O_DIRECTORY))
    except OSError as exc:
        raise LocalSystemError(
            f"module {module}: cannot read the replicated directory {root} on this node: "
            f"{exc.strerror or exc} (is the module configured and the directory mounted?)"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise LocalSystemError(f"module {module}: {root} is not a directory on this node")


def rfs_router(paths: NodePaths, node: str | None = None) -> APIRouter:
    """The routes above for the node whose files are under ``paths`` (include with the ``/api/v1``
    prefix). ``node``: this node's name (default :func:`hakit.paths.node_name`)."""
    router = APIRouter()
    this_node = node or node_name()

    @router.get("/modules/{module}/rfs")
    async def rfs_dirs(module: str) -> dict[str, Any]:
        """The module's replicated directories (index, path, notreplicated rules) on this node."""
        rfs = await asyncio.to_thread(module_rfs, paths, module)
        return {
            "module": module,
            "node": this_node,
            "dirs": [describe(i, rep) for i, rep in enumerate(rfs.replicated)],
        }

    @router.get("/modules/{module}/rfs/manifest")
    async def rfs_manifest(
        module: str, index: int = Query(0, alias="dir", ge=0)
    ) -> StreamingResponse:
        """Stream the JSON-lines manifest of replicated directory ``dir`` as this node sees it."""
        rep = await asyncio.to_thread(replicated_dir, paths, module, index)
        root = Path(rep.dir)
        await asyncio.to_thread(_check_root, module, root)
        matcher = NotReplicatedMatcher(rep.notreplicated)
        entries = walk_manifest(root, exclude=matcher.excludes_entry if matcher else None)
        # A plain iterator: Starlette runs each next() (one batch of entries) in a worker thread.
        return StreamingResponse(
            encode_stream(entries),
            media_type=MANIFEST_MEDIA_TYPE,
            headers={"X-Hakit-Node": this_node},
        )

    return router
