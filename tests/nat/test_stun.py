"""Tests of shoal.nat.stun: RFC 5769 known-answer vectors, round trips, limits, and a fuzzer
(arbitrary bytes, and mutations of valid messages, never raise anything but StunError)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.nat import stun
from shoal.nat.stun import Message, StunError
from shoal.constants import (
    STUN_ATTR_CHANGE_REQUEST,
    STUN_ATTR_ERROR_CODE,
    STUN_ATTR_OTHER_ADDRESS,
    STUN_ATTR_RESPONSE_ORIGIN,
    STUN_ATTR_SOFTWARE,
    STUN_ATTR_UNKNOWN_ATTRIBUTES,
    STUN_ATTR_XOR_MAPPED_ADDRESS,
    STUN_CLASS_ERROR,
    STUN_CLASS_INDICATION,
    STUN_CLASS_REQUEST,
    STUN_CLASS_SUCCESS,
    STUN_MAX_MESSAGE_SIZE,
    STUN_METHOD_BINDING,
)

TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

# RFC 5769 section 2.2 and 2.3: sample responses (SOFTWARE, XOR-MAPPED-ADDRESS,
# MESSAGE-INTEGRITY, FINGERPRINT), byte for byte.
RFC5769_V4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000080001a147e112a643000800142b91f599fd9e90c38c7489f92af9ba53f06be7d780280004c07d4c96")
RFC5769_V6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d900080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c")


def test_rfc5769_ipv4_response() -> None:
    m = stun.decode(RFC5769_V4)
    assert (m.method, m.cls, m.transaction_id) == (STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID)
    assert m.xor_mapped_address() == ("192.0.2.1", 32853)
    assert m.software() == "test vector"
    assert m.fingerprint
    assert m.unknown_required() == []  # MESSAGE-INTEGRITY is known


def test_rfc5769_ipv6_response() -> None:
    m = stun.decode(RFC5769_V6)
    assert m.xor_mapped_address() == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def test_fingerprint_is_checked() -> None:
    bad = RFC5769_V4[:-1] + bytes([RFC5769_V4[-1] ^ 1])
    with pytest.raises(StunError, match="FINGERPRINT"):
        stun.decode(bad)
    # a flipped bit anywhere before the fingerprint also breaks it
    flipped = bytearray(RFC5769_V4)
    flipped[30] ^= 0x40
    with pytest.raises(StunError):
        stun.decode(bytes(flipped))


def test_type_bits_interleave_method_and_class() -> None:
    for cls, want in ((STUN_CLASS_REQUEST, 0x0001), (STUN_CLASS_INDICATION, 0x0011),
                      (STUN_CLASS_SUCCESS, 0x0101), (STUN_CLASS_ERROR, 0x0111)):
        data = stun.encode(Message(STUN_METHOD_BINDING, cls, TXID), fingerprint=False)
        assert struct.unpack_from("!H", data)[0] == want
    # a 12-bit method survives the interleaving
    for method in (0x000, 0x001, 0x003, 0x0A5, 0xFFF):
        for cls in (0, 1, 2, 3):
            m = stun.decode(stun.encode(Message(method, cls, TXID)))
            assert (m.method, m.cls) == (method, cls)


def test_round_trip_every_attribute_we_write() -> None:
    attrs = (
        (STUN_ATTR_XOR_MAPPED_ADDRESS, stun.encode_xor_address(("203.0.113.7", 40000), TXID)),
        (STUN_ATTR_RESPONSE_ORIGIN, stun.encode_address(("192.0.2.2", 3479))),
        (STUN_ATTR_OTHER_ADDRESS, stun.encode_address(("2001:db8::2", 3479))),
        (STUN_ATTR_CHANGE_REQUEST, stun.encode_change_request(True, False)),
        (STUN_ATTR_ERROR_CODE, stun.encode_error_code(420, "Unknown Attribute")),
        (STUN_ATTR_UNKNOWN_ATTRIBUTES, b"\x7f\x01\x00\x42"),
        (STUN_ATTR_SOFTWARE, "shöal 1".encode()),  # 8 bytes: no padding; next odd-length tests padding
        (0x8099, b"abc"),
    )
    data = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID, attrs))
    assert len(data) % 4 == 0
    m = stun.decode(data)
    assert m.attributes == attrs and m.fingerprint
    assert m.xor_mapped_address() == ("203.0.113.7", 40000)
    assert m.response_origin() == ("192.0.2.2", 3479)
    assert m.other_address() == ("2001:db8::2", 3479)
    assert m.change_request() == (True, False)
    assert m.error_code() == (420, "Unknown Attribute")
    assert m.unknown_attributes() == [0x7F01, 0x0042]
    assert m.software() == "shöal 1"
    assert m.unknown_required() == []  # every type here is known or optional
    assert stun.decode(data).get(0x8099) == b"abc"


def test_xor_address_is_not_the_plain_address() -> None:
    plain = stun.encode_address(("192.0.2.1", 32853))
    xored = stun.encode_xor_address(("192.0.2.1", 32853), TXID)
    assert plain != xored and xored == bytes.fromhex("0001a147e112a643")  # RFC 5769's bytes
    v6 = stun.encode_xor_address(("2001:db8:1234:5678:11:2233:4455:6677", 32853), TXID)
    assert stun.decode_xor_address(v6, TXID) == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)


def test_binding_request_with_change_request() -> None:
    data = stun.binding_request(TXID, change_ip=True, change_port=True, software="shoal")
    m = stun.decode(data)
    assert (m.method, m.cls) == (STUN_METHOD_BINDING, STUN_CLASS_REQUEST)
    assert m.change_request() == (True, True) and m.software() == "shoal"
    plain = stun.decode(stun.binding_request(TXID, fingerprint=False))
    assert plain.attributes == () and not plain.fingerprint
    assert len(stun.binding_request(TXID, fingerprint=False)) == 20


def test_unknown_required_lists_each_type_once() -> None:
    attrs = ((0x0077, b""), (0x8077, b"x"), (0x0077, b"y"), (STUN_ATTR_CHANGE_REQUEST, bytes(4)), (0x0042, b"z"))
    m = stun.decode(stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, attrs)))
    assert m.unknown_required() == [0x0077, 0x0042]
    assert m.get(0x0077) == b""  # the first one wins


@pytest.mark.parametrize("data, why", [
    (b"", "shorter"),
    (bytes(19), "shorter"),
    (b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + TXID, "top bits"),
    (b"\x00\x01\x00\x00\x00\x00\x00\x00" + TXID, "magic cookie"),
    (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + TXID, "length field"),
    (b"\x00\x01\x00\x02\x21\x12\xa4\x42" + TXID + b"\x00\x00", "length field"),
    (b"\x00\x01\x00\x04\x21\x12\xa4\x42" + TXID + b"\x00\x01\x00\x08", "overruns"),
    (b"\x00\x01\x00\x08\x21\x12\xa4\x42" + TXID + b"\x00\x01\x00\x05abcd", "overruns"),
    (bytes(STUN_MAX_MESSAGE_SIZE + 4), "more than"),
])
def test_malformed_messages(data: bytes, why: str) -> None:
    with pytest.raises(StunError, match=why):
        stun.decode(data)


def test_attribute_after_fingerprint_and_attribute_limit() -> None:
    data = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID))
    more = data + b"\x80\x22\x00\x00"
    more = more[:2] + struct.pack("!H", len(more) - 20) + more[4:]
    with pytest.raises(StunError):  # the fingerprint no longer matches either way; both refuse
        stun.decode(more)
    many = tuple((0x8000 + i, b"") for i in range(stun.MAX_ATTRIBUTES + 1))
    with pytest.raises(StunError, match="attributes"):
        stun.decode(stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, many), fingerprint=False))


def test_malformed_attribute_values() -> None:
    def msg(attrs: tuple[tuple[int, bytes], ...]) -> Message:
        return stun.decode(stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID, attrs)))

    for value in (b"", b"\x00\x01\x00", b"\x00\x03\x00\x01\x01\x02\x03\x04", b"\x00\x01\x00\x01\x01\x02\x03"):
        with pytest.raises(StunError):
            msg(((STUN_ATTR_XOR_MAPPED_ADDRESS, value),)).xor_mapped_address()
        with pytest.raises(StunError):
            msg(((STUN_ATTR_OTHER_ADDRESS, value),)).other_address()
    with pytest.raises(StunError):
        msg(((STUN_ATTR_CHANGE_REQUEST, b"\x00\x04"),)).change_request()
    with pytest.raises(StunError):
        msg(((STUN_ATTR_ERROR_CODE, b"\x00\x00\x09\x00"),)).error_code()
    with pytest.raises(StunError):
        msg(((STUN_ATTR_UNKNOWN_ATTRIBUTES, b"\x00\x01\x02"),)).unknown_attributes()


def test_encode_refuses_misuse() -> None:
    with pytest.raises(ValueError):
        stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, b"short"))
    with pytest.raises(ValueError):
        stun.encode(Message(0x1000, STUN_CLASS_REQUEST, TXID))
    with pytest.raises(ValueError):
        stun.encode_error_code(200, "OK")
    with pytest.raises(ValueError):
        stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, TXID, ((STUN_ATTR_SOFTWARE, bytes(STUN_MAX_MESSAGE_SIZE)),)))


def test_is_stun_demultiplexes_from_wireguard() -> None:
    assert stun.is_stun(stun.binding_request(TXID))
    assert stun.peek_transaction(RFC5769_V4) == (STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, TXID)
    wg_initiation = b"\x01\x00\x00\x00" + bytes(144)
    assert not stun.is_stun(wg_initiation) and stun.peek_transaction(wg_initiation) is None


# ------------------------------------------------------------------ fuzz


def _all_views(m: Message) -> None:
    for view in (m.xor_mapped_address, m.mapped_address, m.reflexive_address, m.other_address,
                 m.response_origin, m.change_request, m.response_port, m.error_code, m.unknown_attributes, m.software,
                 m.unknown_required):
        try:
            view()
        except StunError:
            pass


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        m = stun.decode(data)
    except StunError:
        return
    _all_views(m)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=160), st.integers(0, 3), st.sampled_from([0, 1, 0x0A5]))
def test_fuzz_valid_header_random_attributes(body: bytes, cls: int, method: int) -> None:
    """A correct header (cookie, length) in front of random attribute bytes: the hard case."""
    body = body + bytes(-len(body) % 4)
    t = stun.encode(Message(method, cls, TXID), fingerprint=False)[:2]
    data = t + struct.pack("!H", len(body)) + b"\x21\x12\xa4\x42" + TXID + body
    try:
        m = stun.decode(data)
    except StunError:
        return
    _all_views(m)


@settings(max_examples=600, deadline=None)
@given(st.data())
def test_fuzz_mutations_of_valid_messages(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from([RFC5769_V4, RFC5769_V6, stun.binding_request(TXID, change_ip=True)]))
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        m = stun.decode(bytes(buf[:cut]))
    except StunError:
        return
    _all_views(m)
