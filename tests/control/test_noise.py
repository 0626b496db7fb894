"""Noise_IK for the control channel, checked byte for byte against the independent
`noiseprotocol` implementation in both roles, plus failure cases and fuzzing."""

from __future__ import annotations

import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from shoal.control.noise import (
    MAX_MESSAGE_LEN,
    MAX_PLAINTEXT,
    PROLOGUE,
    PROTOCOL_NAME,
    ClientHandshake,
    DecryptFailed,
    HandshakeFailed,
    ServerHandshake,
    Session,
    ciphertext_len,
)
from shoal.wireguard.keys import PrivateKey, PublicKey

SERVER = PrivateKey.from_seed(b"server static")
OTHER = PrivateKey.from_seed(b"another server")
NODE = PrivateKey.from_seed(b"node static")
E_C = PrivateKey.from_seed(b"client ephemeral")
E_S = PrivateKey.from_seed(b"server ephemeral")
LOW_ORDER = [bytes(32), b"\x01" + bytes(31)]  # u = 0 and u = 1: X25519 output all zeros


def oracle(initiator: bool, static: PrivateKey, ephemeral: PrivateKey | None,
           remote: PublicKey | None = None) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_prologue(PROLOGUE)
    if initiator:
        conn.set_as_initiator()
        assert remote is not None
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, bytes(remote))
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, bytes(static))
    if ephemeral is not None:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, bytes(ephemeral))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "ephemeral set": deliberate, for byte equality
        conn.start_handshake()
    return conn


def handshake(payload1: bytes = b"", payload2: bytes = b"") -> tuple[Session, Session]:
    c = ClientHandshake(NODE, SERVER.public_key(), payload1)
    s = ServerHandshake(SERVER)
    s.read_message1(c.message1())
    client, _ = c.read_message2(s.message2(payload2))
    return client, s.split()


@pytest.mark.parametrize("p1,p2", [(b"", b""), (b"hello server", b"hello node"), (bytes(1000), b"x")])
def test_client_matches_oracle_responder_bytewise(p1: bytes, p2: bytes) -> None:
    ours = ClientHandshake(NODE, SERVER.public_key(), p1, ephemeral=E_C)
    twin = oracle(True, NODE, E_C, SERVER.public_key())
    resp = oracle(False, SERVER, E_S)
    m1 = ours.message1()
    assert m1 == twin.write_message(p1)
    assert len(m1) == 96 + len(p1)
    assert resp.read_message(m1) == p1
    m2 = resp.write_message(p2)
    session, got = ours.read_message2(m2)
    assert got == p2 and resp.handshake_finished
    assert session.handshake_hash == resp.get_handshake_hash()
    for i in range(5):
        msg = b"frame %d" % i
        assert resp.decrypt(session.encrypt(msg)) == msg
        assert session.decrypt(resp.encrypt(msg * 3)) == msg * 3


@pytest.mark.parametrize("p1,p2", [(b"", b""), (b"login", b"welcome")])
def test_server_matches_oracle_initiator_bytewise(p1: bytes, p2: bytes) -> None:
    ours = ServerHandshake(SERVER, ephemeral=E_S)
    twin = oracle(False, SERVER, E_S)
    init = oracle(True, NODE, E_C, SERVER.public_key())
    m1 = init.write_message(p1)
    assert twin.read_message(m1) == p1
    assert ours.read_message1(m1) == (NODE.public_key(), p1)
    m2 = ours.message2(p2)
    assert m2 == twin.write_message(p2)
    assert init.read_message(m2) == p2
    session = ours.split()
    assert session.handshake_hash == init.get_handshake_hash()
    for i in range(5):
        assert init.decrypt(session.encrypt(b"v%d" % i)) == b"v%d" % i
        assert session.decrypt(init.encrypt(b"n%d" % i)) == b"n%d" % i


def test_random_ephemerals_interoperate_with_oracle() -> None:
    for _ in range(3):
        ours = ClientHandshake(NODE, SERVER.public_key())
        resp = oracle(False, SERVER, None)
        resp.read_message(ours.message1())
        session, _ = ours.read_message2(resp.write_message(b""))
        assert resp.decrypt(session.encrypt(b"ping")) == b"ping"


