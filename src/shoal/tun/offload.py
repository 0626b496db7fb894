"""TUN offloads, sans-IO: split kernel GSO superpackets into MTU-sized IP packets (read side)
and coalesce consecutive TCP segments into one GSO superpacket (write side, GRO-like).

Wire format: with IFF_VNET_HDR (and TUNSETVNETHDRSZ 10) every read from and write to the TUN fd
starts with a ``struct virtio_net_hdr`` (native = little-endian on Linux/x86):

    offset size field
    0      1    flags        VIRTIO_NET_HDR_F_NEEDS_CSUM (1): L4 checksum is partial: the field
                             at csum_start+csum_offset holds the folded pseudo-header sum and the
                             sum of bytes [csum_start:] must still be added and complemented.
                             VIRTIO_NET_HDR_F_DATA_VALID (2): checksum already verified.
    1      1    gso_type     NONE 0, TCPV4 1, UDP 3 (UFO, never offered), TCPV6 4, UDP_L4 5
                             (USO, one UDP header per segment), ECN bit 0x80
    2      2    hdr_len      length of the IP + L4 headers (a hint; we recompute it)
    4      2    gso_size     payload bytes per segment (the MSS for TCP)
    6      2    csum_start   offset of the L4 header from the start of the IP packet
    8      2    csum_offset  offset of the checksum field inside the L4 header (TCP 16, UDP 6)

Read side (``split``): the kernel gives one IP packet of up to 64 KiB whose L4 checksum is
partial. We emit the segments a NIC would: per segment the IPv4 total length, an incremented
IPv4 ID and a fresh IPv4 header checksum (IPv6: payload length), TCP sequence number advanced by
the payload offset, FIN/PSH only on the last segment, CWR only on the first, and FULL TCP/UDP
checksums — stock WireGuard peers forward our packets to stacks that verify them.

Write side (``coalesce``): packets decrypted from a peer are grouped like Linux GRO does: same
flow (addresses, ports), same IP header fields except length/ID/checksum, same ACK number, data
offset, window, urgent pointer and TCP options, flags ACK (PSH allowed on the last segment),
consecutive sequence numbers, equal payload sizes (the last may be shorter), at most 64
segments and 64 KiB. Anything else is written as it came. The superpacket carries a FULL TCP
checksum (flags 0, so the kernel verifies it in C; it is derived from the segments' own
checksums, so no payload byte is summed in Python) and gso_type/gso_size telling the kernel
how it was built.

TAP (IFF_TAP with IFF_VNET_HDR): the same header precedes an Ethernet frame, and csum_start
and hdr_len count from the frame's first byte (14 more than for TUN). We never enable TSO on a
TAP (no GSO reads), so ``strip_frame`` only finishes a partial checksum; ``coalesce_frames``
runs ``coalesce`` on the IP packets and puts the Ethernet header ``header_for(packet)`` in
front of each buffer, shifting those two fields.

Bad input (truncated or inconsistent packets from the kernel or from a peer) never raises: it is
passed through unchanged or dropped and counted by the caller via the return values.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from shoal import constants as C
from shoal.tun.checksum import finish, ip_header_checksum, residue

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

VNET_NONE = bytes(VNET_HDR_LEN)  # prefix for a plain packet with a full checksum

IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
TCP_ECE = 0x40
TCP_CWR = 0x80

MAX_COALESCE_SEGMENTS = 64
MAX_IP_PACKET = 65535

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _l4_proto(pkt: bytes | memoryview) -> int:
    """The L4 protocol of an IP packet without IPv6 extension headers (0 if unknown)."""
    v = pkt[0] >> 4
    if v == 4:
        return pkt[9]
    if v == 6:
        return pkt[6]
    return 0


def complete_checksum(pkt: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a partial (CHECKSUM_PARTIAL) L4 checksum in place."""
    field = csum_start + csum_offset
    res = residue(memoryview(pkt)[csum_start:])
    value = finish(res)
    if value == 0 and csum_offset == 6:  # UDP: a computed 0 is sent as 0xFFFF (RFC 768)
        value = 0xFFFF
    pkt[field : field + 2] = _U16.pack(value)


