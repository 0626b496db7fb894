"""Local answers to ARP and IPv6 neighbour solicitation for overlay addresses (sans-IO).

In an IP network the node's interface is Ethernet-like (docs/lan.md): the kernel asks "who
has 100.64.0.7?" before sending to a peer. Nobody on the far side answers ARP; the daemon
does, on behalf of every peer, with a deterministic MAC per address, so unicast IP still maps
1:1 to WireGuard peers (the engine routes by IP address, never by MAC).

MAC derivation (every node computes the same MAC for the same address; locally administered
unicast, so never a vendor's):

    IPv4 a.b.c.d  ->  02:53:aa:bb:cc:dd           (0x53 = "S"; the address itself, readable
                                                   in tcpdump, collision-free)
    IPv6 addr     ->  06:53:h0:h1:h2:h3           h = BLAKE2s(addr, digest_size=4,
                                                   person=b"shoalmac"); first byte 06 keeps
                                                   the IPv4 and IPv6 spaces apart
    link-local    fe80::/64 + modified EUI-64 of a MAC (RFC 4291 appendix A): the interface's
                  own link-local address is derived from its MAC, itself derived from the
                  node's IPv4, so peers can verify link-local sources (docs/lan.md)

ARP rules (RFC 826; RFC 5227 for probes and announcements), for a frame the kernel wrote:

    frame                                                 verdict       answer
    ----------------------------------------------------  ------------  ----------------------
    not Ethernet II ARP, or malformed, or sha != src MAC  "malformed"   none
    an ARP reply (unsolicited, e.g. arp_notify)           "gratuitous"  none
    request with spa == tpa (announcement)                "gratuitous"  none
      ... and tpa is a peer's address                     "conflict"    none (the host claims
                                                                        a peer's address)
    request for our own address                           "self"        none
    request for an address `answer_for` contains          "answered"    reply from mac_for(tpa)
      (also a probe with spa 0.0.0.0: the peer defends it)               to the asker's MAC
    any other request                                     "not-ours"    none

Neighbour solicitation rules (RFC 4861 7.1.1 validity first: hop limit 255, ICMPv6 code 0,
valid checksum, no extension headers, length >= 24, target not multicast, options of
non-zero length, unspecified source only to a solicited-node group and without a
source link-layer option). A valid solicitation for a target in `answer_for` gets a
neighbour advertisement: IPv6 source = target, destination = the solicitation's source (or
ff02::1 for DAD with source ::), hop limit 255, flags Solicited (unless DAD) and Override,
never Router, with a target link-layer address option mac_for(target). Verdicts as for ARP
("answered", "self", "not-ours", "malformed"; "conflict" for a DAD probe of a peer's
address, which is answered: the peer defends it).

`NeighborResponder.handle(frame)` never raises; it returns (verdict, reply frame or None) and
counts verdicts in `stats`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections import Counter
from collections.abc import Container

from shoal.lan.ethernet import MAC, FrameError, ethernet2, multicast_mac_ipv6
from shoal.tun import checksum
from shoal import constants as C

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ARP_FIXED = (C.ARP_HTYPE_ETHERNET, C.ETHERTYPE_IPV4, 6, 4)
_ALL_NODES = ipaddress.IPv6Address("ff02::1")
_SOLICITED_NODE = ipaddress.IPv6Network("ff02::1:ff00:0/104")
_UNSPECIFIED6 = ipaddress.IPv6Address("::")
_ZERO4 = ipaddress.IPv4Address("0.0.0.0")


def mac_for_ipv4(address: ipaddress.IPv4Address | str) -> MAC:
    return MAC(b"\x02\x53" + ipaddress.IPv4Address(address).packed)


def mac_for_ipv6(address: ipaddress.IPv6Address | str) -> MAC:
    digest = hashlib.blake2s(ipaddress.IPv6Address(address).packed, digest_size=4, person=b"shoalmac").digest()
    return MAC(b"\x06\x53" + digest)


def mac_for(address: IPAddress | str) -> MAC:
    """The MAC every node uses for an overlay address (module docstring)."""
    ip = ipaddress.ip_address(address)
    return mac_for_ipv4(ip) if ip.version == 4 else mac_for_ipv6(ip)


def link_local_for(mac: bytes) -> ipaddress.IPv6Address:
    """fe80::/64 with the modified EUI-64 interface id of `mac` (RFC 4291 appendix A)."""
    m = MAC(mac)
    iid = bytes((m[0] ^ 0x02, m[1], m[2], 0xFF, 0xFE, m[3], m[4], m[5]))
    return ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid)


def build_arp(op: int, sha: bytes, spa: IPAddress, tha: bytes, tpa: IPAddress) -> bytes:
    """The 28-byte ARP packet for Ethernet/IPv4."""
    return _ARP.pack(*_ARP_FIXED, op, bytes(MAC(sha)), spa.packed, bytes(MAC(tha)), tpa.packed)


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    """The ICMPv6 checksum of `message` (its checksum field zero) between src and dst."""
    return checksum.finish(checksum.pseudo_residue(src, dst, C.IPPROTO_ICMPV6, len(message)) + checksum.residue(message))


def build_ipv6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, next_header: int, hop_limit: int,
               payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hop_limit, src.packed, dst.packed) + payload


def build_icmpv6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, icmp_type: int, body: bytes,
                 hop_limit: int = C.ND_HOP_LIMIT, code: int = 0) -> bytes:
    """An IPv6 packet carrying one ICMPv6 message with a correct checksum."""
    message = bytes((icmp_type, code, 0, 0)) + body
    csum = icmpv6_checksum(src.packed, dst.packed, message)
    message = message[:2] + csum.to_bytes(2, "big") + message[4:]
    return build_ipv6(src, dst, C.IPPROTO_ICMPV6, hop_limit, message)


def build_neighbor_solicitation(src_mac: bytes, src: ipaddress.IPv6Address, target: ipaddress.IPv6Address,
                                *, dst: ipaddress.IPv6Address | None = None) -> bytes:
    """The frame a host sends to resolve `target` (multicast to its solicited-node group unless
    `dst` is given; a source link-layer option unless the source is ::)."""
    if dst is None:
        dst = ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + target.packed[13:])
    body = bytes(4) + target.packed
    if src != _UNSPECIFIED6:
        body += bytes((C.ND_OPT_SOURCE_LINK_ADDR, 1)) + bytes(MAC(src_mac))
    packet = build_icmpv6(src, dst, C.ICMPV6_NEIGHBOR_SOLICITATION, body)
    dst_mac = multicast_mac_ipv6(dst.packed) if dst.is_multicast else mac_for_ipv6(dst)
    return ethernet2(dst_mac, src_mac, C.ETHERTYPE_IPV6, packet)


class NeighborResponder:
    """Answers ARP requests and neighbour solicitations the local interface sends.

    `own` are this node's addresses (never answered for); `answer_for` is any container of
    addresses (a set, or an object with __contains__) the daemon answers for: the overlay
    addresses of the current peers. The daemon may replace `answer_for` at any time.
    """

    def __init__(self, own: Container[IPAddress], answer_for: Container[IPAddress]) -> None:
        self.own = own
        self.answer_for = answer_for
        self.stats: Counter[str] = Counter()

    def handle(self, frame: bytes) -> tuple[str, bytes | None]:
        """One frame from the interface -> (verdict, reply frame to write back, or None)."""
        try:
            if len(frame) < C.ETH_HEADER_LEN:
                raise FrameError("short frame")
            ethertype = int.from_bytes(frame[12:14], "big")
            if ethertype == C.ETHERTYPE_ARP:
                verdict, reply = self._arp(frame)
            elif ethertype == C.ETHERTYPE_IPV6:
                verdict, reply = self._ndp(frame)
            else:
                verdict, reply = "malformed", None
        except (FrameError, ValueError):
            verdict, reply = "malformed", None
        self.stats[verdict] += 1
        return verdict, reply

    # ------------------------------------------------------------------ ARP

    def _arp(self, frame: bytes) -> tuple[str, bytes | None]:
        if len(frame) < C.ETH_HEADER_LEN + C.ARP_PACKET_LEN:
            return "malformed", None
        src_mac = MAC(frame[6:12])
        htype, ptype, hlen, plen, op, sha, spa_b, _tha, tpa_b = _ARP.unpack_from(frame, C.ETH_HEADER_LEN)
        if (htype, ptype, hlen, plen) != _ARP_FIXED or sha != src_mac or src_mac.is_group:
            return "malformed", None
        if op == C.ARP_OP_REPLY:
            return "gratuitous", None
        if op != C.ARP_OP_REQUEST:
            return "malformed", None
        spa = ipaddress.IPv4Address(spa_b)
        tpa = ipaddress.IPv4Address(tpa_b)
        if spa == tpa:
            return ("conflict" if tpa in self.answer_for and tpa not in self.own else "gratuitous"), None
        if tpa in self.own:
            return "self", None
        if tpa not in self.answer_for:
            return "not-ours", None
        mac = mac_for_ipv4(tpa)
        reply = build_arp(C.ARP_OP_REPLY, mac, tpa, src_mac, spa)
        return "answered", ethernet2(src_mac, mac, C.ETHERTYPE_ARP, reply)

    # ------------------------------------------------------------------ NDP

    def _ndp(self, frame: bytes) -> tuple[str, bytes | None]:
        src_mac = MAC(frame[6:12])
        ip = frame[C.ETH_HEADER_LEN :]
        if len(ip) < 40 + 24 or ip[0] >> 4 != 6 or src_mac.is_group:
            return "malformed", None
        payload_len = int.from_bytes(ip[4:6], "big")
        next_header, hop_limit = ip[6], ip[7]
        if next_header != C.IPPROTO_ICMPV6 or 40 + payload_len > len(ip) or payload_len < 24:
            return "malformed", None
        src_b, dst_b = ip[8:24], ip[24:40]
        message = ip[40 : 40 + payload_len]
        if message[0] != C.ICMPV6_NEIGHBOR_SOLICITATION:
            return "malformed", None
        if hop_limit != C.ND_HOP_LIMIT or message[1] != 0:
            return "malformed", None
        if (checksum.pseudo_residue(src_b, dst_b, C.IPPROTO_ICMPV6, payload_len) + checksum.residue(message)) % 0xFFFF:
            return "malformed", None  # a correct checksum makes the ones'-complement sum 0xffff
        src = ipaddress.IPv6Address(src_b)
        dst = ipaddress.IPv6Address(dst_b)
        target = ipaddress.IPv6Address(message[8:24])
        if target.is_multicast:
            return "malformed", None
        has_slla = False
        options = message[24:]
        while options:
            if len(options) < 2 or options[1] == 0 or len(options) < options[1] * 8:
                return "malformed", None
            if options[0] == C.ND_OPT_SOURCE_LINK_ADDR:
                has_slla = True
            options = options[options[1] * 8 :]
        dad = src == _UNSPECIFIED6
        if dad and (dst not in _SOLICITED_NODE or has_slla):
            return "malformed", None
        if target in self.own:
            return "self", None
        if target not in self.answer_for:
            return "not-ours", None
        mac = mac_for_ipv6(target)
        flags = (0x40000000 if not dad else 0) | 0x20000000  # S (bit 30) unless DAD, O (bit 29)
        body = flags.to_bytes(4, "big") + target.packed + bytes((C.ND_OPT_TARGET_LINK_ADDR, 1)) + bytes(mac)
        reply_dst = _ALL_NODES if dad else src
        packet = build_icmpv6(target, reply_dst, C.ICMPV6_NEIGHBOR_ADVERTISEMENT, body)
        dst_mac = multicast_mac_ipv6(reply_dst.packed) if dad else src_mac
        return ("conflict" if dad else "answered"), ethernet2(dst_mac, mac, C.ETHERTYPE_IPV6, packet)
