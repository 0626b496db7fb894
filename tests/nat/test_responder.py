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
    reply = responder().handle(stun.binding_request(TXID), CLIENT, (A1, P1))
    assert reply is not None and reply.local == (A1, P1) and reply.dst == CLIENT
    m = stun.decode(reply.data)
    assert (m.method, m.cls, m.transaction_id) == (STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID)
    assert m.xor_mapped_address() == CLIENT and m.mapped_address() == CLIENT
    assert m.response_origin() == (A1, P1)
    assert m.other_address() == (A2, P2)
    assert m.software() == "shoal-test" and m.fingerprint


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
    assert m.error_code() == (420, "Unknown Attribute") and m.unknown_attributes() == [0x0077]
    assert r.stats["error:420"] == 1


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
