"""The LAN plane as a stage, without a kernel: interface names, the view translation, and what
each step returns (ARP answered on the TAP, unicast to the engine, broadcast per peer key,
extensions from peers as frames, layer-2 TAPs asked of the port, bad input counted)."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import struct

import pytest

from hypothesis import given
from hypothesis import strategies as st

from shoal.control import messages as M
from shoal.daemon.view import View
from shoal.lan.arp import build_arp, mac_for_ipv4
from shoal.lan import extension
from shoal.lan.broadcast import NetworkState
from shoal.lan.plane import LanPlane, LanView, l2_iface_name, lan_view
from shoal.lan.switch import PeerAddresses
from shoal.testing.channel import ChannelHost
from shoal.tun.link import LinkError
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


def plane(broadcast: bool = True) -> LanPlane:
    p = LanPlane()
    view = LanView("a", A, (NetworkState("n1", "ip", broadcast, frozenset({"a", "b"})),), {"b": B}, {"b": KB})
    asyncio.run(p.set_view(view))  # not started: only the switch is fed
    return p


class Port:
    """A LanPort over a ChannelHost that records what the plane asked for."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.host = ChannelHost()
        self.opened: list[tuple[str, str, int]] = []
        self.closed: list[str] = []
        self.fail = fail

    async def open_l2(self, network_id: str, name: str, mtu: int) -> None:
        if self.fail is not None:
            raise self.fail
        self.opened.append((network_id, name, mtu))

    def close_l2(self, network_id: str) -> None:
        self.closed.append(network_id)


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
    p = plane()
    own_mac = bytes(mac_for_ipv4(A4))
    request = eth(b"\xff" * 6, own_mac, C.ETHERTYPE_ARP, build_arp(1, own_mac, A4, bytes(6), B4))
    packet = udp4(A4, str(B4))
    out = p.from_interface([request, eth(bytes(mac_for_ipv4(B4)), own_mac, C.ETHERTYPE_IPV4, packet)], 1.0)
    assert out.to_engine == [packet]
    assert len(out.to_interface) == 1 and out.to_interface[0][12:14] == b"\x08\x06"
    assert out.to_interface[0][6:12] == bytes(mac_for_ipv4(B4))  # bob's MAC answers
    assert out.to_peers == [] and out.to_l2 == []


def test_broadcast_is_sealed_for_the_peer_key_and_not_when_switched_off() -> None:
    p = plane()
    packet = udp4(A4, "255.255.255.255")
    out = p.from_interface([eth(b"\xff" * 6, bytes(mac_for_ipv4(A4)), C.ETHERTYPE_IPV4, packet)] * 2, 1.0)
    assert out.to_engine == [] and out.to_interface == []
    (key, plaintexts), = out.to_peers  # one batch per peer key
    assert key == KB and [extension.decode(x).payload for x in plaintexts] == [packet, packet]
    q = plane(broadcast=False)
    assert q.from_interface([eth(b"\xff" * 6, bytes(mac_for_ipv4(A4)), C.ETHERTYPE_IPV4, packet)], 1.0).to_peers == []


def test_extension_from_a_peer_is_written_as_a_frame_and_bad_input_counted() -> None:
    p = plane()
    packet = udp4(B4, "255.255.255.255")
    good = extension.encode(C.LAN_EXT_KIND_IP, "n1", packet)
    stranger = PrivateKey.generate().public_key()
    out = p.from_peers([(KB, good), (KB, b"\x51garbage"), (stranger, good), (KB, good + bytes(7))], 2.0)
    assert out.to_interface == [b"\xff" * 6 + bytes(mac_for_ipv4(B4)) + b"\x08\x00" + packet] * 2
    assert out.to_engine == [] and out.to_peers == [] and out.to_l2 == []
    st = p.status()["stats"]
    assert st["rx-ext-malformed"] == 1 and st["rx-unknown-peer"] == 1


def test_delivered_unicast_gets_an_ethernet_header() -> None:
    p = plane()
    packet = udp4(B4, str(A4))
    header_for = p.deliver([packet])
    assert header_for is not None
    assert header_for(packet) + packet == bytes(mac_for_ipv4(A4)) + bytes(mac_for_ipv4(B4)) + b"\x08\x00" + packet


def test_without_a_view_everything_is_dropped_and_counted() -> None:
    p = LanPlane()
    assert p.from_interface([b"\x00" * 60], 1.0) == ([], [], [], [])
    assert p.deliver([udp4(B4, str(A4))]) is None
    assert p.from_peers([(KB, b"\x51")], 1.0) == ([], [], [], [])
    assert p.from_l2("l", [b"\x00" * 60], 1.0) == ([], [], [], [])
    assert p.stats["iface-no-view"] == 1 and p.stats["engine-no-view"] == 1


