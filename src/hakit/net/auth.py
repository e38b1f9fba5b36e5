"""Authenticated datagrams: who sent it, that nobody changed it, that it is not a replay.

Theory of operation
-------------------
Every datagram exchanged between hakit nodes (the cluster channel, and later module heartbeats) is
sealed with an HMAC-SHA256 of the cluster key. A datagram is laid out as (big endian)::

    magic "HK" | version u8 | kind_len u8 | kind (ASCII) | sender_len u8 | sender (UTF-8)
    | incarnation u64 | seq u64 | payload_len u32 | payload (compact JSON object) | mac (32 bytes)

The MAC covers every byte before it. The receiver checks, in this order:

1. framing (magic, version, lengths that add up exactly): else ``CORRUPTED``;
2. the MAC, in constant time: else ``FORGED`` (a flipped bit inside the authenticated bytes also ends
   here: a MAC cannot tell an accident from an attack, and UDP already checksums accidents);
3. the payload is a JSON object: else ``CORRUPTED`` (a sender with the key but a bug);
4. the sender is not ourselves (a datagram looping back) and, if the receiver knows its peers, is one
   of them: else ``LOOPED`` / ``UNKNOWN_SENDER``;
5. freshness: per sender the receiver keeps the sender's *incarnation* (a number the sender picks at
   process start, strictly increasing across its restarts), the highest sequence number seen and a
   64-entry sliding window below it (the IPsec anti-replay window). A datagram of an older
   incarnation, a sequence number already seen, or one 64 or more below the highest is ``REPLAYED``;
   a newer incarnation resets the window (the sender restarted). The window accepts the mild
   reordering UDP shows when the same stream travels over two LANs.

State is only updated by datagrams that passed every check, so a forger cannot push the window
forward. Replay state lives in memory: after the *receiver* restarts it accepts the first incarnation
it hears again (a replay of a dead sender's old traffic can then be accepted until the sender's next
incarnation shows up) -- the usual trade-off of stateless receivers, documented rather than hidden.

This module is pure (no I/O, no clock): callers pass bytes in and get bytes or verdicts out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.errors import LocalSystemError, UserConfigError

MAGIC = b"HK"
VERSION = 1
MAC_SIZE = hashlib.sha256().digest_size
WINDOW = 64
KEY_BYTES = 32
# A key shorter than this is refused: HMAC-SHA256 with a short key is guessable.
MIN_KEY_BYTES = 16
# The largest payload a single UDP datagram over IPv4 can carry.
MAX_DATAGRAM = 65507

_HEAD = struct.Struct("!2sBB")  # magic, version, kind_len
_SENDER_LEN = struct.Struct("!B")
_NUMBERS = struct.Struct("!QQI")  # incarnation, seq, payload_len
_U64_MAX = 2**64 - 1


class Reason(enum.StrEnum):
    """Why a datagram was dropped (the value is the counter name shown by the API)."""

    CORRUPTED = "corrupted"
    FORGED = "forged"
    REPLAYED = "replayed"
    LOOPED = "looped"
    UNKNOWN_SENDER = "unknown_sender"


ACCEPTED = "accepted"
COUNTER_NAMES: tuple[str, ...] = (ACCEPTED, *(r.value for r in Reason))


@dataclass(frozen=True)
class OpenedMessage:
    """A datagram that passed every check."""

    kind: str
    sender: str
    incarnation: int
    seq: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class Rejection:
    """A dropped datagram: the reason and a short human explanation (for debug logs)."""

    reason: Reason
    detail: str
    sender: str | None = None


class Sealer:
    """Seals outgoing datagrams of one sender (one node process) with the cluster key.

    ``incarnation`` must be strictly greater than the one used by any previous run of the same sender
    (see :func:`hakit.daemon.incarnation.next_incarnation`); the sequence number starts at 1.
    """

    def __init__(self, key: bytes, node: str, incarnation: int) -> None:
        _check_key(key)
        if not 0 <= incarnation <= _U64_MAX:
            raise ValueError(f"incarnation {incarnation} does not fit in 64 bits")
        self._key = key
        self._sender = _encode_short("sender", node)
        self.node = node
        self.incarnation = incarnation
        self._seq = 0

    @property
    def last_seq(self) -> int:
        """The sequence number of the last sealed datagram (0 before the first)."""
        return self._seq

    def seal(self, kind: str, payload: Mapping[str, Any]) -> bytes:
        """Return the sealed datagram for ``kind`` carrying the JSON object ``payload``."""
        kind_bytes = _encode_short("kind", kind, ascii_only=True)
        body = json.dumps(dict(payload), separators=(",", ":"), sort_keys=True).encode()
        self._seq += 1
        data = b"".join(
            (
                _HEAD.pack(MAGIC, VERSION, len(kind_bytes)),
                kind_bytes,
                _SENDER_LEN.pack(len(self._sender)),
                self._sender,
                _NUMBERS.pack(self.incarnation, self._seq, len(body)),
                body,
            )
        )
        sealed = data + hmac.digest(self._key, data, "sha256")
        if len(sealed) > MAX_DATAGRAM:
            raise ValueError(
                f"sealed {kind!r} datagram is {len(sealed)} bytes, over {MAX_DATAGRAM}"
            )
        return sealed


@dataclass
class _Freshness:
    """Replay state of one sender: incarnation, highest sequence seen, window bitmap.

    Bit ``i`` of ``window`` is set when sequence ``highest - i`` has been accepted.
    """

    incarnation: int
    highest: int
    window: int = 1

    def check(self, incarnation: int, seq: int) -> str | None:
        """Return why (incarnation, seq) is a replay, or None if it is fresh."""
        if incarnation < self.incarnation:
            return f"incarnation {incarnation} is older than {self.incarnation}"
        if incarnation > self.incarnation or seq > self.highest:
            return None
        behind = self.highest - seq
        if behind >= WINDOW:
            return f"seq {seq} is {behind} behind the highest {self.highest} (window {WINDOW})"
        if self.window >> behind & 1:
            return f"seq {seq} already seen"
        return None

    def record(self, incarnation: int, seq: int) -> None:
        """Mark (incarnation, seq) as seen; it must have passed :meth:`check`."""
        if incarnation > self.incarnation:
            self.incarnation, self.highest, self.window = incarnation, seq, 1
        elif seq > self.highest:
            shift = seq - self.highest
            self.window = (self.window << shift | 1) & ((1 << WINDOW) - 1) if shift < WINDOW else 1
            self.highest = seq
        else:
            self.window |= 1 << (self.highest - seq)


@dataclass
class Opener:
    """Checks incoming datagrams (see the module docstring for the order of the checks).

    ``local`` is this process's own node name (its datagrams looping back are dropped);
    ``senders``, when given, is the set of node names allowed to talk to us.
    """

    key: bytes
    local: str | None = None
    senders: frozenset[str] | None = None
    counters: Counter[str] = field(default_factory=Counter)
    _fresh: dict[str, _Freshness] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_key(self.key)
        for name in COUNTER_NAMES:
            self.counters[name] += 0

    def open(self, data: bytes) -> OpenedMessage | Rejection:
        """Return the message if ``data`` is authentic and fresh, else the reason it is dropped."""
        verdict = self._open(data)
        self.counters[ACCEPTED if isinstance(verdict, OpenedMessage) else verdict.reason] += 1
        return verdict

    def _open(self, data: bytes) -> OpenedMessage | Rejection:
        framed = _unframe(data)
        if isinstance(framed, Rejection):
            return framed
        kind, sender, incarnation, seq, body = framed
        expected = hmac.digest(self.key, data[:-MAC_SIZE], "sha256")
        if not hmac.compare_digest(expected, data[-MAC_SIZE:]):
            return Rejection(Reason.FORGED, "bad MAC (wrong cluster key or altered datagram)")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
            return Rejection(Reason.CORRUPTED, f"payload is not JSON: {exc}", sender)
        if not isinstance(payload, dict):
            return Rejection(Reason.CORRUPTED, "payload is not a JSON object", sender)
        if sender == self.local:
            return Rejection(Reason.LOOPED, "our own datagram came back", sender)
        if self.senders is not None and sender not in self.senders:
            return Rejection(Reason.UNKNOWN_SENDER, f"{sender!r} is not a cluster node", sender)
        fresh = self._fresh.get(sender)
        if fresh is None:
            self._fresh[sender] = _Freshness(incarnation, seq)
        else:
            stale = fresh.check(incarnation, seq)
            if stale is not None:
                return Rejection(Reason.REPLAYED, stale, sender)
            fresh.record(incarnation, seq)
        return OpenedMessage(kind, sender, incarnation, seq, payload)

    def incarnation_of(self, sender: str) -> int | None:
        """The current incarnation of ``sender`` (None if never heard)."""
        fresh = self._fresh.get(sender)
        return None if fresh is None else fresh.incarnation


def _unframe(data: bytes) -> tuple[str, str, int, int, bytes] | Rejection:
    """Split ``data`` into its fields, checking magic, version and that the lengths add up."""

    def corrupted(why: str) -> Rejection:
        return Rejection(Reason.CORRUPTED, why)

    if len(data) < _HEAD.size:
        return corrupted(f"{len(data)} bytes, shorter than a header")
    magic, version, kind_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        return corrupted("bad magic")
    if version != VERSION:
        return corrupted(f"protocol version {version}, expected {VERSION}")
    pos = _HEAD.size
    kind_raw = data[pos : pos + kind_len]
    pos += kind_len
    if len(data) < pos + _SENDER_LEN.size:
        return corrupted("truncated before the sender")
    (sender_len,) = _SENDER_LEN.unpack_from(data, pos)
    pos += _SENDER_LEN.size
    sender_raw = data[pos : pos + sender_len]
    pos += sender_len
    if len(data) < pos + _NUMBERS.size:
        return corrupted("truncated before the sequence number")
    incarnation, seq, payload_len = _NUMBERS.unpack_from(data, pos)
    pos += _NUMBERS.size
    if len(data) != pos + payload_len + MAC_SIZE:
        return corrupted(f"{len(data)} bytes, the lengths say {pos + payload_len + MAC_SIZE}")
    try:
        kind = kind_raw.decode("ascii")
        sender = sender_raw.decode("utf-8")
    except UnicodeDecodeError:
        return corrupted("kind or sender is not text")
    if not kind or not sender:
        return corrupted("empty kind or sender")
    return kind, sender, incarnation, seq, data[pos : pos + payload_len]


def _encode_short(what: str, text: str, *, ascii_only: bool = False) -> bytes:
    try:
        raw = text.encode("ascii" if ascii_only else "utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {text!r} must be ASCII") from None
    if not 0 < len(raw) <= 255:
        raise ValueError(f"{what} {text!r} must be 1 to 255 bytes")
    return raw


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"cluster key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")


def counters_dict(counters: Counter[str], extra: Iterable[str] = ()) -> dict[str, int]:
    """The counters as a plain dict with every known name present (zero if never hit)."""
    return {name: counters[name] for name in (*COUNTER_NAMES, *extra)}


def generate_key() -> str:
    """A new cluster key: 32 random bytes, hex encoded (the content of ``cluster.key``)."""
    return secrets.token_hex(KEY_BYTES)


def parse_key(text: str, filename: str) -> bytes:
    """The key bytes from the text of a cluster key file (hex, surrounding blanks ignored)."""
    cleaned = text.strip()
    try:
        key = bytes.fromhex(cleaned)
    except ValueError:
        raise UserConfigError(
            f"{filename}: the cluster key is not hexadecimal "
            "(create one with `hakit cluster genkey`)"
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise UserConfigError(
            f"{filename}: the cluster key has {len(key)} bytes, at least {MIN_KEY_BYTES} are needed "
            "(create one with `hakit cluster genkey`)"
        )
    return key


def load_key(path: Path) -> bytes:
    """Read and parse the cluster key file ``path``."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise UserConfigError(
            f"{path}: no cluster key (create one with `hakit cluster genkey` and install the same "
            "key on every node with `hakit cluster config FILE --key KEYFILE`)"
        ) from None
    except UnicodeDecodeError:
        raise UserConfigError(f"{path}: the cluster key is not hexadecimal text") from None
    except OSError as exc:
        raise LocalSystemError(f"{path}: cannot read the cluster key: {exc.strerror}") from None
    return parse_key(text, str(path))
