"""Replicated directories of a mirror module, as ``hakit rfsverify`` reads them on each node.

::

    GET /api/v1/modules/{m}/rfs                      the module's replicated directories
    GET /api/v1/modules/{m}/rfs/manifest?dir=INDEX   JSON-lines manifest of one of them, this node
    GET /api/v1/modules/{m}/rfs/diff                 what a reintegration from this node would copy
    GET /api/v1/modules/{m}/rfs/divergent            the file sets kept aside on this node

The manifest is walked at the directory's configured path: on the primary that is the replication
mount, on the secondary the read-only mount, so both show the data as replication keeps it. Paths
excluded by the directory's ``<notreplicated>`` rules are left out. The walk runs in worker threads
(the stream is produced in batches, each in a thread): hashing a large tree never blocks the daemon.
The format is :mod:`hakit.replication.manifest`'s (entries, then an ``end`` or ``error`` trailer).

``diff`` (``hakit rfsdiff``) reads each directory's dirty-zone journal
(:mod:`hakit.replication.journal`, read-only: the replicator may be appending to it) and answers
its estimate: files, zones, bytes, directories to re-list, attributes to re-send, with the first
``limit`` files and directories by name. Without a journal (or with a damaged one) a reintegration
would copy everything: the answer is then the size of the tree (its ``<notreplicated>`` paths left
out), walked in a worker thread. Both routes list the sets of divergent files kept aside before a
resync (:mod:`hakit.replication.keepaside`).

Errors before the stream starts are the API's usual JSON errors: 404 ``not_found`` for an unknown
module, a module without ``<rfs>`` or a directory index out of range; 500 ``local_system_error``
when the directory cannot be read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from hakit.config.model import Replicated, Rfs
from hakit.config.userconfig import load_userconfig
from hakit.errors import LocalSystemError, NotFoundError, UserConfigError
from hakit.modules.ids import check_module_name
from hakit.paths import NodePaths, node_name
from hakit.replication.journal import DirtyJournal, JournalCorrupt
from hakit.replication.keepaside import list_kept_aside
from hakit.replication.locations import divergent_dir, journal_path
from hakit.replication.manifest import (
    ExcludeEntry,
    NotReplicatedMatcher,
    encode_stream,
    walk_manifest,
)

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


# -- what a reintegration would copy -------------------------------------------------------------

DIFF_LIMIT = 50  # files and directories named per replicated directory (all are counted)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape") if raw else "."


def tree_size(root: Path, exclude: ExcludeEntry | None = None) -> tuple[int, int]:
    """``(files, bytes)`` of the tree at ``root``: its non-directories and the size of its regular
    files, each inode once, symlinks not followed, ``exclude``'s paths left out (blocking)."""
    base = os.fsencode(root)
    files = size = 0
    seen: set[tuple[int, int]] = set()
    pending = [b""]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(base + b"/" + rel if rel else base) as it:
                entries = list(it)
        except FileNotFoundError:
            if not rel:
                raise LocalSystemError(
                    f"{root} does not exist on this node (is the module configured?)"
                ) from None
            continue  # removed while walking: the tree is live
        except OSError as exc:
            raise LocalSystemError(
                f"cannot measure {root}/{rel.decode('utf-8', 'backslashreplace')}: "
                f"{exc.strerror or exc}"
            ) from None
        for entry in entries:
            path = rel + b"/" + entry.name if rel else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if exclude is not None and exclude(path, is_dir):
                    continue
                if is_dir:
                    pending.append(path)
                    continue
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            files += 1
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                if st.st_nlink > 1:
                    seen.add((st.st_dev, st.st_ino))
                size += st.st_size
    return files, size


def _regular_size(root: bytes) -> Callable[[bytes], int | None]:
    def size_of(path: bytes) -> int | None:
        try:
            st = os.lstat(root + b"/" + path if path else root)
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    return size_of


