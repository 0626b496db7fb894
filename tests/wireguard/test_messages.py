"""Wire formats: field offsets, strict sizes, round trips, and parsers that never raise."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import constants as C
from shoal.wireguard.messages import (
    INITIATION_MAC1_OFFSET,
    INITIATION_MAC2_OFFSET,
    RESPONSE_MAC1_OFFSET,
    RESPONSE_MAC2_OFFSET,
    CookieReply,
    Initiation,
    MessageError,
    Response,
    Transport,
    build_transport_header,
    message_type,
    parse,
    parse_cookie_reply,
    parse_initiation,
    parse_or_raise,
    parse_response,
    parse_transport,
)


def _fill(n: int, start: int) -> bytes:
    return bytes((start + i) % 256 for i in range(n))


def test_initiation_layout() -> None:
    m = Initiation(0x04030201, _fill(32, 10), _fill(48, 50), _fill(28, 100), _fill(16, 150), _fill(16, 170))
    b = m.to_bytes()
    assert len(b) == 148
    assert b[0:4] == b"\x01\x00\x00\x00"
    assert b[4:8] == b"\x01\x02\x03\x04"  # little-endian index
    assert b[8:40] == _fill(32, 10)
    assert b[40:88] == _fill(48, 50)
    assert b[88:116] == _fill(28, 100)
    assert b[116:132] == _fill(16, 150)
    assert b[132:148] == _fill(16, 170)
    assert (INITIATION_MAC1_OFFSET, INITIATION_MAC2_OFFSET) == (116, 132)
    assert parse_initiation(b) == m
    assert parse(b) == m


def test_response_layout() -> None:
    m = Response(5, 0xDEADBEEF, _fill(32, 1), _fill(16, 40), _fill(16, 60), _fill(16, 80))
    b = m.to_bytes()
    assert len(b) == 92
    assert b[0:4] == b"\x02\x00\x00\x00"
    assert b[4:8] == b"\x05\x00\x00\x00"
    assert b[8:12] == b"\xef\xbe\xad\xde"
    assert b[12:44] == _fill(32, 1)
    assert b[44:60] == _fill(16, 40)
    assert b[60:76] == _fill(16, 60)
    assert b[76:92] == _fill(16, 80)
    assert (RESPONSE_MAC1_OFFSET, RESPONSE_MAC2_OFFSET) == (60, 76)
    assert parse_response(b) == m


def test_cookie_reply_layout() -> None:
    m = CookieReply(9, _fill(24, 3), _fill(32, 30))
    b = m.to_bytes()
    assert len(b) == 64
    assert b[0:8] == b"\x03\x00\x00\x00\x09\x00\x00\x00"
    assert b[8:32] == _fill(24, 3)
    assert b[32:64] == _fill(32, 30)
    assert parse_cookie_reply(b) == m


def test_transport_layout() -> None:
    header = build_transport_header(0x0A0B0C0D, 0x0102030405060708)
    assert header == b"\x04\x00\x00\x00\x0d\x0c\x0b\x0a\x08\x07\x06\x05\x04\x03\x02\x01"
    payload = os.urandom(16 + 40)
    t = parse_transport(header + payload)
    assert t == Transport(0x0A0B0C0D, 0x0102030405060708, payload)
    assert t is not None and t.to_bytes() == header + payload
    assert parse_transport(header + payload[:15]) is None  # shorter than a tag
    assert parse_transport(header + payload[:16]) is not None  # keepalive: empty payload
    assert parse_transport(memoryview(header + payload)) == t


def test_strict_sizes_and_types() -> None:
    init = Initiation(1, bytes(32), bytes(48), bytes(28)).to_bytes()
    resp = Response(1, 2, bytes(32), bytes(16)).to_bytes()
    cookie = CookieReply(1, bytes(24), bytes(32)).to_bytes()
    for good, parser in ((init, parse_initiation), (resp, parse_response), (cookie, parse_cookie_reply)):
        assert parser(good) is not None
        assert parser(good[:-1]) is None
        assert parser(good + b"\x00") is None
        bad_reserved = good[:1] + b"\x01" + good[2:]
        assert parser(bad_reserved) is None
        assert parse(bad_reserved) is None
    # a parser refuses another type of the same size
    assert parse_initiation(b"\x02" + init[1:]) is None
    assert parse_response(b"\x01" + resp[1:]) is None
    assert parse_cookie_reply(b"\x04" + cookie[1:]) is None
    assert parse_transport(b"\x01" + bytes(40)) is None


def test_message_type() -> None:
    assert message_type(b"\x01\x00\x00\x00") == 1
    assert message_type(b"\x04\x00\x00\x00rest") == 4
    assert message_type(b"\x05\x00\x00\x00") is None
    assert message_type(b"\x00\x00\x00\x00") is None
    assert message_type(b"\x01\x00\x00\x01") is None
    assert message_type(b"\x01\x00\x00") is None
    assert message_type("text") is None  # type: ignore[arg-type]


def test_builders_reject_bad_fields() -> None:
    with pytest.raises(ValueError):
        Initiation(1, bytes(31), bytes(48), bytes(28))
    with pytest.raises(ValueError):
        Initiation(-1, bytes(32), bytes(48), bytes(28))
    with pytest.raises(ValueError):
        Response(1, 2**32, bytes(32), bytes(16))
    with pytest.raises(ValueError):
        CookieReply(1, bytes(23), bytes(32))
    with pytest.raises(TypeError):
        CookieReply(1, "x" * 24, bytes(32))  # type: ignore[arg-type]


def test_parse_or_raise() -> None:
    with pytest.raises(MessageError):
        parse_or_raise(b"junk")
    assert isinstance(parse_or_raise(CookieReply(1, bytes(24), bytes(32)).to_bytes()), CookieReply)
    assert issubclass(MessageError, ValueError)


_VALID = [
    Initiation(1, os.urandom(32), os.urandom(48), os.urandom(28)).to_bytes(),
    Response(1, 2, os.urandom(32), os.urandom(16)).to_bytes(),
    CookieReply(1, os.urandom(24), os.urandom(32)).to_bytes(),
    build_transport_header(3, 4) + os.urandom(40),
]


def _inputs() -> st.SearchStrategy[bytes]:
    valid = st.sampled_from(_VALID)
    return st.one_of(
        st.binary(max_size=256),
        valid,
        st.tuples(valid, st.integers(0, 200)).map(lambda t: t[0][: t[1]]),
        st.tuples(valid, st.binary(min_size=1, max_size=64)).map(lambda t: t[0] + t[1]),
        st.tuples(valid, st.integers(0, 10_000), st.integers(1, 255)).map(
            lambda t: t[0][: t[1] % len(t[0])] + bytes([t[0][t[1] % len(t[0])] ^ t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
        ),
        st.sampled_from([b"", b"\x01", b"\x04\x00\x00\x00", bytes(148), bytes(92), bytes(64)]),
    )


@settings(max_examples=400, deadline=None)
@given(_inputs())
def test_parsers_never_raise(data: bytes) -> None:
    results = []
    for parser in (parse_initiation, parse_response, parse_cookie_reply, parse_transport, parse, message_type):
        for form in (data, bytearray(data), memoryview(data)):
            results.append(parser(form))
    parsed = parse(data)
    if parsed is not None:
        assert parsed.to_bytes() == data  # whatever parses, re-serialises to the same bytes
        assert message_type(data) is not None
    try:
        assert parse_or_raise(data) == parsed
    except MessageError:
        assert parsed is None
