"""Overlay addressing (see "Identity" in the package docstring): the server's ULA /48
(`make_ula_prefix`), node ids from the key's hash, a new node's IPv4 from the pool (hashed
probes, then a bounded scan), its IPv6 (ULA prefix + the IPv4's 32 bits) and a session's
source prefix. Pure functions: the caller passes what is taken.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
from collections.abc import Callable, Container

from shoal import constants as C
from shoal.control.limits import source_prefix
from shoal.wireguard.keys import PublicKey

__all__ = ["IPV4_POOL", "IPV4_RESERVED", "NODE_ID_LEN", "make_ula_prefix", "b32", "new_node_id", "new_ipv4",
           "ipv6_for", "source_prefix_of"]

IPV4_POOL = ipaddress.IPv4Network("100.64.0.0/10")
IPV4_RESERVED = ipaddress.IPv4Network("100.64.0.0/24")
NODE_ID_LEN = 6


def make_ula_prefix(rng: Callable[[int], bytes] = os.urandom) -> ipaddress.IPv6Network:
    """A random RFC 4193 ULA /48: fd00::/8 + 40 random bits."""
    raw = b"\xfd" + rng(5) + bytes(10)
    return ipaddress.IPv6Network((raw, 48))


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def new_node_id(key: PublicKey, taken: Container[str]) -> str | None:
    """The first NODE_ID_LEN base32 characters of BLAKE2s(key), longer on a collision."""
    text = b32(hashlib.blake2s(bytes(key), digest_size=16).digest())
    for n in range(NODE_ID_LEN, 17):
        cand = text[:n]
        if cand not in taken:
            return cand
    return None  # 16 base32 chars = 80 bits: unreachable; refused like a full pool


def new_ipv4(key: PublicKey, pool: ipaddress.IPv4Network, used: Container[str]) -> str | None:
    """A free IPv4 for a new key: IPV4_PROBE_MAX hashed probes, then IPV4_SCAN_MAX addresses
    from the last one (wrapping inside the pool); None when neither finds one."""
    base, size = int(pool.network_address), pool.num_addresses

    def free(offset: int) -> str | None:
        addr = ipaddress.IPv4Address(base + offset % size)
        if int(addr) & 0xFF in (0, 255) or addr in IPV4_RESERVED:
            return None
        text = str(addr)
        return None if text in used else text

    h = 0
    for i in range(C.IPV4_PROBE_MAX):
        h = int.from_bytes(hashlib.blake2s(bytes(key) + i.to_bytes(4, "big"), digest_size=8).digest(), "big")
        if (got := free(h)) is not None:
            return got
    for j in range(1, min(size, C.IPV4_SCAN_MAX) + 1):
        if (got := free(h + j)) is not None:
            return got
    return None


def ipv6_for(ula_prefix: ipaddress.IPv6Network, ipv4: str) -> str:
    """The node's IPv6: the ULA /48 prefix with the IPv4's 32 bits as the interface id."""
    return str(ipaddress.IPv6Address(int(ula_prefix.network_address) | int(ipaddress.IPv4Address(ipv4))))


def source_prefix_of(remote_ip: str | None) -> str | None:
    """The node's source prefix (/NODE_SOURCE_PREFIX_V4, /NODE_SOURCE_PREFIX_V6); None for an
    unknown source or loopback (the server host's own processes), which are never limited."""
    if remote_ip is None:
        return None
    try:
        ip = ipaddress.ip_address(remote_ip)
    except ValueError:
        return remote_ip  # not an address: its own group
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return None
    return source_prefix(str(ip), C.NODE_SOURCE_PREFIX_V4, C.NODE_SOURCE_PREFIX_V6)
