"""The LAN plane's glue without a kernel: interface names, the view translation, and the moves
between a fake TAP, a fake engine and the switch (ARP answered on the TAP, unicast to the
engine, broadcast sealed per peer key, extensions from peers written as frames, bad input
counted)."""

from __future__ import annotations

import ipaddress
import re
import struct

from hypothesis import given
from hypothesis import strategies as st

from shoal.control import messages as M
from shoal.daemon.view import View
from shoal.lan.arp import build_arp, mac_for_ipv4
from shoal.lan import extension
from shoal.lan.broadcast import NetworkState
from shoal.lan.plane import LanPlane, LanView, l2_iface_name, lan_view
from shoal.lan.switch import PeerAddresses
from shoal import constants as C
from shoal.wireguard.keys import PrivateKey

A4, B4 = ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv4Address("100.64.0.2")
A = PeerAddresses(A4, ipaddress.IPv6Address("fd5a::1"))
B = PeerAddresses(B4, ipaddress.IPv6Address("fd5a::2"))
KB = PrivateKey.generate().public_key()


def udp4(src: ipaddress.IPv4Address, dst: str, payload: bytes = b"x" * 8) -> bytes:
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0, src.packed, ipaddress.IPv4Address(dst).packed)
    return ip + struct.pack("!HHHH", 1, 2, 8 + len(payload), 0) + payload


class FakeTun:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def write_batch(self, frames: list[bytes]) -> None:
        self.frames += frames

    def write_ip_frames(self, packets: list[bytes], header_for) -> None:  # noqa: ANN001
        self.frames += [header_for(p) + p for p in packets]


class FakeDevice:
    def __init__(self) -> None:
        self.sent: list[tuple[object, list[bytes]]] = []

    def send_extension(self, key, plaintexts, now) -> None:  # noqa: ANN001
        self.sent.append((key, list(plaintexts)))


class FakeIface:
    def __init__(self) -> None:
        self.device, self.tun = FakeDevice(), FakeTun()
        self.flushes = 0

    def _flush(self) -> None:
        self.flushes += 1


def plane(broadcast: bool = True) -> tuple[LanPlane, FakeIface]:
    p, iface = LanPlane(), FakeIface()
    p.iface = iface  # type: ignore[assignment]
    view = LanView("a", A, (NetworkState("n1", "ip", broadcast, frozenset({"a", "b"})),), {"b": B}, {"b": KB})
    import asyncio

    asyncio.run(p.set_view(view))  # not started: only the switch is fed
    return p, iface


