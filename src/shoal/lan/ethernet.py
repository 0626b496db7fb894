"""Ethernet frames: the MAC address type, and parsing/building of every framing a LAN carries.

Owns the byte layout of frames as a TAP interface reads and writes them (no preamble, no
FCS). Pure; `parse_frame` raises only `FrameError` (a ValueError) on malformed input, the
builders raise ValueError on misuse.

Wire format (IEEE 802.3 clause 3, 802.1Q, 802.2):

    offset size field
    0      6    destination MAC   (bit 0 of byte 0 = I/G: group; ff:ff:ff:ff:ff:ff broadcast)
    6      6    source MAC        (must not be a group address)
    12     2    type/length T
    [ if T is 0x8100 (802.1Q), 0x88a8 or 0x9100 (802.1ad S-tag): a VLAN tag
      14   2    TCI = PCP (3 bits) | DEI (1 bit) | VID (12 bits)
      16   2    the next type/length T  (at most ETH_MAX_VLAN_TAGS tags) ]
    then, by T:
      T >= 0x0600   Ethernet II: T is the EtherType, the rest of the frame is the payload
      T <= 1500     IEEE 802.3: T is the payload length; bytes beyond it are padding. The payload is
                      ff ff ...          Novell "raw 802.3": an IPX packet (its checksum field,
                                         always 0xffff, sits where an LLC header would be)
                      DSAP SSAP CTL ...  802.2 LLC; CTL is 1 byte for U-frames (low bits 11),
                                         else 2 bytes. DSAP = SSAP = 0xe0: IPX ("Novell 802.2").
                      aa aa 03 OUI(3) PID(2) ...  802.2 SNAP: PID is an EtherType when OUI = 0
      1500 < T < 0x0600   invalid

IPX (Novell) rides in all of them: Ethernet II with EtherType 0x8137, raw 802.3, 802.2 LLC
(SAP 0xe0) and SNAP (OUI 0, PID 0x8137). `Frame.protocol` names what the frame carries
("ipv4", "ipv6", "arp", "ipx", "lldp", or "ethertype-0x....", "llc-0x..", "unknown").
"""

from __future__ import annotations

import dataclasses
import struct

from shoal import constants as C

_TAG_TPIDS = frozenset((C.ETHERTYPE_VLAN, C.ETHERTYPE_QINQ, C.ETHERTYPE_QINQ_OLD))
_U16 = struct.Struct("!H")


class FrameError(ValueError):
    """A frame (or an address string) is malformed; the message says what."""


class MAC(bytes):
    """A 48-bit IEEE MAC address: 6 bytes, compares and hashes like bytes.

    `MAC("02:53:64:40:00:01")`, `MAC(b"\\x02S d@\\x00\\x01")` or `MAC.parse(...)`.
    """

    __slots__ = ()

    def __new__(cls, value: bytes | bytearray | memoryview | str) -> MAC:
        if isinstance(value, str):
            parts = value.replace("-", ":").split(":")
            if len(parts) != 6 or not all(len(p) == 2 for p in parts):
                raise FrameError(f"not a MAC address: {value!r}")
            try:
                raw = bytes(int(p, 16) for p in parts)
            except ValueError:
                raise FrameError(f"not a MAC address: {value!r}") from None
            return super().__new__(cls, raw)
        raw = bytes(value)
        if len(raw) != 6:
            raise FrameError(f"a MAC address is 6 bytes, not {len(raw)}")
        return super().__new__(cls, raw)

    @property
    def is_group(self) -> bool:
        """Multicast or broadcast (the I/G bit)."""
        return bool(self[0] & 1)

    @property
    def is_broadcast(self) -> bool:
        return self == _BROADCAST_BYTES

    @property
    def is_multicast(self) -> bool:
        """A group address other than broadcast."""
        return bool(self[0] & 1) and self != _BROADCAST_BYTES

    @property
    def is_unicast(self) -> bool:
        return not self[0] & 1

    @property
    def is_local(self) -> bool:
        """Locally administered (the U/L bit): never a vendor-assigned address."""
        return bool(self[0] & 2)

    def __str__(self) -> str:
        return ":".join(f"{b:02x}" for b in self)

    def __repr__(self) -> str:
        return f"MAC('{self}')"


_BROADCAST_BYTES = b"\xff" * 6
BROADCAST = MAC(_BROADCAST_BYTES)
ZERO = MAC(bytes(6))


def multicast_mac_ipv4(group: bytes) -> MAC:
    """RFC 1112 6.4: 01:00:5e + the low 23 bits of the IPv4 group."""
    if len(group) != 4:
        raise ValueError("an IPv4 group is 4 bytes")
    return MAC(b"\x01\x00\x5e" + bytes((group[1] & 0x7F,)) + group[2:4])


def multicast_mac_ipv6(group: bytes) -> MAC:
    """RFC 2464 7: 33:33 + the low 32 bits of the IPv6 group."""
    if len(group) != 16:
        raise ValueError("an IPv6 group is 16 bytes")
    return MAC(b"\x33\x33" + group[12:16])


