"""The LAN engine of one node: its Ethernet-like interfaces on one side, its peers on the other (sans-IO).

Composes the pure pieces (`arp`, `broadcast`, `storm`, `mactable`, `extension`) into what the
data plane calls; it never touches the WireGuard engine, sockets or interfaces itself.

Inputs (all take `now`):
    set_view(networks, peers)             the view: NetworkStates (shoal.lan.broadcast) and, per
                                          peer node id, its overlay addresses (PeerAddresses)
    from_ip_interface(frame, now)         a frame the kernel wrote to the IP networks' interface
    from_l2_interface(network, frame, now)  a frame written to the interface of layer-2 network
    from_peer(node_id, plaintext, now)    an extension plaintext a peer sent (already decrypted,
                                          authenticated: node_id is the session's owner)
    header_for(packet)                    the 14 bytes frame_for puts in front (for coalesced writes)
    frame_for(packet)                     the frame to write for a unicast IP packet the
                                          WireGuard engine decrypted (Ethernet header added)
Outputs (drained by the caller after each call):
    to_engine          unicast IP packets for the WireGuard engine's ordinary send path
    to_peers           (node_id, extension plaintext) to seal for exactly that peer
    to_ip_interface    frames to write to the IP networks' interface (ARP/NA replies, and
                       broadcast/multicast packets from peers)
    to_l2_interface    (network_id, frame) to write to a layer-2 network's interface
    stats              Counter of every decision (drops by reason)

Rules:
- IP interface, frame from the kernel: ARP and neighbour solicitations are answered locally
  (`arp.NeighborResponder`: peers' addresses only); other neighbour/router discovery stays
  local; unicast IP goes to the engine unchanged (a stock WireGuard peer sees exactly what it
  always saw); broadcast/multicast IP is fanned out (`broadcast.plan` over the IP networks,
  sender-side storm bucket per network first) as kind-IP extensions; IGMP/MLD reports are
  fanned out too, only over networks with snooping on (peers snoop them; elsewhere they
  would be chatter that wakes every tunnel); every other EtherType is dropped.
- Layer-2 interface of network N: the source MAC is learned as LOCAL; a unicast destination
  learned on an online member of N goes to that member only; anything else (group address,
  unknown or expired MAC) is flooded to N's online members through the storm bucket.
- From a peer: `broadcast.admit` (network shared, kind, switch, both online, not ourselves),
  then per kind: IP: receive-side storm bucket (sender, network), `ip_origin_ok`; IGMP/MLD
  reports feed the snooping table and are not written (no report suppression in our kernel);
  the packet is written with source MAC mac_for(inner source) and the group/broadcast MAC.
  FRAME: group-addressed frames pass the receive-side storm bucket, the source MAC is
  learned against the sender (a MAC bound to another live member or pinned as ours is
  "claimed": the frame is dropped and counted `rx-l2-mac-claimed`, see mactable), and the
  frame is written byte for byte. A member that leaves a network or goes offline loses its
  MACs there at the next view. Nothing received is ever
  sent on to another peer.
- Snooping (per network, `snooping` set of network ids): multicast that is not link-local is
  sent only to members that reported the group (or never reported anything).

Owner: one LanSwitch per daemon, driven by the data-plane task; nothing is thread-safe.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Iterable

from shoal.lan import extension
from shoal.lan.arp import NeighborResponder, link_local_for, mac_for, mac_for_ipv4
from shoal.lan.broadcast import Memberships, NetworkState, admit, classify_frame, classify_ip, ip_origin_ok, plan
from shoal.lan.ethernet import BROADCAST, MAC, multicast_mac_ipv4, multicast_mac_ipv6
from shoal.lan.mactable import LOCAL, MacTable
from shoal.lan.storm import StormLimiter
from shoal import constants as C

_ETH_IPV4 = C.ETHERTYPE_IPV4.to_bytes(2, "big")
_ETH_IPV6 = C.ETHERTYPE_IPV6.to_bytes(2, "big")
_ETH_ARP = C.ETHERTYPE_ARP.to_bytes(2, "big")
_HEADER_CACHE = 4096  # sources whose Ethernet header header_for keeps (one per peer in practice)


@dataclasses.dataclass(frozen=True, slots=True)
class PeerAddresses:
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address

    @property
    def link_local(self) -> ipaddress.IPv6Address:
        """The peer's interface link-local address: EUI-64 of mac_for(its IPv4)."""
        return link_local_for(mac_for_ipv4(self.ipv4))

    def packed(self) -> frozenset[bytes]:
        return frozenset((self.ipv4.packed, self.ipv6.packed, self.link_local.packed))


