"""Two real `WgInterface`s back to back in one process, over the in-memory seams of
`shoal.testing.channel` (no root, no fds): handshake, a ping each way through the tunnel (the
ChannelTun answers echo requests as a kernel would), and in LAN mode a unicast ping and a
broadcast frame through two real `LanPlane`s."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import struct

import pytest

from shoal import constants as C
from shoal.daemon.icmp import build_echo_request
from shoal.dataplane.config import InterfaceConfig, WgConfig
from shoal.dataplane.runtime import WgInterface
from shoal.lan.arp import mac_for_ipv4
from shoal.lan.broadcast import NetworkState
from shoal.lan.plane import LanPlane, LanView
from shoal.lan.switch import PeerAddresses
from shoal.testing.channel import ChannelHost, ChannelWire, echo_reply
from shoal.tun.checksum import ip_header_checksum
from shoal.wireguard.keys import PrivateKey
from shoal.wireguard.peer import PeerConfig

A4, B4 = ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv4Address("100.64.0.2")
UNDERLAY = {"a": "192.0.2.1", "b": "192.0.2.2"}
PORT = 51820


def ipv4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address | str, proto: int, payload: bytes) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                                   src.packed, ipaddress.IPv4Address(dst).packed))
    header[10:12] = struct.pack("!H", ip_header_checksum(header))
    return bytes(header) + payload


def ping(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, seq: int) -> bytes:
    return ipv4(src, dst, 1, build_echo_request(0x5A, seq, b"shoal-ping" + bytes(6)))


async def wait_for(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.005)


class Pair:
    """Nodes a and b: a WgInterface each on its own ChannelHost, one ChannelWire between."""

    def __init__(self, lan: bool) -> None:
        self.keys = {"a": PrivateKey.from_seed(b"mesh-a"), "b": PrivateKey.from_seed(b"mesh-b")}
        self.own = {"a": A4, "b": B4}
        self.wire = ChannelWire()
        self.hosts = {n: ChannelHost() for n in "ab"}
        self.events: list[tuple[str, str]] = []
        self.lans: dict[str, LanPlane] = {}
        self.ifaces: dict[str, WgInterface] = {}
        for me, other in (("a", "b"), ("b", "a")):
            peer = PeerConfig(public_key=self.keys[other].public_key(),
                              allowed_ips=[ipaddress.ip_network(f"{self.own[other]}/32")],
                              endpoint=(UNDERLAY[other], PORT), shoal=lan)
            cfg = WgConfig("shoal0", InterfaceConfig(private_key=self.keys[me], listen_port=PORT,
                                                     addresses=[ipaddress.ip_interface(f"{self.own[me]}/10")]), [peer])
            plane = None
            if lan:
                plane = self.lans[me] = LanPlane(multicast_route=True)
            self.ifaces[me] = WgInterface(cfg, uapi_dir=None, lan=plane, host=self.hosts[me],
                                          bind=self.wire.factory(UNDERLAY[me]), warm=False,
                                          on_event=lambda e, now, me=me: self.events.append((me, e.kind)))

    def view(self, me: str) -> LanView:
        other = "b" if me == "a" else "a"
        addrs = {n: PeerAddresses(self.own[n], ipaddress.IPv6Address(f"fd5a::{i + 1}")) for i, n in enumerate("ab")}
        net = NetworkState("n1", "ip", True, frozenset("ab"))
        return LanView(me, addrs[me], (net,), {other: addrs[other]}, {other: self.keys[other].public_key()})

    def tun(self, node: str):  # noqa: ANN201
        return self.hosts[node].tuns["shoal0"]

    @contextlib.asynccontextmanager
    async def running(self):  # noqa: ANN201
        stop = asyncio.Event()
        for node, lan in self.lans.items():
            await lan.set_view(self.view(node))
        tasks = [asyncio.create_task(i.run(stop)) for i in self.ifaces.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*(i.ready.wait() for i in self.ifaces.values())), 5)
            yield self
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def test_tun_mode_handshake_and_a_ping_each_way() -> None:
    pair = Pair(lan=False)
    async with pair.running():
        a, b = pair.tun("a"), pair.tun("b")
        assert a.link.addresses == ["100.64.0.1/10"] and a.link.up and a.link.mtu == 1420 and not a.tap
        request = ping(A4, B4, 1)
        a.inject([request])
        await wait_for(lambda: len(a.inbox) >= 1)
        assert b.take() == [request]  # delivered, and answered by b's "kernel"
        assert a.take() == [echo_reply(request)]
        assert ("a", "handshake-complete") in pair.events
        request = ping(B4, A4, 2)
        b.inject([request])
        await wait_for(lambda: len(b.inbox) >= 1)
        assert a.take() == [request] and b.take() == [echo_reply(request)]
        assert pair.ifaces["a"].listen_port == PORT
    assert a.closed and b.closed and pair.wire.binds == {}  # everything released at stop


async def test_lan_mode_unicast_ping_and_a_broadcast_frame() -> None:
    pair = Pair(lan=True)
    async with pair.running():
        a, b = pair.tun("a"), pair.tun("b")
        assert a.tap and not a.link.addr_gen and a.link.mac == bytes(mac_for_ipv4(A4))
        assert set(a.link.routes) == {"100.64.0.2/32", "255.255.255.255/32", "224.0.0.0/4"}
        assert a.link.routes["255.255.255.255/32"] == {"proto": 83, "scope": 253, "mtu": C.LAN_BCAST_ROUTE_MTU}
        mac_a, mac_b = bytes(mac_for_ipv4(A4)), bytes(mac_for_ipv4(B4))
        request = ping(A4, B4, 1)
        a.inject([mac_b + mac_a + b"\x08\x00" + request])
        await wait_for(lambda: len(a.inbox) >= 1)
        assert b.take() == [mac_b + mac_a + b"\x08\x00" + request]
        assert a.take() == [mac_a + mac_b + b"\x08\x00" + echo_reply(request)]
        broadcast = ipv4(A4, "255.255.255.255", 17, struct.pack("!HHHH", 9, 9, 12, 0) + b"hey!")
        a.inject([b"\xff" * 6 + mac_a + b"\x08\x00" + broadcast])
        await wait_for(lambda: len(b.inbox) >= 1)
        assert b.take() == [b"\xff" * 6 + mac_a + b"\x08\x00" + broadcast]
        assert pair.lans["b"].status()["stats"]["rx-ip-delivered"] == 1
        assert a.inbox == []  # a broadcast is never echoed back to its sender


async def test_a_layer2_network_gets_its_own_tap_and_carries_frames() -> None:
    pair = Pair(lan=True)
    async with pair.running():
        for node in "ab":
            view = pair.view(node)
            await pair.lans[node].set_view(LanView(view.node_id, view.own,
                                                   (NetworkState("l", "l2", True, frozenset("ab")),),
                                                   view.peers, view.keys))
        la, lb = pair.hosts["a"].tuns["shoal-l"], pair.hosts["b"].tuns["shoal-l"]
        assert la.link.mtu == C.LAN_L2_MTU and la.link.up and la.tap
        assert pair.lans["a"].interface_for("l", "l2") == "shoal-l"
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x81\x37" + bytes(46)  # IPX, broadcast
        la.inject([frame])
        await wait_for(lambda: len(lb.inbox) >= 1)
        assert lb.take() == [frame]
        await pair.lans["a"].set_view(pair.view("a"))  # no longer in a layer-2 network
        assert la.closed and pair.lans["a"].interface_for("l", "l2") is None


@pytest.mark.parametrize("lan", [False, True], ids=["tun", "tap"])
async def test_an_interface_name_in_use_is_a_setup_error(lan: bool) -> None:
    from shoal.dataplane.runtime import SetupError

    pair = Pair(lan=lan)
    pair.hosts["a"].open("shoal0")
    with pytest.raises(SetupError, match="cannot create interface shoal0"):
        await pair.ifaces["a"].run(asyncio.Event())
    assert pair.wire.binds == {}
