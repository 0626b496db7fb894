"""Who gets a broadcast: classification, the fan-out planner, receive-side admission, snooping.

Pure functions and one small table; nothing here sends anything.

Classification
    `classify_ip(packet, broadcasts)` -> Cast, or None for a malformed packet:
        broadcast   IPv4 destination 255.255.255.255 or one of `broadcasts` (the overlay's
                    subnet-directed broadcast, e.g. 100.127.255.255 for 100.64.0.0/10)
        multicast   224.0.0.0/4 or ff00::/8; `group` is the destination address
        unicast     everything else
      `link_local` is true for 224.0.0.0/24 and ff02::/16 (RFC 4541 2.1.2: always flooded,
      never pruned by snooping) and for broadcasts. `control` names what the node answers or
      consumes itself instead of forwarding: "nd" (ICMPv6 133-137: neighbour and router
      discovery, redirects), "mld" (ICMPv6 130-132, 143), "igmp" (IPv4 protocol 2).
    `classify_frame(frame)` -> Cast by destination MAC (broadcast / multicast with the MAC
      as group / unicast), or None if shorter than an Ethernet header.

Fan-out (`plan`): the sender replicates; nobody re-forwards (full mesh), so there are no
loops and no amplification by construction. For a packet of `kind` ("ip" or "l2") from
`sender`, over the networks in `networks` (each: id, kind, per-network switch, online members):

    1. only networks of that kind, with the switch on, where the sender is an online member;
    2. every other online member of those networks, once: a member sharing several of them
       gets one copy, tagged with the lowest network id they share (deterministic);
    3. never the sender itself; never a member of a network the sender is not in;
    4. with `wants` (snooping), only members for which wants(network_id, member) is true.

Admission (`admit`), on the receiving node, for an extension message tagged `network_id`
from `sender` (both node ids): accepted only if the network is in our view, of the kind the
message carries, its switch is on, the sender is not us, and both of us are online members.
For kind IP, `ip_origin_ok` also requires the inner destination to be broadcast/multicast and
the inner source to be one of the sender's own addresses (so the extension cannot be used to
inject unicast or spoofed packets past cryptokey routing).

Snooping (`Memberships`, optional per network): learns from IGMPv2/v3 and MLDv1/v2 reports a
member sent which groups it wants, for LAN_GROUP_MEMBERSHIP_INTERVAL seconds; a leave/done
drops the group at once. `wants` answers for link-local groups always true, and for a member
never heard from (no report seen yet) true too, so turning snooping on never silences a
member whose reports were missed; it only prunes members that reported other groups.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Container, Hashable, Iterable

from shoal import constants as C

_LIMITED_BROADCAST = b"\xff\xff\xff\xff"
_ND_TYPES = frozenset(range(C.ICMPV6_ROUTER_SOLICITATION, C.ICMPV6_REDIRECT + 1))
_MLD_TYPES = frozenset((C.ICMPV6_MLD_QUERY, C.ICMPV6_MLD_REPORT, C.ICMPV6_MLD_DONE, C.ICMPV6_MLD2_REPORT))
_IPV6_EXT_HEADERS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options (44 fragment: below)
_MAX_EXT_HEADERS = 8


@dataclasses.dataclass(frozen=True, slots=True)
class Cast:
    kind: str  # "unicast" | "broadcast" | "multicast"
    group: bytes | None = None  # multicast: the IP group (4 or 16 bytes) or the group MAC
    link_local: bool = False
    control: str | None = None  # "nd" | "mld" | "igmp" | None


UNICAST = Cast("unicast")


def _upper_layer_v6(packet: bytes) -> tuple[int, int] | None:
    """(protocol, offset) of the IPv6 upper-layer header, walking extension headers; None if
    malformed or a non-first fragment."""
    nh = packet[6]
    offset = 40
    for _ in range(_MAX_EXT_HEADERS):
        if nh in _IPV6_EXT_HEADERS:
            if len(packet) < offset + 2:
                return None
            nh, offset = packet[offset], offset + (packet[offset + 1] + 1) * 8
        elif nh == 44:
            if len(packet) < offset + 8:
                return None
            if int.from_bytes(packet[offset + 2 : offset + 4], "big") & 0xFFF8:
                return (-1, offset)  # a later fragment: no upper-layer header here
            nh, offset = packet[offset], offset + 8
        else:
            return (nh, offset) if offset <= len(packet) else None
    return None


def classify_ip(packet: bytes, broadcasts: Container[bytes] = ()) -> Cast | None:
    """Classify an IP packet by its destination (module docstring); None if malformed."""
    n = len(packet)
    if n < 1:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if n < 20 or ihl < 20 or n < ihl:
            return None
        dst = bytes(packet[16:20])
        control = "igmp" if packet[9] == C.IPPROTO_IGMP else None
        if dst == _LIMITED_BROADCAST or dst in broadcasts:
            return Cast("broadcast", None, True, control)
        if dst[0] & 0xF0 == 0xE0:
            return Cast("multicast", dst, dst[:3] == b"\xe0\x00\x00", control)
        return UNICAST
    if version == 6:
        if n < 40:
            return None
        dst = bytes(packet[24:40])
        upper = _upper_layer_v6(packet)
        if upper is None:
            return None
        control = None
        proto, offset = upper
        if proto == C.IPPROTO_ICMPV6 and n > offset:
            icmp_type = packet[offset]
            if icmp_type in _ND_TYPES:
                control = "nd"
            elif icmp_type in _MLD_TYPES:
                control = "mld"
        if dst[0] == 0xFF:
            return Cast("multicast", dst, dst[1] & 0x0F <= 2, control)
        return Cast("unicast", None, False, control) if control else UNICAST
    return None


def classify_frame(frame: bytes) -> Cast | None:
    if len(frame) < C.ETH_HEADER_LEN:
        return None
    dst = bytes(frame[0:6])
    if dst == b"\xff" * 6:
        return Cast("broadcast", None, True)
    if dst[0] & 1:
        # 01:80:c2:00:00:0x (bridge protocols, LLDP) and 01:00:5e:00:00:xx / 33:33:00:00:00:xx
        link_local = dst[:5] == b"\x01\x80\xc2\x00\x00" or dst[:5] == b"\x01\x00\x5e\x00\x00" or dst[:5] == b"\x33\x33\x00\x00\x00"
        return Cast("multicast", dst, link_local)
    return UNICAST


# ----------------------------------------------------------------------------- fan-out


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkState:
    """What the planner needs of one network of the node's view."""

    network_id: str
    kind: str  # "ip" | "l2"
    broadcast: bool = True  # the per-network switch (docs/lan.md)
    online: frozenset[str] = frozenset()  # node ids of online, approved members (self included)


