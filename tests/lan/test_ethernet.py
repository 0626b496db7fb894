"""Tests of shoal.lan.ethernet: MAC type, every framing (IPX in all four), VLAN tags, round
trips, known bytes, and a fuzzer (arbitrary bytes and mutations never raise anything but
FrameError)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lan import ethernet as E
from shoal.lan.ethernet import MAC, FrameError, VlanTag
from shoal import constants as C

A = MAC("02:00:00:00:00:0a")
B = MAC("02:00:00:00:00:0b")
IPX = E.ipx_packet(0x12345678, B, 0x4000, 0x12345678, A, 0x5000, b"hello ipx")


def test_mac_forms_and_flags() -> None:
    assert MAC("02-53-64-40-00-01") == MAC(b"\x02\x53\x64\x40\x00\x01") == b"\x02\x53\x64\x40\x00\x01"
    assert str(MAC("AA:bb:cc:dd:ee:ff")) == "aa:bb:cc:dd:ee:ff"
    assert E.BROADCAST.is_broadcast and E.BROADCAST.is_group and not E.BROADCAST.is_multicast
    assert MAC("01:00:5e:00:00:fb").is_multicast and not MAC("01:00:5e:00:00:fb").is_unicast
    assert A.is_unicast and A.is_local and not MAC("00:11:22:33:44:55").is_local
    for bad in ("02:00:00:00:00", "zz:00:00:00:00:00", "0200:00:00:00:00:00", ""):
        with pytest.raises(FrameError):
            MAC(bad)
    with pytest.raises(FrameError):
        MAC(b"\x00" * 5)


def test_multicast_macs() -> None:
    assert E.multicast_mac_ipv4(bytes((224, 0, 0, 251))) == MAC("01:00:5e:00:00:fb")
    assert E.multicast_mac_ipv4(bytes((239, 255, 255, 250))) == MAC("01:00:5e:7f:ff:fa")  # high bit of byte 1 dropped
    assert E.multicast_mac_ipv6(bytes.fromhex("ff0200000000000000000000000000fb")) == MAC("33:33:00:00:00:fb")


def test_ethernet2_known_bytes_and_parse() -> None:
    frame = E.ethernet2(E.BROADCAST, A, C.ETHERTYPE_ARP, b"x" * 28)
    assert frame[:14] == bytes.fromhex("ffffffffffff02000000000a0806")
    f = E.parse_frame(frame)
    assert (f.dst, f.src, f.framing, f.ethertype, f.protocol, f.vlans) == (E.BROADCAST, A, "ethernet2", 0x0806, "arp", ())
    assert f.payload == b"x" * 28


@pytest.mark.parametrize("framing", E.IPX_FRAMINGS)
def test_ipx_in_every_framing(framing: str) -> None:
    frame = E.ipx_frame(B, A, IPX, framing)
    f = E.parse_frame(frame)
    assert f.protocol == "ipx"
    assert f.framing == framing
    assert f.payload == IPX
    assert f.dst == B and f.src == A


def test_ipx_framing_bytes() -> None:
    """The exact header bytes of the three Novell framings (and SNAP)."""
    n = len(IPX)
    assert E.ipx_frame(B, A, IPX, "ethernet2")[12:16] == b"\x81\x37\xff\xff"
    assert E.ipx_frame(B, A, IPX, "raw8023")[12:16] == n.to_bytes(2, "big") + b"\xff\xff"
    assert E.ipx_frame(B, A, IPX, "llc")[12:17] == (n + 3).to_bytes(2, "big") + b"\xe0\xe0\x03"
    assert E.ipx_frame(B, A, IPX, "snap")[12:22] == (n + 8).to_bytes(2, "big") + b"\xaa\xaa\x03\x00\x00\x00\x81\x37"


def test_8023_padding_is_trimmed() -> None:
    frame = E.ipx_frame(B, A, IPX, "llc") + bytes(20)  # padded to the minimum frame size
    assert E.parse_frame(frame).payload == IPX


def test_vlan_tags() -> None:
    tags = (VlanTag(C.ETHERTYPE_QINQ, 5, True, 100), VlanTag(C.ETHERTYPE_VLAN, 3, False, 4094))
    frame = E.ethernet2(B, A, C.ETHERTYPE_IPV4, b"\x45" + bytes(19), tags)
    assert frame[12:22] == bytes.fromhex("88a8b064" "81006ffe" "0800")
    f = E.parse_frame(frame)
    assert f.vlans == tags and f.protocol == "ipv4"
    assert E.parse_frame(E.ipx_frame(B, A, IPX, "raw8023", tags[1:])).vlans == tags[1:]
    three = frame[:12] + bytes.fromhex("810000018100000281000003") + b"\x08\x00"
    with pytest.raises(FrameError, match="VLAN"):
        E.parse_frame(three)


def test_llc_i_frame_and_other_saps() -> None:
    frame = E.llc(B, A, 0x42, 0x42, 0x0103, b"stp?")  # 2-byte control (I-frame)
    f = E.parse_frame(frame)
    assert (f.framing, f.dsap, f.control, f.payload, f.protocol) == ("llc", 0x42, 0x0103, b"stp?", "llc-0x42")
    lldp = E.ethernet2(MAC("01:80:c2:00:00:0e"), A, C.ETHERTYPE_LLDP, b"\x02\x07")
    assert E.parse_frame(lldp).protocol == "lldp"
    assert E.parse_frame(E.snap(B, A, b"\x00\x00\x0c", 0x2000, b"cdp")).protocol == "snap-00000c"


@pytest.mark.parametrize(
    "frame, message",
    [
        (bytes(13), "shorter"),
        (bytes(6) + b"\x01" + bytes(5) + b"\x08\x00", "group"),
        (bytes(12) + b"\x05\xff", "neither"),
        (bytes(12) + b"\x00\x10" + bytes(5), "exceeds"),
        (bytes(12) + b"\x81\x00\x00", "truncated VLAN"),
        (bytes(12) + b"\x00\x02\xe0\xe0", "truncated"),
        (bytes(12) + b"\x00\x05\xaa\xaa\x03\x00\x00", "SNAP"),
    ],
)
def test_malformed(frame: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        E.parse_frame(frame)


def test_builder_misuse() -> None:
    with pytest.raises(ValueError):
        E.ethernet2(B, E.BROADCAST, 0x0800, b"")  # group source
    with pytest.raises(ValueError):
        E.ethernet2(B, A, 0x0500, b"")  # a length, not a type
    with pytest.raises(ValueError):
        E.ieee8023(B, A, bytes(1501))
    with pytest.raises(ValueError):
        E.ipx_frame(B, A, b"\x00\x00" + IPX[2:], "raw8023")
    with pytest.raises(ValueError):
        E.ipx_frame(B, A, IPX, "token-ring")


macs = st.binary(min_size=6, max_size=6).map(lambda b: MAC(bytes((b[0] & 0xFE,)) + b[1:]))
tags = st.lists(st.builds(VlanTag, st.sampled_from([0x8100, 0x88A8, 0x9100]), st.integers(0, 7), st.booleans(),
                          st.integers(0, 4095)), max_size=2).map(tuple)


@given(dst=st.binary(min_size=6, max_size=6), src=macs, vlans=tags, framing=st.sampled_from(E.IPX_FRAMINGS),
       data=st.binary(max_size=400))
@settings(max_examples=200, deadline=None)
def test_ipx_round_trip(dst: bytes, src: MAC, vlans: tuple[VlanTag, ...], framing: str, data: bytes) -> None:
    packet = E.ipx_packet(1, src, 2, 3, src, 4, data)
    f = E.parse_frame(E.ipx_frame(dst, src, packet, framing, vlans))
    assert (f.dst, f.src, f.vlans, f.payload, f.protocol) == (dst, src, vlans, packet, "ipx")


@given(st.binary(max_size=200))
@settings(max_examples=1000, deadline=None)
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        E.parse_frame(data)
    except FrameError:
        pass


@given(st.sampled_from(E.IPX_FRAMINGS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
       st.integers(0, 100))
@settings(max_examples=500, deadline=None)
def test_fuzz_mutations(framing: str, flips: list[tuple[int, int]], cut: int) -> None:
    frame = bytearray(E.ipx_frame(B, A, IPX, framing, (VlanTag(0x8100, 0, False, 7),)))
    for pos, value in flips:
        if pos < len(frame):
            frame[pos] = value
    try:
        E.parse_frame(bytes(frame[: len(frame) - cut]))
    except FrameError:
        pass
