"""Tests of shoal.nat.portmap.natpmp: request bytes as RFC 6886 lays them out, answers of
every kind, and a fuzz test that decoding raises only NatPmpError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.nat.portmap import natpmp
from shoal.nat.portmap.natpmp import NatPmpError


def test_requests_layout() -> None:
    assert natpmp.external_request() == b"\x00\x00"
    assert natpmp.map_request(40000, 40001, 7200) == struct.pack("!BBHHHI", 0, 1, 0, 40000, 40001, 7200)
    assert natpmp.map_request(40000, 40001, 60, udp=False)[1] == 2
    # delete: lifetime 0 and suggested external port 0 (section 3.4)
    assert natpmp.map_request(40000, 40001, 0) == struct.pack("!BBHHHI", 0, 1, 0, 40000, 0, 0)


@pytest.mark.parametrize("args", [(0, 1, 1), (70000, 1, 1), (1, -1, 1), (1, 1, -1), (1, 1, 2**32)])
def test_map_request_misuse(args: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError):
        natpmp.map_request(*args)


def test_external_response() -> None:
    r = natpmp.decode_response(struct.pack("!BBHI4B", 0, 128, 0, 1234, 203, 0, 113, 11))
    assert r.ok and r.op == 0 and r.epoch == 1234 and r.external_ip == "203.0.113.11"


def test_map_response() -> None:
    r = natpmp.decode_response(struct.pack("!BBHIHHI", 0, 129, 0, 99, 40000, 40002, 3600))
    assert r.ok and (r.op, r.internal_port, r.external_port, r.lifetime, r.epoch) == (1, 40000, 40002, 3600, 99)


def test_error_answers_are_short_and_named() -> None:
    r = natpmp.decode_response(struct.pack("!BBHI", 0, 129, 2, 5))
    assert not r.ok and r.result == 2 and r.result_name == "not authorized or refused"
    r = natpmp.decode_response(struct.pack("!BBHI4B", 0, 128, 3, 5, 0, 0, 0, 0))
    assert r.result_name == "network failure" and r.external_ip is None
    assert natpmp.decode_response(struct.pack("!BBHI", 0, 128, 77, 5)).result_name == "result 77"


@pytest.mark.parametrize("data", [
    b"", b"\x00\x80", struct.pack("!BBHI", 1, 128, 0, 0),            # short, wrong version
    struct.pack("!BBHI4B", 0, 0, 0, 1, 1, 2, 3, 4),                   # a request, not a response
    struct.pack("!BBHI", 0, 128, 0, 1),                               # success without the address
    struct.pack("!BBHIHHI", 0, 129, 0, 1, 40000, 1, 1) + b"x",        # too long
    struct.pack("!BBHIHHI", 0, 129, 0, 1, 0, 1, 1),                   # internal port 0
    struct.pack("!BBHIHHI", 0, 131, 0, 1, 1, 1, 1),                   # unknown opcode
])
def test_malformed(data: bytes) -> None:
    with pytest.raises(NatPmpError):
        natpmp.decode_response(data)


def test_not_bytes() -> None:
    with pytest.raises(NatPmpError):
        natpmp.decode_response("text")  # type: ignore[arg-type]


@settings(max_examples=600, deadline=None)
@given(st.binary(max_size=40))
def test_fuzz_raises_only_natpmp_error(data: bytes) -> None:
    try:
        r = natpmp.decode_response(data)
    except NatPmpError:
        return
    assert r.result != 0 or r.external_ip is not None or r.internal_port


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2), st.integers(0, 2**32 - 1), st.binary(min_size=8, max_size=8))
def test_fuzz_shaped_answers(op: int, epoch: int, tail: bytes) -> None:
    for n in (0, 4, 8):
        try:
            natpmp.decode_response(struct.pack("!BBHI", 0, 128 | op, 0, epoch) + tail[:n])
        except NatPmpError:
            pass
