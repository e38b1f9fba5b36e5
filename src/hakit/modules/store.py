"""Installing, uninstalling, listing and packaging modules on one node (the service layer).

The CLI calls these functions today; the REST API and the console will call the same ones. Each
function takes the node's :class:`~hakit.paths.NodePaths`, holds the module-management lock while
it changes anything, and returns a small result object the caller turns into a message.

Files of a module ``NAME`` (see :mod:`hakit.paths`)::

    modules/NAME/{conf,bin}      the source: what the admin edits, what install writes
    active/NAME -> .NAME.<rnd>   the active copy: what the engine runs (written by ``hakit config``)
    backup/NAME_<date>_<time>.safe   archive written by uninstall
    lastconfig/NAME_<date>_<time>.safe   the last 3 configurations applied
    modules.json                 {"NAME": id}

Changes are made in hidden directories (``.NAME.<suffix>.<random>``) and renamed into place, so a
reader never sees a half-written module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from hakit.errors import LocalSystemError, NotFoundError, UserConfigError
from hakit.modules import _fs
from hakit.modules.archive import extract_safe, tree_signature, write_safe
from hakit.modules.ids import check_module_name, choose_id, load_ids, save_ids
from hakit.modules.runstate import running_reason
from hakit.paths import NodePaths

MODULE_JSON = "module.json"
"""File of the active copy recording what was activated (id, ports, signature, date)."""


def lastconfig_dir(paths: NodePaths) -> Path:
    """Where the last configurations of every module are archived (``lib/lastconfig``)."""
    return paths.lib / "lastconfig"


def stamp(now: dt.datetime) -> str:
    """``YYYYmmdd_HHMMSS`` as used in backup and lastconfig file names."""
    return now.strftime("%Y%m%d_%H%M%S")


def archive_name(directory: Path, name: str, now: dt.datetime) -> Path:
    """A fresh ``NAME_<date>_<time>.safe`` path in ``directory`` (``_2``, ``_3``... on collision)."""
    base = f"{name}_{stamp(now)}"
    candidate = directory / f"{base}.safe"
    n = 2
    while candidate.exists():
        candidate = directory / f"{base}_{n}.safe"
        n += 1
    return candidate


def archives_of(directory: Path, name: str) -> list[Path]:
    """The dated archives of module ``name`` in ``directory``, oldest first."""
    pattern = re.compile(rf"{re.escape(name)}_\d{{8}}_\d{{6}}(_\d+)?\.safe")
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if pattern.fullmatch(p.name)]

    def key(p: Path) -> tuple[str, int]:
        stem = p.name[len(name) + 1 : -len(".safe")]
        parts = stem.split("_")
        return ("_".join(parts[:2]), int(parts[2]) if len(parts) > 2 else 1)

    return sorted(found, key=key)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _require_name(name: str) -> str:
    return check_module_name(name)


def _clean_stale(directory: Path, name: str, keep: Path | None = None) -> None:
    """Remove hidden leftovers ``.NAME.*`` of an interrupted operation (a crash, a kill -9)."""
    if not directory.is_dir():
        return
    prefix = f".{name}."
    for entry in directory.iterdir():
        if entry.name.startswith(prefix) and (keep is None or entry.name != keep.name):
            _fs.remove_tree(entry)


# ---------------------------------------------------------------------------------------- install


@dataclass(frozen=True)
class InstallResult:
    """What :func:`install` did."""

    name: str
    module_id: int
    source_dir: Path
    replaced: bool
    warnings: list[str] = field(default_factory=list)


def install(
    paths: NodePaths,
    name: str,
    safe_file: Path | IO[bytes],
    module_id: int | None = None,
    replace: bool = False,
    *,
    label: str | None = None,
) -> InstallResult:
    """Install the ``.safe`` archive ``safe_file`` as module ``name`` (``hakit module install``).

    The module gets ``module_id`` if given (refused when another module holds it), else the
    smallest free id. An existing module is only overwritten with ``replace``, which keeps its id.
    Only the source (``modules/NAME``) is written: ``hakit config -m NAME`` activates it.
    ``label`` names a stream source in messages (e.g. ``template mirror``).
    """
    _require_name(name)
    paths.ensure()
    source = paths.module_source(name)
    with _fs.modules_lock(paths):
        ids = load_ids(paths.module_ids)
        exists = source.exists() or name in ids
        if exists and not replace:
            held = f" (id {ids[name]})" if name in ids else ""
            raise UserConfigError(
                f"module {name!r} is already installed{held}; add --replace to install over it "
                "(its id is kept), or uninstall it first"
            )
        if exists and module_id is not None and name in ids and ids[name] != module_id:
            raise UserConfigError(
                f"module {name!r} has id {ids[name]} and --replace keeps it; to change the id, "
                "uninstall the module, then install it with -M"
            )
        new_id = choose_id(ids, name, module_id)
        _clean_stale(paths.modules, name)
        staging = _fs.private_name(paths.modules, f"{name}.new")
        staging.mkdir(mode=0o755)
        try:
            listing = extract_safe(safe_file, staging, label=label)
            _fs.fsync_tree(staging)
            retired = _put_in_place(staging, source)
            ids[name] = new_id
            try:
                save_ids(paths.module_ids, ids)
            except BaseException:
                if retired is None:
                    _fs.remove_tree(source)
                raise
            if retired is not None:
                _fs.remove_tree(retired)
        finally:
            _fs.remove_tree(staging)
    return InstallResult(name, new_id, source, exists, list(listing.warnings))


def _put_in_place(staging: Path, source: Path) -> Path | None:
    """Rename ``staging`` to ``source``; an existing ``source`` is moved aside and returned."""
    retired = None
    if source.exists() or source.is_symlink():
        retired = _fs.private_name(source.parent, f"{source.name}.old")
        os.rename(source, retired)
    try:
        os.rename(staging, source)
    except BaseException:
        if retired is not None:
            os.rename(retired, source)
        raise
    _fs.fsync_dir(source.parent)
    return retired


# -------------------------------------------------------------------------------------- uninstall


@dataclass(frozen=True)
class UninstallResult:
    """What :func:`uninstall` did."""

    name: str
    module_id: int | None
    backup_file: Path | None
    warnings: list[str] = field(default_factory=list)


def uninstall(paths: NodePaths, name: str, *, now: dt.datetime | None = None) -> UninstallResult:
    """Remove module ``name`` from this node (``hakit module uninstall``).

    Refused while the module runs (see :mod:`hakit.modules.runstate`). First the module is saved
    to ``backup/NAME_<date>_<time>.safe`` (the source if present, else the active copy), then the
    active copy and the source are removed and the id is freed. The per-module state directory
    (logs, module database) is kept for post-mortem reading.
    """
    _require_name(name)
    source = paths.module_source(name)
    active = paths.module_active(name)
    with _fs.modules_lock(paths):
        ids = load_ids(paths.module_ids)
        if not (source.exists() or active.is_symlink() or active.exists() or name in ids):
            raise NotFoundError(
                f"module {name!r} is not installed on this node (see `hakit module list`)"
            )
        reason = running_reason(paths, name)
        if reason is not None:
            raise LocalSystemError(
                f"module {name!r} is running ({reason}); stop it first, then uninstall it"
            )
        packed = source if source.is_dir() else active if active.is_dir() else None
        backup_file = None
        warnings: list[str] = []
        if packed is not None:
            paths.backup.mkdir(parents=True, exist_ok=True)
            backup_file = archive_name(paths.backup, name, now or _utcnow())
            _fs.atomic_write(backup_file, lambda out: warnings.extend(write_safe(packed, out)))
        _remove_active(paths, name)
        if source.exists() or source.is_symlink():
            retired = _fs.private_name(paths.modules, f"{name}.old")
            os.rename(source, retired)
            _fs.fsync_dir(paths.modules)
            _fs.remove_tree(retired)
        _clean_stale(paths.modules, name)
        module_id = ids.pop(name, None)
        save_ids(paths.module_ids, ids)
    return UninstallResult(name, module_id, backup_file, warnings)


def _remove_active(paths: NodePaths, name: str) -> None:
    active = paths.module_active(name)
    if active.is_symlink():
        target = active.parent / os.readlink(active)
        active.unlink()
        _fs.fsync_dir(active.parent)
        if target.parent == active.parent:
            _fs.remove_tree(target)
    elif active.exists():
        _fs.remove_tree(active)
    _clean_stale(paths.active, name)


# ------------------------------------------------------------------------------------------- list


@dataclass(frozen=True)
class ModuleInfo:
    """One row of ``hakit module list``."""

    name: str
    module_id: int | None
    mode: str | None
    installed: bool
    configured: bool
    source_signature: str | None
    active_signature: str | None
    configured_at: str | None
    problems: tuple[str, ...] = ()

    @property
    def modified(self) -> bool:
        """The source changed since the last ``hakit config`` (the engine runs the old copy)."""
        return (
            self.configured
            and self.source_signature is not None
            and self.source_signature != self.active_signature
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``hakit module list --json``, the API)."""
        return {
            "name": self.name,
            "id": self.module_id,
            "mode": self.mode,
            "installed": self.installed,
            "configured": self.configured,
            "modified_since_config": self.modified,
            "source_signature": self.source_signature,
            "active_signature": self.active_signature,
            "configured_at": self.configured_at,
            "problems": list(self.problems),
        }


