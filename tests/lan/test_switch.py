"""Tests of shoal.lan.switch: unit checks of each rule, and a simulation (@pytest.mark.sim) of
four members wired through a fake in-memory "WireGuard" (plaintexts padded to 16 bytes like a
real sender does, delivered to the addressed peer only; no sockets):

    lanparty (ip)  ann ben cat        study (ip)  ann dan
    retro    (l2)  ann ben cat        arcade (l2) cat dan

It shows that a limited broadcast reaches exactly the members sharing a network with the
sender, never loops back and never crosses to a member who shares only another network; that
a storm is limited at both ends; that IPX frames in all framings cross byte for byte; and that
MAC learning sends unicast frames only to the right member.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest

from shoal.lan import arp, extension
from shoal.lan.arp import mac_for
from shoal.lan.broadcast import NetworkState
from shoal.lan.ethernet import BROADCAST, MAC, ethernet2, ipx_frame, ipx_packet, IPX_FRAMINGS
from shoal.lan.switch import LanSwitch, PeerAddresses
from shoal import constants as C

OVERLAY = ipaddress.IPv4Network("100.64.0.0/10")
NAMES = ("ann", "ben", "cat", "dan")
ADDRS = {
    name: PeerAddresses(ipaddress.IPv4Address(f"100.64.0.{i + 1}"), ipaddress.IPv6Address(f"fd5a:5e5e::{i + 1}"))
    for i, name in enumerate(NAMES)
}
NETWORKS = [
    NetworkState("lanparty", "ip", True, frozenset({"ann", "ben", "cat"})),
    NetworkState("study", "ip", True, frozenset({"ann", "dan"})),
    NetworkState("retro", "l2", True, frozenset({"ann", "ben", "cat"})),
    NetworkState("arcade", "l2", True, frozenset({"cat", "dan"})),
]


def udp4(src: str, dst: str, payload: bytes, sport: int = 27015, dport: int = 27015) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + udp


class Mesh:
    """Four LanSwitches and a fake transport between them."""

    def __init__(self, networks: list[NetworkState] = NETWORKS, rate: float = C.LAN_STORM_RATE,
                 burst: float = C.LAN_STORM_BURST) -> None:
        self.nodes: dict[str, LanSwitch] = {}
        for name in NAMES:
            sw = LanSwitch(name, ADDRS[name], OVERLAY, storm_rate=rate, storm_burst=burst)
            mine = [n for n in networks if name in n.online]
            peers = {p: ADDRS[p] for n in mine for p in n.online if p != name}
            sw.set_view(mine, peers)
            self.nodes[name] = sw
        self.ip_iface: dict[str, list[bytes]] = {n: [] for n in NAMES}
        self.l2_iface: dict[str, list[tuple[str, bytes]]] = {n: [] for n in NAMES}
        self.engine: dict[str, list[bytes]] = {n: [] for n in NAMES}
        self.wire = 0  # extension messages carried

    def run(self, now: float) -> None:
        """Move everything until quiet: extensions to their peer, the rest to the fake interfaces."""
        busy = True
        while busy:
            busy = False
            for name, sw in self.nodes.items():
                to_engine, to_peers, to_ip, to_l2 = sw.take()
                self.engine[name] += to_engine
                self.ip_iface[name] += to_ip
                self.l2_iface[name] += to_l2
                for peer, plaintext in to_peers:
                    busy = True
                    self.wire += 1
                    padded = plaintext + bytes(-len(plaintext) % C.PADDING_MULTIPLE)  # what WireGuard seals
                    self.nodes[peer].from_peer(name, padded, now)

    def clear(self) -> None:
        for d in (self.ip_iface, self.l2_iface, self.engine):
            for v in d.values():
                v.clear()


def iface_frame(sender: str, dst_mac: bytes, packet: bytes) -> bytes:
    ethertype = C.ETHERTYPE_IPV4 if packet[0] >> 4 == 4 else C.ETHERTYPE_IPV6
    return ethernet2(dst_mac, mac_for(ADDRS[sender].ipv4), ethertype, packet)


# ----------------------------------------------------------------------------- unit


def test_unicast_ip_goes_to_the_engine_untouched() -> None:
    mesh = Mesh()
    packet = udp4("100.64.0.1", "100.64.0.2", b"hi")
    mesh.nodes["ann"].from_ip_interface(iface_frame("ann", mac_for(ADDRS["ben"].ipv4), packet), 0.0)
    mesh.run(0.0)
    assert mesh.engine["ann"] == [packet] and mesh.wire == 0


def test_frame_for_wraps_engine_packets() -> None:
    sw = Mesh().nodes["ben"]
    packet = udp4("100.64.0.1", "100.64.0.2", b"hi")
    frame = sw.frame_for(packet)
    assert frame[:6] == sw.mac == mac_for(ADDRS["ben"].ipv4) and frame[6:12] == mac_for(ADDRS["ann"].ipv4)
    assert frame[12:14] == b"\x08\x00" and frame[14:] == packet
    six = arp.build_ipv6(ADDRS["ann"].ipv6, ADDRS["ben"].ipv6, 17, 64, bytes(8))
    assert sw.frame_for(six)[6:12] == mac_for(ADDRS["ann"].ipv6)


def test_arp_and_ns_answered_locally_for_peers_only() -> None:
    mesh = Mesh()
    ann = mesh.nodes["ann"]
    req = ethernet2(BROADCAST, ann.mac, C.ETHERTYPE_ARP,
                    arp.build_arp(1, ann.mac, ADDRS["ann"].ipv4, bytes(6), ADDRS["ben"].ipv4))
    ann.from_ip_interface(req, 0.0)
    stranger = ethernet2(BROADCAST, ann.mac, C.ETHERTYPE_ARP,
                         arp.build_arp(1, ann.mac, ADDRS["ann"].ipv4, bytes(6), ipaddress.IPv4Address("100.64.9.9")))
    ann.from_ip_interface(stranger, 0.0)
    ann.from_ip_interface(arp.build_neighbor_solicitation(ann.mac, ADDRS["ann"].ipv6, ADDRS["dan"].ipv6), 0.0)
    mesh.run(0.0)
    assert len(mesh.ip_iface["ann"]) == 2 and mesh.wire == 0
    assert mesh.ip_iface["ann"][0][6:12] == mac_for(ADDRS["ben"].ipv4)
    assert mesh.ip_iface["ann"][1][6:12] == mac_for(ADDRS["dan"].ipv6)
    assert ann.stats["neighbor-not-ours"] == 1


def test_other_ethertypes_dropped_on_the_ip_interface() -> None:
    mesh = Mesh()
    ann = mesh.nodes["ann"]
    ann.from_ip_interface(ipx_frame(BROADCAST, ann.mac, ipx_packet(0, BROADCAST, 0x4000, 0, ann.mac, 0x4000, b""), "ethernet2"), 0.0)
    mesh.run(0.0)
    assert mesh.wire == 0 and ann.stats["iface-not-ip"] == 1


def test_refusals_on_receive() -> None:
    mesh = Mesh()
    dan, cat = mesh.nodes["dan"], mesh.nodes["cat"]
    bcast = udp4("100.64.0.2", "255.255.255.255", b"x")
    dan.from_peer("ben", extension.encode(C.LAN_EXT_KIND_IP, "study", bcast), 0.0)  # ben is not in study
    cat.from_peer("ben", extension.encode(C.LAN_EXT_KIND_IP, "lanparty", udp4("100.64.0.1", "255.255.255.255", b"x")), 0.0)
    cat.from_peer("ben", extension.encode(C.LAN_EXT_KIND_IP, "lanparty", udp4("100.64.0.2", "100.64.0.3", b"x")), 0.0)
    cat.from_peer("ben", extension.encode(C.LAN_EXT_KIND_IP, "retro", bcast), 0.0)
    cat.from_peer("ben", b"\x51\x01garbage", 0.0)
    cat.from_peer("cat", extension.encode(C.LAN_EXT_KIND_IP, "lanparty", bcast), 0.0)
    mesh.run(0.0)
    assert mesh.ip_iface["dan"] == [] and mesh.ip_iface["cat"] == []
    assert dan.stats["rx-refused-not-member"] == 1
    assert cat.stats["rx-bad-origin"] == 2  # spoofed source; unicast through the extension
    assert cat.stats["rx-refused-wrong-kind"] == 1 and cat.stats["rx-ext-malformed"] == 1
    assert cat.stats["rx-refused-loop"] == 1


def test_switch_off_stops_broadcast_both_ways() -> None:
    off = [NetworkState(n.network_id, n.kind, n.network_id != "lanparty", n.online) for n in NETWORKS]
    mesh = Mesh(off)
    mesh.nodes["ben"].from_ip_interface(iface_frame("ben", BROADCAST, udp4("100.64.0.2", "255.255.255.255", b"x")), 0.0)
    mesh.run(0.0)
    assert mesh.wire == 0
    mesh.nodes["cat"].from_peer("ben", extension.encode(C.LAN_EXT_KIND_IP, "lanparty", udp4("100.64.0.2", "255.255.255.255", b"x")), 0.0)
    assert mesh.nodes["cat"].stats["rx-refused-switched-off"] == 1


def test_membership_reports_feed_snooping_and_prune() -> None:
    mesh = Mesh()
    group = ipaddress.IPv4Address("239.1.2.3")
    report = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 1, 2, 0, ADDRS["ben"].ipv4.packed, group.packed) + bytes((0x16, 0, 0, 0)) + group.packed
    mesh.nodes["ben"].from_ip_interface(iface_frame("ben", MAC("01:00:5e:01:02:03"), report), 0.0)
    mesh.run(0.0)
    assert mesh.wire == 0  # no network snoops: reports stay home
    for node in ("ann", "ben"):  # the per-network setting, as every member would have it from the view
        mesh.nodes[node].snooping.add("lanparty")
    mesh.nodes["ben"].from_ip_interface(iface_frame("ben", MAC("01:00:5e:01:02:03"), report), 0.0)
    mesh.run(0.0)
    assert mesh.ip_iface["ann"] == [] and mesh.nodes["ann"].stats["rx-membership"] == 1  # consumed, not written
    stream = udp4("100.64.0.1", "239.9.9.9", b"other group")
    mesh.nodes["ann"].from_ip_interface(iface_frame("ann", MAC("01:00:5e:09:09:09"), stream), 1.0)
    mesh.run(1.0)
    assert len(mesh.ip_iface["cat"]) == 1 and mesh.ip_iface["ben"] == []  # ben reported only 239.1.2.3
    mesh.clear()
    mesh.nodes["ann"].from_ip_interface(iface_frame("ann", MAC("01:00:5e:01:02:03"), udp4("100.64.0.1", str(group), b"g")), 2.0)
    mesh.run(2.0)
    assert len(mesh.ip_iface["ben"]) == 1 and len(mesh.ip_iface["cat"]) == 1


def test_view_change_forgets_peer_state() -> None:
    mesh = Mesh()
    ann = mesh.nodes["ann"]
    ben_mac = bytes.fromhex("0200000000b0")
    ann.from_peer("ben", extension.encode(C.LAN_EXT_KIND_FRAME, "retro", ethernet2(BROADCAST, ben_mac, 0x88B5, b"x")), 0.0)
    assert ann.macs.lookup("retro", ben_mac, 0.0) == "ben"
    ann.set_view([n for n in NETWORKS if n.network_id == "study"], {"dan": ADDRS["dan"]})
    assert ann.macs.lookup("retro", ben_mac, 0.0) is None and len(ann.macs) == 0


# ----------------------------------------------------------------------------- simulation


@pytest.mark.sim
def test_sim_limited_broadcast_reaches_exactly_the_sharing_members() -> None:
    mesh = Mesh()
    # ben (lanparty only) looks for game servers: ann and cat hear it, dan (study only) must not
    probe = udp4("100.64.0.2", "255.255.255.255", b"\xff\xff\xff\xffTSource Engine Query\x00")
    mesh.nodes["ben"].from_ip_interface(iface_frame("ben", BROADCAST, probe), 0.0)
    mesh.run(0.0)
    for name in ("ann", "cat"):
        assert len(mesh.ip_iface[name]) == 1
        frame = mesh.ip_iface[name][0]
        assert frame[:6] == BROADCAST and frame[6:12] == mac_for(ADDRS["ben"].ipv4) and frame[14:] == probe
    assert mesh.ip_iface["ben"] == [] and mesh.ip_iface["dan"] == []
    assert mesh.wire == 2  # one copy per member, no re-forwarding
    mesh.clear()
    # ann is in both networks: her subnet broadcast (NetBIOS) reaches ben, cat and dan, one copy each
    nbns = udp4("100.64.0.1", "100.127.255.255", b"nbns", 137, 137)
    mesh.nodes["ann"].from_ip_interface(iface_frame("ann", BROADCAST, nbns), 0.1)
    mesh.wire = 0
    mesh.run(0.1)
    assert {n: len(v) for n, v in mesh.ip_iface.items()} == {"ann": 0, "ben": 1, "cat": 1, "dan": 1}
    assert mesh.wire == 3
    mesh.clear()
    # mDNS over IPv6 from cat's link-local address: ann and ben only
    ll = ADDRS["cat"].link_local
    mdns6 = arp.build_ipv6(ll, ipaddress.IPv6Address("ff02::fb"), 17, 255, struct.pack("!HHHH", 5353, 5353, 8, 0))
    mesh.nodes["cat"].from_ip_interface(ethernet2(MAC("33:33:00:00:00:fb"), mac_for(ADDRS["cat"].ipv4), C.ETHERTYPE_IPV6, mdns6), 0.2)
    mesh.run(0.2)
    assert {n: len(v) for n, v in mesh.ip_iface.items()} == {"ann": 1, "ben": 1, "cat": 0, "dan": 0}
    assert mesh.ip_iface["ann"][0][:6] == MAC("33:33:00:00:00:fb") and mesh.ip_iface["ann"][0][14:] == mdns6


@pytest.mark.sim
def test_sim_storm_is_limited_at_both_ends() -> None:
    rate, burst = 100.0, 50.0
    mesh = Mesh(rate=rate, burst=burst)
    flood = iface_frame("ben", BROADCAST, udp4("100.64.0.2", "255.255.255.255", b"storm"))
    sent = 0
    for i in range(5000):  # 5000 broadcasts in 1 s, 50x the rate
        now = i / 5000
        mesh.nodes["ben"].from_ip_interface(flood, now)
        sent += 1
        mesh.run(now)
    expected_max = burst + rate * 1.0
    for name in ("ann", "cat"):
        assert burst <= len(mesh.ip_iface[name]) <= expected_max + 1
    assert mesh.nodes["ben"].stats["egress-storm-dropped"] >= sent - expected_max - 1
    assert mesh.ip_iface["dan"] == [] and mesh.ip_iface["ben"] == []
    # a modified ben that ignores its own limiter: cat's receive bucket still holds
    mesh.clear()
    raw = extension.encode(C.LAN_EXT_KIND_IP, "lanparty", udp4("100.64.0.2", "255.255.255.255", b"storm"))
    for i in range(5000):
        mesh.nodes["cat"].from_peer("ben", raw, 2.0 + i / 5000)
    mesh.run(3.0)
    assert len(mesh.ip_iface["cat"]) <= burst + rate * 1.0 + 1
    assert mesh.nodes["cat"].stats["rx-storm-dropped"] >= 5000 - (burst + rate) - 1
    # meanwhile cat's broadcasts to ann are untouched by ben's storm
    mesh.clear()
    mesh.nodes["cat"].from_ip_interface(iface_frame("cat", BROADCAST, udp4("100.64.0.3", "255.255.255.255", b"hello")), 3.0)
    mesh.run(3.0)
    assert len(mesh.ip_iface["ann"]) == 1 and len(mesh.ip_iface["ben"]) == 1


@pytest.mark.sim
@pytest.mark.parametrize("framing", IPX_FRAMINGS)
def test_sim_ipx_frames_cross_byte_for_byte(framing: str) -> None:
    mesh = Mesh()
    ann_mac, ben_mac = MAC("02:aa:00:00:00:01"), MAC("02:bb:00:00:00:02")
    # broadcast (SAP query style): ben and cat in retro get it, dan (arcade only) does not
    query = ipx_frame(BROADCAST, ann_mac, ipx_packet(0, BROADCAST, 0x0452, 0, ann_mac, 0x4001, b"\x00\x01\x00\x04"), framing)
    mesh.nodes["ann"].from_l2_interface("retro", query, 0.0)
    mesh.run(0.0)
    assert mesh.l2_iface["ben"] == [("retro", query)] and mesh.l2_iface["cat"] == [("retro", query)]
    assert mesh.l2_iface["dan"] == [] and mesh.l2_iface["ann"] == []
    mesh.clear()
    # unicast to ben's MAC before anyone learned it: flooded within retro
    hello = ipx_frame(ben_mac, ann_mac, ipx_packet(0, ben_mac, 0x4001, 0, ann_mac, 0x4001, b"game data"), framing)
    mesh.nodes["ann"].from_l2_interface("retro", hello, 0.1)
    mesh.run(0.1)
    assert mesh.l2_iface["ben"] == [("retro", hello)] and mesh.l2_iface["cat"] == [("retro", hello)]
    mesh.clear()
    # ben answers (ann learns ben_mac -> ben, ben learned ann_mac -> ann from the broadcast)
    answer = ipx_frame(ann_mac, ben_mac, ipx_packet(0, ann_mac, 0x4001, 0, ben_mac, 0x4001, b"reply"), framing)
    mesh.nodes["ben"].from_l2_interface("retro", answer, 0.2)
    mesh.run(0.2)
    assert mesh.l2_iface["ann"] == [("retro", answer)] and mesh.l2_iface["cat"] == []
    mesh.clear()
    mesh.wire = 0
    mesh.nodes["ann"].from_l2_interface("retro", hello, 0.3)
    mesh.run(0.3)
    assert mesh.l2_iface["ben"] == [("retro", hello)] and mesh.l2_iface["cat"] == [] and mesh.wire == 1


@pytest.mark.sim
def test_sim_l2_isolation_vlan_lldp_and_mac_move() -> None:
    mesh = Mesh()
    cat_mac, dan_mac = MAC("02:cc:00:00:00:03"), MAC("02:dd:00:00:00:04")
    lldp = ethernet2(MAC("01:80:c2:00:00:0e"), dan_mac, C.ETHERTYPE_LLDP, b"\x02\x07\x04" + bytes(dan_mac) + b"\x00\x00")
    mesh.nodes["dan"].from_l2_interface("arcade", lldp, 0.0)
    tagged = ethernet2(BROADCAST, cat_mac, C.ETHERTYPE_ARP, bytes(28), ())
    tagged = tagged[:12] + b"\x81\x00\x00\x64" + tagged[12:]
    mesh.nodes["cat"].from_l2_interface("retro", tagged, 0.0)
    mesh.run(0.0)
    assert mesh.l2_iface["cat"] == [("arcade", lldp)]  # only cat shares arcade with dan
    assert mesh.l2_iface["ann"] == [("retro", tagged)] and mesh.l2_iface["ben"] == [("retro", tagged)]
    assert mesh.l2_iface["dan"] == []
    mesh.clear()
    # ben claims cat_mac while cat's entry is live (issue 18 F16): refused, dropped, counted
    mesh.nodes["ben"].from_l2_interface("retro", ethernet2(BROADCAST, cat_mac, 0x88B5, b"stolen"), 1.0)
    mesh.run(1.0)
    assert mesh.nodes["ann"].macs.lookup("retro", cat_mac, 1.0) == "cat"
    assert mesh.nodes["ann"].stats["rx-l2-mac-claimed"] == 1 and mesh.l2_iface["ann"] == []
    # cat_mac shows up behind ben after cat's entry aged out (a VM moved): ann's table follows
    later = C.LAN_MAC_AGING + 1.0
    mesh.nodes["ben"].from_l2_interface("retro", ethernet2(BROADCAST, cat_mac, 0x88B5, b"moved"), later)
    mesh.run(later)
    assert mesh.nodes["ann"].macs.lookup("retro", cat_mac, later) == "ben"
    assert mesh.nodes["ann"].stats["rx-l2-mac-moved"] == 1


# ------------------------------------------------------------------ issue 18 F16: MAC binding

def test_l2_member_cannot_steal_another_members_or_our_unicast() -> None:
    mesh = Mesh()
    ann, ben = mesh.nodes["ann"], mesh.nodes["ben"]
    cat_mac, ann_vm = MAC("02:cc:00:00:00:03"), MAC("02:aa:00:00:00:01")
    mesh.nodes["cat"].from_l2_interface("retro", ethernet2(BROADCAST, cat_mac, 0x88B5, b"hello"), 0.0)
    ann.from_l2_interface("retro", ethernet2(BROADCAST, ann_vm, 0x88B5, b"me"), 0.0)
    mesh.run(0.0)
    mesh.clear()
    # ben (a member gone bad) claims cat's MAC, ann's VM's MAC and ann's own interface MAC
    for stolen in (cat_mac, ann_vm, ann.mac):
        ben.from_l2_interface("retro", ethernet2(BROADCAST, stolen, 0x88B5, b"mine now"), 1.0)
    mesh.run(1.0)
    assert ann.stats["rx-l2-mac-claimed"] == 3 and mesh.l2_iface["ann"] == []
    # ann's unicast to cat still goes to cat only
    ann.from_l2_interface("retro", ethernet2(cat_mac, ann_vm, 0x88B5, b"for cat"), 2.0)
    assert [peer for peer, _ in ann.to_peers] == ["cat"]
    mesh.run(2.0)
    # cat goes offline in retro: its MACs are freed, so a move is possible again
    retro = [NetworkState("retro", "l2", True, frozenset({"ann", "ben"}))]
    ann.set_view(retro, {"ben": ADDRS["ben"]})
    assert ann.macs.lookup("retro", cat_mac, 3.0) is None
    ben.from_l2_interface("retro", ethernet2(BROADCAST, cat_mac, 0x88B5, b"moved"), 3.0)
    mesh.run(3.0)
    assert ann.macs.lookup("retro", cat_mac, 3.0) == "ben"
