"""Module names, ids and ports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hakit.errors import LocalSystemError, UserConfigError
from hakit.modules.ids import (
    MAX_MODULE_ID,
    check_module_name,
    choose_id,
    load_ids,
    ports,
    save_ids,
)


@pytest.mark.parametrize("name", ["pg", "web_farm", "A-1", "x" * 32])
def test_valid_names(name: str) -> None:
    assert check_module_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 33, "a.b", "a/b", "../x", "a b", "é", ".hidden"])
def test_invalid_names_are_explained(name: str) -> None:
    with pytest.raises(UserConfigError, match="1 to 32 letters, digits"):
        check_module_name(name)


def test_ports_follow_safekit_formulas() -> None:
    first = ports(1)
    assert (first.heartbeat, first.replication, first.farm) == (8888, 5600, 4803)
    second = ports(2)
    assert (second.heartbeat, second.replication, second.farm) == (8889, 5604, 4806)
    assert ports(10).as_dict() == {
        "id": 10,
        "heartbeat_udp": 8897,
        "replication_tcp": 5636,
        "farm_udp": 4830,
    }


def test_port_ranges_never_overlap() -> None:
    last = ports(MAX_MODULE_ID)
    assert last.farm + 2 < ports(1).replication
    assert last.replication + 3 < ports(1).heartbeat
    for bad in (0, -1, MAX_MODULE_ID + 1):
        with pytest.raises(UserConfigError, match="between 1 and"):
            ports(bad)


def test_choose_id_smallest_free_and_own_id_kept() -> None:
    assert choose_id({}, "a", None) == 1
    assert choose_id({"a": 1, "b": 3}, "c", None) == 2
    assert choose_id({"a": 1, "b": 2}, "b", None) == 2  # a reinstall keeps its id
    assert choose_id({"a": 1}, "b", 7) == 7


def test_choose_id_refuses_an_id_held_by_another_module() -> None:
    with pytest.raises(UserConfigError, match="module id 1 is already used by module 'a'"):
        choose_id({"a": 1}, "b", 1)
    assert choose_id({"a": 1}, "a", 1) == 1


def test_ids_file_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "modules.json"
    assert load_ids(path) == {}
    save_ids(path, {"b": 2, "a": 1})
    assert load_ids(path) == {"a": 1, "b": 2}
    assert list(json.loads(path.read_text())) == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["modules.json"]
    path.write_text("{not json")
    with pytest.raises(LocalSystemError, match=r"modules\.json:1: not valid JSON"):
        load_ids(path)
    path.write_text('{"a": "one"}')
    with pytest.raises(LocalSystemError, match="bad entry 'a'"):
        load_ids(path)
