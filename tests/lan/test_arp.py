"""Tests of shoal.lan.arp: MAC derivation, every ARP and neighbour-solicitation rule of the
module docstring, replies checked field by field (checksums against an independent oracle),
and a fuzzer (handle never raises)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lan import arp
from shoal.lan.arp import NeighborResponder, mac_for, mac_for_ipv4, mac_for_ipv6
from shoal.lan.ethernet import BROADCAST, MAC, ethernet2, parse_frame
from shoal.tun.checksum import slow_l4_checksum
from shoal import constants as C

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
OWN4, PEER4, STRANGER4 = V4("100.64.0.1"), V4("100.64.0.2"), V4("100.64.0.9")
OWN6, PEER6 = V6("fd5a:1:2::1"), V6("fd5a:1:2::2")
HOST_MAC = MAC("02:53:64:40:00:01")


def responder() -> NeighborResponder:
    return NeighborResponder({OWN4, OWN6}, {PEER4, PEER6, arp.link_local_for(mac_for(PEER4))})


def arp_request(tpa: V4, spa: V4 = OWN4, sha: MAC = HOST_MAC, op: int = C.ARP_OP_REQUEST) -> bytes:
    return ethernet2(BROADCAST, sha, C.ETHERTYPE_ARP, arp.build_arp(op, sha, spa, bytes(6), tpa))


def test_mac_derivation() -> None:
    assert mac_for("100.64.0.2") == MAC("02:53:64:40:00:02") == mac_for_ipv4(PEER4)
    m6 = mac_for(PEER6)
    assert m6[:2] == b"\x06\x53" and m6 == mac_for_ipv6(PEER6) and m6 != mac_for(OWN6)
    for m in (mac_for(PEER4), m6):
        assert m.is_unicast and m.is_local
    assert arp.link_local_for(MAC("02:53:64:40:00:02")) == V6("fe80::53:64ff:fe40:2")


def test_arp_request_for_a_peer_is_answered() -> None:
    verdict, reply = responder().handle(arp_request(PEER4))
    assert verdict == "answered" and reply is not None
    f = parse_frame(reply)
    assert f.dst == HOST_MAC and f.src == mac_for(PEER4) and f.ethertype == C.ETHERTYPE_ARP
    fields = struct.unpack("!HHBBH6s4s6s4s", f.payload)
    assert fields == (1, 0x0800, 6, 4, C.ARP_OP_REPLY, mac_for(PEER4), PEER4.packed, HOST_MAC, OWN4.packed)


def test_arp_probe_for_a_peer_is_defended() -> None:
    verdict, reply = responder().handle(arp_request(PEER4, spa=V4("0.0.0.0")))
    assert verdict == "answered" and reply is not None
    assert parse_frame(reply).payload[24:28] == bytes(4)


@pytest.mark.parametrize(
    "frame, verdict",
    [
        (arp_request(STRANGER4), "not-ours"),
        (arp_request(OWN4, spa=V4("100.64.0.3")), "self"),
        (arp_request(OWN4, spa=OWN4), "gratuitous"),
        (arp_request(PEER4, spa=PEER4), "conflict"),
        (arp_request(PEER4, op=C.ARP_OP_REPLY), "gratuitous"),
        (arp_request(PEER4, op=7), "malformed"),
        (arp_request(PEER4)[:-1], "malformed"),
        (arp_request(PEER4)[:6] + bytes.fromhex("020000000099") + arp_request(PEER4)[12:], "malformed"),  # sha != src
        (ethernet2(BROADCAST, HOST_MAC, C.ETHERTYPE_ARP, struct.pack("!HHBBH", 6, 0x0800, 6, 4, 1) + bytes(20)), "malformed"),
        (ethernet2(BROADCAST, HOST_MAC, C.ETHERTYPE_IPX, bytes(30)), "malformed"),
        (b"\x00" * 5, "malformed"),
    ],
)
def test_arp_refusals(frame: bytes, verdict: str) -> None:
    r = responder()
    assert r.handle(frame) == (verdict, None)
    assert r.stats[verdict] == 1


def _check_na(reply: bytes, target: V6, dst: V6, dst_mac: MAC, solicited: bool) -> None:
    f = parse_frame(reply)
    assert f.dst == dst_mac and f.src == mac_for(target) and f.ethertype == C.ETHERTYPE_IPV6
    ip = f.payload
    assert ip[6] == C.IPPROTO_ICMPV6 and ip[7] == 255
    assert V6(ip[8:24]) == target and V6(ip[24:40]) == dst
    icmp = ip[40:]
    assert icmp[0] == C.ICMPV6_NEIGHBOR_ADVERTISEMENT and icmp[1] == 0
    assert slow_l4_checksum(ip[8:24], ip[24:40], 58, icmp[:2] + b"\x00\x00" + icmp[4:]) == int.from_bytes(icmp[2:4], "big")
    flags = icmp[4]
    assert flags & 0x80 == 0 and bool(flags & 0x40) == solicited and flags & 0x20
    assert V6(icmp[8:24]) == target
    assert icmp[24:32] == bytes((2, 1)) + mac_for(target)


def test_neighbor_solicitation_for_peer_is_answered() -> None:
    ns = arp.build_neighbor_solicitation(HOST_MAC, OWN6, PEER6)
    verdict, reply = responder().handle(ns)
    assert verdict == "answered" and reply is not None
    _check_na(reply, PEER6, OWN6, HOST_MAC, solicited=True)


def test_unicast_nud_and_link_local_targets() -> None:
    ll_peer = arp.link_local_for(mac_for(PEER4))
    ll_own = arp.link_local_for(HOST_MAC)
    ns = arp.build_neighbor_solicitation(HOST_MAC, ll_own, ll_peer, dst=ll_peer)
    verdict, reply = responder().handle(ns)
    assert verdict == "answered" and reply is not None
    _check_na(reply, ll_peer, ll_own, HOST_MAC, solicited=True)


def test_dad_for_a_peer_address_is_defended_to_all_nodes() -> None:
    ns = arp.build_neighbor_solicitation(HOST_MAC, V6("::"), PEER6)
    verdict, reply = responder().handle(ns)
    assert verdict == "conflict" and reply is not None
    _check_na(reply, PEER6, V6("ff02::1"), MAC("33:33:00:00:00:01"), solicited=False)


def _mutate_ns(**kw: object) -> bytes:
    ns = bytearray(arp.build_neighbor_solicitation(HOST_MAC, OWN6, PEER6))
    if "hop" in kw:
        ns[14 + 7] = kw["hop"]  # type: ignore[assignment]
    if "byte" in kw:
        pos, value = kw["byte"]  # type: ignore[misc]
        ns[pos] = value
    return bytes(ns)


@pytest.mark.parametrize(
    "frame, verdict",
    [
        (arp.build_neighbor_solicitation(HOST_MAC, OWN6, V6("fd5a:1:2::99")), "not-ours"),
        (arp.build_neighbor_solicitation(HOST_MAC, PEER6, OWN6), "self"),
        (_mutate_ns(hop=64), "malformed"),
        (_mutate_ns(byte=(14 + 40 + 1, 1)), "malformed"),  # code 1
        (_mutate_ns(byte=(14 + 40 + 3, 0)), "malformed"),  # checksum
        (_mutate_ns(byte=(14 + 40 + 25, 0)), "malformed"),  # option length 0
        (arp.build_neighbor_solicitation(HOST_MAC, V6("::"), PEER6, dst=V6("ff02::1")), "malformed"),
        (ethernet2(BROADCAST, HOST_MAC, C.ETHERTYPE_IPV6, arp.build_icmpv6(OWN6, V6("ff02::1:ff00:2"), 135,
                   bytes(4) + V6("ff02::1").packed)), "malformed"),  # multicast target
        (ethernet2(BROADCAST, HOST_MAC, C.ETHERTYPE_IPV6, arp.build_icmpv6(OWN6, V6("ff02::2"), 133, bytes(24))), "malformed"),
        (arp.build_neighbor_solicitation(HOST_MAC, OWN6, PEER6)[:-3], "malformed"),
    ],
)
def test_ndp_refusals(frame: bytes, verdict: str) -> None:
    assert responder().handle(frame) == (verdict, None)


def test_answer_set_is_live() -> None:
    peers: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    r = NeighborResponder({OWN4}, peers)
    assert r.handle(arp_request(PEER4))[0] == "not-ours"
    peers.add(PEER4)
    assert r.handle(arp_request(PEER4))[0] == "answered"


@given(st.binary(max_size=120))
@settings(max_examples=1000, deadline=None)
def test_fuzz_never_raises(data: bytes) -> None:
    r = responder()
    for frame in (data, arp_request(PEER4)[:14] + data, arp.build_neighbor_solicitation(HOST_MAC, OWN6, PEER6)[:54] + data):
        verdict, reply = r.handle(frame)
        assert verdict in ("answered", "conflict", "gratuitous", "self", "not-ours", "malformed")
