"""Tests of shoal.nat.responder: Binding answers, CHANGE-REQUEST from the asked endpoint,
OTHER-ADDRESS/RESPONSE-ORIGIN, 420/400 errors, and garbage never raising."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.nat import stun
from shoal.nat.responder import StunResponder
from shoal.nat.stun import Message
from shoal.constants import (
    STUN_ATTR_CHANGE_REQUEST,
    STUN_CLASS_ERROR,
    STUN_CLASS_INDICATION,
    STUN_CLASS_REQUEST,
    STUN_CLASS_SUCCESS,
    STUN_METHOD_BINDING,
)

A1, A2, P1, P2 = "192.0.2.1", "192.0.2.2", 3478, 3479
CLIENT = ("203.0.113.20", 40001)
TXID = bytes(range(12))


def responder() -> StunResponder:
    return StunResponder([A1, A2], [P1, P2], software="shoal-test")


def test_local_endpoints_and_misuse() -> None:
    r = responder()
    assert r.local_endpoints() == [(A1, P1), (A1, P2), (A2, P1), (A2, P2)] and r.rfc5780
    assert not StunResponder([A1], [P1]).rfc5780
    for bad in (([], [P1]), ([A1, A1], [P1]), ([A1], [P1, P1]), ([A1, "2001:db8::1"], [P1]), ([A1], [0])):
        with pytest.raises(ValueError):
            StunResponder(*bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        r.handle(stun.binding_request(TXID), CLIENT, ("192.0.2.9", P1))


def test_plain_binding() -> None:
    # a request padded (SOFTWARE) to the size of the full answer gets every attribute
    reply = responder().handle(stun.binding_request(TXID, software="x" * 60), CLIENT, (A1, P1))
    assert reply is not None and reply.local == (A1, P1) and reply.dst == CLIENT
    m = stun.decode(reply.data)
    assert (m.method, m.cls, m.transaction_id) == (STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID)
    assert m.xor_mapped_address() == CLIENT and m.mapped_address() == CLIENT
    assert m.response_origin() == (A1, P1)
    assert m.other_address() == (A2, P2)
    assert m.software() == "shoal-test" and m.fingerprint
    # the smallest request gets the essential RFC 5780 answer only
    m = stun.decode(responder().handle(stun.binding_request(TXID, fingerprint=False), CLIENT, (A1, P1)).data)  # type: ignore[union-attr]
    assert m.xor_mapped_address() == CLIENT and m.response_origin() == (A1, P1) and m.other_address() == (A2, P2)
    assert m.mapped_address() is None and m.software() is None


def _amplification(r: StunResponder, requests: list[bytes], now: float | None = None) -> float:
    for i, req in enumerate(requests):
        r.handle(req, (CLIENT[0], 40000 + i), (A1, P1), now)
    return r.stats["bytes_out"] / r.stats["bytes_in"]


# issue 18 F14: before, every request got an 88-byte answer (4.4x for a 20-byte request)
@pytest.mark.parametrize("addresses, ports, request_kw, limit", [
    ([A1, A2], [P1, P2], {"fingerprint": False}, 56 / 20),   # header + XOR-MAPPED + RESPONSE-ORIGIN + OTHER-ADDRESS
    ([A1, A2], [P1, P2], {}, 64 / 28),                      # ... + FINGERPRINT, as asked
    ([A1], [P1], {"fingerprint": False}, 44 / 20),           # no OTHER-ADDRESS on a one-address server
    ([A1, A2], [P1, P2], {"software": "y" * 80}, 1.0),      # a request as big as the full answer: no amplification
])
def test_amplification_factor_is_bounded(addresses: list[str], ports: list[int], request_kw: dict, limit: float) -> None:
    r = StunResponder(addresses, ports, software="shoal-test")
    factor = _amplification(r, [stun.binding_request(TXID, **request_kw)] * 10)
    print(f"amplification {factor:.2f} (limit {limit:.2f}) for {request_kw}")
    assert factor <= limit + 1e-9


def test_error_replies_are_not_larger_than_the_request_allows() -> None:
    r = responder()
    unknown = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, ((0x0042, b"abcd"),)), fingerprint=False)
    reply = r.handle(unknown, CLIENT, (A1, P1))
    assert reply is not None and len(reply.data) <= 20 + 8 + 8 and stun.decode(reply.data).error_code()[0] == 420  # type: ignore[index]
    assert stun.decode(reply.data).unknown_attributes() == [0x0042]


def test_response_port_with_padding_is_refused() -> None:
    req = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID,
                              ((0x0027, b"\x10\x00\x00\x00"), (0x0026, bytes(1200)))))
    reply = responder().handle(req, CLIENT, (A1, P1))
    assert reply is not None and reply.dst == CLIENT and len(reply.data) <= len(req)
    assert stun.decode(reply.data).error_code()[0] == 400  # type: ignore[index]


def test_rate_limit_per_address_and_prefix() -> None:
    from shoal.constants import STUN_BURST_PER_ADDRESS, STUN_BURST_PER_PREFIX, STUN_RATE_PER_ADDRESS

    r = responder()
    req = stun.binding_request(TXID)
    answered = sum(r.handle(req, CLIENT, (A1, P1), 100.0) is not None for _ in range(1000))
    assert answered == STUN_BURST_PER_ADDRESS and r.stats["dropped:rate-limited:address"] == 1000 - answered
    # another address in another prefix is unaffected; the first refills at its rate
    assert r.handle(req, ("198.51.100.7", 1), (A1, P1), 100.0) is not None
    later = sum(r.handle(req, CLIENT, (A1, P1), 101.0) is not None for _ in range(1000))
    assert later == int(STUN_RATE_PER_ADDRESS)
    # many addresses of one /24: the prefix bucket caps them together
    r = responder()
    got = sum(r.handle(req, (f"192.0.2.{i % 250 + 1}", 9), (A1, P1), 5.0) is not None for i in range(5000))
    assert got == STUN_BURST_PER_PREFIX and r.stats["dropped:rate-limited:prefix"] > 0
    # IPv6: one /64 is one source
    r6 = StunResponder(["2001:db8::1"], [P1])
    got = sum(r6.handle(req, (f"2001:db8:1:2::{i:x}", 9), ("2001:db8::1", P1), 5.0) is not None for i in range(1, 500))
    assert got == STUN_BURST_PER_ADDRESS
    # a flood's amplification towards one victim is bounded in bytes per second
    r = responder()
    _amplification(r, [req] * 10000, now=7.0)
    assert r.stats["bytes_out"] <= STUN_BURST_PER_ADDRESS * 64


@pytest.mark.parametrize("arrived, change_ip, change_port, origin, other", [
    ((A1, P1), False, False, (A1, P1), (A2, P2)),
    ((A1, P1), True, True, (A2, P2), (A2, P2)),
    ((A1, P1), False, True, (A1, P2), (A2, P2)),
    ((A1, P1), True, False, (A2, P1), (A2, P2)),
    ((A2, P2), True, True, (A1, P1), (A1, P1)),
    ((A2, P1), False, True, (A2, P2), (A1, P2)),
    ((A1, P2), True, False, (A2, P2), (A2, P1)),
])
def test_change_request_answers_from_the_asked_endpoint(arrived, change_ip, change_port, origin, other) -> None:
    reply = responder().handle(stun.binding_request(TXID, change_ip=change_ip, change_port=change_port), CLIENT, arrived)
    assert reply is not None and reply.local == origin and reply.dst == CLIENT
    m = stun.decode(reply.data)
    assert m.response_origin() == origin and m.other_address() == other


def test_single_address_server_refuses_change_ip_with_420() -> None:
    r = StunResponder([A1], [P1, P2])
    reply = r.handle(stun.binding_request(TXID, change_ip=True), CLIENT, (A1, P1))
    assert reply is not None and reply.local == (A1, P1)
    m = stun.decode(reply.data)
    assert m.cls == STUN_CLASS_ERROR and m.error_code()[0] == 420  # type: ignore[index]
    assert m.unknown_attributes() == [STUN_ATTR_CHANGE_REQUEST]
    ok = stun.decode(r.handle(stun.binding_request(TXID, change_port=True), CLIENT, (A1, P1)).data)  # type: ignore[union-attr]
    assert ok.cls == STUN_CLASS_SUCCESS and ok.other_address() is None  # no OTHER-ADDRESS without a 2nd address


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    req = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, ((0x0077, b"?"), (0x8077, b"ok"))))
    r = responder()
    m = stun.decode(r.handle(req, CLIENT, (A1, P1)).data)  # type: ignore[union-attr]
    assert m.cls == STUN_CLASS_ERROR and m.transaction_id == TXID
    code, reason = m.error_code()  # type: ignore[misc]
    assert code == 420 and "Unknown Attribute".startswith(reason) and m.unknown_attributes() == [0x0077]
    assert len(r.handle(req, CLIENT, (A1, P1)).data) <= len(req)  # type: ignore[union-attr]  # the reason is cut to fit
    assert r.stats["error:420"] == 2


def test_response_port_changes_the_port_never_the_address() -> None:
    req = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID,
                              ((0x0027, b"\x10\x00\x00\x00"), (STUN_ATTR_CHANGE_REQUEST, b"\x00\x00\x00\x06"))))
    reply = responder().handle(req, CLIENT, (A1, P1))
    assert reply is not None and reply.dst == (CLIENT[0], 0x1000) and reply.local == (A2, P2)
    assert stun.decode(reply.data).xor_mapped_address() == CLIENT
    zero = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, ((0x0027, bytes(4)),)))
    assert stun.decode(responder().handle(zero, CLIENT, (A1, P1)).data).error_code()[0] == 400  # type: ignore[union-attr,index]


def test_bad_requests_get_400_and_everything_else_is_dropped() -> None:
    r = responder()
    other_method = stun.encode(Message(0x003, STUN_CLASS_REQUEST, TXID))  # Allocate: not ours
    m = stun.decode(r.handle(other_method, CLIENT, (A1, P1)).data)  # type: ignore[union-attr]
    assert (m.method, m.cls, m.error_code()[0]) == (0x003, STUN_CLASS_ERROR, 400)  # type: ignore[index]
    broken = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, ((STUN_ATTR_CHANGE_REQUEST, b"\x00\x04"),)))
    m = stun.decode(r.handle(broken, CLIENT, (A1, P1)).data)  # type: ignore[union-attr]
    assert m.error_code()[0] == 400  # type: ignore[index]
    for junk in (b"", b"hello", bytes(20), stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID)),
                 stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_INDICATION, TXID)), b"\x01\x00\x00\x00" + bytes(144)):
        assert r.handle(junk, CLIENT, (A1, P1)) is None
    assert r.stats["dropped:not-stun"] == 4 and r.stats["dropped:not-a-request"] == 2


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.sampled_from([(A1, P1), (A2, P2)]))
def test_fuzz_never_raises(body: bytes, local: tuple[str, int]) -> None:
    r = responder()
    header = b"\x00\x01" + len(body + bytes(-len(body) % 4)).to_bytes(2, "big") + b"\x21\x12\xa4\x42" + TXID
    for data in (body, header + body + bytes(-len(body) % 4)):
        reply = r.handle(data, CLIENT, local)
        if reply is not None:
            m = stun.decode(reply.data)  # whatever we send is valid STUN
            assert m.transaction_id == TXID and reply.dst == CLIENT
