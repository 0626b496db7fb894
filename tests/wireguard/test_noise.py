"""Noise_IKpsk2 handshake: byte-for-byte against an independent implementation, plus
state-machine, tamper and fuzz tests.

The oracle is the PyPI package `noiseprotocol` (its own symmetric/handshake state, HMAC from
`cryptography`, its own nonce handling), driven with WireGuard's prologue (IDENTIFIER) and
fixed ephemeral keys. A Noise IKpsk2 message 1 is exactly bytes 8..116 of a WireGuard
initiation (e, s, payload=TAI64N) and message 2 bytes 12..60 of a response (e, empty payload).
"""

from __future__ import annotations

import struct
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from shoal import constants as C
from shoal.wireguard.cookie import CookieChecker, CookieGenerator
from shoal.wireguard.crypto import Aead
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from shoal.wireguard.messages import parse_initiation, parse_response
from shoal.wireguard.noise import (
    Handshake,
    HandshakeState,
    SessionKeys,
    consume_initiation,
    create_response,
)

PROTOCOL = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
TS = bytes.fromhex("400000006553f1000a1b2c00")  # any 12 bytes; TAI64N is opaque here

S_I = PrivateKey.from_seed(b"initiator static")
S_R = PrivateKey.from_seed(b"responder static")
E_I = PrivateKey.from_seed(b"initiator ephemeral")
E_R = PrivateKey.from_seed(b"responder ephemeral")
PSK = PresharedKey(bytes(range(100, 132)))


def _oracle(initiator: bool, static: PrivateKey, psk: PresharedKey, ephemeral: PrivateKey,
            remote_static: PublicKey | None = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL)
    conn.set_psks(psk=bytes(psk))
    conn.set_prologue(C.IDENTIFIER)
    if initiator:
        conn.set_as_initiator()
        assert remote_static is not None
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes(remote_static))
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes(static))
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes(ephemeral))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ephemeral set: OK for testing" - it is a test
        conn.start_handshake()
    return conn


def _oracle_keys(conn: NoiseConnection) -> tuple[bytes, bytes]:
    """(send key, receive key) of a finished oracle connection."""
    proto = conn.noise_protocol
    return proto.cipher_state_encrypt.k, proto.cipher_state_decrypt.k


def _wrap_initiation(sender: int, body: bytes) -> bytes:
    return struct.pack("<II", C.MESSAGE_INITIATION, sender) + body + bytes(32)


def _wrap_response(sender: int, receiver: int, body: bytes) -> bytes:
    return struct.pack("<III", C.MESSAGE_RESPONSE, sender, receiver) + body + bytes(32)


@pytest.mark.parametrize("psk", [PSK, PresharedKey.ZERO], ids=["psk", "zero-psk"])
def test_our_initiator_against_oracle_responder(psk: PresharedKey) -> None:
    hs = Handshake(S_I, S_R.public_key(), psk)
    init = hs.create_initiation(0x11223344, TS, ephemeral=E_I)
    assert len(init) == C.MESSAGE_INITIATION_SIZE
    assert init[:8] == b"\x01\x00\x00\x00\x44\x33\x22\x11"
    assert init[116:] == bytes(32)  # macs are cookie.py's

    # Same inputs into the oracle's initiator give the same bytes ...
    oracle_init = _oracle(True, S_I, psk, E_I, S_R.public_key())
    assert bytes(oracle_init.write_message(TS)) == init[8:116]

    # ... and the oracle's responder accepts ours and sees our timestamp.
    responder = _oracle(False, S_R, psk, E_R)
    assert bytes(responder.read_message(init[8:116])) == TS
    m2 = bytes(responder.write_message(b""))
    assert len(m2) == 48
    keys = hs.consume_response(_wrap_response(0xAABBCCDD, 0x11223344, m2))
    assert keys is not None
    r_send, r_recv = _oracle_keys(responder)
    assert keys == SessionKeys(r_recv, r_send, 0x11223344, 0xAABBCCDD, True)

    # transport in both directions with the derived keys
    assert responder.decrypt(Aead(keys.send_key).encrypt(0, b"ping")) == b"ping"
    assert Aead(keys.receive_key).decrypt(0, responder.encrypt(b"pong")) == b"pong"


@pytest.mark.parametrize("psk", [PSK, PresharedKey.ZERO], ids=["psk", "zero-psk"])
def test_oracle_initiator_against_our_responder(psk: PresharedKey) -> None:
    initiator = _oracle(True, S_I, psk, E_I, S_R.public_key())
    m1 = bytes(initiator.write_message(TS))
    result = consume_initiation(S_R, S_R.public_key(), _wrap_initiation(7, m1))
    assert result is not None
    assert result.remote_static == S_I.public_key()
    assert type(result.remote_static) is PublicKey
    assert result.timestamp == TS
    assert result.remote_index == 7

    msg, keys = create_response(result, psk, 99, ephemeral=E_R)
    assert len(msg) == C.MESSAGE_RESPONSE_SIZE
    assert msg[:12] == struct.pack("<III", 2, 99, 7)
    assert msg[60:] == bytes(32)

    # byte-identical to the oracle's responder with the same ephemeral
    oracle_resp = _oracle(False, S_R, psk, E_R)
    oracle_resp.read_message(m1)
    assert bytes(oracle_resp.write_message(b"")) == msg[12:60]

    assert bytes(initiator.read_message(msg[12:60])) == b""
    i_send, i_recv = _oracle_keys(initiator)
    assert keys == SessionKeys(i_recv, i_send, 99, 7, False)
    assert initiator.decrypt(Aead(keys.send_key).encrypt(0, b"x" * 100)) == b"x" * 100


