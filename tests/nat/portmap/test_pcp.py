"""Tests of shoal.nat.portmap.pcp: MAP/ANNOUNCE requests as RFC 6887 lays them out, answers
(with options, errors, a NAT-PMP server's refusal) and a fuzz test that decoding raises only
PcpError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.nat.portmap import pcp
from shoal.nat.portmap.pcp import PcpError

NONCE = bytes(range(12))
V4MAPPED = b"\x00" * 10 + b"\xff\xff"


def answer(result: int = 0, lifetime: int = 120, epoch: int = 7, *, opcode: int = 1, nonce: bytes = NONCE,
           internal: int = 40000, external: int = 40000, ip: bytes = bytes([203, 0, 113, 11]), options: bytes = b"",
           body: bool = True) -> bytes:
    head = struct.pack("!BBxBII12x", 2, 0x80 | opcode, result, lifetime, epoch)
    if opcode == 1 and body:
        head += nonce + struct.pack("!B3xHH", 17, internal, external) + V4MAPPED + ip
    return head + options


def test_map_request_layout() -> None:
    data = pcp.map_request(NONCE, "198.18.1.2", 40000, 7200, suggested_port=40001, suggested_ip="203.0.113.11")
    assert len(data) == 60
    assert data[:4] == b"\x02\x01\x00\x00" and struct.unpack_from("!I", data, 4)[0] == 7200
    assert data[8:24] == V4MAPPED + bytes([198, 18, 1, 2])
    assert data[24:36] == NONCE and data[36] == 17 and data[37:40] == b"\x00\x00\x00"
    assert struct.unpack_from("!HH", data, 40) == (40000, 40001)
    assert data[44:60] == V4MAPPED + bytes([203, 0, 113, 11])
    # no suggestion: the all-zero IPv4-mapped address, port 0
    d2 = pcp.map_request(NONCE, "198.18.1.2", 40000, 0)
    assert d2[42:44] == b"\x00\x00" and d2[44:60] == V4MAPPED + b"\x00" * 4 and d2[4:8] == b"\x00" * 4


def test_announce_request() -> None:
    data = pcp.announce_request("198.18.1.2")
    assert len(data) == 24 and data[:2] == b"\x02\x00"


@pytest.mark.parametrize("kw", [dict(nonce=b"short"), dict(internal_port=0), dict(lifetime=-1),
                                dict(suggested_port=70000), dict(protocol=0)])
def test_map_request_misuse(kw: dict) -> None:
    args = dict(nonce=NONCE, client_ip="198.18.1.2", internal_port=1, lifetime=1) | kw
    with pytest.raises(ValueError):
        pcp.map_request(args.pop("nonce"), args.pop("client_ip"), args.pop("internal_port"), args.pop("lifetime"), **args)


def test_map_response() -> None:
    r = pcp.decode_response(answer(external=40002, options=b"\x12\x00\x00\x02ab\x00\x00"))
    assert r.ok and r.nonce == NONCE and r.protocol == 17
    assert (r.internal_port, r.external_port, r.external_ip, r.lifetime, r.epoch) == (40000, 40002, "203.0.113.11", 120, 7)


def test_empty_option_is_skipped() -> None:
    assert pcp.decode_response(answer(options=b"\x01\x00\x00\x00")).ok


def test_announce_and_error_responses() -> None:
    a = pcp.decode_response(answer(opcode=0))
    assert a.ok and a.opcode == 0 and a.nonce is None
    e = pcp.decode_response(answer(result=2))
    assert not e.ok and e.result_name == "NOT_AUTHORIZED"
    short = pcp.decode_response(answer(result=8, body=False))
    assert short.result_name == "NO_RESOURCES" and short.nonce is None


def test_natpmp_server_refusal() -> None:
    r = pcp.decode_response(struct.pack("!BBHI", 0, 129, 1, 3))
    assert r.version == 0 and not r.ok and "no PCP" in r.result_name


@pytest.mark.parametrize("data", [
    b"", answer()[:23], answer()[:-4] + b"\x00\x00",   # short, not a multiple of 4
    answer() + b"\x00" * 1100,                          # too long
    b"\x03" + answer()[1:],                             # version 3
    b"\x02\x01" + answer()[2:],                         # R bit clear
    b"\x02\x85" + answer()[2:],                         # unknown opcode
    answer(body=False),                                 # success MAP without its body
    answer(options=b"\x01\x00\x00\x08abcd"),            # option overruns
])
def test_malformed(data: bytes) -> None:
    with pytest.raises(PcpError):
        pcp.decode_response(data)


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_raises_only_pcp_error(data: bytes) -> None:
    try:
        pcp.decode_response(data)
    except PcpError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 255), st.integers(0, 1), st.binary(max_size=80))
def test_fuzz_shaped(result: int, opcode: int, tail: bytes) -> None:
    data = answer(result=result, opcode=opcode, body=False) + tail
    try:
        r = pcp.decode_response(data)
    except PcpError:
        return
    assert r.version == 2 and r.opcode == opcode