def split(buf: bytes, out: list[bytes]) -> int:
    """Split one vnet-header-prefixed read into plain IP packets appended to ``out``.

    Returns the number of packets appended (0: malformed, dropped).
    """
    if len(buf) <= VNET_HDR_LEN:
        return 0
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            pkt = bytearray(memoryview(buf)[VNET_HDR_LEN:])
            if csum_start + csum_offset + 2 > len(pkt):
                return 0
            complete_checksum(pkt, csum_start, csum_offset)
            out.append(bytes(pkt))
        else:
            out.append(buf[VNET_HDR_LEN:])
        return 1
    pkt = memoryview(buf)[VNET_HDR_LEN:]
    try:
        if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
            return _split_tcp(pkt, gso_size, csum_start, out)
        if gso == VIRTIO_NET_HDR_GSO_UDP_L4:
            return _split_udp(pkt, gso_size, csum_start, out)
    except (IndexError, ValueError, struct.error):
        return 0
    return 0


def _addresses(ip: bytes) -> tuple[bytes, bytes, bool]:
    if ip[0] >> 4 == 4:
        return ip[12:16], ip[16:20], True
    return ip[8:24], ip[24:40], False


def _set_ip_header(ip: bytearray, v4: bool, ihl: int, l4len: int, ipid: int) -> None:
    """One segment's IP header: its length, and for IPv4 its id and header checksum."""
    if v4:
        ip[2:4] = _U16.pack(ihl + l4len)
        ip[4:6] = _U16.pack(ipid & 0xFFFF)
        ip[10:12] = b"\x00\x00"
        ip[10:12] = _U16.pack(ip_header_checksum(ip))
    else:
        ip[4:6] = _U16.pack(ihl - 40 + l4len)


def _split_tcp(pkt: memoryview, gso_size: int, ihl: int, out: list[bytes]) -> int:
    if ihl < 20 or len(pkt) < ihl + 20:
        return 0
    thl = (pkt[ihl + 12] >> 4) * 4
    hl = ihl + thl
    if thl < 20 or len(pkt) < hl:
        return 0
    ip = bytearray(pkt[:ihl])
    tcp = bytearray(pkt[ihl:hl])
    src, dst, v4 = _addresses(ip)
    base = (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_TCP) % 0xFFFF
    payload = pkt[hl:]
    n = len(payload)
    if gso_size <= 0:
        gso_size = n or 1
    seq0 = int.from_bytes(tcp[4:8], "big")
    flags0 = tcp[13]
    ipid0 = int.from_bytes(ip[4:6], "big")
    count = 0
    off = 0
    while True:
        seg = payload[off : off + gso_size]
        length = len(seg)
        last = off + gso_size >= n
        f = flags0
        if not last:
            f &= ~(TCP_FIN | TCP_PSH)
        if count:
            f &= ~TCP_CWR
        tcp[4:8] = _U32.pack((seq0 + off) & 0xFFFFFFFF)
        tcp[13] = f
        tcp[16:18] = b"\x00\x00"
        tcplen = thl + length
        res = base + tcplen + residue(tcp) + residue(seg)
        tcp[16:18] = _U16.pack(finish(res))
        _set_ip_header(ip, v4, ihl, tcplen, ipid0 + count)
        out.append(b"".join((ip, tcp, seg)))
        count += 1
        off += gso_size
        if last:
            return count


def _split_udp(pkt: memoryview, gso_size: int, ihl: int, out: list[bytes]) -> int:
    if ihl < 20 or len(pkt) < ihl + 8:
        return 0
    ip = bytearray(pkt[:ihl])
    udp = bytearray(pkt[ihl : ihl + 8])
    src, dst, v4 = _addresses(ip)
    base = (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + IPPROTO_UDP) % 0xFFFF
    payload = pkt[ihl + 8 :]
    n = len(payload)
    if gso_size <= 0:
        gso_size = n or 1
    ipid0 = int.from_bytes(ip[4:6], "big")
    count = 0
    off = 0
    while True:
        seg = payload[off : off + gso_size]
        ulen = 8 + len(seg)
        udp[4:6] = _U16.pack(ulen)
        udp[6:8] = b"\x00\x00"
        res = base + ulen + residue(udp) + residue(seg)
        udp[6:8] = _U16.pack(finish(res) or 0xFFFF)
        _set_ip_header(ip, v4, ihl, ulen, ipid0 + count)
        out.append(b"".join((ip, udp, seg)))
        count += 1
        off += gso_size
        if off >= n:
            return count