def test_our_initiator_against_our_responder_random_keys() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    psk = PresharedKey.generate()
    hs = Handshake(a, b.public_key(), psk)
    init = hs.create_initiation(1, TS)
    assert hs.state is HandshakeState.INITIATION_SENT
    res = consume_initiation(b, b.public_key(), init)
    assert res is not None and res.remote_static == a.public_key()
    resp, r_keys = create_response(res, psk, 2)
    i_keys = hs.consume_response(resp)
    assert i_keys is not None
    assert i_keys.send_key == r_keys.receive_key and i_keys.receive_key == r_keys.send_key
    assert i_keys.send_key != i_keys.receive_key
    assert (i_keys.local_index, i_keys.remote_index) == (1, 2)
    assert (r_keys.local_index, r_keys.remote_index) == (2, 1)
    assert hs.state is HandshakeState.IDLE


def test_psk_mismatch_fails_at_response() -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    res = consume_initiation(S_R, S_R.public_key(), hs.create_initiation(1, TS))
    assert res is not None  # the psk only enters at the response
    resp, _ = create_response(res, PresharedKey.ZERO, 2)
    assert hs.consume_response(resp) is None
    assert hs.state is HandshakeState.INITIATION_SENT  # a bad response leaves it pending
    resp, _ = create_response(res, PSK, 3)
    assert hs.consume_response(resp) is not None


def test_replayed_response_rejected() -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    res = consume_initiation(S_R, S_R.public_key(), hs.create_initiation(1, TS))
    assert res is not None
    resp, _ = create_response(res, PSK, 2)
    assert hs.consume_response(resp) is not None
    assert hs.consume_response(resp) is None  # state consumed
    hs.create_initiation(1, TS)  # a new initiation, even with the same index
    assert hs.consume_response(resp) is None  # old response is for the old ephemeral


def test_response_to_superseded_initiation_rejected() -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    old = consume_initiation(S_R, S_R.public_key(), hs.create_initiation(1, TS))
    hs.create_initiation(5, TS)
    assert old is not None
    resp, _ = create_response(old, PSK, 2)
    assert hs.consume_response(resp) is None  # receiver index 1 is no longer ours


def test_response_without_initiation_rejected() -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    other = Handshake(S_I, S_R.public_key(), PSK)
    res = consume_initiation(S_R, S_R.public_key(), other.create_initiation(1, TS))
    assert res is not None
    resp, _ = create_response(res, PSK, 2)
    assert hs.consume_response(resp) is None


def test_initiation_for_someone_else_rejected() -> None:
    third = PrivateKey.generate()
    init = Handshake(S_I, S_R.public_key(), PSK).create_initiation(1, TS)
    assert consume_initiation(third, third.public_key(), init) is None


def test_precomputed_static_static_used() -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    responder_view = Handshake(S_R, S_I.public_key(), PSK)
    init = hs.create_initiation(1, TS)
    table = {bytes(S_I.public_key()): responder_view.precomputed_static_static}
    assert consume_initiation(S_R, S_R.public_key(), init, table) == consume_initiation(
        S_R, S_R.public_key(), init
    )
    wrong = {bytes(S_I.public_key()): bytes(32)}
    assert consume_initiation(S_R, S_R.public_key(), init, wrong) is None


def test_handshake_rejects_misuse() -> None:
    with pytest.raises(TypeError):
        Handshake(S_I, S_R.public_key(), bytes(32))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Handshake(S_I, PresharedKey(bytes(S_R.public_key())), PSK)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="low order"):
        Handshake(S_I, PublicKey(bytes(32)), PSK)
    with pytest.raises(ValueError, match="own key"):
        Handshake(S_I, S_I.public_key(), PSK)
    hs = Handshake(S_I, S_R.public_key(), PSK)
    with pytest.raises(ValueError):
        hs.create_initiation(2**32, TS)
    with pytest.raises(ValueError):
        hs.create_initiation(1, TS[:11])
    res = consume_initiation(S_R, S_R.public_key(), hs.create_initiation(1, TS))
    assert res is not None
    with pytest.raises(TypeError):
        create_response(res, bytes(32), 1)  # type: ignore[arg-type]


