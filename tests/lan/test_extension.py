"""Tests of shoal.lan.extension: known bytes, round trips, padding, every limit, and fuzzers
(decode never raises anything but ExtensionError)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lan import extension as X
from shoal.lan.extension import Extension, ExtensionError
from shoal import constants as C

IP_PACKET = bytes.fromhex("4500001c0000000040110000" "64400001" "ffffffff") + bytes(8)


def test_known_bytes() -> None:
    msg = X.encode(C.LAN_EXT_KIND_IP, "abcd2345", IP_PACKET)
    assert msg[:14] == b"\x51\x01\x00\x08abcd2345\x00\x1c"
    assert msg[14:] == IP_PACKET
    assert X.is_extension(msg) and not X.is_extension(IP_PACKET) and not X.is_extension(b"")
    assert X.decode(msg) == Extension(C.LAN_EXT_KIND_IP, "abcd2345", IP_PACKET)


def test_first_nibble_is_never_an_ip_version() -> None:
    msg = X.encode(C.LAN_EXT_KIND_FRAME, "n", bytes(14))
    assert msg[0] >> 4 not in (4, 6)


@pytest.mark.parametrize("pad", range(16))
def test_wireguard_padding_is_ignored(pad: int) -> None:
    msg = X.encode(C.LAN_EXT_KIND_FRAME, "net1", bytes(range(60)))
    assert X.decode(msg + bytes(pad)).payload == bytes(range(60))


def test_limits() -> None:
    X.encode(C.LAN_EXT_KIND_IP, "a" * 16, bytes(C.LAN_EXT_MAX_IP_PAYLOAD))
    X.encode(C.LAN_EXT_KIND_FRAME, "0", bytes(C.LAN_EXT_MAX_FRAME))
    assert len(X.encode(C.LAN_EXT_KIND_IP, "a" * 16, bytes(20))) == C.LAN_EXT_MAX_HEADER + 20
    for kind, nid, payload in [
        (3, "net", bytes(20)),
        (C.LAN_EXT_KIND_IP, "net", bytes(19)),
        (C.LAN_EXT_KIND_IP, "net", bytes(C.LAN_EXT_MAX_IP_PAYLOAD + 1)),
        (C.LAN_EXT_KIND_FRAME, "net", bytes(13)),
        (C.LAN_EXT_KIND_FRAME, "net", bytes(C.LAN_EXT_MAX_FRAME + 1)),
        (C.LAN_EXT_KIND_FRAME, "", bytes(14)),
        (C.LAN_EXT_KIND_FRAME, "a" * 17, bytes(14)),
        (C.LAN_EXT_KIND_FRAME, "Net", bytes(14)),
        (C.LAN_EXT_KIND_FRAME, "né", bytes(14)),
    ]:
        with pytest.raises(ValueError):
            X.encode(kind, nid, payload)


def _bad(msg: bytes, match: str) -> None:
    with pytest.raises(ExtensionError, match=match):
        X.decode(msg)


def test_decode_refusals() -> None:
    good = X.encode(C.LAN_EXT_KIND_FRAME, "net", bytes(20))
    _bad(good[:3], "shorter")
    _bad(b"\x45" + good[1:], "not an extension")
    _bad(b"\x52" + good[1:], "version 2")
    _bad(good[:1] + b"\x07" + good[2:], "kind 7")
    _bad(good[:2] + b"\x01" + good[3:], "flags")
    _bad(good[:3] + b"\x00" + good[4:], "id length 0")
    _bad(good[:3] + b"\x11" + good[4:], "id length 17")
    _bad(good[:3] + b"\x0a" + good[4:9], "truncated")
    _bad(good[:4] + b"NET" + good[7:], "a-z0-9")
    _bad(good[:7] + b"\x00\x0d" + good[9:], "outside")
    _bad(good[:7] + b"\x00\x30" + good[9:], "exceeds")
    _bad(good + bytes(16), "padding")
    _bad(good + b"\x00\x01", "padding")


@given(kind=st.sampled_from(X.KINDS), nid=st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=16),
       payload=st.binary(min_size=20, max_size=1500), pad=st.integers(0, 15))
@settings(max_examples=300, deadline=None)
def test_round_trip(kind: int, nid: str, payload: bytes, pad: int) -> None:
    assert X.decode(X.encode(kind, nid, payload) + bytes(pad)) == Extension(kind, nid, payload)


@given(st.binary(max_size=120))
@settings(max_examples=2000, deadline=None)
def test_fuzz_arbitrary(data: bytes) -> None:
    try:
        X.decode(data)
    except ExtensionError:
        pass
    try:
        X.decode(b"\x51" + data)
    except ExtensionError:
        pass


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 255)), min_size=1, max_size=4), st.integers(0, 30))
@settings(max_examples=1000, deadline=None)
def test_fuzz_mutations(flips: list[tuple[int, int]], cut: int) -> None:
    msg = bytearray(X.encode(C.LAN_EXT_KIND_IP, "abcd2345", IP_PACKET) + bytes(4))
    for pos, value in flips:
        if pos < len(msg):
            msg[pos] = value
    try:
        ext = X.decode(bytes(msg[: len(msg) - cut]))
    except ExtensionError:
        return
    assert ext.kind in X.KINDS and 1 <= len(ext.network_id) <= 16