class LanSwitch:
    def __init__(self, node_id: str, own: PeerAddresses, overlay: ipaddress.IPv4Network, *,
                 storm_rate: float = C.LAN_STORM_RATE, storm_burst: float = C.LAN_STORM_BURST,
                 snooping: Iterable[str] = ()) -> None:
        self.node_id = node_id
        self.own = own
        self.mac = mac_for_ipv4(own.ipv4)  # the IP interface's MAC (the daemon sets it)
        self._mac_bytes = bytes(self.mac)
        self._headers4: dict[bytes, bytes] = {}  # source IPv4 -> Ethernet header (header_for's cache)
        self.broadcast4 = overlay.broadcast_address.packed
        self.broadcasts = frozenset((self.broadcast4,))
        self.snooping = set(snooping)
        self.networks: dict[str, NetworkState] = {}
        self.peers: dict[str, PeerAddresses] = {}
        self._peer_packed: dict[str, frozenset[bytes]] = {}
        self._answer_for: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.responder = NeighborResponder({own.ipv4, own.ipv6, own.link_local}, self._answer_for)
        self.egress = StormLimiter(storm_rate, storm_burst)
        self.ingress = StormLimiter(storm_rate, storm_burst)
        self.macs = MacTable()
        self.macs.pin_local(self._mac_bytes)  # our IP interface's MAC is never a peer's
        self.memberships = Memberships()
        self.to_engine: list[bytes] = []
        self.to_peers: list[tuple[str, bytes]] = []
        self.to_ip_interface: list[bytes] = []
        self.to_l2_interface: list[tuple[str, bytes]] = []
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ view

    def set_view(self, networks: Iterable[NetworkState], peers: dict[str, PeerAddresses]) -> None:
        """Replace the view. Peers that are gone lose their MACs, buckets and memberships."""
        self.networks = {n.network_id: n for n in networks}
        for gone in set(self.peers) - set(peers):
            self.macs.forget_port(gone)
            self.ingress.forget(gone)
            self.memberships.forget(gone)
        for network_id in self.macs.networks():
            net = self.networks.get(network_id)
            if net is None:
                self.macs.forget_network(network_id)
            else:  # a member that left or went offline frees its MACs (they may move)
                self.macs.retain(network_id, net.online)
        self.peers = dict(peers)
        self._peer_packed = {node: addrs.packed() for node, addrs in peers.items()}
        self._answer_for.clear()
        for addrs in peers.values():
            self._answer_for.update((addrs.ipv4, addrs.ipv6, addrs.link_local))

    # ------------------------------------------------------------------ from the IP interface

    def from_ip_interface(self, frame: bytes, now: float) -> None:
        if len(frame) < C.ETH_HEADER_LEN:
            self.stats["iface-malformed"] += 1
            return
        ethertype = frame[12:14]
        if ethertype == _ETH_IPV4 or ethertype == _ETH_IPV6:
            packet = frame[C.ETH_HEADER_LEN :]
            if ethertype == _ETH_IPV4 and len(packet) >= 20 and packet[16] < 224 and packet[16:20] not in self.broadcasts:
                self.to_engine.append(packet)  # the hot path: unicast IPv4
                return
            cast = classify_ip(packet, self.broadcasts)
            if cast is None:
                self.stats["iface-malformed"] += 1
            elif cast.control == "nd":
                self._answer(frame, packet)
            elif cast.kind == "unicast":
                self.to_engine.append(packet)
            else:
                self._fan_out_ip(packet, cast.group, cast.link_local, cast.control, now)
        elif ethertype == _ETH_ARP:
            self._answer(frame, None)
        else:
            self.stats["iface-not-ip"] += 1

    def _answer(self, frame: bytes, packet: bytes | None) -> None:
        if packet is not None and (len(packet) < 41 or packet[6] != C.IPPROTO_ICMPV6 or packet[40] != C.ICMPV6_NEIGHBOR_SOLICITATION):
            self.stats["nd-local"] += 1  # RS, NA, RA, redirects: nothing to do across the overlay
            return
        verdict, reply = self.responder.handle(frame)
        self.stats["neighbor-" + verdict] += 1
        if reply is not None:
            self.to_ip_interface.append(reply)

    def _fan_out_ip(self, packet: bytes, group: bytes | None, link_local: bool, control: str | None, now: float) -> None:
        admitted = []
        reports = control in ("igmp", "mld")
        for n in self.networks.values():
            if reports and n.network_id not in self.snooping:
                continue  # membership reports only feed snooping
            if n.kind == "ip" and n.broadcast and self.node_id in n.online:
                if self.egress.allow(self.node_id, n.network_id, now):
                    admitted.append(n)
                else:
                    self.stats["egress-storm-dropped"] += 1
        wants = None
        if group is not None and not link_local and control is None:
            def wants(network_id: str, member: str) -> bool:
                return network_id not in self.snooping or self.memberships.wants(network_id, member, group, now)
        for d in plan(self.node_id, admitted, kind="ip", wants=wants):
            self.to_peers.append((d.node_id, extension.encode(C.LAN_EXT_KIND_IP, d.network_id, packet)))
            self.stats["ip-fanout-copies"] += 1

    # ------------------------------------------------------------------ from a layer-2 interface

    def from_l2_interface(self, network_id: str, frame: bytes, now: float) -> None:
        net = self.networks.get(network_id)
        if net is None or net.kind != "l2":
            self.stats["l2-unknown-network"] += 1
            return
        if not C.ETH_HEADER_LEN <= len(frame) <= C.LAN_EXT_MAX_FRAME or frame[6] & 1:
            self.stats["l2-malformed"] += 1
            return
        self.macs.learn(network_id, frame[6:12], LOCAL, now)
        if not frame[0] & 1:
            port = self.macs.lookup(network_id, frame[0:6], now)
            if port == LOCAL:
                self.stats["l2-local"] += 1
                return
            if port is not None and port in net.online:
                self.to_peers.append((port, extension.encode(C.LAN_EXT_KIND_FRAME, network_id, frame)))  # type: ignore[arg-type]
                self.stats["l2-unicast"] += 1
                return
            self.stats["l2-unknown-unicast"] += 1
        if not net.broadcast or self.node_id not in net.online:
            self.stats["l2-flood-off"] += 1
            return
        if not self.egress.allow(self.node_id, network_id, now):
            self.stats["egress-storm-dropped"] += 1
            return
        for d in plan(self.node_id, [net], kind="l2"):
            self.to_peers.append((d.node_id, extension.encode(C.LAN_EXT_KIND_FRAME, network_id, frame)))
            self.stats["l2-flood-copies"] += 1

    # ------------------------------------------------------------------ from a peer

    def from_peer(self, node_id: str, plaintext: bytes, now: float) -> None:
        try:
            ext = extension.decode(plaintext)
        except extension.ExtensionError:
            self.stats["rx-ext-malformed"] += 1
            return
        kind = "ip" if ext.kind == C.LAN_EXT_KIND_IP else "l2"
        verdict = admit(self.node_id, node_id, ext.network_id, self.networks, kind)
        if verdict != "ok":
            self.stats["rx-refused-" + verdict] += 1
            return
        if kind == "ip":
            self._receive_ip(node_id, ext.network_id, ext.payload, now)
        else:
            self._receive_frame(node_id, ext.network_id, ext.payload, now)

    def _receive_ip(self, node_id: str, network_id: str, packet: bytes, now: float) -> None:
        if not self.ingress.allow(node_id, network_id, now):
            self.stats["rx-storm-dropped"] += 1
            return
        if not ip_origin_ok(packet, self._peer_packed.get(node_id, frozenset()), self.broadcasts):
            self.stats["rx-bad-origin"] += 1
            return
        cast = classify_ip(packet, self.broadcasts)
        if cast is None:  # cannot happen: ip_origin_ok classified it already
            return
        if cast.control in ("igmp", "mld"):
            self.memberships.learn(network_id, node_id, packet, now)
            self.stats["rx-membership"] += 1
            return
        if cast.control == "nd":
            self.stats["rx-nd-dropped"] += 1
            return
        if packet[0] >> 4 == 4:
            dst = BROADCAST if cast.kind == "broadcast" else multicast_mac_ipv4(packet[16:20])
            src = mac_for(ipaddress.IPv4Address(packet[12:16]))
            ethertype = _ETH_IPV4
        else:
            dst = multicast_mac_ipv6(packet[24:40])
            src = mac_for(ipaddress.IPv6Address(packet[8:24]))
            ethertype = _ETH_IPV6
        self.to_ip_interface.append(bytes(dst) + bytes(src) + ethertype + packet)
        self.stats["rx-ip-delivered"] += 1

    def _receive_frame(self, node_id: str, network_id: str, frame: bytes, now: float) -> None:
        if frame[6] & 1:
            self.stats["rx-l2-malformed"] += 1
            return
        if frame[0] & 1 and not self.ingress.allow(node_id, network_id, now):
            self.stats["rx-storm-dropped"] += 1
            return
        verdict = self.macs.learn(network_id, frame[6:12], node_id, now)
        if verdict == "claimed":  # another member's live MAC, or ours (issue 18 F16)
            self.stats["rx-l2-mac-claimed"] += 1
            return
        if verdict == "moved":
            self.stats["rx-l2-mac-moved"] += 1
        self.to_l2_interface.append((network_id, frame))
        self.stats["rx-l2-delivered"] += 1

    # ------------------------------------------------------------------ unicast from the engine

    def frame_for(self, packet: bytes) -> bytes:
        """Wrap a unicast IP packet the WireGuard engine decrypted for the IP interface."""
        return self.header_for(packet) + packet

    def header_for(self, packet: bytes | memoryview) -> bytes:
        """The 14-byte Ethernet header `frame_for` puts in front of `packet`."""
        if packet[0] >> 4 == 4:
            src = bytes(packet[12:16])
            header = self._headers4.get(src)
            if header is None:
                if len(self._headers4) >= _HEADER_CACHE:
                    self._headers4.clear()
                header = self._headers4[src] = self._mac_bytes + b"\x02\x53" + src + _ETH_IPV4
            return header
        return self._mac_bytes + bytes(mac_for(ipaddress.IPv6Address(bytes(packet[8:24])))) + _ETH_IPV6

    def take(self) -> tuple[list[bytes], list[tuple[str, bytes]], list[bytes], list[tuple[str, bytes]]]:
        """Drain (to_engine, to_peers, to_ip_interface, to_l2_interface)."""
        out = (self.to_engine, self.to_peers, self.to_ip_interface, self.to_l2_interface)
        self.to_engine, self.to_peers, self.to_ip_interface, self.to_l2_interface = [], [], [], []
        return out


__all__ = ["LanSwitch", "PeerAddresses", "NetworkState", "MAC"]
