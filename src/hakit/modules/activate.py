"""``hakit config -m NAME``: check a module's configuration, then activate it atomically.

Theory of operation. The engine runs a module from its *active copy* ``active/NAME``, never from
the source the admin edits (``modules/NAME``), so a half-edited file cannot hurt a running module.
Activating a new configuration must leave either the previous active copy or the new one, whole,
whatever happens (error, kill -9, power loss):

1. validate ``conf/userconfig.xml`` (with ``cluster.xml``): on any error, stop; nothing changed;
2. build the new version in a hidden directory ``active/.NAME.<random>``: ``conf/``, ``bin/``
   (scripts made executable) and ``module.json`` (id, mode, ports, source signature, date);
3. fsync every file and directory of it, and write the new ``lastconfig`` archive under a
   hidden name;
4. commit: ``active/NAME`` is a symbolic link to the version directory; a new link is created
   under a hidden name and renamed over it (``rename(2)`` replaces it atomically), then the
   directory is fsynced;
5. after the commit only: publish the ``lastconfig`` archive (keep the last 3), remove the old
   version directory.

A failure before step 4 removes what steps 2-3 built; a crash leaves hidden ``.NAME.*`` leftovers
that the next configuration of the module removes. The module lock makes configurations of one
node strictly sequential.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit import __version__
from hakit.config.model import UserConfig
from hakit.config.report import ConfigInvalid, ConfigReport
from hakit.errors import LocalSystemError, NotFoundError
from hakit.modules import _fs
from hakit.modules.archive import USERCONFIG, tree_signature, write_safe
from hakit.modules.ids import ModulePorts, check_module_name, load_ids, ports
from hakit.modules.runstate import running_reason
from hakit.modules.store import (
    MODULE_JSON,
    archive_name,
    archives_of,
    lastconfig_dir,
)
from hakit.modules.validation import check_module_config
from hakit.paths import NodePaths

LASTCONFIG_KEEP = 3
"""How many applied configurations of a module are kept in ``lastconfig/`` (as SafeKit)."""

ACTIVE_PARTS = ("conf", "bin")
"""What of the source goes into the active copy."""


@dataclass(frozen=True)
class ConfigureResult:
    """What :func:`configure` did."""

    name: str
    module_id: int
    mode: str
    ports: ModulePorts
    """The ports computed from the id."""
    effective_ports: dict[str, int]
    """The ports the module uses (``<heart port>``/``<farm port>`` override the computed ones)."""
    active_dir: Path
    version_dir: Path
    signature: str
    report: ConfigReport
    lastconfig_file: Path | None
    warnings: list[str] = field(default_factory=list)


def effective_ports(module_id: int, config: UserConfig) -> dict[str, int]:
    """The module's ports: computed from the id, unless the configuration sets them."""
    computed = ports(module_id)
    heartbeat = config.heart.port if config.heart and config.heart.port else computed.heartbeat
    farm = config.farm.port if config.farm and config.farm.port else computed.farm
    return {"heartbeat_udp": heartbeat, "replication_tcp": computed.replication, "farm_udp": farm}


def current_version(paths: NodePaths, name: str) -> Path | None:
    """The version directory ``active/NAME`` points to, or None when the module is not active.

    A real directory at ``active/NAME`` was not made by hakit and is refused rather than replaced.
    """
    link = paths.module_active(name)
    if link.is_symlink():
        return link.parent / os.readlink(link)
    if link.exists():
        raise LocalSystemError(
            f"{link} is not a symbolic link to a version directory (not made by hakit); "
            "move it away, then run `hakit config` again"
        )
    return None


def configure(paths: NodePaths, name: str, *, now: dt.datetime | None = None) -> ConfigureResult:
    """Validate module ``name``'s configuration and make it the active copy (``hakit config``).

    Raises :class:`~hakit.config.report.ConfigInvalid` (exit 2) with the full report when the
    configuration has errors, :class:`~hakit.errors.NotFoundError` when the module is not
    installed, :class:`~hakit.errors.LocalSystemError` while the module runs. In every error
    case the previous active copy is left untouched.
    """
    check_module_name(name)
    source = paths.module_source(name)
    when = now or dt.datetime.now(dt.UTC)
    with _fs.modules_lock(paths):
        if not source.is_dir():
            raise NotFoundError(
                f"module {name!r} is not installed on this node (no {source}); install it with "
                "`hakit module install`"
            )
        conf_file = source / USERCONFIG
        if not conf_file.is_file():
            raise NotFoundError(f"{conf_file}: missing; the module's configuration goes there")
        module_id = load_ids(paths.module_ids).get(name)
        if module_id is None:
            raise LocalSystemError(
                f"module {name!r} has no id in {paths.module_ids}; reinstall it with "
                "`hakit module install --replace` (add -M ID to choose the id)"
            )
        reason = running_reason(paths, name)
        if reason is not None:
            raise LocalSystemError(
                f"module {name!r} is running ({reason}); stop it before applying a new "
                "configuration"
            )
        config, report = check_module_config(paths, conf_file)
        if config is None or not report.ok:
            raise ConfigInvalid(report)
        paths.active.mkdir(parents=True, exist_ok=True)
        old = current_version(paths, name)
        _remove_leftovers(paths, name, keep=old)
        signature = tree_signature(source)
        port_map = effective_ports(module_id, config)
        meta = {
            "name": name,
            "id": module_id,
            "mode": config.mode.value,
            "ports": port_map,
            "signature": signature,
            "configured_at": when.isoformat(timespec="seconds"),
            "source": str(source),
            "hakit_version": __version__,
        }
        version, lastconfig, warnings = _activate(paths, name, source, meta, when)
        if old is not None:
            _fs.remove_tree(old)
    return ConfigureResult(
        name=name,
        module_id=module_id,
        mode=config.mode.value,
        ports=ports(module_id),
        effective_ports=port_map,
        active_dir=paths.module_active(name),
        version_dir=version,
        signature=signature,
        report=report,
        lastconfig_file=lastconfig,
        warnings=warnings,
    )