@pytest.mark.parametrize("size", [0, 1, MAX_PLAINTEXT - 1, MAX_PLAINTEXT, MAX_PLAINTEXT + 1, 3 * MAX_PLAINTEXT + 7])
def test_large_frames_are_spec_sized_noise_messages(size: int) -> None:
    """Frames above 65519 bytes are several Noise transport messages; each matches the oracle."""
    ours = ClientHandshake(NODE, SERVER.public_key(), ephemeral=E_C)
    resp = oracle(False, SERVER, E_S)
    resp.read_message(ours.message1())
    client, _ = ours.read_message2(resp.write_message(b""))
    data = bytes(i % 251 for i in range(size))
    frame = client.encrypt(data)
    assert len(frame) == ciphertext_len(size)
    pieces = [frame[i : i + MAX_MESSAGE_LEN] for i in range(0, len(frame), MAX_MESSAGE_LEN)]
    assert b"".join(resp.decrypt(p) for p in pieces) == data
    back = b"".join(resp.encrypt(data[i : i + MAX_PLAINTEXT]) for i in range(0, size, MAX_PLAINTEXT)) or resp.encrypt(b"")
    assert client.decrypt(back) == data


def test_wrong_server_key_fails_on_both_sides() -> None:
    c = ClientHandshake(NODE, SERVER.public_key())
    impostor = ServerHandshake(OTHER)
    with pytest.raises(HandshakeFailed) as err:
        impostor.read_message1(c.message1())
    assert err.value.wrong_server_key
    # the impostor cannot answer: a message2 from a non-holder of SERVER's key fails
    s2 = ServerHandshake(OTHER)
    c2 = ClientHandshake(NODE, OTHER.public_key())
    s2.read_message1(c2.message1())
    with pytest.raises(HandshakeFailed):
        c.read_message2(s2.message2())
    # and the real answer still works afterwards (a forged message2 changes nothing)
    s = ServerHandshake(SERVER)
    c3 = ClientHandshake(NODE, SERVER.public_key())
    s.read_message1(c3.message1())
    m2 = s.message2()
    with pytest.raises(HandshakeFailed):
        c3.read_message2(m2[:-1] + bytes([m2[-1] ^ 1]))
    session, _ = c3.read_message2(m2)
    assert s.split().decrypt(session.encrypt(b"ok")) == b"ok"


def test_claimed_static_key_without_its_private_key_fails() -> None:
    """message1 carrying NODE's public key but made with another private key (ss differs)."""
    liar = ClientHandshake(PrivateKey.from_seed(b"mallory"), SERVER.public_key())
    liar._s = _Claiming(PrivateKey.from_seed(b"mallory"), NODE.public_key())
    with pytest.raises(HandshakeFailed) as err:
        ServerHandshake(SERVER).read_message1(liar.message1())
    assert not err.value.wrong_server_key


class _Claiming(PrivateKey):
    def __new__(cls, private: PrivateKey, claimed: PublicKey) -> "_Claiming":
        obj = super().__new__(cls, bytes(private))
        obj.__dict__["_pub"] = claimed
        return obj


def test_replayed_message1_yields_unusable_session() -> None:
    c = ClientHandshake(NODE, SERVER.public_key())
    m1 = c.message1()
    replay = ServerHandshake(SERVER)
    assert replay.read_message1(m1)[0] == NODE.public_key()  # message1 alone proves nothing...
    replay.message2()
    attacker_guess = Session(bytes(32), bytes(32), bytes(32))
    with pytest.raises(DecryptFailed):  # ...the first frame is the proof
        replay.split().decrypt(attacker_guess.encrypt(b"login"))


@pytest.mark.parametrize("where", [0, 31, 32, 79, 80, 95])
def test_tampered_message1_fails(where: int) -> None:
    m1 = bytearray(ClientHandshake(NODE, SERVER.public_key()).message1())
    m1[where] ^= 0x40
    with pytest.raises(HandshakeFailed):
        ServerHandshake(SERVER).read_message1(bytes(m1))


@pytest.mark.parametrize("cut", [0, 1, 47, 95])
def test_truncated_handshake_messages_fail(cut: int) -> None:
    c = ClientHandshake(NODE, SERVER.public_key())
    m1 = c.message1()
    with pytest.raises(HandshakeFailed):
        ServerHandshake(SERVER).read_message1(m1[:cut])
    s = ServerHandshake(SERVER)
    s.read_message1(m1)
    m2 = s.message2()
    with pytest.raises(HandshakeFailed):
        c.read_message2(m2[: min(cut, len(m2) - 1)])


