"""Unit tests of shoal.lab.topology: validation (one-line errors), TOML, address plan."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from shoal.lab.topology import (INTERNET_PREFIXES, MAX_CLIENTS, HostSpec, LabConfigError,
                                Topology)


def test_plan_addresses_public_and_nat() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("b", nat="port-restricted"),
                             HostSpec("c", nat="double-nat")])
    plan = topo.plan()
    a, b, c = plan.hosts["a"], plan.hosts["b"], plan.hosts["c"]
    assert a.gateway is None and ipaddress.ip_address(a.addr) in ipaddress.ip_network("203.0.113.0/24")
    assert b.addr == "198.18.1.2" and b.gateway == "198.18.1.1"
    rb, rc = plan.routers["b"], plan.routers["c"]
    assert rb.wan_addr.startswith("203.0.113.") and rb.carrier_role is None
    assert rc.carrier_role == "c-c" and rc.wan_addr == "198.19.2.2"
    assert rc.carrier_wan_addr is not None and rc.carrier_wan_addr.startswith("203.0.113.")
    # every internet-facing address is distinct and inside a lab prefix
    faces = [a.addr, rb.wan_addr, rc.carrier_wan_addr, *plan.server_addrs]
    assert len(set(faces)) == len(faces)
    nets = [ipaddress.ip_network(p) for p in INTERNET_PREFIXES]
    assert all(any(ipaddress.ip_address(f) in n for n in nets) for f in faces)
    assert plan.roles()[:2] == ["inet", "server"]


def test_shared_router_groups_clients() -> None:
    topo = Topology(clients=[HostSpec("x", "port-restricted", "home", True),
                             HostSpec("y", "port-restricted", "home", True)])
    plan = topo.plan()
    assert list(plan.routers) == ["home"]
    assert plan.routers["home"].clients == ["x", "y"] and plan.routers["home"].hairpin
    assert {plan.hosts["x"].addr, plan.hosts["y"].addr} == {"198.18.1.2", "198.18.1.3"}


@pytest.mark.parametrize("clients, fragment", [
    ([HostSpec("a", nat="cone")], "unknown NAT type 'cone'"),
    ([HostSpec("a"), HostSpec("a")], "duplicate host name 'a'"),
    ([HostSpec("Bad!")], "bad host name"),
    ([HostSpec("server")], "reserved"),
    ([HostSpec(f"h{i}") for i in range(MAX_CLIENTS + 1)], "too many hosts"),
    ([HostSpec("a", hairpin=True, nat="port-restricted")], "hairpin needs a shared"),
    ([HostSpec("a", "port-restricted", "r"), HostSpec("b", "symmetric", "r")], "disagree on the NAT"),
    ([HostSpec("a", "public", "r")], "is public but names router"),
])
def test_bad_topologies_give_one_line_errors(clients: list[HostSpec], fragment: str) -> None:
    with pytest.raises(LabConfigError) as ei:
        Topology(clients=clients).plan()
    assert fragment in str(ei.value) and "\n" not in str(ei.value)


def test_toml_roundtrip_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "lab.toml"
    good.write_text('[[client]]\nname = "a"\n\n[[client]]\nname = "b"\nnat = "symmetric"\n')
    topo = Topology.from_toml(good)
    assert topo.clients == [HostSpec("a"), HostSpec("b", nat="symmetric")]
    cases = {
        "[[client]\nname='a'": "malformed topology file",
        "[[client]]\nnat='public'": "missing 'name'",
        "[[client]]\nname='a'\ncolour='red'": "unknown key(s) colour",
        "client = 3": "array of tables",
        "[[client]]\nname='a'\nhairpin='yes'": "true or false",
        "[net]\nx=1": "unknown top-level key",
    }
    for text, fragment in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(LabConfigError) as ei:
            Topology.from_toml(bad)
        assert fragment in str(ei.value), text
        assert "\n" not in str(ei.value)
    with pytest.raises(LabConfigError, match="cannot read"):
        Topology.from_toml(tmp_path / "missing.toml")


def test_parse_args_shorthand() -> None:
    topo = Topology.parse_args(["a=public", "b=port-restricted@home+hairpin", "c=port-restricted@home+hairpin"])
    assert topo.clients[1] == HostSpec("b", "port-restricted", "home", True)
    with pytest.raises(LabConfigError, match="malformed host"):
        Topology.parse_args(["a"])