def _full_sync(rep: Replicated, why: str) -> dict[str, Any]:
    matcher = NotReplicatedMatcher(rep.notreplicated)
    try:
        files, size = tree_size(Path(rep.dir), matcher.excludes_entry if matcher else None)
    except LocalSystemError as exc:
        # One unreadable directory must not hide the estimates of the others.
        return {"source": "error", "why": why, "full": None, "message": f"{why}, and {exc}"}
    return {
        "source": "full",
        "why": why,
        "full": {"files": files, "bytes": size},
        "message": (
            f"{why}: a reintegration would be a full synchronization of {size} bytes "
            f"({files} files)"
        ),
    }


def diff_dir(
    paths: NodePaths, module: str, index: int, rep: Replicated, limit: int
) -> dict[str, Any]:
    """What a reintegration of replicated directory ``index`` from this node would copy
    (blocking: reads the journal, or walks the tree when there is none)."""
    where = journal_path(paths, module, index)
    answer: dict[str, Any] = {"index": index, "dir": rep.dir, "journal": str(where)}
    try:
        journal = DirtyJournal.load_readonly(where)
    except NotFoundError:
        return answer | _full_sync(rep, "no journal")
    except JournalCorrupt as exc:
        return answer | _full_sync(rep, f"the journal is damaged ({exc})")
    estimate = journal.estimate(_regular_size(os.fsencode(rep.dir)))
    plan = journal.plan()
    answer |= {
        "source": "journal",
        "estimate": dataclasses.asdict(estimate) | {"zone_size": journal.zone_size},
        "files": [
            {"path": _text(p), "zones": None if zones is None else len(zones)}
            for p, zones in itertools.islice(plan.files.items(), limit or None)
        ],
        "relist": [_text(p) for p in plan.listings[: limit or None]],
    }
    if journal.empty:
        answer["message"] = "nothing to copy: the peer holds everything the journal knows of"
    else:
        answer["message"] = (
            f"a reintegration would copy {estimate.bytes} bytes: {estimate.files} files "
            f"({estimate.zones} zones of {journal.zone_size} bytes, the rest whole), re-list "
            f"{estimate.listings} directories, re-send the attributes of {estimate.attrs} entries"
        )
    return answer


def rfs_diff(paths: NodePaths, module: str, limit: int = DIFF_LIMIT) -> dict[str, Any]:
    """``GET .../rfs/diff`` without the node's name (blocking)."""
    rfs = module_rfs(paths, module)
    return {
        "module": module,
        "dirs": [diff_dir(paths, module, i, rep, limit) for i, rep in enumerate(rfs.replicated)],
        "divergent": _divergent(paths, module),
    }


def _divergent(paths: NodePaths, module: str) -> dict[str, Any]:
    where = divergent_dir(paths, module)
    return {"directory": str(where), "sets": [s.to_json() for s in list_kept_aside(where)]}


def rfs_divergent(paths: NodePaths, module: str) -> dict[str, Any]:
    """``GET .../rfs/divergent`` without the node's name (blocking). A module that is gone from
    this node still shows its kept-aside sets while they are there."""
    check_module_name(module)
    if not paths.module_active(module).exists() and not divergent_dir(paths, module).exists():
        raise NotFoundError(
            f"module {module} is not configured on this node and has no kept-aside files"
        )
    return {"module": module} | _divergent(paths, module)


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

    @router.get("/modules/{module}/rfs/diff")
    async def rfs_diff_route(
        module: str, limit: int = Query(DIFF_LIMIT, ge=0, le=100_000)
    ) -> dict[str, Any]:
        """What a reintegration from this node would copy, per replicated directory."""
        answer = await asyncio.to_thread(rfs_diff, paths, module, limit)
        return {"node": this_node} | answer

    @router.get("/modules/{module}/rfs/divergent")
    async def rfs_divergent_route(module: str) -> dict[str, Any]:
        """The sets of divergent files kept aside on this node before a resync."""
        answer = await asyncio.to_thread(rfs_divergent, paths, module)
        return {"node": this_node} | answer

    return router
