"""Module states and readiness, shared by the mirror and farm decision cores.

A module's local state is one of ``STOP WAIT ALONE PRIM SECOND`` (mirror) or ``UP`` (farm), each
qualified by a readiness: ``NotReady`` (blocked), ``Transient`` (scripts or a resync running),
``Ready`` (stable). The spelling of ``str(readiness)`` is SafeKit's (``Local state ALONE Ready``).
"""

from __future__ import annotations

import enum


class ModuleState(enum.Enum):
    """Local state of a module on one node."""

    STOP = "STOP"
    WAIT = "WAIT"
    ALONE = "ALONE"
    PRIM = "PRIM"
    SECOND = "SECOND"
    UP = "UP"

    def __str__(self) -> str:
        return self.value


class Readiness(enum.Enum):
    """How settled a state is: blocked, moving, or stable."""

    NOT_READY = "NotReady"
    TRANSIENT = "Transient"
    READY = "Ready"

    def __str__(self) -> str:
        return self.value


#: States in which this node holds the application, the virtual IP and writes replicated data.
PRIMARY_STATES = frozenset({ModuleState.ALONE, ModuleState.PRIM})
#: States of a mirror module.
MIRROR_STATES = (
    ModuleState.STOP,
    ModuleState.WAIT,
    ModuleState.ALONE,
    ModuleState.PRIM,
    ModuleState.SECOND,
)
#: States in which the module's application scripts have started something (start_* ran).
RUNNING_STATES = frozenset(
    {ModuleState.ALONE, ModuleState.PRIM, ModuleState.SECOND, ModuleState.UP}
)
#: States in which the module is started (anything but STOP).
STARTED_STATES = frozenset(
    {ModuleState.WAIT, ModuleState.ALONE, ModuleState.PRIM, ModuleState.SECOND, ModuleState.UP}
)

# ``safekit state -m AM -lq`` exit codes: scripts written for SafeKit test these numbers.
_STATE_EXIT_CODES = {
    ModuleState.STOP: 0,
    ModuleState.WAIT: 1,
    ModuleState.ALONE: 2,
    ModuleState.UP: 2,
    ModuleState.PRIM: 3,
    ModuleState.SECOND: 4,
}


def state_exit_code(state: ModuleState) -> int:
    """Exit code of ``hakit state -lq``: STOP 0, WAIT 1, ALONE 2, UP 2, PRIM 3, SECOND 4."""
    return _STATE_EXIT_CODES[state]


def parse_state(text: str) -> ModuleState:
    """Parse a state name as typed by a user (``waitstate ALONE``), case-insensitively.

    Raises ``ValueError`` naming the accepted names when ``text`` is not one of them.
    """
    try:
        return ModuleState(text.strip().upper())
    except ValueError:
        names = ", ".join(s.value for s in ModuleState)
        raise ValueError(f"unknown module state {text!r}; expected one of {names}") from None


def waitstate_reached(wanted: ModuleState, state: ModuleState, readiness: Readiness) -> bool:
    """True when ``hakit waitstate <wanted>`` may return.

    SafeKit's waitstate returns once the module is *settled* in the wanted state: a Transient
    state is still moving (scripts or a resync running), so it does not count. ``STOP`` is always
    settled (it is only ever ``NotReady``); ``WAIT`` counts once it is blocked (``NotReady``).
    """
    if state is not wanted:
        return False
    if state in (ModuleState.STOP, ModuleState.WAIT):
        return readiness is Readiness.NOT_READY
    return readiness is Readiness.READY