@dataclasses.dataclass(frozen=True, slots=True)
class Delivery:
    node_id: str
    network_id: str


def plan(sender: str, networks: Iterable[NetworkState], *, kind: str,
         wants: Callable[[str, str], bool] | None = None) -> list[Delivery]:
    """Peers to send one copy to (module docstring, rules 1-4), in a deterministic order."""
    chosen: dict[str, str] = {}
    for net in sorted(networks, key=lambda n: n.network_id):
        if net.kind != kind or not net.broadcast or sender not in net.online:
            continue
        for member in sorted(net.online):
            if member == sender or member in chosen:
                continue
            if wants is not None and not wants(net.network_id, member):
                continue
            chosen[member] = net.network_id
    return [Delivery(member, network_id) for member, network_id in chosen.items()]


def admit(receiver: str, sender: str, network_id: str, networks: dict[str, NetworkState], kind: str) -> str:
    """Receive-side check of an extension message: "ok" or why it is refused."""
    if sender == receiver:
        return "loop"
    net = networks.get(network_id)
    if net is None:
        return "unknown-network"
    if net.kind != kind:
        return "wrong-kind"
    if not net.broadcast:
        return "switched-off"
    if sender not in net.online or receiver not in net.online:
        return "not-member"
    return "ok"


def ip_origin_ok(packet: bytes, sender_addresses: Container[bytes], broadcasts: Container[bytes] = ()) -> bool:
    """A kind-IP payload must go to a broadcast/multicast address from one of the sender's own
    addresses (4- or 16-byte packed); never raises."""
    cast = classify_ip(packet, broadcasts)
    if cast is None or cast.kind == "unicast":
        return False
    source = bytes(packet[12:16]) if packet[0] >> 4 == 4 else bytes(packet[8:24])
    return source in sender_addresses


