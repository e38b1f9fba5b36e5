"""Which scripts run on which transition, in which order (SafeKit's script automaton, as data).

:data:`SCRIPT_TABLE` is the reference's §5.3 table, row for row. A transition's *plan* is the row's
script calls (only the scripts the module has) with the quick actions of the transition placed
around them by one rule: what a transition **releases** (virtual IP down, replication stopped, the
peer told) comes right after the row's last stop script, so the application is down first; what it
**acquires** (replication mounted, virtual IP up) comes right before the row's first start script,
so the application finds them in place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hakit.core.actions import Action, RunScript
from hakit.core.events import ScriptCall
from hakit.core.states import ModuleState

G = ScriptCall.GRACEFUL
F = ScriptCall.FORCE
S = ModuleState


class ScriptRow(enum.Enum):
    """One row of the script automaton: (label, current state, next state)."""

    STOP_TO_WAIT = ("STOP → WAIT(Transient)", S.STOP, S.WAIT)
    WAIT_TO_ALONE = ("WAIT → ALONE", S.WAIT, S.ALONE)
    WAIT_TO_PRIM = ("WAIT → PRIM", S.WAIT, S.PRIM)
    WAIT_TO_SECOND = ("WAIT → SECOND", S.WAIT, S.SECOND)
    ALONE_TO_PRIM = ("ALONE → PRIM (peer arrives)", S.ALONE, S.PRIM)
    PRIM_TO_ALONE = ("PRIM → ALONE (peer leaves)", S.PRIM, S.ALONE)
    SECOND_TO_ALONE = ("SECOND → ALONE (failover)", S.SECOND, S.ALONE)
    ALONE_TO_SECOND = ("ALONE → SECOND (remote-triggered)", S.ALONE, S.SECOND)
    PRIM_TO_SECOND = ("PRIM → SECOND (swap)", S.PRIM, S.SECOND)
    SECOND_TO_PRIM = ("SECOND → PRIM (swap)", S.SECOND, S.PRIM)
    RESTART_ALONE = ("restart in ALONE", S.ALONE, S.ALONE)
    RESTART_PRIM = ("restart in PRIM", S.PRIM, S.PRIM)
    RESTART_SECOND = ("restart in SECOND", S.SECOND, S.SECOND)
    PRIM_TO_WAIT = ("PRIM → WAIT (stop)", S.PRIM, S.WAIT)
    ALONE_TO_WAIT = ("ALONE → WAIT", S.ALONE, S.WAIT)
    SECOND_TO_WAIT = ("SECOND → WAIT", S.SECOND, S.WAIT)
    WAIT_TO_STOP = ("WAIT(Transient) → STOP", S.WAIT, S.STOP)

    @property
    def label(self) -> str:
        """The row's name in the reference table."""
        return self.value[0]

    @property
    def current(self) -> ModuleState:
        """First script argument."""
        return self.value[1]

    @property
    def next(self) -> ModuleState:
        """Second script argument."""
        return self.value[2]


#: The script automaton (reference §5.3), row for row, with graceful (G) and ``force`` (F) calls.
SCRIPT_TABLE: dict[ScriptRow, tuple[tuple[str, ScriptCall], ...]] = {
    ScriptRow.STOP_TO_WAIT: (("transition", G), ("prestart", G)),
    ScriptRow.WAIT_TO_ALONE: (
        ("transition", G),
        ("start_both", G),
        ("start_prim", G),
        ("start_sec", G),
    ),
    ScriptRow.WAIT_TO_PRIM: (("transition", G), ("start_both", G), ("start_prim", G)),
    ScriptRow.WAIT_TO_SECOND: (
        ("transition", G),
        ("start_both", G),
        ("start_second", G),
        ("start_sec", G),
    ),
    ScriptRow.ALONE_TO_PRIM: (("stop_sec", G), ("transition", G)),
    ScriptRow.PRIM_TO_ALONE: (("transition", G), ("start_sec", G)),
    ScriptRow.SECOND_TO_ALONE: (("stop_second", G), ("transition", G), ("start_prim", G)),
    ScriptRow.ALONE_TO_SECOND: (
        ("stop_prim", G),
        ("stop_prim", F),
        ("transition", G),
        ("start_second", G),
    ),
    ScriptRow.PRIM_TO_SECOND: (
        ("stop_prim", G),
        ("stop_prim", F),
        ("transition", G),
        ("start_second", G),
        ("start_sec", G),
    ),
    ScriptRow.SECOND_TO_PRIM: (
        ("stop_sec", G),
        ("stop_second", G),
        ("transition", G),
        ("start_prim", G),
    ),
    ScriptRow.RESTART_ALONE: (
        ("stop_sec", G),
        ("stop_prim", G),
        ("stop_both", G),
        ("start_both", G),
        ("start_prim", G),
        ("start_sec", G),
    ),
    ScriptRow.RESTART_PRIM: (
        ("stop_prim", G),
        ("stop_both", G),
        ("start_both", G),
        ("start_prim", G),
    ),
    ScriptRow.RESTART_SECOND: (
        ("stop_sec", G),
        ("stop_second", G),
        ("stop_both", G),
        ("start_both", G),
        ("start_second", G),
        ("start_sec", G),
    ),
    ScriptRow.PRIM_TO_WAIT: (("stop_prim", G), ("stop_both", G), ("transition", G)),
    ScriptRow.ALONE_TO_WAIT: (
        ("stop_sec", G),
        ("stop_prim", G),
        ("stop_both", G),
        ("transition", G),
    ),
    ScriptRow.SECOND_TO_WAIT: (
        ("stop_sec", G),
        ("stop_second", G),
        ("stop_both", G),
        ("transition", G),
    ),
    ScriptRow.WAIT_TO_STOP: (
        ("stop_sec", F),
        ("stop_prim", F),
        ("stop_second", F),
        ("stop_both", F),
        ("poststop", G),
        ("transition", G),
    ),
}

