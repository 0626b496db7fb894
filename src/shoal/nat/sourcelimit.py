"""Per-source token buckets at two levels, an address and its prefix (sans-IO).

Owns: the decision "may this source address get an answer now". Used by the STUN responder
(issue 18 F14) so that a spoofer cannot aim unlimited answers at one victim address or
network. Two levels, both must have a token:

    address   an IPv4 address (a v4-mapped IPv6 address counts as IPv4); an IPv6 /64 (one
              host owns a whole /64: `shoal.wireguard.ratelimit.source_key`)
    prefix    IPv4 /prefix_v4 (24), IPv6 /prefix_v6 (48)

Each level is a `shoal.lan.storm.StormLimiter` (a new key starts full; at most `max_keys`
buckets, full ones forgotten first, then the least recently used: forgetting only makes a
bucket fuller). `allow(ip, now)` returns None when both levels had a token (both are spent),
else the name of the level that refused ("address" or "prefix"). An address that is not an
IP address is refused as "address" (never raised). `now` is passed in; no clock here.
"""

from __future__ import annotations

import ipaddress

from shoal.lan.storm import StormLimiter
from shoal.wireguard.ratelimit import source_key

__all__ = ["SourceLimiter", "prefix_key"]


def prefix_key(ip: str, prefix_v4: int, prefix_v6: int) -> bytes:
    """The prefix an address belongs to, as bytes (v4-mapped IPv6 counts as IPv4)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    bits = prefix_v4 if addr.version == 4 else prefix_v6
    net = ipaddress.ip_network(f"{addr}/{bits}", strict=False)
    return bytes((addr.version,)) + net.network_address.packed


class SourceLimiter:
    """See the module docstring."""

    def __init__(self, *, rate: float, burst: float, prefix_rate: float, prefix_burst: float,
                 max_keys: int, prefix_v4: int = 24, prefix_v6: int = 48) -> None:
        self.address = StormLimiter(rate, burst, max_keys)
        self.prefix = StormLimiter(prefix_rate, prefix_burst, max_keys)
        self.prefix_v4 = prefix_v4
        self.prefix_v6 = prefix_v6

    def allow(self, ip: str, now: float) -> str | None:
        try:
            akey = source_key(ip)
            pkey = prefix_key(ip, self.prefix_v4, self.prefix_v6)
        except ValueError:
            return "address"
        if not self.address.allow(akey, None, now):
            return "address"
        if not self.prefix.allow(pkey, None, now):
            return "prefix"
        return None