def test_low_order_ephemeral_rejected() -> None:
    init = bytearray(Handshake(S_I, S_R.public_key(), PSK).create_initiation(1, TS))
    init[8:40] = bytes(32)
    assert consume_initiation(S_R, S_R.public_key(), bytes(init)) is None
    hs = Handshake(S_I, S_R.public_key(), PSK)
    res = consume_initiation(S_R, S_R.public_key(), hs.create_initiation(1, TS))
    assert res is not None
    resp = bytearray(create_response(res, PSK, 2)[0])
    resp[12:44] = (1).to_bytes(32, "little")
    assert hs.consume_response(bytes(resp)) is None


def _every_bit_flip(msg: bytes, start: int, end: int) -> list[bytes]:
    out = []
    for i in range(start, end):
        for bit in (0, 7):
            m = bytearray(msg)
            m[i] ^= 1 << bit
            out.append(bytes(m))
    return out


def test_tampered_initiation_rejected() -> None:
    init = Handshake(S_I, S_R.public_key(), PSK).create_initiation(1, TS)
    # type/reserved and every authenticated byte (ephemeral, static, timestamp); the sender
    # index is not authenticated by Noise (mac1 covers it) and the macs are not checked here
    for bad in _every_bit_flip(init, 0, 4) + _every_bit_flip(init, 8, 116):
        assert consume_initiation(S_R, S_R.public_key(), bad) is None


def test_tampered_response_rejected() -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    res = consume_initiation(S_R, S_R.public_key(), hs.create_initiation(1, TS))
    assert res is not None
    resp, _ = create_response(res, PSK, 2)
    for bad in _every_bit_flip(resp, 0, 4) + _every_bit_flip(resp, 8, 60):
        assert hs.consume_response(bad) is None
    assert hs.consume_response(resp) is not None


def test_full_exchange_with_macs() -> None:
    """Handshake + cookie.py macs, as the device wires them."""
    hs = Handshake(S_I, S_R.public_key(), PSK)
    to_r, to_i = CookieGenerator(S_R.public_key()), CookieGenerator(S_I.public_key())
    r_check, i_check = CookieChecker(S_R.public_key()), CookieChecker(S_I.public_key())
    init = to_r.add_macs(hs.create_initiation(3, TS), 0.0)
    assert r_check.check_mac1(init) and not i_check.check_mac1(init)
    parsed = parse_initiation(init)
    assert parsed is not None and parsed.sender == 3 and parsed.mac2 == bytes(16)
    res = consume_initiation(S_R, S_R.public_key(), init)
    assert res is not None
    resp_raw, r_keys = create_response(res, PSK, 4)
    resp = to_i.add_macs(resp_raw, 0.0)
    assert i_check.check_mac1(resp) and not r_check.check_mac1(resp)
    parsed_r = parse_response(resp)
    assert parsed_r is not None and (parsed_r.sender, parsed_r.receiver) == (4, 3)
    i_keys = hs.consume_response(resp)
    assert i_keys is not None and i_keys.send_key == r_keys.receive_key


# --- fuzz: arbitrary input never raises ------------------------------------------------------

_VALID_INIT = Handshake(S_I, S_R.public_key(), PSK).create_initiation(1, TS)


def _mutations() -> st.SearchStrategy[bytes]:
    flips = st.tuples(st.integers(0, C.MESSAGE_INITIATION_SIZE - 1), st.integers(1, 255)).map(
        lambda t: _VALID_INIT[: t[0]] + bytes([_VALID_INIT[t[0]] ^ t[1]]) + _VALID_INIT[t[0] + 1 :]
    )
    return st.one_of(
        st.binary(max_size=300),
        st.binary(min_size=148, max_size=148),
        st.binary(min_size=92, max_size=92),
        st.integers(0, 147).map(lambda n: _VALID_INIT[:n]),
        st.binary(min_size=1, max_size=50).map(lambda extra: _VALID_INIT + extra),
        flips,
    )


@settings(max_examples=150, deadline=None)
@given(_mutations())
def test_consume_initiation_never_raises(data: bytes) -> None:
    res = consume_initiation(S_R, S_R.public_key(), data)
    if data != _VALID_INIT and not (
        len(data) == 148 and data[:4] == _VALID_INIT[:4] and data[8:116] == _VALID_INIT[8:116]
    ):
        assert res is None
    assert consume_initiation(S_R, S_R.public_key(), bytearray(data)) == res
    assert consume_initiation(S_R, S_R.public_key(), memoryview(data)) == res


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.binary(min_size=92, max_size=92)),
       st.integers(0, 2**32 - 1))
def test_consume_response_never_raises(data: bytes, receiver: int) -> None:
    hs = Handshake(S_I, S_R.public_key(), PSK)
    hs.create_initiation(receiver, TS)
    if len(data) == 92:  # aim at our index so the crypto path runs
        data = struct.pack("<III", 2, 0, receiver) + data[12:]
    assert hs.consume_response(data) is None
    assert hs.state is HandshakeState.INITIATION_SENT
