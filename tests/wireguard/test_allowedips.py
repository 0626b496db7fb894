"""Tests of shoal.wireguard.allowedips against a brute-force longest-prefix reference."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.wireguard.allowedips import AllowedIPs, Network


class Peer:
    """Opaque, unhashable on purpose: the table must compare values by identity."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, name: str) -> None:
        self.name = name

    def __eq__(self, other: object) -> bool:  # equal names must still be different peers
        return isinstance(other, Peer) and other.name == self.name

    def __repr__(self) -> str:
        return f"Peer({self.name})"


class Reference:
    """Brute force: a list of (network, value); lookup scans everything."""

    def __init__(self) -> None:
        self.routes: dict[Network, Peer] = {}

    def insert(self, net: Network, value: Peer) -> None:
        self.routes[net] = value

    def remove_prefix(self, net: Network) -> None:
        self.routes.pop(net, None)

    def remove_value(self, value: Peer) -> None:
        self.routes = {n: v for n, v in self.routes.items() if v is not value}

    def lookup(self, addr: bytes) -> Peer | None:
        ip = ipaddress.ip_address(addr)
        best: tuple[int, Peer] | None = None
        for net, v in self.routes.items():
            if net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, v)
        return None if best is None else best[1]

    def entries_for(self, value: Peer) -> list[Network]:
        return sorted((n for n, v in self.routes.items() if v is value), key=lambda n: (n.version, n.network_address, n.prefixlen))


PEERS = [Peer(f"p{i}") for i in range(6)] + [Peer("p0")]  # a twin with an equal name

# Addresses clustered so that prefixes overlap a lot.
v4_addr = st.builds(lambda hi, lo: (10 << 24) | (hi << 8) | lo, st.integers(0, 3), st.integers(0, 255)) | st.integers(0, 2**32 - 1)
v6_addr = st.builds(lambda hi, lo: (0xFD << 120) | (hi << 64) | lo, st.integers(0, 3), st.integers(0, 3)) | st.integers(0, 2**128 - 1)
v4_net = st.builds(lambda a, l: ipaddress.IPv4Network((a, l), strict=False), v4_addr, st.integers(0, 32))
v6_net = st.builds(lambda a, l: ipaddress.IPv6Network((a, l), strict=False), v6_addr, st.sampled_from([0, 1, 7, 8, 48, 63, 64, 65, 120, 126, 127, 128]))
net = v4_net | v6_net
peer = st.sampled_from(PEERS)
operation = st.one_of(
    st.tuples(st.just("insert"), net, peer),
    st.tuples(st.just("insert"), net, peer),
    st.tuples(st.just("remove_prefix"), net, st.none()),
    st.tuples(st.just("remove_value"), st.none(), peer),
)
probe = st.builds(lambda a: a.to_bytes(4, "big"), v4_addr) | st.builds(lambda a: a.to_bytes(16, "big"), v6_addr)


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=60), st.lists(probe, min_size=1, max_size=40))
def test_matches_brute_force(ops: list[tuple[str, Network | None, Peer | None]], probes: list[bytes]) -> None:
    table: AllowedIPs[Peer] = AllowedIPs()
    ref = Reference()
    for kind, n, p in ops:
        if kind == "insert":
            assert n is not None and p is not None
            table.insert(n, p)
            ref.insert(n, p)
        elif kind == "remove_prefix":
            assert n is not None
            table.remove_prefix(n)
            ref.remove_prefix(n)
        else:
            assert p is not None
            table.remove_value(p)
            ref.remove_value(p)
    # probe the prefixes themselves too: their first and last addresses
    extra = [n.network_address.packed for _, n, _ in ops if n is not None]
    extra += [n.broadcast_address.packed for _, n, _ in ops if n is not None]
    for addr in probes + extra:
        assert table.lookup(addr) is ref.lookup(addr), ipaddress.ip_address(addr)
    for p in PEERS:
        assert table.entries_for(p) == ref.entries_for(p)
    assert len(table) == len(ref.routes)


def test_longest_prefix_and_move() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    a, b, c = Peer("a"), Peer("b"), Peer("c")
    t.insert(ipaddress.ip_network("0.0.0.0/0"), c)
    t.insert(ipaddress.ip_network("100.64.0.0/10"), a)
    t.insert(ipaddress.ip_network("100.64.1.7/32"), b)
    assert t.lookup(bytes([100, 64, 1, 7])) is b
    assert t.lookup(bytes([100, 64, 1, 8])) is a
    assert t.lookup(bytes([8, 8, 8, 8])) is c
    assert t.lookup(bytes(16)) is None  # no IPv6 routes
    t.insert("100.64.9.9/10", b)  # host bits ignored; moves the /10 from a to b
    assert t.lookup(bytes([100, 64, 1, 8])) is b
    assert t.entries_for(a) == []
    assert t.entries_for(b) == [ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("100.64.1.7/32")]
    assert t.remove_value(b) == 2
    assert t.lookup(bytes([100, 64, 1, 7])) is c
    assert t.remove_prefix("0.0.0.0/0")
    assert not t.remove_prefix("0.0.0.0/0")
    assert len(t) == 0 and t.values() == []


def test_ipv6_and_memoryview() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    p = Peer("six")
    t.insert(ipaddress.ip_network("fd7a:115c:a1e0::/48"), p)
    packet = bytearray(40)
    packet[24:40] = ipaddress.ip_address("fd7a:115c:a1e0::1").packed  # IPv6 destination
    assert t.lookup(memoryview(packet)[24:40]) is p
    assert t.get("fd7a:115c:a1e0::/48") is p


def test_misuse_raises() -> None:
    t: AllowedIPs[Peer] = AllowedIPs()
    with pytest.raises(ValueError):
        t.lookup(b"\x01\x02\x03")
    with pytest.raises(ValueError):
        t.insert("10.0.0.0/8", None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        t.insert(ipaddress.ip_address("10.0.0.1"), Peer("x"))  # type: ignore[arg-type]


def test_scales_to_thousands_of_peers() -> None:
    rng = random.Random(7)
    t: AllowedIPs[Peer] = AllowedIPs()
    peers = [Peer(str(i)) for i in range(5000)]
    addrs = []
    for i, p in enumerate(peers):
        ip = (100 << 24) | (64 << 16) | i
        t.insert(ipaddress.IPv4Network((ip, 32)), p)
        t.insert(ipaddress.IPv6Network(((0xFD7A << 112) | i, 128)), p)
        addrs.append(ip.to_bytes(4, "big"))
    for _ in range(300):
        length = rng.choice([12, 16, 20, 24])
        t.insert(ipaddress.IPv4Network((rng.getrandbits(32), length), strict=False), rng.choice(peers))
    t.insert("0.0.0.0/0", peers[0])
    assert all(t.lookup(a) is p for a, p in zip(addrs, peers))
    for p in peers[::2]:
        t.remove_value(p)
    assert t.lookup(addrs[0]) is not peers[0] and t.entries_for(peers[0]) == []
    assert t.lookup(addrs[1]) is peers[1]
