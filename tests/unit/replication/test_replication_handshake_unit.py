"""Replication handshake: the pure state machines, then over an in-memory stream pair."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from hakit.replication.handshake import (
    AuthenticationError,
    Hello,
    Initiator,
    PeerInfo,
    PeerRefused,
    Responder,
    authenticate,
)
from hakit.replication.wire import Frame, FrameType, ProtocolError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
WRONG_KEY_TEXT = "wrong cluster key (check /etc/hakit/cluster.key on both nodes)"


def _pair(key_i: bytes = KEY, key_r: bytes = KEY, **over: object) -> tuple[Initiator, Responder]:
    args: dict[str, object] = {"module": "mirror", "index": 0}
    init = Initiator(key_i, local="node1", expected_peer="node2", generation=5, **args)  # type: ignore[arg-type]
    resp_args = {**args, **over}
    resp = Responder(key_r, local="node2", expected_peer="node1", generation=4, **resp_args)  # type: ignore[arg-type]
    return init, resp


def test_hello_round_trip() -> None:
    hello = Hello(1, "mirror", 3, "nödé1", "secondary", 2**63, b"n" * 32)
    assert Hello.decode(hello.encode() + b"rest") == (hello, len(hello.encode()))
    for cut in range(len(hello.encode())):
        with pytest.raises(ProtocolError, match="handshake hello"):
            Hello.decode(hello.encode()[:cut])


def test_both_sides_authenticate_each_other_with_the_same_key() -> None:
    init, resp = _pair()
    reply = resp.on_hello(init.hello())
    proof, peer_of_init = init.on_reply(reply)
    peer_of_resp = resp.on_proof(proof)
    assert peer_of_init == PeerInfo("node2", "secondary", 4, "mirror", 0)
    assert peer_of_resp == PeerInfo("node1", "primary", 5, "mirror", 0)


def test_wrong_key_is_detected_by_the_initiator_with_a_clear_message() -> None:
    init, resp = _pair(key_r=OTHER_KEY)
    with pytest.raises(AuthenticationError) as caught:
        init.on_reply(resp.on_hello(init.hello()))
    assert str(caught.value) == f"peer node2 failed authentication: {WRONG_KEY_TEXT}"
    assert caught.value.reason == WRONG_KEY_TEXT


def test_a_forged_or_replayed_proof_is_refused_by_the_responder() -> None:
    init, resp = _pair()
    resp.on_hello(init.hello())
    with pytest.raises(AuthenticationError, match="peer node1 failed authentication: wrong"):
        resp.on_proof(Frame(FrameType.HELLO_PROOF, 0, b"\x00" * 32))
    # A proof recorded from an earlier handshake is useless: the responder's nonce changed.
    init1, resp1 = _pair()
    old_proof, _ = init1.on_reply(resp1.on_hello(init1.hello()))
    init2, resp2 = _pair()
    resp2.on_hello(init2.hello())
    with pytest.raises(AuthenticationError, match="wrong cluster key"):
        resp2.on_proof(old_proof)


def test_a_reflected_reply_is_refused() -> None:
    init, _ = _pair()
    mirror = Responder(
        KEY, local="node2", expected_peer="node1", module="mirror", index=0, nonce=init.mine.nonce
    )
    with pytest.raises(AuthenticationError, match="bad nonce"):
        init.on_reply(mirror.on_hello(init.hello()))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"module": "other"}, "replicates module mirror directory 0, we expected module other"),
        ({"index": 1}, "we expected module mirror directory 1"),
    ],
)
def test_responder_refuses_another_module_or_directory(
    change: dict[str, object], message: str
) -> None:
    init, resp = _pair(**change)
    with pytest.raises(AuthenticationError, match=message):
        resp.on_hello(init.hello())


def test_responder_refuses_an_unexpected_node_and_a_second_primary_and_another_version() -> None:
    init = Initiator(KEY, local="node3", expected_peer="node2", module="m", index=0)
    resp = Responder(KEY, local="node2", expected_peer="node1", module="m", index=0)
    with pytest.raises(AuthenticationError, match="peer node3 is not the expected peer node1"):
        resp.on_hello(init.hello())
    init = Initiator(KEY, local="node1", expected_peer="node2", module="m", index=0)
    twin = Initiator(KEY, local="node2", expected_peer="node1", module="m", index=0)
    reply = Frame(FrameType.HELLO_REPLY, 0, twin.mine.encode() + b"\x00" * 32)
    with pytest.raises(AuthenticationError, match="peer node2 is also primary"):
        init.on_reply(reply)
    future = dataclasses.replace(init.mine, version=9)
    with pytest.raises(AuthenticationError, match="protocol version 9, we speak 1"):
        resp.on_hello(Frame(FrameType.HELLO, 0, future.encode()))


def test_auth_failed_from_the_peer_and_out_of_order_frames() -> None:
    init, resp = _pair()
    refusal = Frame(FrameType.AUTH_FAILED, 0, b"", WRONG_KEY_TEXT.encode())
    with pytest.raises(PeerRefused) as caught:
        init.on_reply(refusal)
    assert str(caught.value) == f"peer node2 refused authentication: {WRONG_KEY_TEXT}"
    with pytest.raises(ProtocolError, match="HELLO_PROOF before HELLO"):
        resp.on_proof(Frame(FrameType.HELLO_PROOF))
    with pytest.raises(ProtocolError, match="expected HELLO, got PING"):
        resp.on_hello(Frame(FrameType.PING))


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        Initiator(b"short", local="a", expected_peer="b", module="m", index=0)


class _Pipe:
    """A StreamWriter stand-in feeding a StreamReader (one direction of an in-memory connection)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def write(self, data: bytes) -> None:
        self._reader.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)


async def _run_pair(key_i: bytes, key_r: bytes) -> list[object]:
    to_resp, to_init = asyncio.StreamReader(), asyncio.StreamReader()
    common = {"module": "mirror", "index": 2, "timeout": 5.0}
    primary = authenticate(
        to_init,
        _Pipe(to_resp),
        key_i,
        "node1",
        "node2",
        role="primary",
        **common,  # type: ignore[arg-type]
    )
    secondary = authenticate(
        to_resp,
        _Pipe(to_init),
        key_r,
        "node2",
        "node1",
        role="secondary",
        **common,  # type: ignore[arg-type]
    )
    return list(await asyncio.gather(primary, secondary, return_exceptions=True))


def test_authenticate_over_streams_both_ways() -> None:
    got = asyncio.run(_run_pair(KEY, KEY))
    assert got == [
        PeerInfo("node2", "secondary", 0, "mirror", 2),
        PeerInfo("node1", "primary", 0, "mirror", 2),
    ]


def test_authenticate_wrong_key_refused_on_both_sides_with_the_message() -> None:
    primary, secondary = asyncio.run(_run_pair(KEY, OTHER_KEY))
    assert isinstance(primary, AuthenticationError)
    assert str(primary) == f"peer node2 failed authentication: {WRONG_KEY_TEXT}"
    assert isinstance(secondary, PeerRefused)
    assert str(secondary) == f"peer node1 refused authentication: {WRONG_KEY_TEXT}"


def test_authenticate_times_out_on_a_silent_peer() -> None:
    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await authenticate(
                asyncio.StreamReader(),
                _Pipe(asyncio.StreamReader()),  # type: ignore[arg-type]
                KEY,
                "node2",
                "node1",
                "mirror",
                0,
                "secondary",
                timeout=0.05,
            )

    asyncio.run(scenario())
