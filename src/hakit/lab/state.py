"""The lab's state file: ``/var/tmp/hakit-lab/<lab>/lab.json``.

It records what ``lab up`` created (shape, hosts, addresses, anchor processes) so that every later
command, in any process, acts on the same lab. Writes are atomic (temporary file + rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hakit.errors import LocalSystemError
from hakit.lab.plan import LabShape

STATE_VERSION = 1


@dataclass(frozen=True)
class HostState:
    """One lab host as created by ``lab up``."""

    name: str
    role: str  # "node" (runs hakitd) or "client"
    addr: str
    netns: str
    anchor_pid: int
    anchor_start: int  # start time of the anchor (guards against pid reuse)
    powered: bool = True  # False after `lab kill` until `lab start`

    @property
    def is_node(self) -> bool:
        return self.role == "node"


@dataclass(frozen=True)
class LabState:
    """The whole lab."""

    lab: str
    shape: LabShape
    hosts: tuple[HostState, ...] = field(default=())

    def host(self, name: str) -> HostState | None:
        """The host called ``name``, None if the lab has none."""
        return next((h for h in self.hosts if h.name == name), None)

    def with_host(self, new: HostState) -> LabState:
        """A copy where the host of the same name is replaced by ``new``."""
        return replace(self, hosts=tuple(new if h.name == new.name else h for h in self.hosts))

    def to_json(self) -> str:
        """Serialized form (stable keys, human-readable)."""
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "lab": self.lab,
            "shape": asdict(self.shape),
            "hosts": [asdict(h) for h in self.hosts],
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str) -> LabState:
        """Parse a state file; a damaged file raises an error telling how to recover."""
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            shape = LabShape(**data["shape"])
            hosts = tuple(HostState(**h) for h in data["hosts"])
            return cls(lab=str(data["lab"]), shape=shape, hosts=hosts)
        except (ValueError, KeyError, TypeError) as exc:
            raise LocalSystemError(
                f"{source}: unreadable lab state ({exc}); run `hakit lab down` to remove the lab"
            ) from None


def load_state(path: Path) -> LabState | None:
    """The lab state stored at ``path``, None if there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return LabState.from_json(text, str(path))


def save_state(path: Path, state: LabState) -> None:
    """Write ``state`` to ``path`` atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(state.to_json())
    os.replace(tmp, path)