#: Every script name the automaton may call (a module's ``bin/`` may hold any subset).
ALL_SCRIPTS = frozenset(name for row in SCRIPT_TABLE.values() for name, _ in row)

#: Row for "X → WAIT" (stop or checker wait) and "restart in X", by state.
LEAVE_ROWS = {
    S.ALONE: ScriptRow.ALONE_TO_WAIT,
    S.PRIM: ScriptRow.PRIM_TO_WAIT,
    S.SECOND: ScriptRow.SECOND_TO_WAIT,
}
RESTART_ROWS = {
    S.ALONE: ScriptRow.RESTART_ALONE,
    S.PRIM: ScriptRow.RESTART_PRIM,
    S.SECOND: ScriptRow.RESTART_SECOND,
}
ENTER_ROWS = {
    S.ALONE: ScriptRow.WAIT_TO_ALONE,
    S.PRIM: ScriptRow.WAIT_TO_PRIM,
    S.SECOND: ScriptRow.WAIT_TO_SECOND,
}


@dataclass(frozen=True)
class AwaitExit:
    """Plan step: wait for the end of a script that was aborted (its exit is expected, not run)."""

    name: str


Step = Action | AwaitExit


class Part(enum.Enum):
    """Which part of a row a plan covers (a swap splits PRIM → SECOND at its release point)."""

    WHOLE = "whole"
    UNTIL_RELEASE = "until_release"
    AFTER_RELEASE = "after_release"


def _is_stop(name: str) -> bool:
    return name.startswith("stop_")


def _is_start(name: str) -> bool:
    return name.startswith("start_")


def _script_action(row: ScriptRow, name: str, action: str) -> str:
    # A restart has no SafeKit action of its own: its stop half says "stop", its start half "start".
    if row in RESTART_ROWS.values():
        return "stop" if _is_stop(name) else "start"
    return action


def plan(
    row: ScriptRow,
    action: str,
    present: frozenset[str],
    *,
    release: tuple[Action, ...] = (),
    acquire: tuple[Action, ...] = (),
    part: Part = Part.WHOLE,
) -> tuple[Step, ...]:
    """The steps of one transition: ``row``'s calls of the scripts in ``present``, with ``release``
    actions after the last stop script and ``acquire`` actions before the first start script.

    ``action`` is the third script argument (``start stop stopstart stopwait``).
    """
    calls = SCRIPT_TABLE[row]
    stops = [i for i, (name, _) in enumerate(calls) if _is_stop(name)]
    starts = [i for i, (name, _) in enumerate(calls) if _is_start(name)]
    release_at = stops[-1] + 1 if stops else 0
    acquire_at = starts[0] if starts else len(calls)
    steps: list[Step] = []
    for index, (name, call) in enumerate(calls):
        if index == release_at:
            steps.extend(release)
        if index == acquire_at:
            steps.extend(acquire)
        if name in present:
            steps.append(
                RunScript(name, row.current, row.next, _script_action(row, name, action), call)
            )
    if release_at == len(calls):
        steps.extend(release)
    if acquire_at == len(calls):
        steps.extend(acquire)
    if part is Part.WHOLE:
        return tuple(steps)
    split = _release_index(steps, release, calls, present, release_at)
    return tuple(steps[:split]) if part is Part.UNTIL_RELEASE else tuple(steps[split:])


def _release_index(
    steps: list[Step],
    release: tuple[Action, ...],
    calls: tuple[tuple[str, ScriptCall], ...],
    present: frozenset[str],
    release_at: int,
) -> int:
    # Index in ``steps`` just after the release actions: the scripts before release_at that exist,
    # plus the release actions themselves.
    before = sum(1 for name, _ in calls[:release_at] if name in present)
    return min(before + len(release), len(steps))


def row_calls(row: ScriptRow, present: frozenset[str]) -> tuple[tuple[str, ScriptCall], ...]:
    """The (script, call) pairs ``row`` runs when the module has the scripts in ``present``."""
    return tuple((name, call) for name, call in SCRIPT_TABLE[row] if name in present)