def eth(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def test_l2_iface_names_fit_ifnamsiz_and_are_stable() -> None:
    assert l2_iface_name("bebcporc") == "shoal-bebcporc"
    long = l2_iface_name("abcdefghijklmnop")
    assert len(long) <= 15 and long.startswith("shoal-") and long == l2_iface_name("abcdefghijklmnop")
    assert long != l2_iface_name("abcdefghijklmnoq")


@given(st.from_regex(r"[a-z0-9]{1,16}", fullmatch=True))
def test_l2_iface_name_is_always_a_valid_interface_name(network_id: str) -> None:
    name = l2_iface_name(network_id)
    assert 1 <= len(name) <= 15 and re.fullmatch(r"[a-z0-9-]+", name)


def test_lan_view_from_the_daemon_view() -> None:
    v = View()
    assert lan_view(v) is None
    members = [M.MemberInfo(node_id="a", nickname="A", role="owner", online=True),
               M.MemberInfo(node_id="b", nickname="B", role="member", online=True),
               M.MemberInfo(node_id="c", nickname="C", role="member", online=False),
               M.MemberInfo(node_id="d", nickname="D", role="member", online=True, pending=True)]
    net = M.NetworkInfo(network_id="n1", name="x", owner_id="a", kind="l2", locked=False, approval="auto",
                        members=members, broadcast=False)
    peers = [M.PeerInfo(node_id="b", nickname="B", public_key=bytes(KB), ipv4=str(B4), ipv6="fd5a::2", endpoints=[]),
             M.PeerInfo(node_id="e", nickname="E", public_key=bytes(32), ipv4="not-an-ip", ipv6="fd5a::5", endpoints=[])]
    v.apply(M.FullView(version=1, node=M.SelfInfo(node_id="a", nickname="A", ipv4=str(A4), ipv6="fd5a::1"),
                       networks=[net], peers=peers))
    lv = lan_view(v)
    assert lv is not None and lv.node_id == "a" and lv.own == A
    assert lv.networks == (NetworkState("n1", "l2", False, frozenset({"a", "b"})),)
    assert lv.peers == {"b": B} and lv.keys == {"b": KB}  # the unusable peer is skipped


def test_arp_for_a_peer_is_answered_on_the_tap_and_unicast_goes_to_the_engine() -> None:
    p, iface = plane()
    own_mac = bytes(mac_for_ipv4(A4))
    request = eth(b"\xff" * 6, own_mac, C.ETHERTYPE_ARP, build_arp(1, own_mac, A4, bytes(6), B4))
    packet = udp4(A4, str(B4))
    out = p.from_interface([request, eth(bytes(mac_for_ipv4(B4)), own_mac, C.ETHERTYPE_IPV4, packet)], 1.0)
    assert out == [packet]
    assert len(iface.tun.frames) == 1 and iface.tun.frames[0][12:14] == b"\x08\x06"
    assert iface.tun.frames[0][6:12] == bytes(mac_for_ipv4(B4))  # bob's MAC answers
    assert iface.device.sent == []


def test_broadcast_is_sealed_for_the_peer_key_and_not_when_switched_off() -> None:
    p, iface = plane()
    packet = udp4(A4, "255.255.255.255")
    assert p.from_interface([eth(b"\xff" * 6, bytes(mac_for_ipv4(A4)), C.ETHERTYPE_IPV4, packet)], 1.0) == []
    (key, plaintexts), = iface.device.sent
    assert key == KB and extension.decode(plaintexts[0]).payload == packet
    q, iface2 = plane(broadcast=False)
    q.from_interface([eth(b"\xff" * 6, bytes(mac_for_ipv4(A4)), C.ETHERTYPE_IPV4, packet)], 1.0)
    assert iface2.device.sent == []


def test_extension_from_a_peer_is_written_as_a_frame_and_bad_input_counted() -> None:
    p, iface = plane()
    packet = udp4(B4, "255.255.255.255")
    good = extension.encode(C.LAN_EXT_KIND_IP, "n1", packet)
    stranger = PrivateKey.generate().public_key()
    p.from_peers([(KB, good), (KB, b"\x51garbage"), (stranger, good), (KB, good + bytes(7))], 2.0)
    assert iface.tun.frames == [b"\xff" * 6 + bytes(mac_for_ipv4(B4)) + b"\x08\x00" + packet] * 2
    st = p.status()["stats"]
    assert st["rx-ext-malformed"] == 1 and st["rx-unknown-peer"] == 1


def test_delivered_unicast_gets_an_ethernet_header() -> None:
    p, iface = plane()
    packet = udp4(B4, str(A4))
    p.deliver([packet])
    assert iface.tun.frames == [bytes(mac_for_ipv4(A4)) + bytes(mac_for_ipv4(B4)) + b"\x08\x00" + packet]


def test_without_a_view_everything_is_dropped_and_counted() -> None:
    p, iface = LanPlane(), FakeIface()
    p.iface = iface  # type: ignore[assignment]
    assert p.from_interface([b"\x00" * 60], 1.0) == []
    p.deliver([udp4(B4, str(A4))])
    p.from_peers([(KB, b"\x51")], 1.0)
    assert iface.tun.frames == [] and p.stats["iface-no-view"] == 1 and p.stats["engine-no-view"] == 1


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_frames_and_extensions_never_raise(blobs: list[bytes]) -> None:
    p, _ = plane()
    p.from_interface(blobs, 1.0)
    p.from_peers([(KB, b) for b in blobs], 1.0)


def test_no_view_again_forgets_the_switch() -> None:
    import asyncio

    p, iface = plane()
    asyncio.run(p.set_view(None))
    assert p.switch is None and p.keys == {}
    assert p.from_interface([b"\xff" * 60], 1.0) == [] and p.stats["iface-no-view"] == 1


def test_counters_worth_attention_are_logged_as_increments_at_most_every_interval(caplog) -> None:  # noqa: ANN001
    p, _ = plane()
    with caplog.at_level("WARNING", logger="shoal.lan"):
        p.from_peers([(KB, b"\x51bad")], 100.0)
        p.from_peers([(KB, b"\x51bad")], 101.0)  # inside the interval: not logged yet
        assert [r.message for r in caplog.records] == ["LAN: rx-ext-malformed +1"]
        p.from_peers([(KB, b"\x51bad")], 100.0 + C.LAN_LOG_INTERVAL)
        assert caplog.records[-1].message == "LAN: rx-ext-malformed +2"
        assert p.log_counters(200.0) == {}  # nothing grew: no line
    assert len(caplog.records) == 2