@pytest.mark.parametrize("bad", LOW_ORDER)
def test_low_order_points_fail(bad: bytes) -> None:
    m1 = ClientHandshake(NODE, SERVER.public_key()).message1()
    with pytest.raises(HandshakeFailed):
        ServerHandshake(SERVER).read_message1(bad + m1[32:])
    c = ClientHandshake(NODE, SERVER.public_key())
    c.message1()
    with pytest.raises(HandshakeFailed):
        c.read_message2(bad + bytes(16))
    with pytest.raises(ValueError):  # pinning a low-order "server key" is a caller error
        ClientHandshake(NODE, PublicKey(bad)).message1()


def test_transport_tamper_truncate_replay_reorder() -> None:
    client, server = handshake()
    f0, f1, f2 = (client.encrypt(b"frame %d" % i) for i in range(3))
    with pytest.raises(DecryptFailed):
        server.decrypt(f1)  # reordered
    with pytest.raises(DecryptFailed):
        server.decrypt(f0[:-1])  # truncated
    with pytest.raises(DecryptFailed):
        server.decrypt(bytes([f0[0] ^ 1]) + f0[1:])  # tampered
    with pytest.raises(DecryptFailed):
        server.decrypt(b"")
    assert server.decrypt(f0) == b"frame 0"  # failures did not move the counter
    with pytest.raises(DecryptFailed):
        server.decrypt(f0)  # replayed
    assert server.decrypt(f1) == b"frame 1"
    assert server.decrypt(f2) == b"frame 2"
    with pytest.raises(DecryptFailed):  # directions use different keys
        client.decrypt(client.encrypt(b"echo"))


def test_large_frame_with_dropped_chunk_fails() -> None:
    client, server = handshake()
    frame = client.encrypt(bytes(2 * MAX_PLAINTEXT + 10))
    with pytest.raises(DecryptFailed):
        server.decrypt(frame[:MAX_MESSAGE_LEN] + frame[2 * MAX_MESSAGE_LEN :])
    with pytest.raises(DecryptFailed):
        server.decrypt(frame + bytes(5))  # trailing piece shorter than a tag
    assert server.decrypt(frame) == bytes(2 * MAX_PLAINTEXT + 10)


def test_nonce_2_64_minus_1_is_never_used() -> None:
    client, server = handshake()
    client.send_nonce = 2**64 - 2
    server.recv_nonce = 2**64 - 2
    assert server.decrypt(client.encrypt(b"last")) == b"last"
    with pytest.raises(ValueError, match="exhausted"):
        client.encrypt(b"one more")
    with pytest.raises(DecryptFailed):
        server.decrypt(bytes(32))


def test_misuse_raises_value_or_type_error() -> None:
    with pytest.raises(TypeError):
        ClientHandshake(bytes(NODE), SERVER.public_key())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ClientHandshake(NODE, SERVER.public_key(), bytes(MAX_MESSAGE_LEN))
    c = ClientHandshake(NODE, SERVER.public_key())
    with pytest.raises(ValueError):
        c.read_message2(bytes(48))
    c.message1()
    with pytest.raises(ValueError):
        c.message1()
    s = ServerHandshake(SERVER)
    with pytest.raises(ValueError):
        s.message2()
    with pytest.raises(ValueError):
        s.split()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_read_message1(data: bytes) -> None:
    try:
        ServerHandshake(SERVER).read_message1(data)
    except HandshakeFailed:
        return
    pytest.fail("random bytes made a valid message1")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 95), st.integers(1, 255))
def test_fuzz_read_message2(data: bytes, pos: int, flip: int) -> None:
    c = ClientHandshake(NODE, SERVER.public_key())
    m1 = c.message1()
    with pytest.raises(HandshakeFailed):
        c.read_message2(data)
    s = ServerHandshake(SERVER)
    s.read_message1(m1)
    m2 = bytearray(s.message2())
    m2[pos % len(m2)] ^= flip
    with pytest.raises(HandshakeFailed):
        c.read_message2(bytes(m2))


_CLIENT, _SERVER = handshake()


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_decrypt(data: bytes) -> None:
    with pytest.raises(DecryptFailed):
        _SERVER.decrypt(data)
    assert _SERVER.recv_nonce == 0