# ----------------------------------------------------------------------------- snooping


def parse_membership(packet: bytes) -> list[tuple[str, bytes]] | None:
    """("join" | "leave", group) records of an IGMPv2/v3 or MLDv1/v2 report; None if the packet
    is not a membership report (or is malformed). Never raises."""
    try:
        return _parse_membership(packet)
    except (IndexError, ValueError):
        return None


def _records(body: bytes, count: int, addr_len: int) -> list[tuple[str, bytes]]:
    out = []
    offset = 0
    for _ in range(count):
        rtype, aux, nsrc = body[offset], body[offset + 1], int.from_bytes(body[offset + 2 : offset + 4], "big")
        group = body[offset + 4 : offset + 4 + addr_len]
        offset += 4 + addr_len + nsrc * addr_len + aux * 4
        if len(group) != addr_len or offset > len(body):
            raise ValueError("truncated group record")
        if rtype in (2, 4) or (rtype in (1, 5) and nsrc):  # exclude mode, or include with sources
            out.append(("join", bytes(group)))
        elif rtype == 3 and nsrc == 0:  # change to include {}: leave
            out.append(("leave", bytes(group)))
    return out


def _parse_membership(packet: bytes) -> list[tuple[str, bytes]] | None:
    cast = classify_ip(packet)
    if cast is None:
        return None
    if cast.control == "igmp":
        ihl = (packet[0] & 0x0F) * 4
        body = packet[ihl:]
        if len(body) < 8:
            return None
        if body[0] in (C.IGMP_V1_REPORT, C.IGMP_V2_REPORT):
            return [("join", bytes(body[4:8]))]
        if body[0] == C.IGMP_V2_LEAVE:
            return [("leave", bytes(body[4:8]))]
        if body[0] == C.IGMP_V3_REPORT:
            return _records(body[8:], int.from_bytes(body[6:8], "big"), 4)
        return None
    if cast.control == "mld":
        upper = _upper_layer_v6(packet)
        if upper is None:
            return None
        body = packet[upper[1] :]
        if body[0] == C.ICMPV6_MLD_REPORT and len(body) >= 24:
            return [("join", bytes(body[8:24]))]
        if body[0] == C.ICMPV6_MLD_DONE and len(body) >= 24:
            return [("leave", bytes(body[8:24]))]
        if body[0] == C.ICMPV6_MLD2_REPORT and len(body) >= 8:
            return _records(body[8:], int.from_bytes(body[6:8], "big"), 16)
    return None


class Memberships:
    """Multicast groups each member reported, per network (the snooping table)."""

    def __init__(self, interval: float = C.LAN_GROUP_MEMBERSHIP_INTERVAL,
                 max_per_network: int = C.LAN_GROUP_MAX_PER_NETWORK) -> None:
        self.interval = interval
        self.max_per_network = max_per_network
        self._groups: dict[Hashable, dict[Hashable, dict[bytes, float]]] = {}  # net -> member -> group -> expiry
        self.stats: Counter[str] = Counter()

    def learn(self, network: Hashable, member: Hashable, packet: bytes, now: float) -> bool:
        """Feed one packet the member sent; True if it was a membership report."""
        records = parse_membership(packet)
        if records is None:
            return False
        per_member = self._groups.setdefault(network, {}).setdefault(member, {})
        for action, group in records:
            if action == "join":
                if group not in per_member and sum(len(g) for g in self._groups[network].values()) >= self.max_per_network:
                    self.stats["full"] += 1
                    continue
                per_member[group] = now + self.interval
                self.stats["join"] += 1
            else:
                per_member.pop(group, None)
                self.stats["leave"] += 1
        return True

    def wants(self, network: Hashable, member: Hashable, group: bytes, now: float, link_local: bool = False) -> bool:
        if link_local:
            return True
        per_member = self._groups.get(network, {}).get(member)
        if per_member is None:
            return True  # never heard a report from it: do not prune
        expiry = per_member.get(bytes(group))
        return expiry is not None and now < expiry

    def forget(self, member: Hashable) -> None:
        for per_net in self._groups.values():
            per_net.pop(member, None)