# ---------------------------------------------------------------------------------------
# Write side: GRO-like coalescing.


class _Group:
    __slots__ = ("first", "ihl", "thl", "v4", "mss", "next_seq", "payloads", "size", "psh", "res")

    def __init__(self, first: bytes, ihl: int, thl: int, v4: bool, mss: int, seq: int, res: int) -> None:
        self.first = first
        self.ihl = ihl
        self.thl = thl
        self.v4 = v4
        self.mss = mss
        self.next_seq = (seq + mss) & 0xFFFFFFFF
        self.payloads: list[bytes] = []
        self.size = mss
        self.psh = False
        self.res = res  # residue of all payload bytes so far, aligned as in the superpacket


def _tcp_candidate(p: bytes) -> tuple[bytes, int, int, bool, int] | None:
    """(flow key, ihl, thl, v4, seq) for a TCP data segment that may be coalesced, else None."""
    n = len(p)
    if n < 40:
        return None
    b0 = p[0]
    if b0 == 0x45:
        if p[9] != IPPROTO_TCP or p[6] & 0x3F or p[7] or (p[2] << 8 | p[3]) != n:
            return None  # not TCP, fragment or MF, or length mismatch
        ihl = 20
        thl = (p[32] >> 4) * 4
        flags = p[33]
        # version/ihl/tos, frag/ttl/proto, addresses+ports, ack+doff, window, urg+options
        key_parts = (p[0:2], p[6:10], p[12:24], p[28:33], p[34:36], p[38 : 20 + thl])
    elif b0 >> 4 == 6:
        if n < 60 or p[6] != IPPROTO_TCP or (p[4] << 8 | p[5]) + 40 != n:
            return None
        ihl = 40
        thl = (p[52] >> 4) * 4
        flags = p[53]
        key_parts = (p[0:4], p[6:8], p[8:44], p[48:53], p[54:56], p[58 : 40 + thl])
    else:
        return None
    if thl < 20 or ihl + thl >= n or (flags & ~TCP_PSH) != TCP_ACK:
        return None
    seq = int.from_bytes(p[ihl + 4 : ihl + 8], "big")
    return b"".join(key_parts), ihl, thl, b0 == 0x45, seq


def _payload_residue(p: bytes, ihl: int, thl: int, v4: bool) -> int:
    """Residue of the TCP payload of ``p``, derived from its checksum field without reading
    the payload: sum(payload) = ~checksum - pseudo-header - header (all mod 0xFFFF). If the
    segment's checksum was wrong, the derived superpacket checksum is wrong too, and the
    kernel (which verifies it, see ``coalesce``) drops the superpacket."""
    if v4:
        pseudo = int.from_bytes(p[12:20], "big")
    else:
        pseudo = int.from_bytes(p[8:40], "big")
    hl = ihl + thl
    csum = p[ihl + 16] << 8 | p[ihl + 17]
    # residue(header with checksum field) - csum == residue(header with the field zeroed)
    hdr = int.from_bytes(p[ihl:hl], "big") - csum
    return (0xFFFF - csum - pseudo - IPPROTO_TCP - (len(p) - ihl) - hdr) % 0xFFFF


def _swap(res: int) -> int:
    """Residue of the same bytes shifted by one byte (starting at an odd offset)."""
    res %= 0xFFFF
    return ((res & 0xFF) << 8) | (res >> 8)