def read_module_json(paths: NodePaths, name: str) -> dict[str, Any] | None:
    """The ``module.json`` of the active copy of ``name``, or None if not configured/unreadable."""
    try:
        data = json.loads((paths.module_active(name) / MODULE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _names(paths: NodePaths, ids: dict[str, int]) -> list[str]:
    names = set(ids)
    for directory in (paths.modules, paths.active):
        if directory.is_dir():
            names.update(
                p.name for p in directory.iterdir() if not p.name.startswith(".") and _valid(p.name)
            )
    return sorted(names)


def _valid(name: str) -> bool:
    try:
        check_module_name(name)
    except UserConfigError:
        return False
    return True


def list_modules(paths: NodePaths) -> list[ModuleInfo]:
    """Every module known on this node, sorted by name, with its id, mode and whether the source
    was modified since the last configuration."""
    from hakit.modules.validation import source_mode

    ids = load_ids(paths.module_ids)
    rows = []
    for name in _names(paths, ids):
        source = paths.module_source(name)
        problems: list[str] = []
        installed = source.is_dir()
        meta = read_module_json(paths, name)
        configured = meta is not None
        if paths.module_active(name).exists() and meta is None:
            problems.append(f"{paths.module_active(name)}: no readable {MODULE_JSON}")
        source_sig = None
        if installed:
            try:
                source_sig = tree_signature(source)
            except OSError as exc:
                problems.append(f"{source}: unreadable ({exc.strerror})")
        else:
            problems.append(f"{source}: missing (reinstall the module)")
        if name not in ids:
            problems.append(f"no id in {paths.module_ids} (reinstall with --replace)")
        mode = meta.get("mode") if meta else None
        if mode is None and installed:
            mode = source_mode(source)
        active_sig = meta.get("signature") if meta else None
        rows.append(
            ModuleInfo(
                name=name,
                module_id=ids.get(name),
                mode=mode if isinstance(mode, str) else None,
                installed=installed,
                configured=configured,
                source_signature=source_sig,
                active_signature=active_sig if isinstance(active_sig, str) else None,
                configured_at=str(meta["configured_at"])
                if meta and "configured_at" in meta
                else None,
                problems=tuple(problems),
            )
        )
    return rows


# ---------------------------------------------------------------------------------------- package


@dataclass(frozen=True)
class PackageResult:
    """What :func:`package` wrote."""

    name: str
    out_file: Path
    warnings: list[str] = field(default_factory=list)


def package(paths: NodePaths, name: str, out_file: Path) -> PackageResult:
    """Pack the source of module ``name`` into ``out_file`` (``hakit module package``).

    Entries are sorted and time-stamped identically, executable bits kept: the same source always
    gives the same archive. The file is written atomically (never half an archive).
    """
    _require_name(name)
    source = paths.module_source(name)
    if not source.is_dir():
        raise NotFoundError(
            f"module {name!r} is not installed on this node (no {source}; see `hakit module list`)"
        )
    out_file = out_file.resolve()
    with contextlib.suppress(ValueError):
        out_file.relative_to(source.resolve())
        raise UserConfigError(f"{out_file}: choose an output file outside the module ({source})")
    if out_file.is_dir():
        raise UserConfigError(f"{out_file} is a directory; give the archive's file name")
    if not out_file.parent.is_dir():
        raise NotFoundError(f"{out_file.parent}: no such directory")
    warnings: list[str] = []
    _fs.atomic_write(out_file, lambda out: warnings.extend(write_safe(source, out)))
    return PackageResult(name, out_file, warnings)