def _activate(
    paths: NodePaths, name: str, source: Path, meta: dict[str, Any], when: dt.datetime
) -> tuple[Path, Path | None, list[str]]:
    version = _fs.private_name(paths.active, name)
    saved_dir = lastconfig_dir(paths)
    saved_dir.mkdir(parents=True, exist_ok=True)
    staged_archive = _fs.private_name(saved_dir, name)
    warnings: list[str] = []
    try:
        version.mkdir(mode=0o755)
        warnings += copy_active_parts(source, version)
        write_module_json(version, meta)
        _fs.fsync_tree(version)
        _write_durably(staged_archive, version)
        swap_link(paths.module_active(name), version)
    except BaseException:
        _fs.remove_tree(version)
        _fs.remove_tree(staged_archive)
        raise
    # Committed: what follows only tidies up, an error here must not undo the activation.
    lastconfig: Path | None = None
    try:
        lastconfig = archive_name(saved_dir, name, when)
        os.rename(staged_archive, lastconfig)
        for stale in archives_of(saved_dir, name)[:-LASTCONFIG_KEEP]:
            stale.unlink()
    except OSError as exc:
        warnings.append(f"{saved_dir}: could not keep this configuration ({exc})")
        lastconfig = None
        _fs.remove_tree(staged_archive)
    return version, lastconfig, warnings


def _write_durably(archive: Path, version: Path) -> None:
    with archive.open("xb") as out:
        write_safe(version, out)
        out.flush()
        os.fsync(out.fileno())


def copy_active_parts(source: Path, version: Path) -> list[str]:
    """Copy ``conf/`` and ``bin/`` of the source into a version directory; return warnings.

    Only regular files and directories are copied (a link could point anywhere, later). Files of
    ``bin/`` become executable (0755): the engine runs each script directly.
    """
    warnings: list[str] = []
    for part in ACTIVE_PARTS:
        top = source / part
        if not top.is_dir() or top.is_symlink():
            (version / part).mkdir(mode=0o755)
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            rel = Path(dirpath).relative_to(source)
            (version / rel).mkdir(mode=0o755, exist_ok=True)
            for entry in sorted([*dirnames, *filenames]):
                src = Path(dirpath) / entry
                st = src.lstat()
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    warnings.append(f"{src}: not a regular file, not activated")
                    continue
                dst = version / rel / entry
                shutil.copyfile(src, dst, follow_symlinks=False)
                executable = part == "bin" or bool(st.st_mode & 0o111)
                os.chmod(dst, 0o755 if executable else 0o644)
            # os.walk descends into directory symlinks only with followlinks=True (not given),
            # but it lists them in dirnames: report them.
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink():
                    warnings.append(f"{Path(dirpath) / d}: symbolic link, not activated")
    return warnings


def write_module_json(version: Path, meta: dict[str, Any]) -> None:
    """Record what was activated (read by ``hakit module list``, the engine and the API)."""
    path = version / MODULE_JSON
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(path, 0o644)


def swap_link(link: Path, version: Path) -> None:
    """Point ``link`` at ``version`` atomically (a hidden new link renamed over the old one)."""
    tmp = _fs.private_name(link.parent, f"{link.name}.link")
    os.symlink(version.name, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fs.fsync_dir(link.parent)


def _remove_leftovers(paths: NodePaths, name: str, keep: Path | None) -> None:
    """Remove what an interrupted configuration of ``name`` left (hidden ``.NAME.*`` entries)."""
    prefix = f".{name}."
    for directory in (paths.active, lastconfig_dir(paths)):
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name.startswith(prefix) and (keep is None or entry.name != keep.name):
                _fs.remove_tree(entry)
