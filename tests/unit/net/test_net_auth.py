"""Authenticated datagrams: forged, corrupted, replayed, reordered and restarted senders."""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

import pytest

from hakit.errors import UserConfigError
from hakit.net.auth import (
    COUNTER_NAMES,
    MAC_SIZE,
    WINDOW,
    OpenedMessage,
    Opener,
    Reason,
    Rejection,
    Sealer,
    generate_key,
    load_key,
    parse_key,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def opener(**kwargs: object) -> Opener:
    return Opener(KEY, local="node2", **kwargs)  # type: ignore[arg-type]


def reason(verdict: OpenedMessage | Rejection) -> Reason | None:
    return verdict.reason if isinstance(verdict, Rejection) else None


def test_round_trip_carries_kind_sender_numbers_and_payload() -> None:
    sealer = Sealer(KEY, "node1", incarnation=7)
    verdict = opener().open(sealer.seal("hello", {"lan": "default", "n": [1, 2]}))
    assert verdict == OpenedMessage("hello", "node1", 7, 1, {"lan": "default", "n": [1, 2]})


def test_sequence_numbers_increase_from_one() -> None:
    sealer = Sealer(KEY, "node1", incarnation=1)
    rx = opener()
    seqs = []
    for _ in range(3):
        verdict = rx.open(sealer.seal("hello", {}))
        assert isinstance(verdict, OpenedMessage)
        seqs.append(verdict.seq)
    assert seqs == [1, 2, 3]
    assert sealer.last_seq == 3


def test_wrong_key_is_forged() -> None:
    data = Sealer(OTHER_KEY, "node1", 1).seal("hello", {})
    rx = opener()
    assert reason(rx.open(data)) is Reason.FORGED
    assert rx.counters["forged"] == 1
    assert rx.counters["accepted"] == 0


def test_forged_datagram_does_not_advance_the_replay_window() -> None:
    rx = opener()
    forger = Sealer(OTHER_KEY, "node1", incarnation=2**63)
    for _ in range(100):
        rx.open(forger.seal("hello", {}))
    # The genuine sender with a small incarnation is still accepted.
    assert isinstance(rx.open(Sealer(KEY, "node1", 1).seal("hello", {})), OpenedMessage)


def test_every_truncation_is_rejected_as_corrupted() -> None:
    data = Sealer(KEY, "node1", 5).seal("hello", {"lan": "default"})
    rx = opener()
    for size in range(len(data)):
        assert reason(rx.open(data[:size])) is Reason.CORRUPTED, f"truncated to {size}"
    assert rx.counters["corrupted"] == len(data)


def test_trailing_garbage_is_corrupted() -> None:
    data = Sealer(KEY, "node1", 5).seal("hello", {})
    assert reason(opener().open(data + b"\0")) is Reason.CORRUPTED


def test_every_single_bit_flip_is_rejected() -> None:
    data = Sealer(KEY, "node1", 5).seal("hello", {"lan": "default"})
    rx = opener()
    seen: set[Reason] = set()
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        got = reason(rx.open(bytes(flipped)))
        assert got in (Reason.CORRUPTED, Reason.FORGED), f"bit {bit} gave {got}"
        seen.add(got)
    # Flips in the framing are caught as corrupted, flips in the payload or MAC as forged.
    assert seen == {Reason.CORRUPTED, Reason.FORGED}
    assert rx.counters["accepted"] == 0
    # The original is still fresh: nothing above touched the replay state.
    assert isinstance(rx.open(data), OpenedMessage)


def test_garbage_and_empty_datagrams_are_corrupted() -> None:
    rx = opener()
    for data in (b"", b"HK", b"XX\x01" + bytes(60), b"HK\x09" + bytes(60)):
        assert reason(rx.open(data)) is Reason.CORRUPTED


def test_authentic_but_non_object_payload_is_corrupted() -> None:
    # A sender with the key but a bug: craft a datagram whose payload is a JSON list.
    sealer = Sealer(KEY, "node1", 1)
    data = sealer.seal("hello", {})
    body_at = len(data) - MAC_SIZE - 2  # the payload "{}" is two bytes
    head = bytearray(data[:body_at])
    struct.pack_into("!I", head, len(head) - 4, 2)
    crafted = bytes(head) + b"[]"
    crafted += hmac.new(KEY, crafted, hashlib.sha256).digest()
    assert reason(opener().open(crafted)) is Reason.CORRUPTED


def test_replayed_datagram_is_rejected() -> None:
    sealer = Sealer(KEY, "node1", 1)
    rx = opener()
    data = sealer.seal("hello", {})
    assert isinstance(rx.open(data), OpenedMessage)
    verdict = rx.open(data)
    assert reason(verdict) is Reason.REPLAYED
    assert isinstance(verdict, Rejection) and verdict.sender == "node1"
    assert rx.counters["replayed"] == 1


def test_reordering_within_the_window_is_accepted_once() -> None:
    sealer = Sealer(KEY, "node1", 1)
    batch = [sealer.seal("hello", {"i": i}) for i in range(10)]
    rx = opener()
    order = [9, 0, 5, 3, 8, 1, 2, 7, 6, 4]
    for i in order:
        assert isinstance(rx.open(batch[i]), OpenedMessage), f"datagram {i}"
    for i in order:
        assert reason(rx.open(batch[i])) is Reason.REPLAYED


def test_too_old_sequence_is_replayed_even_if_never_seen() -> None:
    sealer = Sealer(KEY, "node1", 1)
    late = sealer.seal("hello", {})  # seq 1
    edge = sealer.seal("hello", {})  # seq 2
    rx = opener()
    for _ in range(WINDOW):
        rx.open(sealer.seal("hello", {}))  # highest becomes 2 + WINDOW
    assert reason(rx.open(late)) is Reason.REPLAYED  # WINDOW + 1 behind
    # Exactly WINDOW behind is also outside the window (window covers highest-63 .. highest).
    assert reason(rx.open(edge)) is Reason.REPLAYED


def test_last_entry_of_the_window_is_accepted() -> None:
    sealer = Sealer(KEY, "node1", 1)
    first = sealer.seal("hello", {})  # seq 1
    rx = opener()
    for _ in range(WINDOW - 1):
        rx.open(sealer.seal("hello", {}))  # highest = WINDOW, seq 1 is WINDOW-1 behind
    assert isinstance(rx.open(first), OpenedMessage)


def test_big_jump_resets_the_window() -> None:
    sealer = Sealer(KEY, "node1", 1)
    rx = opener()
    kept = [sealer.seal("hello", {}) for _ in range(3)]
    for _ in range(500):
        sealer.seal("hello", {})  # lost on the wire
    assert isinstance(rx.open(sealer.seal("hello", {})), OpenedMessage)
    for data in kept:
        assert reason(rx.open(data)) is Reason.REPLAYED


def test_newer_incarnation_resets_and_older_is_rejected() -> None:
    rx = opener()
    old = Sealer(KEY, "node1", incarnation=100)
    old_data = [old.seal("hello", {}) for _ in range(5)]
    assert isinstance(rx.open(old_data[0]), OpenedMessage)
    restarted = Sealer(KEY, "node1", incarnation=200)  # the sender restarted: seq from 1 again
    assert isinstance(rx.open(restarted.seal("hello", {})), OpenedMessage)
    assert rx.incarnation_of("node1") == 200
    # Traffic of the previous run, even never seen before, is now rejected.
    for data in old_data[1:]:
        assert reason(rx.open(data)) is Reason.REPLAYED
    assert isinstance(rx.open(restarted.seal("hello", {})), OpenedMessage)


def test_senders_are_tracked_independently() -> None:
    rx = Opener(KEY, local="node3")
    a, b = Sealer(KEY, "node1", 1), Sealer(KEY, "node2", 1)
    for _ in range(3):
        assert isinstance(rx.open(a.seal("hello", {})), OpenedMessage)
        assert isinstance(rx.open(b.seal("hello", {})), OpenedMessage)


def test_own_datagram_looping_back_is_dropped() -> None:
    rx = opener()
    verdict = rx.open(Sealer(KEY, "node2", 1).seal("hello", {}))
    assert reason(verdict) is Reason.LOOPED
    assert rx.counters["looped"] == 1


def test_unknown_sender_is_dropped_when_senders_are_known() -> None:
    rx = opener(senders=frozenset({"node1"}))
    assert reason(rx.open(Sealer(KEY, "intruder", 1).seal("hello", {}))) is Reason.UNKNOWN_SENDER
    assert isinstance(rx.open(Sealer(KEY, "node1", 1).seal("hello", {})), OpenedMessage)


def test_counters_start_at_zero_for_every_name() -> None:
    assert {name: opener().counters[name] for name in COUNTER_NAMES} == dict.fromkeys(
        COUNTER_NAMES, 0
    )


def test_sealer_refuses_bad_names_and_short_keys() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Sealer(b"short", "node1", 1)
    with pytest.raises(ValueError, match="sender"):
        Sealer(KEY, "", 1)
    with pytest.raises(ValueError, match="kind"):
        Sealer(KEY, "node1", 1).seal("héllo", {})
    with pytest.raises(ValueError, match="64 bits"):
        Sealer(KEY, "node1", 2**64)


def test_generated_key_parses_to_32_bytes() -> None:
    text = generate_key()
    assert len(parse_key(text + "\n", "cluster.key")) == 32
    assert generate_key() != text


def test_bad_key_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserConfigError, match=r"k\.key: the cluster key is not hexadecimal"):
        parse_key("zz", "k.key")
    with pytest.raises(UserConfigError, match="at least 16"):
        parse_key("abcd", "k.key")
    missing = tmp_path / "nope.key"
    with pytest.raises(UserConfigError, match="hakit cluster genkey"):
        load_key(missing)


def test_deeply_nested_payload_is_corrupted_not_a_crash() -> None:
    sealer = Sealer(KEY, "node1", 1)
    data = sealer.seal("hello", {})
    body_at = len(data) - MAC_SIZE - 2
    head = bytearray(data[:body_at])
    deep = b"[" * 50000
    struct.pack_into("!I", head, len(head) - 4, len(deep))
    crafted = bytes(head) + deep
    crafted += hmac.new(KEY, crafted, hashlib.sha256).digest()
    assert reason(opener().open(crafted)) is Reason.CORRUPTED
