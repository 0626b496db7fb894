"""The Shoal extension message: what rides inside a WireGuard transport message besides unicast IP.

A WireGuard transport message's plaintext is an IP packet (first nibble 4 or 6), or empty (a
keepalive). Shoal puts broadcast/multicast IP packets and layer-2 frames in the *same*
encrypted transport messages (same session keys, counters and replay window), behind a header
whose first nibble, 5, no IP packet has. They are sent only to peers the control plane lists as
Shoal nodes; a stock WireGuard peer never receives one (and would drop it as an unknown IP
version if it did).

Wire format (plaintext of one transport message; integers big-endian):

    offset  size  field
    0       1     0x51: high nibble LAN_EXT_MARKER (5), low nibble LAN_EXT_VERSION (1)
    1       1     kind: LAN_EXT_KIND_IP (1)    payload is one IPv4/IPv6 packet whose destination
                                               is a broadcast or multicast address
                        LAN_EXT_KIND_FRAME (2) payload is one Ethernet frame (no FCS) of a
                                               layer-2 network
    2       1     flags: 0 (version 1 defines none; a message with any bit set is refused:
                  meaning changes come with a new version nibble)
    3       1     L: length of the network id, 1..LAN_EXT_MAX_NETWORK_ID (16)
    4       L     network id: ASCII [a-z0-9], the control plane's NetworkId of the network
                  this packet belongs to (the receiver checks the sender shares it)
    4+L     2     n: payload length
    6+L     n     payload: kind IP 20..LAN_EXT_MAX_IP_PAYLOAD (1500) bytes,
                           kind FRAME 14..LAN_EXT_MAX_FRAME (1522) bytes
    6+L+n   p     zero padding the WireGuard sender appended (p <= 15), ignored

So the header is 6+L bytes: 14 for today's 8-character network ids, at most 22
(LAN_EXT_MAX_HEADER). `decode` raises only `ExtensionError` (fuzz-tested); `encode` raises
ValueError on misuse. Neither looks inside the payload: classification and origin checks are
`shoal.lan.broadcast`'s.
"""

from __future__ import annotations

import dataclasses
import re

from shoal import constants as C

FIRST_BYTE = (C.LAN_EXT_MARKER << 4) | C.LAN_EXT_VERSION
KINDS = (C.LAN_EXT_KIND_IP, C.LAN_EXT_KIND_FRAME)
_ID_RE = re.compile(rb"[a-z0-9]{1,%d}" % C.LAN_EXT_MAX_NETWORK_ID)
_LIMITS = {
    C.LAN_EXT_KIND_IP: (20, C.LAN_EXT_MAX_IP_PAYLOAD),
    C.LAN_EXT_KIND_FRAME: (C.ETH_HEADER_LEN, C.LAN_EXT_MAX_FRAME),
}


class ExtensionError(ValueError):
    """A received extension message is malformed or of an unknown version (the peer's fault)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Extension:
    kind: int
    network_id: str
    payload: bytes


def is_extension(plaintext: bytes | bytearray | memoryview) -> bool:
    """True when a transport plaintext is meant for this module (first nibble 5, any version)."""
    return len(plaintext) > 0 and plaintext[0] >> 4 == C.LAN_EXT_MARKER


def encode(kind: int, network_id: str, payload: bytes) -> bytes:
    """The plaintext to seal for one peer. ValueError if any field is out of its limits."""
    if kind not in _LIMITS:
        raise ValueError(f"unknown extension kind {kind}")
    nid = network_id.encode("ascii", "strict") if network_id.isascii() else b""
    if not _ID_RE.fullmatch(nid):
        raise ValueError(f"bad network id {network_id!r}")
    low, high = _LIMITS[kind]
    if not low <= len(payload) <= high:
        raise ValueError(f"payload of {len(payload)} bytes outside {low}..{high} for kind {kind}")
    return bytes((FIRST_BYTE, kind, 0, len(nid))) + nid + len(payload).to_bytes(2, "big") + bytes(payload)


def decode(plaintext: bytes | bytearray | memoryview) -> Extension:
    """Parse a received plaintext (padding included). Raises ExtensionError, nothing else."""
    data = bytes(plaintext)
    n = len(data)
    if n < 4:
        raise ExtensionError(f"extension of {n} bytes is shorter than its header")
    if data[0] >> 4 != C.LAN_EXT_MARKER:
        raise ExtensionError("not an extension message")
    if data[0] & 0x0F != C.LAN_EXT_VERSION:
        raise ExtensionError(f"unknown extension version {data[0] & 0x0F}")
    kind, flags, id_len = data[1], data[2], data[3]
    if kind not in _LIMITS:
        raise ExtensionError(f"unknown extension kind {kind}")
    if flags:
        raise ExtensionError(f"unknown flags 0x{flags:02x}")
    if not 1 <= id_len <= C.LAN_EXT_MAX_NETWORK_ID:
        raise ExtensionError(f"network id length {id_len}")
    start = 6 + id_len
    if n < start:
        raise ExtensionError("truncated header")
    nid = data[4 : 4 + id_len]
    if not _ID_RE.fullmatch(nid):
        raise ExtensionError("network id is not [a-z0-9]")
    length = int.from_bytes(data[4 + id_len : start], "big")
    low, high = _LIMITS[kind]
    if not low <= length <= high:
        raise ExtensionError(f"payload length {length} outside {low}..{high}")
    end = start + length
    if end > n:
        raise ExtensionError(f"payload length {length} exceeds the {n - start} bytes present")
    padding = data[end:]
    if len(padding) > C.LAN_EXT_MAX_PADDING or padding.count(0) != len(padding):
        raise ExtensionError("trailing bytes are not WireGuard padding")
    return Extension(kind, nid.decode("ascii"), data[start:end])
