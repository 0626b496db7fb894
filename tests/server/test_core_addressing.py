"""shoal.server.core.addressing: node ids, IPv4 picks (never .0/.255 nor the reserved /24,
bounded search), IPv6 from the IPv4, source prefixes (none for loopback)."""

from __future__ import annotations

import ipaddress

from shoal.server.core.addressing import IPV4_RESERVED, ipv6_for, make_ula_prefix, new_ipv4, new_node_id, source_prefix_of
from shoal.wireguard.keys import PrivateKey

KEY = PrivateKey.from_seed(b"addr" * 8).public_key()


def test_node_id_is_hash_prefix_and_grows_on_collision() -> None:
    first = new_node_id(KEY, set())
    assert first is not None and len(first) == 6 and first.isalnum() and first == first.lower()
    second = new_node_id(KEY, {first})
    assert second is not None and len(second) == 7 and second.startswith(first)


def test_ipv4_skips_taken_reserved_and_edge_addresses() -> None:
    pool = ipaddress.IPv4Network("100.64.0.0/23")  # half of it is the reserved /24
    used: set[str] = set()
    for _ in range(254):
        got = new_ipv4(KEY, pool, used)
        assert got is not None and got not in used
        addr = ipaddress.IPv4Address(got)
        assert addr not in IPV4_RESERVED and int(addr) & 0xFF not in (0, 255)
        used.add(got)
    assert new_ipv4(KEY, pool, used) is None  # full: refused, not an endless search


def test_ipv6_carries_the_ipv4_and_prefix_is_ula() -> None:
    ula = make_ula_prefix(lambda n: b"\x01" * n)
    assert str(ula) == "fd01:101:101::/48"
    assert ipv6_for(ula, "100.64.1.2") == "fd01:101:101::6440:102"


def test_source_prefix() -> None:
    assert source_prefix_of(None) is None and source_prefix_of("127.0.0.1") is None and source_prefix_of("::1") is None
    assert source_prefix_of("203.0.113.9") == source_prefix_of("::ffff:203.0.113.77") == "203.0.113.0/24"
    assert source_prefix_of("not-an-ip") == "not-an-ip"