def coalesce(packets: list[bytes], header_for: Callable[[bytes], bytes] | None = None) -> list[bytes]:
    """vnet-header-prefixed buffers to write for ``packets`` (IP packets with full checksums).

    With ``header_for`` (a TAP) each buffer is vnet header + header_for(first packet) + IP,
    and the offsets in the vnet header count from the frame (see the module docstring).

    A superpacket is written with a FULL checksum (derived from the segments' checksums) and
    flags 0, not as CHECKSUM_PARTIAL: the kernel verifies it in C over the whole 64 KiB, so a
    corrupt segment is still caught, and we never have to sum payload bytes in Python.
    """
    out: list[object] = []
    open_groups: dict[bytes, int] = {}
    for p in packets:
        cand = _tcp_candidate(p)
        if cand is None:
            out.append(p)
            continue
        key, ihl, thl, v4, seq = cand
        plen = len(p) - ihl - thl
        idx = open_groups.get(key)
        if idx is not None:
            g = out[idx]
            assert isinstance(g, _Group)
            if (
                seq == g.next_seq
                and plen <= g.mss
                and g.size + plen + ihl + thl <= MAX_IP_PACKET
                and len(g.payloads) + 1 < MAX_COALESCE_SEGMENTS
            ):
                r = _payload_residue(p, ihl, thl, v4)
                g.res += _swap(r) if g.size & 1 else r
                g.payloads.append(p[ihl + thl :])
                g.size += plen
                g.next_seq = (seq + plen) & 0xFFFFFFFF
                if plen < g.mss or p[ihl + 13] & TCP_PSH:
                    g.psh = bool(p[ihl + 13] & TCP_PSH)
                    del open_groups[key]
                continue
            del open_groups[key]
        if p[ihl + 13] & TCP_PSH:
            out.append(p)
            continue
        open_groups[key] = len(out)
        out.append(_Group(p, ihl, thl, v4, plen, seq, _payload_residue(p, ihl, thl, v4)))
    result: list[bytes] = []
    if header_for is None:
        for item in out:
            if isinstance(item, _Group):
                result.append(_build(item, b"") if item.payloads else VNET_NONE + item.first)
            else:
                result.append(VNET_NONE + item)  # type: ignore[operator]
        return result
    join = b"".join
    for item in out:
        if isinstance(item, _Group):
            first = item.first
            result.append(_build(item, header_for(first)) if item.payloads else join((VNET_NONE, header_for(first), first)))
        else:
            result.append(join((VNET_NONE, header_for(item), item)))  # type: ignore[arg-type]
    return result


def strip_frame(buf: bytes) -> bytes | None:
    """The Ethernet frame of one vnet-header-prefixed TAP read (None: malformed or GSO)."""
    if len(buf) <= VNET_HDR_LEN:
        return None
    flags, gso_type, _hdr_len, _gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(buf)
    if gso_type & ~VIRTIO_NET_HDR_GSO_ECN:
        return None  # TSO is never enabled on our TAPs
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        frame = bytearray(memoryview(buf)[VNET_HDR_LEN:])
        if csum_start + csum_offset + 2 > len(frame):
            return None
        complete_checksum(frame, csum_start, csum_offset)
        return bytes(frame)
    return buf[VNET_HDR_LEN:]


def coalesce_frames(packets: list[bytes], header_for: Callable[[bytes], bytes]) -> list[bytes]:
    """Like ``coalesce``, for a TAP: each buffer is vnet header + header_for(IP packet) + packet.

    ``header_for`` must return 14 bytes; packets of one coalesced run share the first
    packet's header (a run is one flow, so one source address)."""
    return coalesce(packets, header_for)


def _build(g: _Group, eth: bytes) -> bytes:
    p = g.first
    ihl, thl = g.ihl, g.thl
    hl = ihl + thl
    ip = bytearray(p[:ihl])
    tcp = bytearray(p[ihl:hl])
    tcplen = thl + g.size
    if g.v4:
        ip[2:4] = _U16.pack(ihl + tcplen)
        ip[10:12] = b"\x00\x00"
        ip[10:12] = _U16.pack(ip_header_checksum(ip))
        pseudo = int.from_bytes(p[12:20], "big")
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        ip[4:6] = _U16.pack(tcplen)
        pseudo = int.from_bytes(p[8:40], "big")
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    if g.psh:
        tcp[13] |= TCP_PSH
    tcp[16:18] = b"\x00\x00"
    res = pseudo + IPPROTO_TCP + tcplen + residue(tcp) + g.res
    tcp[16:18] = _U16.pack(finish(res))
    shift = len(eth)  # a TAP: offsets count from the Ethernet header
    hdr = VNET_HDR.pack(0, gso_type, hl + shift, g.mss, ihl + shift, 16)
    return b"".join((hdr, eth, ip, tcp, p[hl:], *g.payloads))


__all__ = [
    "VNET_HDR",
    "VNET_HDR_LEN",
    "VNET_NONE",
    "split",
    "coalesce",
    "coalesce_frames",
    "strip_frame",
    "complete_checksum",
]
