"""Unit tests of shoal.lab.matrix (no root): the matrix plan, status parsing, ping output."""

from __future__ import annotations

import itertools
import os

import pytest

from shoal.lab.matrix import cpu_seconds, matrix_plan, reply_times, tunnel
from shoal.lab.topology import NAT_TYPES


def _peer_pairs(networks: dict[str, list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for members in networks.values() for p in itertools.combinations(members, 2)}


def test_plan_covers_every_unordered_type_pair_once_plus_lan_pairs() -> None:
    plan = matrix_plan()
    typed = [p for p in plan.pairs if p.lan is None]
    kinds = [frozenset((p.kind_a, p.kind_b)) for p in typed]
    assert len(typed) == 21 == len(set(kinds))
    assert set(kinds) == {frozenset(c) for c in itertools.combinations_with_replacement(NAT_TYPES, 2)}
    assert sorted(p.lan for p in plan.pairs if p.lan) == ["same NAT, hairpin", "same NAT, no hairpin"]
    assert len(plan.pairs) == 23


def test_plan_networks_make_exactly_the_pairs_under_test_peers() -> None:
    plan = matrix_plan()
    assert _peer_pairs(plan.networks) == {frozenset((p.a, p.b)) for p in plan.pairs}
    for p in plan.pairs:
        assert p.a in plan.networks[p.network] and p.b in plan.networks[p.network]


def test_plan_hosts_match_their_kinds_and_nats_are_distinct_or_shared_as_asked() -> None:
    plan = matrix_plan()
    plan.topology.validate()
    specs = {s.name: s for s in plan.topology.clients}
    assert len(specs) == 16
    for p in plan.pairs:
        a, b = specs[p.a], specs[p.b]
        assert (a.nat, b.nat) == (p.kind_a, p.kind_b)
        if p.lan is None:
            assert a.router is None and b.router is None  # each NATed host gets its own router
        else:
            assert a.router == b.router is not None and a.hairpin == b.hairpin == (p.lan == "same NAT, hairpin")
    built = plan.topology.plan()
    routers_of = {name: h.router for name, h in built.hosts.items()}
    same_type = [p for p in plan.pairs if p.lan is None and p.kind_a == p.kind_b and p.kind_a != "public"]
    assert same_type and all(routers_of[p.a] != routers_of[p.b] for p in same_type)


def test_small_plan_and_bad_type() -> None:
    plan = matrix_plan(("public",), shared_nat=False)
    assert [(p.a, p.b) for p in plan.pairs] == [("pub1", "pub2")] and "mx" not in plan.networks
    with pytest.raises(ValueError):
        matrix_plan(("cone",))


def test_tunnel_reads_a_nested_object_or_the_row() -> None:
    nested = {"peers": [{"nickname": "b", "tunnel": {"path": "relay", "endpoint": None, "lan": False}}]}
    flat = {"peers": [{"nickname": "b", "path": "direct", "endpoint": "203.0.113.11:5"}]}
    assert tunnel(nested, "b") == {"path": "relay", "endpoint": None, "lan": False}
    assert tunnel(flat, "b")["endpoint"] == "203.0.113.11:5"
    assert tunnel(flat, "c") is None and tunnel({}, "b") is None


def test_reply_times_from_ping_D_output() -> None:
    out = ("PING 100.64.0.2 (100.64.0.2) 56(84) bytes of data.\n"
           "[1763820000.250000] From 100.64.0.1 icmp_seq=1 Destination Host Unreachable\n"
           "[1763820000.512345] 64 bytes from 100.64.0.2: icmp_seq=3 ttl=64 time=1.02 ms\n"
           "[1763820000.612345] 64 bytes from 100.64.0.2: icmp_seq=4 ttl=64 time=0.98 ms\n")
    assert reply_times(out) == [1763820000.512345, 1763820000.612345]
    assert reply_times("") == [] and reply_times("garbage\n[x] 64 bytes from") == []


def test_cpu_seconds_of_this_process_and_of_a_gone_pid() -> None:
    sum(i * i for i in range(200_000))
    assert cpu_seconds([os.getpid()]) > 0
    assert cpu_seconds([2**22 + 12345]) == 0
