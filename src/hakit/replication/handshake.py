"""Mutual authentication of a replication connection with the cluster key.

Theory of operation (docs/design/replication.md §6): the initiator (the primary) sends ``HELLO``
with its identity (protocol version, module, directory index, node name, role, generation) and a
fresh 32-byte nonce. The responder (the secondary) checks the identity, then answers
``HELLO_REPLY`` with its own identity, its nonce and a MAC proving it knows the key. The initiator
checks that MAC and answers ``HELLO_PROOF`` with its own MAC. Each MAC is
``HMAC-SHA256(key, "hakit-rfs-v1" | label | prover's hello | verifier's hello)``: it covers both
nonces, both node names, the module, the directory index, the version, both roles and both
generations; the label ("responder"/"initiator") and the field order differ between the two proofs
so one side's proof can never be replayed as the other's. Fresh nonces make a recorded handshake
useless. A side that finds a wrong MAC or a wrong identity sends ``AUTH_FAILED`` with the reason and
closes; the other side raises with that reason, so both logs say why.

The state machines (:class:`Initiator`, :class:`Responder`) are pure; :func:`authenticate` runs them
over an asyncio stream with a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass
from typing import Literal

from hakit.errors import PeerProtocolError
from hakit.net.auth import MIN_KEY_BYTES
from hakit.replication.wire import Frame, FrameType, ProtocolError, encode_frame, read_frame

VERSION = 1
LABEL = b"hakit-rfs-v1"
NONCE_BYTES = 32
MAC_BYTES = hashlib.sha256().digest_size
KEY_HINT = "check /etc/hakit/cluster.key on both nodes"
# Handshake frames are small: refuse anything bigger before authentication.
HANDSHAKE_LIMIT = 4096

Role = Literal["primary", "secondary"]
_ROLES: dict[Role, int] = {"primary": 1, "secondary": 2}
_ROLE_OF: dict[int, Role] = {1: "primary", 2: "secondary"}
_FIXED = struct.Struct("!HBBQ")  # version, dir index, role, generation
_U64_MAX = 2**64 - 1


class AuthenticationError(PeerProtocolError):
    """The peer is not who it must be or does not know the cluster key.

    ``reason`` is the same problem said without naming a side: it is what the peer is told.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


class PeerRefused(AuthenticationError):
    """The peer refused our handshake (it sent ``AUTH_FAILED`` with its reason)."""


@dataclass(frozen=True)
class Hello:
    """One side's identity in the handshake."""

    version: int
    module: str
    index: int
    node: str
    role: Role
    generation: int
    nonce: bytes

    def encode(self) -> bytes:
        """Fixed-layout bytes: the numbers, then the nonce, module and node length-prefixed."""
        parts = [_FIXED.pack(self.version, self.index, _ROLES[self.role], self.generation)]
        for what, raw in (
            ("nonce", self.nonce),
            ("module", self.module.encode()),
            ("node", self.node.encode()),
        ):
            if len(raw) > 255:
                raise ValueError(f"handshake {what} {raw!r} is over 255 bytes")
            parts += [bytes([len(raw)]), raw]
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> tuple[Hello, int]:
        """Parse a hello at the start of ``data``; return it and the bytes used."""
        if len(data) < _FIXED.size:
            raise ProtocolError(f"handshake hello of {len(data)} bytes is truncated")
        version, index, role_byte, generation = _FIXED.unpack_from(data)
        if role_byte not in _ROLE_OF:
            raise ProtocolError(f"handshake hello: unknown role {role_byte}")
        pos = _FIXED.size
        fields: list[bytes] = []
        for what in ("nonce", "module", "node"):
            if pos >= len(data):
                raise ProtocolError(f"handshake hello truncated before the {what}")
            size = data[pos]
            pos += 1
            if pos + size > len(data):
                raise ProtocolError(f"handshake hello: the {what} runs past the frame")
            fields.append(data[pos : pos + size])
            pos += size
        nonce, module, node = fields
        try:
            hello = cls(
                version,
                module.decode(),
                index,
                node.decode(),
                _ROLE_OF[role_byte],
                generation,
                nonce,
            )
        except UnicodeDecodeError:
            raise ProtocolError("handshake hello: module or node name is not UTF-8") from None
        return hello, pos


