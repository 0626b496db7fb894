"""mac1/mac2 and cookie replies: round trips, secret rotation, cookie expiry, source binding,
and an independent computation of mac1/mac2 from the whitepaper's formulas."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import constants as C
from shoal.wireguard.cookie import CookieChecker, CookieGenerator
from shoal.wireguard.keys import PresharedKey, PrivateKey
from shoal.wireguard.messages import CookieReply, parse_cookie_reply
from shoal.wireguard.noise import Handshake

RESPONDER = PrivateKey.from_seed(b"cookie responder")
INITIATOR = PrivateKey.from_seed(b"cookie initiator")
SRC = bytes([192, 0, 2, 1]) + (51820).to_bytes(2, "big")
OTHER_SRC = bytes([192, 0, 2, 2]) + (51820).to_bytes(2, "big")
REFRESH = C.COOKIE_REFRESH_TIME


def _rng(seed: int = 1):
    r = random.Random(seed)
    return lambda n: r.randbytes(n)


def _initiation(index: int = 1) -> bytes:
    hs = Handshake(INITIATOR, RESPONDER.public_key(), PresharedKey.ZERO)
    return hs.create_initiation(index, bytes(12))


def _pair() -> tuple[CookieGenerator, CookieChecker]:
    return CookieGenerator(RESPONDER.public_key()), CookieChecker(RESPONDER.public_key())


def _b2s(data: bytes, key: bytes = b"", size: int = 32) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=size).digest()


def test_mac1_matches_whitepaper_formula() -> None:
    gen, check = _pair()
    msg = gen.add_macs(_initiation(), 0.0)
    key = _b2s(C.LABEL_MAC1 + RESPONDER.public_key())
    assert msg[116:132] == _b2s(msg[:116], key, 16)
    assert msg[132:] == bytes(16)
    assert check.check_mac1(msg)


def test_mac1_rejects_wrong_key_and_tampering() -> None:
    gen, check = _pair()
    msg = gen.add_macs(_initiation(), 0.0)
    assert not CookieChecker(INITIATOR.public_key()).check_mac1(msg)
    for i in (0, 4, 50, 115, 116, 131):
        bad = bytearray(msg)
        bad[i] ^= 0x80
        assert not check.check_mac1(bytes(bad))
    bad = bytearray(msg)
    bad[140] ^= 1  # mac2 is not covered by mac1
    assert check.check_mac1(bytes(bad))
    assert not check.check_mac1(msg[:-1])
    assert not check.check_mac1(b"")


def test_cookie_round_trip_and_mac2() -> None:
    gen, check = _pair()
    rng = _rng()
    first = gen.add_macs(_initiation(7), 10.0)
    assert check.check_mac1(first)
    assert not check.check_mac2(first, SRC, 10.0)  # no secret yet, no mac2
    reply = check.create_reply(first, 7, SRC, 10.0, rng)
    assert len(reply) == C.MESSAGE_COOKIE_REPLY_SIZE
    parsed = parse_cookie_reply(reply)
    assert parsed is not None and parsed.receiver == 7

    assert gen.consume_reply(reply, 10.5)
    second = gen.add_macs(_initiation(8), 11.0)
    assert second[132:] != bytes(16)
    assert check.check_mac1(second)
    assert check.check_mac2(second, SRC, 11.0)
    assert not check.check_mac2(second, OTHER_SRC, 11.0)  # the cookie is bound to the source
    bad = bytearray(second)
    bad[140] ^= 1
    assert not check.check_mac2(bytes(bad), SRC, 11.0)
    bad = bytearray(second)
    bad[20] ^= 1  # body is covered by mac2 too
    assert not check.check_mac2(bytes(bad), SRC, 11.0)


def test_mac2_matches_whitepaper_formula() -> None:
    gen, check = _pair()
    secret = bytes(range(32))
    rng_values = iter([secret, bytes(24)])
    first = gen.add_macs(_initiation(), 0.0)
    reply = check.create_reply(first, 1, SRC, 0.0, lambda n: next(rng_values))
    assert gen.consume_reply(reply, 0.0)
    second = gen.add_macs(_initiation(), 1.0)
    cookie = _b2s(SRC, secret, 16)
    assert second[132:] == _b2s(second[:132], cookie, 16)


def test_secret_rotation() -> None:
    gen, check = _pair()
    rng = _rng(2)
    reply = check.create_reply(gen.add_macs(_initiation(), 0.0), 1, SRC, 0.0, rng)
    assert gen.consume_reply(reply, 0.0)
    msg = gen.add_macs(_initiation(), 100.0)
    assert check.check_mac2(msg, SRC, 100.0)
    assert check.check_mac2(msg, SRC, REFRESH)
    # the responder's secret is older than COOKIE_REFRESH_TIME: nothing passes any more ...
    assert not check.check_mac2(msg, SRC, REFRESH + 0.01)
    # ... and the next reply rotates the secret, so the old cookie stays useless
    new_reply = check.create_reply(msg, 1, SRC, REFRESH + 0.01, rng)
    assert not check.check_mac2(msg, SRC, REFRESH + 0.02)
    assert gen.consume_reply(new_reply, REFRESH + 0.02)
    fresh = gen.add_macs(_initiation(), REFRESH + 0.03)
    assert check.check_mac2(fresh, SRC, REFRESH + 0.03)


def test_secret_reused_while_fresh() -> None:
    gen, check = _pair()
    rng = _rng(3)
    r1 = check.create_reply(gen.add_macs(_initiation(), 0.0), 1, SRC, 0.0, rng)
    assert gen.consume_reply(r1, 0.0)
    m = gen.add_macs(_initiation(), 1.0)
    check.create_reply(m, 1, SRC, 50.0, rng)  # no rotation within the refresh time
    assert check.check_mac2(m, SRC, 60.0)


def test_cookie_expiry_on_initiator() -> None:
    gen, check = _pair()
    reply = check.create_reply(gen.add_macs(_initiation(), 0.0), 1, SRC, 0.0, _rng())
    assert gen.consume_reply(reply, 0.0)
    limit = REFRESH - C.COOKIE_SECRET_LATENCY
    assert gen.has_fresh_cookie(limit - 0.01)
    assert gen.add_macs(_initiation(), limit - 0.01)[132:] != bytes(16)
    assert not gen.has_fresh_cookie(limit)
    assert gen.add_macs(_initiation(), limit)[132:] == bytes(16)


def test_reply_bound_to_last_message() -> None:
    gen, check = _pair()
    assert not gen.consume_reply(CookieReply(1, bytes(24), bytes(32)).to_bytes(), 0.0)  # nothing sent
    first = gen.add_macs(_initiation(1), 0.0)
    reply_to_first = check.create_reply(first, 1, SRC, 0.0, _rng())
    gen.add_macs(_initiation(2), 0.5)  # a newer message has been sent since
    assert not gen.consume_reply(reply_to_first, 1.0)
    assert gen.add_macs(_initiation(3), 1.0)[132:] == bytes(16)


def test_reply_rejects_tampering_and_wrong_key() -> None:
    gen, check = _pair()
    msg = gen.add_macs(_initiation(), 0.0)
    reply = check.create_reply(msg, 1, SRC, 0.0, _rng())
    for i in (0, 1, 8, 31, 32, 63):
        bad = bytearray(reply)
        bad[i] ^= 0x01
        # receiver index (4..8) is not authenticated; the device matches it to the peer
        assert not gen.consume_reply(bytes(bad), 0.0)
    assert not gen.consume_reply(reply[:-1], 0.0)
    other_check = CookieChecker(INITIATOR.public_key())  # wrong responder key
    assert not gen.consume_reply(other_check.create_reply(msg, 1, SRC, 0.0, _rng()), 0.0)
    assert gen.consume_reply(reply, 0.0)


def test_response_macs_use_initiator_key() -> None:
    to_initiator = CookieGenerator(INITIATOR.public_key())
    resp = bytes(C.MESSAGE_RESPONSE_SIZE)
    out = to_initiator.add_macs(resp, 0.0)
    assert out[60:76] == _b2s(resp[:60], _b2s(C.LABEL_MAC1 + INITIATOR.public_key()), 16)
    assert CookieChecker(INITIATOR.public_key()).check_mac1(out)


def test_misuse_raises() -> None:
    gen, check = _pair()
    with pytest.raises(ValueError):
        gen.add_macs(b"short", 0.0)
    with pytest.raises(ValueError):
        check.create_reply(b"short", 1, SRC, 0.0, _rng())
    with pytest.raises(ValueError):
        CookieChecker(bytes(31))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.binary(min_size=64, max_size=64),
                 st.binary(min_size=148, max_size=148), st.binary(min_size=92, max_size=92)),
       st.binary(max_size=20), st.floats(-1e6, 1e6))
def test_network_input_never_raises(data: bytes, source: bytes, now: float) -> None:
    gen, check = _pair()
    gen.add_macs(_initiation(), 0.0)
    check.create_reply(gen.add_macs(_initiation(), 0.0), 1, SRC, 0.0, _rng())
    assert check.check_mac1(data) in (True, False)
    assert check.check_mac2(data, source, now) in (True, False)
    assert gen.consume_reply(data, now) is False
