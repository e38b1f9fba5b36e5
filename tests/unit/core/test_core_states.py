"""States, readiness, `state -lq` exit codes and waitstate."""

from __future__ import annotations

import pytest

from hakit.core.states import (
    MIRROR_STATES,
    PRIMARY_STATES,
    ModuleState,
    Readiness,
    parse_state,
    state_exit_code,
    waitstate_reached,
)


@pytest.mark.parametrize(
    ("state", "code"),
    [("STOP", 0), ("WAIT", 1), ("ALONE", 2), ("UP", 2), ("PRIM", 3), ("SECOND", 4)],
)
def test_state_lq_exit_codes(state: str, code: int) -> None:
    assert state_exit_code(ModuleState(state)) == code


def test_every_state_has_an_exit_code() -> None:
    for state in ModuleState:
        assert state_exit_code(state) in range(5)


def test_groups() -> None:
    assert {ModuleState.ALONE, ModuleState.PRIM} == PRIMARY_STATES
    assert ModuleState.UP not in MIRROR_STATES


def test_safekit_spelling() -> None:
    assert f"Local state {ModuleState.ALONE} {Readiness.READY}" == "Local state ALONE Ready"
    assert str(Readiness.NOT_READY) == "NotReady"


def test_parse_state_is_case_insensitive_and_names_the_choices() -> None:
    assert parse_state(" second ") is ModuleState.SECOND
    with pytest.raises(ValueError, match="STOP, WAIT, ALONE, PRIM, SECOND, UP"):
        parse_state("PRIMARY")


@pytest.mark.parametrize(
    ("wanted", "state", "readiness", "reached"),
    [
        ("ALONE", "ALONE", "Ready", True),
        ("ALONE", "ALONE", "Transient", False),
        ("ALONE", "PRIM", "Ready", False),
        ("SECOND", "SECOND", "Transient", False),
        ("STOP", "STOP", "NotReady", True),
        ("WAIT", "WAIT", "NotReady", True),
        ("WAIT", "WAIT", "Transient", False),
        ("UP", "UP", "Ready", True),
    ],
)
def test_waitstate(wanted: str, state: str, readiness: str, reached: bool) -> None:
    assert (
        waitstate_reached(ModuleState(wanted), ModuleState(state), Readiness(readiness)) is reached
    )