@dataclass(frozen=True)
class PeerInfo:
    """The authenticated peer of a connection."""

    node: str
    role: Role
    generation: int
    module: str
    index: int


def proof(key: bytes, label: bytes, prover: Hello, verifier: Hello) -> bytes:
    """The MAC ``prover`` sends to show it knows ``key`` in the handshake with ``verifier``."""
    data = b"".join((LABEL, b"|", label, b"|", prover.encode(), b"|", verifier.encode()))
    return hmac.digest(key, data, "sha256")


def _wrong_key(peer: str) -> AuthenticationError:
    reason = f"wrong cluster key ({KEY_HINT})"
    return AuthenticationError(f"peer {peer} failed authentication: {reason}", reason)


def _check_identity(mine: Hello, theirs: Hello, expected_peer: str) -> None:
    """Raise AuthenticationError if ``theirs`` is not the peer ``mine`` must talk to."""
    who = f"peer {theirs.node or '?'}"
    if theirs.version != mine.version:
        raise AuthenticationError(
            f"{who} speaks replication protocol version {theirs.version}, we speak "
            f"{mine.version} (install the same hakit version on both nodes)"
        )
    if theirs.node != expected_peer:
        raise AuthenticationError(
            f"{who} is not the expected peer {expected_peer} of module {mine.module} "
            "(check the <hosts> of the module on both nodes)"
        )
    if (theirs.module, theirs.index) != (mine.module, mine.index):
        raise AuthenticationError(
            f"{who} replicates module {theirs.module} directory {theirs.index}, we expected "
            f"module {mine.module} directory {mine.index} (check the replication ports)"
        )
    if theirs.role == mine.role:
        raise AuthenticationError(f"{who} is also {mine.role}: one side must be the other role")
    if len(theirs.nonce) != NONCE_BYTES or hmac.compare_digest(theirs.nonce, mine.nonce):
        raise AuthenticationError(f"{who} sent a bad nonce (a reflected or broken handshake)")


def _own_hello(
    module: str, index: int, local: str, role: Role, generation: int, nonce: bytes | None
) -> Hello:
    if not 0 <= generation <= _U64_MAX:
        raise ValueError(f"generation {generation} does not fit in 64 bits")
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    return Hello(VERSION, module, index, local, role, generation, nonce)


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"cluster key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed")


def _expect(frame: Frame, wanted: FrameType, peer: str) -> None:
    if frame.type is FrameType.AUTH_FAILED:
        reason = frame.payload.decode("utf-8", "replace")
        raise PeerRefused(f"peer {peer} refused authentication: {reason}", reason)
    if frame.type is not wanted:
        raise ProtocolError(f"handshake: expected {wanted.name}, got {frame.type.name}")


class _Party:
    """What both sides hold: the key, the expected peer and our own hello (one per role)."""

    role: Role

    def __init__(
        self,
        key: bytes,
        *,
        local: str,
        expected_peer: str,
        module: str,
        index: int,
        generation: int = 0,
        nonce: bytes | None = None,
    ) -> None:
        _check_key(key)
        self._key = key
        self._expected = expected_peer
        self.mine = _own_hello(module, index, local, self.role, generation, nonce)


