"""Wire and disk forms of the mirror core's values: generation records and heartbeat payloads.

The same JSON form of a :class:`~hakit.core.generations.DataGeneration` (its ``to_dict``) is persisted in
``state/<module>/generation.json`` and carried in every heartbeat, so what a node remembers and what
it tells its peer can never drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hakit.core.events import HeartbeatReceived, SwapPhase
from hakit.core.generations import DataGeneration
from hakit.core.states import ModuleState, Readiness
from hakit.daemon.files import write_atomically
from hakit.errors import LocalSystemError, PeerProtocolError


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
        return DataGeneration.from_dict(json.loads(text), str(path))
    except (ValueError, PeerProtocolError) as exc:
        raise LocalSystemError(
            f"{path}: the data generation record is damaged ({exc}); this node cannot tell whether "
            "its data is up to date. Move the file away and start the module with `hakit prim` "
            "(this node's data wins) or `hakit second` (the peer's data wins)"
        ) from None


def save_generation(path: Path, gen: DataGeneration) -> None:
    """Persist the record durably: temp file, fsync, rename, fsync of the directory."""
    write_atomically(path, (json.dumps(gen.to_dict(), indent=1) + "\n").encode())


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
        "generation": generation.to_dict(),
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
            generation=DataGeneration.from_dict(payload["generation"], "heartbeat"),
            stopping=bool(payload.get("stopping", False)),
            swap=SwapPhase(payload.get("swap", SwapPhase.NONE.value)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise PeerProtocolError(f"malformed heartbeat payload: {exc}") from None