@given(st.lists(st.binary(max_size=200), max_size=8))
def test_arbitrary_frames_and_extensions_never_raise(blobs: list[bytes]) -> None:
    p = plane()
    p.from_interface(blobs, 1.0)
    p.from_peers([(KB, b) for b in blobs], 1.0)


def test_no_view_again_forgets_the_switch() -> None:
    p = plane()
    asyncio.run(p.set_view(None))
    assert p.switch is None and p.keys == {}
    assert p.from_interface([b"\xff" * 60], 1.0).to_engine == [] and p.stats["iface-no-view"] == 1


def test_counters_worth_attention_are_logged_as_increments_at_most_every_interval(caplog) -> None:  # noqa: ANN001
    p = plane()
    with caplog.at_level("WARNING", logger="shoal.lan"):
        p.from_peers([(KB, b"\x51bad")], 100.0)
        p.from_peers([(KB, b"\x51bad")], 101.0)  # inside the interval: not logged yet
        assert [r.message for r in caplog.records] == ["LAN: rx-ext-malformed +1"]
        p.from_peers([(KB, b"\x51bad")], 100.0 + C.LAN_LOG_INTERVAL)
        assert caplog.records[-1].message == "LAN: rx-ext-malformed +2"
        assert p.log_counters(200.0) == {}  # nothing grew: no line
    assert len(caplog.records) == 2


def l2_view(online: frozenset[str] = frozenset({"a", "b"})) -> LanView:
    return LanView("a", A, (NetworkState("l", "l2", True, online),), {"b": B}, {"b": KB})


async def started(port: Port) -> LanPlane:
    p = LanPlane(multicast_route=False)
    port.host.open("shoal0", tap=True)
    await p.prepare(port, "shoal0")
    await p.start()
    return p


async def test_layer2_taps_are_asked_of_the_port_and_their_frames_go_per_peer_key() -> None:
    port = Port()
    p = await started(port)
    assert port.host.tuns["shoal0"].link.routes == {"255.255.255.255/32": {"proto": 83, "scope": 253,
                                                                          "mtu": C.LAN_BCAST_ROUTE_MTU}}
    await p.set_view(l2_view())
    assert port.opened == [("l", "shoal-l", C.LAN_L2_MTU)] and p.status()["l2_interfaces"] == {"l": "shoal-l"}
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x81\x37" + bytes(46)
    out = p.from_l2("l", [frame], 1.0)
    (key, plaintexts), = out.to_peers
    assert key == KB and extension.decode(plaintexts[0]).payload == frame
    reply = b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + frame[12:]  # from b's host
    back = p.from_peers([(KB, extension.encode(C.LAN_EXT_KIND_FRAME, "l", reply))], 2.0)
    assert back.to_l2 == [("l", [reply])] and back.to_interface == []
    await p.set_view(l2_view(frozenset({"b"})))  # we went offline there: the TAP goes
    assert port.closed == ["l"] and p.interface_for("l", "l2") is None
    assert p.from_l2("l", [frame], 3.0).to_peers == []  # a late read of a closed TAP is ignored


@pytest.mark.parametrize("fail", [OSError(16, "busy"), LinkError("shoal-l: set mtu failed")], ids=["create", "configure"])
async def test_a_layer2_tap_that_cannot_be_made_is_counted_and_frames_for_it_too(fail: BaseException, caplog) -> None:  # noqa: ANN001
    port = Port(fail)
    p = await started(port)
    with caplog.at_level("WARNING", logger="shoal.lan"):
        await p.set_view(l2_view())
    verb = "create" if isinstance(fail, OSError) else "configure"
    assert f"layer-2 network l: cannot {verb} shoal-l" in caplog.text
    assert p.stats["l2-open-failed"] == 1 and p.interface_for("l", "l2") is None
    frame = b"\x02" + bytes(5) + b"\x02\x00\x00\x00\x00\x02" + b"\x81\x37" + bytes(46)
    out = p.from_peers([(KB, extension.encode(C.LAN_EXT_KIND_FRAME, "l", frame))], 1.0)
    assert out.to_l2 == [] and p.stats["l2-no-interface"] == 1


async def test_the_main_tables_multicast_route_is_left_alone() -> None:
    port = Port()
    port.host.main_routes.add("224.0.0.0/4")
    p = LanPlane()
    port.host.open("shoal0", tap=True)
    await p.prepare(port, "shoal0")
    await p.start()
    assert p.routes == ["255.255.255.255/32"] and not port.host.tuns["shoal0"].link.addr_gen
