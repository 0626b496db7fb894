"""Unit tests of shoal.lab.nat: the rulesets carry the statements each NAT type relies on."""

from __future__ import annotations

from shoal.lab.nat import carrier_ruleset, faults_ruleset, router_ruleset
from shoal.lab.topology import HostSpec, Topology


def _router(nat: str, hairpin: bool = False, shared: bool = False):
    clients = [HostSpec("x", nat, "r" if shared else None, hairpin)]
    if shared:
        clients.append(HostSpec("y", nat, "r", hairpin))
    plan = Topology(clients=clients).plan()
    return next(iter(plan.routers.values()))


def test_nat_types_map_to_rules() -> None:
    prc = router_ruleset(_router("port-restricted"))
    assert 'oifname "wan0" masquerade\n' in prc and "fully-random" not in prc and "@hp" not in prc
    assert "policy drop" in prc
    sym = router_ruleset(_router("symmetric"))
    assert "masquerade random,fully-random" in sym
    cone = _router("full-cone")
    text = router_ruleset(cone)
    assert f'iifname "wan0" ip daddr {cone.wan_addr} dnat ip addr . port to udp dport map @hp' in text
    assert "update @hp" in text
    blk = router_ruleset(_router("udp-blocked"))
    assert "tcp dport { 80, 443 } accept" in blk and 'oifname "wan0" accept' not in blk
    assert "masquerade" in carrier_ruleset()


def test_hairpin_only_when_asked() -> None:
    on = _router("port-restricted", hairpin=True, shared=True)
    text = router_ruleset(on)
    assert f'iifname "lan0" ip daddr {on.wan_addr} dnat' in text
    assert f"snat to {on.wan_addr}" in text
    off = router_ruleset(_router("port-restricted", hairpin=False, shared=True))
    assert 'iifname "lan0" ip daddr' not in off and "snat to" not in off


def test_rulesets_replace_atomically() -> None:
    text = router_ruleset(_router("port-restricted"))
    assert text.startswith("add table ip shoal\ndelete table ip shoal\ntable ip shoal {")


def test_faults_ruleset_percent_resolution() -> None:
    text = faults_ruleset({("p1", "q1"): 12.5, ("p2", "q2"): 0})
    assert 'iifname { "p1", "q1" } numgen random mod 10000 < 1250 drop' in text
    assert 'oifname { "p1", "q1" } numgen random mod 10000 < 1250 drop' in text
    assert "p2" not in text