@dataclasses.dataclass(frozen=True, slots=True)
class VlanTag:
    tpid: int  # 0x8100, 0x88a8 or 0x9100
    pcp: int  # priority, 0..7
    dei: bool
    vid: int  # 0..4095

    def tci(self) -> int:
        return (self.pcp << 13) | (int(self.dei) << 12) | self.vid


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame. `payload` is what follows every header (802.3: trimmed to the length)."""

    dst: MAC
    src: MAC
    vlans: tuple[VlanTag, ...]
    framing: str  # "ethernet2" | "raw8023" | "llc" | "snap"
    ethertype: int | None  # Ethernet II type, or a SNAP PID with OUI 0; else None
    payload: bytes
    length: int | None = None  # the 802.3 length field (raw8023, llc, snap)
    dsap: int | None = None  # llc, snap
    ssap: int | None = None
    control: int | None = None
    oui: bytes | None = None  # snap

    @property
    def protocol(self) -> str:
        if self.framing == "raw8023":
            return "ipx"
        if self.framing == "llc":
            if self.dsap == C.LLC_SAP_IPX and self.ssap == C.LLC_SAP_IPX:
                return "ipx"
            return f"llc-0x{self.dsap:02x}"
        if self.framing == "snap" and self.oui != b"\x00\x00\x00":
            return "snap-" + (self.oui or b"").hex()
        return _ETHERTYPE_NAMES.get(self.ethertype, f"ethertype-0x{self.ethertype:04x}")  # type: ignore[arg-type]


_ETHERTYPE_NAMES = {
    C.ETHERTYPE_IPV4: "ipv4",
    C.ETHERTYPE_IPV6: "ipv6",
    C.ETHERTYPE_ARP: "arp",
    C.ETHERTYPE_IPX: "ipx",
    C.ETHERTYPE_LLDP: "lldp",
}


def parse_frame(data: bytes | bytearray | memoryview) -> Frame:
    """Parse one frame; raises FrameError (only) when it is malformed."""
    data = bytes(data)
    n = len(data)
    if n < C.ETH_HEADER_LEN:
        raise FrameError(f"frame of {n} bytes is shorter than an Ethernet header")
    dst = MAC(data[0:6])
    src = MAC(data[6:12])
    if src[0] & 1:
        raise FrameError("source MAC is a group address")
    offset = 12
    vlans: list[VlanTag] = []
    t = _U16.unpack_from(data, offset)[0]
    offset += 2
    while t in _TAG_TPIDS:
        if len(vlans) == C.ETH_MAX_VLAN_TAGS:
            raise FrameError(f"more than {C.ETH_MAX_VLAN_TAGS} VLAN tags")
        if n < offset + 4:
            raise FrameError("truncated VLAN tag")
        tci = _U16.unpack_from(data, offset)[0]
        vlans.append(VlanTag(t, tci >> 13, bool(tci & 0x1000), tci & 0x0FFF))
        t = _U16.unpack_from(data, offset + 2)[0]
        offset += 4
    tags = tuple(vlans)
    if t >= C.ETH_MIN_ETHERTYPE:
        return Frame(dst, src, tags, "ethernet2", t, data[offset:])
    if t > C.ETH_MAX_LENGTH:
        raise FrameError(f"type/length 0x{t:04x} is neither a length nor an EtherType")
    if n - offset < t:
        raise FrameError(f"802.3 length {t} exceeds the {n - offset} bytes present")
    body = data[offset : offset + t]
    if body[:2] == b"\xff\xff":
        return Frame(dst, src, tags, "raw8023", C.ETHERTYPE_IPX, body, length=t)
    if t < 3:
        raise FrameError("802.2 LLC header truncated")
    dsap, ssap, control = body[0], body[1], body[2]
    if control & 3 == 3:
        hdr = 3
    else:
        if t < 4:
            raise FrameError("802.2 LLC I/S-frame control truncated")
        control = (control << 8) | body[3]
        hdr = 4
    if dsap == C.LLC_SAP_SNAP and ssap == C.LLC_SAP_SNAP and control == C.LLC_UI:
        if t < 8:
            raise FrameError("SNAP header truncated")
        oui = body[3:6]
        pid = _U16.unpack_from(body, 6)[0]
        return Frame(dst, src, tags, "snap", pid if oui == b"\x00\x00\x00" else None, body[8:],
                     length=t, dsap=dsap, ssap=ssap, control=control, oui=oui)
    return Frame(dst, src, tags, "llc", None, body[hdr:], length=t, dsap=dsap, ssap=ssap, control=control)


# ------------------------------------------------------------------------- building


def _header(dst: bytes, src: bytes, vlans: tuple[VlanTag, ...] | list[VlanTag]) -> bytes:
    dst = MAC(dst)
    src = MAC(src)
    if src.is_group:
        raise ValueError("source MAC must not be a group address")
    if len(vlans) > C.ETH_MAX_VLAN_TAGS:
        raise ValueError(f"at most {C.ETH_MAX_VLAN_TAGS} VLAN tags")
    out = bytes(dst) + bytes(src)
    for tag in vlans:
        if tag.tpid not in _TAG_TPIDS or not 0 <= tag.pcp <= 7 or not 0 <= tag.vid <= 4095:
            raise ValueError(f"bad VLAN tag {tag}")
        out += _U16.pack(tag.tpid) + _U16.pack(tag.tci())
    return out


def ethernet2(dst: bytes, src: bytes, ethertype: int, payload: bytes, vlans: tuple[VlanTag, ...] = ()) -> bytes:
    """An Ethernet II frame (no padding to 60 bytes: TAP interfaces do not need it)."""
    if not C.ETH_MIN_ETHERTYPE <= ethertype <= 0xFFFF or ethertype in _TAG_TPIDS:
        raise ValueError(f"0x{ethertype:04x} is not an EtherType")
    return _header(dst, src, vlans) + _U16.pack(ethertype) + bytes(payload)


def ieee8023(dst: bytes, src: bytes, body: bytes, vlans: tuple[VlanTag, ...] = ()) -> bytes:
    """An IEEE 802.3 frame with a length field; `body` is everything after it (LLC or raw)."""
    if len(body) > C.ETH_MAX_LENGTH:
        raise ValueError(f"802.3 payload of {len(body)} bytes exceeds {C.ETH_MAX_LENGTH}")
    return _header(dst, src, vlans) + _U16.pack(len(body)) + bytes(body)


def llc(dst: bytes, src: bytes, dsap: int, ssap: int, control: int, payload: bytes,
        vlans: tuple[VlanTag, ...] = ()) -> bytes:
    """An 802.2 LLC frame; `control` of a U-frame is 1 byte (low bits 11), else 2 bytes."""
    if not (0 <= dsap <= 255 and 0 <= ssap <= 255):
        raise ValueError("SAPs are bytes")
    if control & 3 == 3 and control <= 0xFF:
        ctl = bytes((control,))
    elif control > 0xFF and (control >> 8) & 3 != 3 and control <= 0xFFFF:
        ctl = _U16.pack(control)
    else:
        raise ValueError(f"bad LLC control 0x{control:x}")
    return ieee8023(dst, src, bytes((dsap, ssap)) + ctl + bytes(payload), vlans)


def snap(dst: bytes, src: bytes, oui: bytes, pid: int, payload: bytes, vlans: tuple[VlanTag, ...] = ()) -> bytes:
    """An 802.2 SNAP frame (LLC aa aa 03, OUI, PID)."""
    if len(oui) != 3 or not 0 <= pid <= 0xFFFF:
        raise ValueError("SNAP needs a 3-byte OUI and a 16-bit PID")
    body = bytes((C.LLC_SAP_SNAP, C.LLC_SAP_SNAP, C.LLC_UI)) + bytes(oui) + _U16.pack(pid) + bytes(payload)
    return ieee8023(dst, src, body, vlans)


IPX_FRAMINGS = ("ethernet2", "raw8023", "llc", "snap")


def ipx_frame(dst: bytes, src: bytes, ipx_packet: bytes, framing: str, vlans: tuple[VlanTag, ...] = ()) -> bytes:
    """An IPX packet in one of the four Novell framings (IPX_FRAMINGS)."""
    if len(ipx_packet) < C.IPX_HEADER_LEN:
        raise ValueError("an IPX packet has a 30-byte header")
    if framing == "ethernet2":
        return ethernet2(dst, src, C.ETHERTYPE_IPX, ipx_packet, vlans)
    if framing == "raw8023":
        if ipx_packet[:2] != b"\xff\xff":
            raise ValueError("raw 802.3 needs the IPX checksum field 0xffff")
        return ieee8023(dst, src, ipx_packet, vlans)
    if framing == "llc":
        return llc(dst, src, C.LLC_SAP_IPX, C.LLC_SAP_IPX, C.LLC_UI, ipx_packet, vlans)
    if framing == "snap":
        return snap(dst, src, b"\x00\x00\x00", C.ETHERTYPE_IPX, ipx_packet, vlans)
    raise ValueError(f"unknown IPX framing {framing!r}")


def ipx_packet(dst_net: int, dst_node: bytes, dst_socket: int, src_net: int, src_node: bytes, src_socket: int,
               data: bytes, packet_type: int = 4) -> bytes:
    """An IPX packet: checksum 0xffff, length, transport control 0, type, dst and src (net, node, socket)."""
    length = C.IPX_HEADER_LEN + len(data)
    if length > C.ETH_MAX_LENGTH:
        raise ValueError("IPX packet too long")
    return struct.pack("!HHBBI6sHI6sH", C.IPX_RAW_8023_CHECKSUM, length, 0, packet_type,
                       dst_net, bytes(MAC(dst_node)), dst_socket, src_net, bytes(MAC(src_node)), src_socket) + bytes(data)
