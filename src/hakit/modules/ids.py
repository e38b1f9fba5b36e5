"""Module names, module ids and the ports derived from an id.

A module id is a small integer chosen at installation and kept for the module's whole life: every
port of the module follows from it (as in SafeKit), so both nodes of a cluster must use the same
id for the same module (``hakit module install -M ID`` on the second node, or install in the same
order everywhere). Ids live in ``modules.json`` (``{"name": id}``).

Assignment rule: without ``-M``, a new module gets the **smallest id not used by an installed
module**. Uninstalling a module frees its id, so the next new module may reuse it; reinstalling a
module with ``--replace`` keeps its id.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hakit.errors import LocalSystemError, UserConfigError

MODULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
"""What a module name may be (SafeKit's rule): letters, digits, ``_`` and ``-``, 1 to 32 of them."""

MAX_MODULE_ID = 256
"""Highest module id: keeps the farm ports (4803 + 3 per id) below the replication ports (5600)."""

HEARTBEAT_BASE = 8888
REPLICATION_BASE = 5600
FARM_BASE = 4803


def check_module_name(name: str) -> str:
    """Return ``name`` if it is a valid module name, else raise :class:`UserConfigError`."""
    if not MODULE_NAME.fullmatch(name):
        raise UserConfigError(
            f"invalid module name {name!r}: use 1 to 32 letters, digits, '_' or '-' "
            "(e.g. 'pg' or 'web_farm')"
        )
    return name


def check_module_id(module_id: int) -> int:
    """Return ``module_id`` if it is within 1..MAX_MODULE_ID, else raise :class:`UserConfigError`."""
    if not 1 <= module_id <= MAX_MODULE_ID:
        raise UserConfigError(
            f"invalid module id {module_id}: it must be between 1 and {MAX_MODULE_ID}"
        )
    return module_id


@dataclass(frozen=True)
class ModulePorts:
    """The ports of one module (``hakit module getports``)."""

    module_id: int
    heartbeat: int
    """UDP, mirror heartbeats (``<heart port>`` overrides it)."""
    replication: int
    """TCP, mirror replication and resynchronisation."""
    farm: int
    """UDP, farm membership (``<farm port>`` overrides it)."""

    def as_dict(self) -> dict[str, int]:
        return {
            "id": self.module_id,
            "heartbeat_udp": self.heartbeat,
            "replication_tcp": self.replication,
            "farm_udp": self.farm,
        }


def ports(module_id: int) -> ModulePorts:
    """Ports of module ``module_id``: heartbeat UDP 8888+id-1, replication TCP 5600+(id-1)*4,
    farm UDP 4803+(id-1)*3 (SafeKit's formulas)."""
    check_module_id(module_id)
    n = module_id - 1
    return ModulePorts(module_id, HEARTBEAT_BASE + n, REPLICATION_BASE + 4 * n, FARM_BASE + 3 * n)


def load_ids(path: Path) -> dict[str, int]:
    """Read ``modules.json``; a missing file means no module is installed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise LocalSystemError(f"{path}: cannot read the module ids ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LocalSystemError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); it maps module names to ids, "
            'e.g. {"pg": 1}: repair it or restore it from a backup'
        ) from None
    if not isinstance(data, dict):
        raise LocalSystemError(f"{path}: expected a JSON object mapping module names to ids")
    ids: dict[str, int] = {}
    for name, value in data.items():
        if not MODULE_NAME.fullmatch(name) or type(value) is not int or value < 1:
            raise LocalSystemError(
                f"{path}: bad entry {name!r}: {value!r} (a module name and an id >= 1)"
            )
        ids[name] = value
    return ids


def save_ids(path: Path, ids: dict[str, int]) -> None:
    """Write ``modules.json`` atomically (a crash leaves the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".modules.", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(dict(sorted(ids.items())), out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def choose_id(ids: dict[str, int], name: str, requested: int | None) -> int:
    """The id ``name`` gets: ``requested`` if free (or already its own), else the smallest free id.

    ``ids`` is the current table; an id held by another module is refused with the holder's name.
    """
    if requested is not None:
        check_module_id(requested)
        for other, used in ids.items():
            if used == requested and other != name:
                raise UserConfigError(
                    f"module id {requested} is already used by module {other!r}; pick another "
                    "id with -M, or omit -M to get the smallest free one"
                )
        return requested
    if name in ids:
        return ids[name]
    used_ids = {v for k, v in ids.items() if k != name}
    for candidate in range(1, MAX_MODULE_ID + 1):
        if candidate not in used_ids:
            return candidate
    raise LocalSystemError(f"all {MAX_MODULE_ID} module ids are in use; uninstall a module first")
