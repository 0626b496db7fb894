"""Internet checksums (RFC 1071) at C speed, for the TUN offload code.

The 16-bit ones'-complement sum of a byte string equals ``int.from_bytes(data, "big") % 0xFFFF``
(because 2**16 == 1 mod 0xFFFF), except that the ones'-complement sum of a non-zero string
whose residue is 0 is 0xFFFF ("negative zero"). An odd-length string is summed as if padded
with one zero byte. Partial sums of pieces may be added together (mod 0xFFFF) as long as every
piece except the last starts at an even offset of the whole, i.e. has even length.

Functions here return *residues* (0..0xFFFE): cheap to add. ``finish`` turns a residue into the
16-bit value written into a header (the complement of the folded sum).
"""

from __future__ import annotations

_M = 0xFFFF


def residue(data: bytes | bytearray | memoryview) -> int:
    """Ones'-complement sum of ``data`` as a residue mod 0xFFFF (odd length: zero-padded)."""
    n = int.from_bytes(data, "big")
    if len(data) & 1:
        n <<= 8
    return n % _M


def finish(res: int, nonzero: bool = True) -> int:
    """The checksum field value for a sum with residue ``res``.

    ``nonzero`` says the summed data was not all zero bytes (always true when a pseudo-header
    with a protocol number is included); then a residue of 0 is the sum 0xFFFF and the
    checksum is 0x0000.
    """
    res %= _M
    if res == 0:
        return 0 if nonzero else _M
    return _M - res  # == ~res & 0xFFFF


def fold(res: int) -> int:
    """The folded (not complemented) 16-bit sum for a residue: what CHECKSUM_PARTIAL wants."""
    res %= _M
    return res if res else _M


def ip_header_checksum(header: bytes | bytearray | memoryview) -> int:
    """The IPv4 header checksum of ``header`` whose checksum field (bytes 10-11) is zero."""
    return finish(residue(header))


def pseudo_residue(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Residue of the IPv4 (4-byte addresses) or IPv6 (16-byte) pseudo-header."""
    return (int.from_bytes(src, "big") + int.from_bytes(dst, "big") + proto + length) % _M


def slow_checksum(data: bytes) -> int:
    """Reference RFC 1071 checksum, word by word: used by tests as an independent oracle."""
    if len(data) & 1:
        data = data + b"\x00"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def slow_l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes) -> int:
    """Reference TCP/UDP checksum over pseudo-header + segment (checksum field must be zero)."""
    if len(src) == 4:
        pseudo = src + dst + bytes([0, proto]) + len(segment).to_bytes(2, "big")
    else:
        pseudo = src + dst + len(segment).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    return slow_checksum(pseudo + segment)


__all__ = [
    "residue",
    "finish",
    "fold",
    "ip_header_checksum",
    "pseudo_residue",
    "slow_checksum",
    "slow_l4_checksum",
]
