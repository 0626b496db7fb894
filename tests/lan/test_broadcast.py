"""Tests of shoal.lan.broadcast: classification of IP packets and frames, the fan-out planner's
rules (property-tested against its definition), admission, origin checks, IGMP/MLD report
parsing and the snooping table; fuzzers (never raise)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lan import arp
from shoal.lan.broadcast import (
    Memberships,
    NetworkState,
    admit,
    classify_frame,
    classify_ip,
    ip_origin_ok,
    parse_membership,
    plan,
)
from shoal import constants as C

SUBNET_BCAST = ipaddress.IPv4Address("100.127.255.255").packed


def ipv4(dst: str, src: str = "100.64.0.1", proto: int = 17, body: bytes = bytes(8)) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 1, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + body


def ipv6(dst: str, src: str = "fd5a::1", nh: int = 17, body: bytes = bytes(8)) -> bytes:
    return arp.build_ipv6(ipaddress.IPv6Address(src), ipaddress.IPv6Address(dst), nh, 1, body)


def test_classify_ipv4() -> None:
    assert classify_ip(ipv4("255.255.255.255")).kind == "broadcast"  # type: ignore[union-attr]
    assert classify_ip(ipv4("100.127.255.255"), {SUBNET_BCAST}).kind == "broadcast"  # type: ignore[union-attr]
    assert classify_ip(ipv4("100.127.255.255")).kind == "unicast"  # type: ignore[union-attr]
    mdns = classify_ip(ipv4("224.0.0.251"))
    assert mdns is not None and mdns.kind == "multicast" and mdns.group == bytes((224, 0, 0, 251)) and mdns.link_local
    ssdp = classify_ip(ipv4("239.255.255.250"))
    assert ssdp is not None and ssdp.kind == "multicast" and not ssdp.link_local
    assert classify_ip(ipv4("100.64.0.2")).kind == "unicast"  # type: ignore[union-attr]
    assert classify_ip(ipv4("224.0.0.22", proto=2)).control == "igmp"  # type: ignore[union-attr]


def test_classify_ipv6() -> None:
    c = classify_ip(ipv6("ff02::fb"))
    assert c is not None and c.kind == "multicast" and c.link_local and c.group == ipaddress.IPv6Address("ff02::fb").packed
    c = classify_ip(ipv6("ff0e::1234"))
    assert c is not None and not c.link_local
    assert classify_ip(ipv6("fd5a::2")).kind == "unicast"  # type: ignore[union-attr]
    ns = classify_ip(ipv6("ff02::1:ff00:2", nh=58, body=bytes((135, 0)) + bytes(22)))
    assert ns is not None and ns.control == "nd"
    # MLDv2 report behind a hop-by-hop header (router alert)
    hbh = bytes((58, 0, 5, 2, 0, 0, 1, 0))
    mld = classify_ip(ipv6("ff02::16", nh=0, body=hbh + bytes((143, 0)) + bytes(6)))
    assert mld is not None and mld.control == "mld"


def test_classify_malformed() -> None:
    for bad in (b"", b"\x45" + bytes(10), b"\x4f" + bytes(19), b"\x60" + bytes(20), b"\x10" + bytes(40),
                ipv6("ff02::1", nh=0, body=b"\x00")):
        assert classify_ip(bad) is None


def test_classify_frame() -> None:
    assert classify_frame(b"\xff" * 6 + bytes(8)).kind == "broadcast"  # type: ignore[union-attr]
    c = classify_frame(bytes.fromhex("01005e0000fb") + bytes(8))
    assert c is not None and c.kind == "multicast" and c.link_local
    c = classify_frame(bytes.fromhex("01005e7ffffa") + bytes(8))
    assert c is not None and not c.link_local
    assert classify_frame(bytes.fromhex("020000000001") + bytes(8)).kind == "unicast"  # type: ignore[union-attr]
    assert classify_frame(bytes(13)) is None


X = NetworkState("x", "ip", True, frozenset({"ann", "ben", "cat"}))
Y = NetworkState("y", "ip", True, frozenset({"ann", "dan"}))
Z = NetworkState("z", "l2", True, frozenset({"ann", "ben", "eve"}))


def test_plan_basic() -> None:
    got = plan("ann", [X, Y, Z], kind="ip")
    assert [(d.node_id, d.network_id) for d in got] == [("ben", "x"), ("cat", "x"), ("dan", "y")]
    assert [(d.node_id, d.network_id) for d in plan("dan", [X, Y, Z], kind="ip")] == [("ann", "y")]
    assert [d.node_id for d in plan("ann", [X, Y, Z], kind="l2")] == ["ben", "eve"]
    off = NetworkState("x", "ip", False, X.online)
    assert [d.node_id for d in plan("ann", [off, Y], kind="ip")] == ["dan"]
    assert plan("zed", [X, Y], kind="ip") == []
    assert [d.node_id for d in plan("ann", [X], kind="ip", wants=lambda n, m: m != "cat")] == ["ben"]


def test_plan_shared_twice_gets_one_copy_lowest_id() -> None:
    a = NetworkState("b2", "ip", True, frozenset({"ann", "ben"}))
    b = NetworkState("a1", "ip", True, frozenset({"ann", "ben"}))
    assert [(d.node_id, d.network_id) for d in plan("ann", [a, b], kind="ip")] == [("ben", "a1")]


nets = st.lists(
    st.builds(NetworkState, st.sampled_from(["n1", "n2", "n3", "n4"]), st.sampled_from(["ip", "l2"]), st.booleans(),
              st.frozensets(st.sampled_from(["a", "b", "c", "d", "e"]))),
    max_size=4, unique_by=lambda n: n.network_id,
)


@given(nets, st.sampled_from(["a", "b", "c", "d", "e"]), st.sampled_from(["ip", "l2"]))
@settings(max_examples=500, deadline=None)
def test_plan_matches_definition(networks: list[NetworkState], sender: str, kind: str) -> None:
    got = plan(sender, networks, kind=kind)
    eligible = [n for n in networks if n.kind == kind and n.broadcast and sender in n.online]
    expected = {m for n in eligible for m in n.online} - {sender}
    assert sorted(d.node_id for d in got) == sorted(expected)  # each exactly once, never the sender
    by_id = {n.network_id: n for n in networks}
    for d in got:
        tagged = by_id[d.network_id]
        assert tagged in eligible and d.node_id in tagged.online
        assert d.network_id == min(n.network_id for n in eligible if d.node_id in n.online)
        assert admit(d.node_id, sender, d.network_id, by_id, kind) == "ok"  # the receiver agrees


def test_admit() -> None:
    view = {"x": X, "z": Z, "off": NetworkState("off", "ip", False, X.online)}
    assert admit("ben", "ann", "x", view, "ip") == "ok"
    assert admit("ann", "ann", "x", view, "ip") == "loop"
    assert admit("ben", "ann", "q", view, "ip") == "unknown-network"
    assert admit("ben", "ann", "z", view, "ip") == "wrong-kind"
    assert admit("ben", "ann", "off", view, "ip") == "switched-off"
    assert admit("ben", "dan", "x", view, "ip") == "not-member"
    assert admit("dan", "ann", "x", view, "ip") == "not-member"


def test_ip_origin() -> None:
    sender = {ipaddress.IPv4Address("100.64.0.1").packed, ipaddress.IPv6Address("fd5a::1").packed}
    assert ip_origin_ok(ipv4("255.255.255.255"), sender)
    assert ip_origin_ok(ipv6("ff02::fb"), sender)
    assert not ip_origin_ok(ipv4("255.255.255.255", src="100.64.0.9"), sender)  # spoofed source
    assert not ip_origin_ok(ipv4("100.64.0.2"), sender)  # unicast through the extension
    assert not ip_origin_ok(ipv4("100.127.255.255"), sender)  # not a broadcast we know
    assert ip_origin_ok(ipv4("100.127.255.255"), sender, {SUBNET_BCAST})
    assert not ip_origin_ok(b"\x45", sender)


G1 = ipaddress.IPv4Address("239.1.2.3").packed
G6 = ipaddress.IPv6Address("ff0e::42").packed


def igmp(body: bytes, dst: str = "224.0.0.22") -> bytes:
    return ipv4(dst, proto=2, body=body)


def test_parse_membership() -> None:
    assert parse_membership(igmp(bytes((0x16, 0, 0, 0)) + G1, "239.1.2.3")) == [("join", G1)]
    assert parse_membership(igmp(bytes((0x17, 0, 0, 0)) + G1, "224.0.0.2")) == [("leave", G1)]
    v3 = bytes((0x22, 0, 0, 0, 0, 0, 0, 3)) + bytes((4, 0, 0, 0)) + G1 + bytes((3, 0, 0, 0)) + G1 + bytes((1, 0, 0, 1)) + G1 + G1
    assert parse_membership(igmp(v3)) == [("join", G1), ("leave", G1), ("join", G1)]
    hbh = bytes((58, 0, 5, 2, 0, 0, 1, 0))
    mld1 = hbh + bytes((131, 0, 0, 0, 0, 0, 0, 0)) + G6
    assert parse_membership(ipv6("ff0e::42", src="fe80::1", nh=0, body=mld1)) == [("join", G6)]
    mld2 = hbh + bytes((143, 0, 0, 0, 0, 0, 0, 1)) + bytes((4, 0, 0, 0)) + G6
    assert parse_membership(ipv6("ff02::16", src="fe80::1", nh=0, body=mld2)) == [("join", G6)]
    assert parse_membership(ipv4("239.1.2.3")) is None
    assert parse_membership(igmp(bytes((0x22, 0, 0, 0, 0, 0, 0, 2)) + bytes((4, 0, 0, 0)) + G1)) is None  # truncated


def test_memberships() -> None:
    m = Memberships(interval=10)
    assert m.wants("x", "ben", G1, 0.0)  # never heard: not pruned
    assert m.learn("x", "ben", igmp(bytes((0x16, 0, 0, 0)) + G1, "239.1.2.3"), 0.0)
    other = ipaddress.IPv4Address("239.9.9.9").packed
    assert m.wants("x", "ben", G1, 5.0) and not m.wants("x", "ben", other, 5.0)
    assert m.wants("x", "ben", other, 5.0, link_local=True)
    assert not m.wants("x", "ben", G1, 10.0)  # expired
    m.learn("x", "ben", igmp(bytes((0x16, 0, 0, 0)) + G1, "239.1.2.3"), 20.0)
    m.learn("x", "ben", igmp(bytes((0x17, 0, 0, 0)) + G1, "224.0.0.2"), 21.0)
    assert not m.wants("x", "ben", G1, 21.0)
    assert not m.learn("x", "ben", ipv4("239.1.2.3"), 0.0)
    m.forget("ben")
    assert m.wants("x", "ben", other, 30.0)


@given(st.binary(max_size=120))
@settings(max_examples=1000, deadline=None)
def test_fuzz(data: bytes) -> None:
    for packet in (data, b"\x45" + data, b"\x60" + data, ipv4("224.0.0.22", proto=2)[:20] + data,
                   ipv6("ff02::16", nh=0)[:40] + data):
        classify_ip(packet, {SUBNET_BCAST})
        parse_membership(packet)
        ip_origin_ok(packet, set())
    classify_frame(data)