class Initiator(_Party):
    """The primary's side: :meth:`hello`, then :meth:`on_reply` gives the proof and the peer."""

    role: Role = "primary"

    def hello(self) -> Frame:
        """The first frame to send."""
        return Frame(FrameType.HELLO, 0, self.mine.encode())

    def on_reply(self, frame: Frame) -> tuple[Frame, PeerInfo]:
        """Check the responder's reply; return our proof to send and the authenticated peer."""
        _expect(frame, FrameType.HELLO_REPLY, self._expected)
        theirs, used = Hello.decode(frame.header)
        _check_identity(self.mine, theirs, self._expected)
        mac = frame.header[used:]
        if not hmac.compare_digest(mac, proof(self._key, b"responder", theirs, self.mine)):
            raise _wrong_key(theirs.node)
        mine = proof(self._key, b"initiator", self.mine, theirs)
        return Frame(FrameType.HELLO_PROOF, 0, mine), _peer_info(theirs)


class Responder(_Party):
    """The secondary's side: :meth:`on_hello` gives the reply, :meth:`on_proof` the peer."""

    role: Role = "secondary"
    _theirs: Hello | None = None  # the initiator's hello, once received

    def on_hello(self, frame: Frame) -> Frame:
        """Check the initiator's hello; return our reply (identity, nonce and proof)."""
        _expect(frame, FrameType.HELLO, self._expected)
        theirs, used = Hello.decode(frame.header)
        if used != len(frame.header):
            raise ProtocolError("handshake HELLO has trailing bytes")
        _check_identity(self.mine, theirs, self._expected)
        self._theirs = theirs
        mac = proof(self._key, b"responder", self.mine, theirs)
        return Frame(FrameType.HELLO_REPLY, 0, self.mine.encode() + mac)

    def on_proof(self, frame: Frame) -> PeerInfo:
        """Check the initiator's proof; return the authenticated peer."""
        if self._theirs is None:
            raise ProtocolError("handshake: HELLO_PROOF before HELLO")
        _expect(frame, FrameType.HELLO_PROOF, self._expected)
        theirs = self._theirs
        if not hmac.compare_digest(frame.header, proof(self._key, b"initiator", theirs, self.mine)):
            raise _wrong_key(theirs.node)
        return _peer_info(theirs)


def _peer_info(hello: Hello) -> PeerInfo:
    return PeerInfo(hello.node, hello.role, hello.generation, hello.module, hello.index)


async def authenticate(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    key: bytes,
    local: str,
    expected_peer: str,
    module: str,
    index: int,
    role: Role,
    *,
    generation: int = 0,
    timeout: float = 5.0,
) -> PeerInfo:
    """Run the handshake on a fresh connection as ``role``; return the authenticated peer.

    The primary initiates. Raises :class:`AuthenticationError` (after telling the peer why, when
    it is our check that failed), :class:`ProtocolError` for garbage, TimeoutError if the peer does
    not finish within ``timeout`` seconds, ``asyncio.IncompleteReadError`` if it hangs up. The
    caller closes the connection on any error.
    """
    async with asyncio.timeout(timeout):
        try:
            if role == "primary":
                initiator = Initiator(
                    key,
                    local=local,
                    expected_peer=expected_peer,
                    module=module,
                    index=index,
                    generation=generation,
                )
                writer.write(encode_frame(initiator.hello()))
                reply = await read_frame(reader, HANDSHAKE_LIMIT)
                proof_frame, peer = initiator.on_reply(reply)
                writer.write(encode_frame(proof_frame))
                await writer.drain()
                return peer
            responder = Responder(
                key,
                local=local,
                expected_peer=expected_peer,
                module=module,
                index=index,
                generation=generation,
            )
            hello = await read_frame(reader, HANDSHAKE_LIMIT)
            writer.write(encode_frame(responder.on_hello(hello)))
            return responder.on_proof(await read_frame(reader, HANDSHAKE_LIMIT))
        except PeerRefused:
            raise
        except AuthenticationError as exc:
            await _tell_refusal(writer, exc.reason)
            raise


async def _tell_refusal(writer: asyncio.StreamWriter, reason: str) -> None:
    """Send the reason of our refusal to the peer; it may already be gone."""
    try:
        writer.write(encode_frame(Frame(FrameType.AUTH_FAILED, 0, b"", reason.encode())))
        await writer.drain()
    except (ConnectionError, OSError):
        pass
