"""Wire and disk forms of the mirror core's values: generation records and heartbeat payloads.

The same JSON form of a :class:`~hakit.core.generations.DataGeneration` is persisted in
``state/<module>/generation.json`` and carried in every heartbeat, so what a node remembers and what
it tells its peer can never drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hakit.core.events import HeartbeatReceived, SwapPhase
from hakit.core.generations import DataGeneration, DataStatus, GenerationOrigin
from hakit.core.states import ModuleState, Readiness
from hakit.daemon.files import write_atomically
from hakit.errors import LocalSystemError, PeerProtocolError


def generation_to_dict(gen: DataGeneration) -> dict[str, Any]:
    """The JSON-ready form of a generation record."""
    return {
        "current": gen.current,
        "history": list(gen.history),
        "status": gen.status.value,
        "origin": gen.origin.value,
        "interrupted_resync": gen.interrupted_resync,
        "full_sync_required": gen.full_sync_required,
        "last_role": gen.last_role.value if gen.last_role is not None else None,
        "serial": gen.serial,
    }


def generation_from_dict(data: Mapping[str, Any]) -> DataGeneration:
    """Parse a generation record; raises ValueError/KeyError/TypeError on a malformed one."""
    history = data["history"]
    if not isinstance(history, list) or not all(isinstance(h, str) for h in history):
        raise ValueError("history must be a list of generation ids")
    current = data["current"]
    if not isinstance(current, str):
        raise ValueError("current must be a string")
    last_role = data.get("last_role")
    serial = data["serial"]
    if not isinstance(serial, int) or serial < 0:
        raise ValueError("serial must be a non-negative integer")
    return DataGeneration(
        current=current,
        history=tuple(history),
        status=DataStatus(data["status"]),
        origin=GenerationOrigin(data["origin"]),
        interrupted_resync=bool(data["interrupted_resync"]),
        full_sync_required=bool(data["full_sync_required"]),
        last_role=ModuleState(last_role) if last_role is not None else None,
        serial=serial,
    )


def load_generation(path: Path) -> DataGeneration:
    """The persisted record, or a fresh one (no data yet) when the module never ran here.

    A record that exists but cannot be read is an error, never silently replaced by a fresh one:
    forgetting that this node is out of date could let it start as primary with stale data.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return DataGeneration()
    except OSError as exc:
        raise LocalSystemError(f"{path}: cannot read the data generation record: {exc}") from None
    try:
        return generation_from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalSystemError(
            f"{path}: the data generation record is damaged ({exc}); this node cannot tell whether "
            "its data is up to date. Move the file away and start the module with `hakit prim` "
            "(this node's data wins) or `hakit second` (the peer's data wins)"
        ) from None


def save_generation(path: Path, gen: DataGeneration) -> None:
    """Persist the record durably: temp file, fsync, rename, fsync of the directory."""
    write_atomically(path, (json.dumps(generation_to_dict(gen), indent=1) + "\n").encode())


def beat_payload(
    state: ModuleState,
    readiness: Readiness,
    generation: DataGeneration,
    *,
    stopping: bool = False,
    swap: SwapPhase = SwapPhase.NONE,
    resources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """What a heartbeat carries (besides the module name added by the transport)."""
    return {
        "state": state.value,
        "readiness": readiness.value,
        "generation": generation_to_dict(generation),
        "stopping": stopping,
        "swap": swap.value,
        "resources": dict(resources or {}),
    }


def beat_event(payload: Mapping[str, Any]) -> HeartbeatReceived:
    """The core event for a received heartbeat payload (PeerProtocolError if malformed)."""
    try:
        return HeartbeatReceived(
            state=ModuleState(payload["state"]),
            readiness=Readiness(payload["readiness"]),
            generation=generation_from_dict(payload["generation"]),
            stopping=bool(payload.get("stopping", False)),
            swap=SwapPhase(payload.get("swap", SwapPhase.NONE.value)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerProtocolError(f"malformed heartbeat payload: {exc}") from None
