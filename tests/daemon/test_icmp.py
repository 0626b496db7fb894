"""ICMP echo build/parse: checksums, foreign and malformed packets ignored, never raised."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from shoal.daemon.icmp import ECHO_REPLY, build_echo_request, parse_echo_reply
from shoal.tun.checksum import ip_header_checksum, residue


def ip_wrap(icmp: bytes, ihl_words: int = 5) -> bytes:
    options = b"\x01" * ((ihl_words - 5) * 4)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_words, 0, 20 + len(options) + len(icmp), 0, 0, 64, 1, 0,
                      bytes([100, 64, 0, 2]), bytes([100, 64, 0, 1])) + options
    hdr = hdr[:10] + struct.pack("!H", ip_header_checksum(hdr)) + hdr[12:]
    return hdr + icmp


def as_reply(request: bytes) -> bytes:
    body = bytes([ECHO_REPLY, 0, 0, 0]) + request[4:]
    from shoal.tun.checksum import finish

    return body[:2] + struct.pack("!H", finish(residue(body))) + body[4:]


def test_request_has_a_valid_checksum():
    req = build_echo_request(0x1234, 7, b"shoal-ping123456")
    assert req[0] == 8 and residue(req) == 0
    assert struct.unpack("!HH", req[4:8]) == (0x1234, 7)


def test_reply_round_trip_with_and_without_ip_options():
    req = build_echo_request(0xBEEF, 65535, b"payload")
    for ihl in (5, 6, 15):
        assert parse_echo_reply(ip_wrap(as_reply(req), ihl)) == (0xBEEF, 65535, b"payload")


def test_requests_and_corrupted_replies_are_ignored():
    req = build_echo_request(1, 1, b"x")
    assert parse_echo_reply(ip_wrap(req)) is None  # an echo request, not a reply
    bad = bytearray(as_reply(req))
    bad[-1] ^= 0xFF
    assert parse_echo_reply(ip_wrap(bytes(bad))) is None
    assert parse_echo_reply(b"") is None
    assert parse_echo_reply(b"\x60" + b"\x00" * 40) is None  # IPv6


@given(st.binary(max_size=100))
def test_fuzz_never_raises(data):
    parse_echo_reply(data)
    parse_echo_reply(b"\x45" + data)
