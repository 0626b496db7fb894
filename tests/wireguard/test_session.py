"""Sessions: padding rule, transport message layout, previous/current/next rotation."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.wireguard.session import Keypair, Keypairs, padding_for

SEND, RECV = bytes(range(32)), bytes(range(32, 64))


@pytest.mark.parametrize(
    "length, mtu, padded",
    [(0, 1420, 0), (1, 1420, 16), (16, 1420, 16), (17, 1420, 32), (1419, 1420, 1420), (1420, 1420, 1420),
     (1415, 1420, 1420), (20, 0, 32), (1421, 1420, 16)],
)
def test_padding_follows_wireguard_go(length, mtu, padded):
    last = length % mtu if mtu and length > mtu else length
    assert last + padding_for(length, mtu) == padded


def keypair(initiator: bool, index: int = 7) -> Keypair:
    return Keypair(send_key=SEND, receive_key=RECV, local_index=index, remote_index=0x01020304,
                   is_initiator=initiator, created=0.0)


def test_seal_layout_and_counter():
    kp = keypair(True)
    first, second = kp.seal(b"a" * 16), kp.seal(b"")
    assert struct.unpack_from("<IIQ", first) == (4, 0x01020304, 0)
    assert struct.unpack_from("<IIQ", second) == (4, 0x01020304, 1)
    nonce = b"\0\0\0\0" + (0).to_bytes(8, "little")
    assert ChaCha20Poly1305(SEND).decrypt(nonce, first[16:], None) == b"a" * 16
    assert len(second) == 32 and kp.send_counter == 2


def test_rotation():
    pairs = Keypairs()
    r1 = keypair(False, 1)
    assert pairs.install(r1) == [] and pairs.next is r1 and pairs.current is None
    assert pairs.promote_next(r1) == [] and pairs.current is r1 and pairs.next is None
    i2 = keypair(True, 2)
    assert pairs.install(i2) == [] and (pairs.previous, pairs.current) == (r1, i2)
    r3 = keypair(False, 3)
    assert pairs.install(r3) == [r1] and pairs.previous is None and pairs.next is r3
    i4 = keypair(True, 4)  # an unconfirmed `next` becomes previous; current is dropped
    assert set(map(id, pairs.install(i4))) == {id(i2)} and (pairs.previous, pairs.current, pairs.next) == (r3, i4, None)
    assert pairs.promote_next(r3) == []  # not `next` any more: nothing happens
    assert len(pairs.clear()) == 2 and pairs.current is None
