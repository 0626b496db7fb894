"""Tests of shoal.testing.fakenet: delivery, impairments, NAT behaviours, determinism.

The `sim` tests at the end probe each NAT type from the outside, the way a STUN-style
self-test would (RFC 5780: mapping test with a second server address and port, filtering
test with change-address / change-port replies, hairpinning, mapping lifetime), and check
that the measured behaviour is the configured one.
"""

from __future__ import annotations


import pytest

from shoal.testing.clock import Scheduler
from shoal.testing.fakenet import (
    Dependence,
    FakeNetwork,
    FakeSocket,
    Host,
    LinkProfile,
    NatBehavior,
    NatRouter,
)

EI = Dependence.ENDPOINT_INDEPENDENT
AD = Dependence.ADDRESS_DEPENDENT
APD = Dependence.ADDRESS_AND_PORT_DEPENDENT

# Underlay addresses from TEST-NET ranges; home LANs from 198.18.0.0/15 (benchmarking).
SERVER_A, SERVER_B = "203.0.113.10", "203.0.113.11"
P1, P2 = 3478, 3479


def two_hosts(**link: float) -> tuple[FakeNetwork, Host, Host]:
    net = FakeNetwork(seed=1)
    a = net.host("a", "192.0.2.1", link=LinkProfile(**link))  # type: ignore[arg-type]
    b = net.host("b", "192.0.2.2")
    return net, a, b


# --- plain delivery ---------------------------------------------------------------------------


def test_delivery_after_latency_of_both_cables() -> None:
    net = FakeNetwork()
    a = net.host("a", "192.0.2.1", link=LinkProfile(latency=0.010))
    b = net.host("b", "192.0.2.2", link=LinkProfile(latency=0.005))
    sa, sb = a.socket(1000), b.socket(2000)
    arrived: list[float] = []
    sb.on_datagram = lambda data, src: arrived.append(net.clock.now())
    sa.sendto(b"hello", ("192.0.2.2", 2000))
    net.run_for(0.0149)
    assert arrived == []
    net.run_for(0.001)
    assert arrived == [pytest.approx(0.015)]
    sb.on_datagram = None
    sa.sendto(b"again", ("192.0.2.2", 2000))
    net.run_until_idle()
    assert sb.recvfrom() == (b"again", ("192.0.2.1", 1000))
    assert sb.recvfrom() is None
    assert net.stats["sent"] == 2 and net.stats["delivered"] == 2


def test_unreachable_port_unknown_host_and_closed_socket() -> None:
    net, a, b = two_hosts()
    s = a.socket()
    assert s.port == 32768 and a.socket().port == 32769
    s.sendto(b"x", ("192.0.2.2", 9))
    s.sendto(b"x", ("192.0.2.99", 9))
    net.run_until_idle()
    assert net.stats["dropped:port-unreachable"] == 1
    assert net.stats["dropped:no-host"] == 1
    with pytest.raises(OSError):
        a.socket(32768)
    s.close()
    a.socket(32768)  # free again
    with pytest.raises(OSError):
        s.sendto(b"x", ("192.0.2.2", 9))


def test_socket_bound_to_one_address_sends_from_it() -> None:
    net = FakeNetwork()
    srv = net.host("srv", SERVER_A)
    srv.attach(net.internet, SERVER_B)
    c = net.host("c", "192.0.2.5").socket(5000)
    sa = srv.socket(P1, address=SERVER_A)
    sb = srv.socket(P1, address=SERVER_B)
    with pytest.raises(OSError):
        srv.socket(P1)  # the wildcard would overlap
    c.sendto(b"to-b", (SERVER_B, P1))
    net.run_until_idle()
    assert sb.recvfrom() == (b"to-b", ("192.0.2.5", 5000)) and sa.recvfrom() is None
    sb.sendto(b"from-b", ("192.0.2.5", 5000))
    net.run_until_idle()
    assert c.recvfrom() == (b"from-b", (SERVER_B, P1))


def test_loss_is_seeded_and_about_right() -> None:
    def lost(seed: int) -> int:
        net = FakeNetwork(seed=seed)
        a = net.host("a", "192.0.2.1", link=LinkProfile(loss=0.3))
        b = net.host("b", "192.0.2.2")
        sa, sb = a.socket(1), b.socket(2)
        for i in range(2000):
            sa.sendto(i.to_bytes(2, "big"), ("192.0.2.2", 2))
        net.run_until_idle()
        return 2000 - len(sb.drain())

    n = lost(7)
    assert 500 < n < 700
    assert lost(7) == n  # same seed, same losses
    assert lost(8) != n


def test_jitter_keeps_order_unless_reordering_is_allowed() -> None:
    def order(reorder: float) -> list[int]:
        net = FakeNetwork(seed=3)
        a = net.host("a", "192.0.2.1", link=LinkProfile(latency=0.02, jitter=0.05, reorder=reorder))
        b = net.host("b", "192.0.2.2")
        sa, sb = a.socket(1), b.socket(2)
        for i in range(200):
            sa.sendto(bytes([i]), ("192.0.2.2", 2))
            net.run_for(0.001)
        net.run_until_idle()
        return [d[0][0] for d in sb.drain()]

    assert order(0.0) == list(range(200))
    shuffled = order(0.5)
    assert sorted(shuffled) == list(range(200)) and shuffled != list(range(200))


def test_duplication_and_mtu() -> None:
    net, a, b = two_hosts(duplicate=1.0, mtu=1280)
    sa, sb = a.socket(1), b.socket(2)
    sa.sendto(b"d" * 100, ("192.0.2.2", 2))
    sa.sendto(b"d" * (1280 - 28), ("192.0.2.2", 2))
    sa.sendto(b"d" * (1280 - 27), ("192.0.2.2", 2))
    net.run_until_idle()
    assert len(sb.drain()) == 4
    assert net.stats["dropped:mtu"] == 1


def test_link_down_loses_traffic_including_in_flight() -> None:
    net = FakeNetwork()
    a = net.host("a", "192.0.2.1")
    b = net.host("b", "192.0.2.2", link=LinkProfile(latency=0.1))
    sa, sb = a.socket(1), b.socket(2)
    sa.sendto(b"in-flight", ("192.0.2.2", 2))
    net.run_for(0.05)
    b.set_link(False)
    sa.sendto(b"while-down", ("192.0.2.2", 2))
    net.run_for(1.0)
    assert sb.drain() == [] and net.stats["lost"] == 2
    b.set_link(True)
    sa.sendto(b"back", ("192.0.2.2", 2))
    net.run_until_idle()
    assert [d for d, _ in sb.drain()] == [b"back"]


def test_address_change() -> None:
    net, a, b = two_hosts()
    sa, sb = a.socket(1), b.socket(2)
    b.set_address("192.0.2.20")
    sa.sendto(b"old", ("192.0.2.2", 2))
    sa.sendto(b"new", ("192.0.2.20", 2))
    sb.sendto(b"reply", ("192.0.2.1", 1))
    net.run_until_idle()
    assert [d for d, _ in sb.drain()] == [b"new"]
    assert sa.recvfrom() == (b"reply", ("192.0.2.20", 2))
    with pytest.raises(ValueError):
        b.set_address("192.0.2.1")  # taken by a
    assert b.address == "192.0.2.20"


# --- NAT ----------------------------------------------------------------------------------------


def natted(behavior: NatBehavior | str, seed: int = 0) -> tuple[FakeNetwork, NatRouter, Host, Host]:
    net = FakeNetwork(seed=seed)
    r = net.router("r", public="198.51.100.1", lan="198.18.1.0/24", behavior=behavior)
    inside = net.host("in", "198.18.1.10", segment=r.lan)
    server = net.host("srv", SERVER_A)
    server.attach(net.internet, SERVER_B)
    return net, r, inside, server


def test_nat_translates_both_ways_and_preserves_port() -> None:
    net, r, inside, server = natted("port-restricted-cone")
    c, s = inside.socket(4000), server.socket(P1)
    c.sendto(b"hi", (SERVER_A, P1))
    net.run_until_idle()
    data, src = s.recvfrom() or (b"", ("", 0))
    assert src == ("198.51.100.1", 4000)
    s.sendto(b"back", src)
    net.run_until_idle()
    assert c.recvfrom() == (b"back", (SERVER_A, P1))
    assert r.mappings() == [(("198.18.1.10", 4000), 4000)]


def test_nat_without_port_preservation_uses_seeded_random_ports() -> None:
    def mapped(seed: int) -> int:
        net, r, inside, server = natted(NatBehavior(port_preservation=False), seed)
        c, s = inside.socket(4000), server.socket(P1)
        c.sendto(b"hi", (SERVER_A, P1))
        net.run_until_idle()
        return (s.recvfrom() or (b"", ("", 0)))[1][1]

    assert mapped(1) == mapped(1) and mapped(1) != 4000 and mapped(1) != mapped(2)


def test_two_inside_hosts_with_the_same_port_get_different_external_ports() -> None:
    net, r, inside, server = natted("port-restricted-cone")
    other = net.host("in2", "198.18.1.11", segment=r.lan)
    s = server.socket(P1)
    inside.socket(4000).sendto(b"1", (SERVER_A, P1))
    other.socket(4000).sendto(b"2", (SERVER_A, P1))
    net.run_until_idle()
    ports = {src[1] for _, src in s.drain()}
    assert len(ports) == 2 and 4000 in ports


@pytest.mark.parametrize(
    ("filtering", "from_other_port", "from_other_ip", "from_stranger"),
    [(EI, True, True, True), (AD, True, False, False), (APD, False, False, False)],
)
def test_filtering(filtering: Dependence, from_other_port: bool, from_other_ip: bool, from_stranger: bool) -> None:
    net, r, inside, server = natted(NatBehavior(filtering=filtering))
    stranger = net.host("x", "192.0.2.66").socket(7)
    c = inside.socket(4000)
    c.sendto(b"open", (SERVER_A, P1))
    net.run_until_idle()
    mapped = ("198.51.100.1", 4000)
    server.socket(P2, address=SERVER_A).sendto(b"port", mapped)
    server.socket(P1, address=SERVER_B).sendto(b"ip", mapped)
    stranger.sendto(b"stranger", mapped)
    server.socket(P1, address=SERVER_A).sendto(b"same", mapped)
    net.run_until_idle()
    got = {d for d, _ in c.drain()}
    assert got == {b"same"} | ({b"port"} if from_other_port else set()) | ({b"ip"} if from_other_ip else set()) | ({b"stranger"} if from_stranger else set())


def test_unsolicited_traffic_to_an_unmapped_port_is_dropped_and_port_forward_lets_it_in() -> None:
    net, r, inside, server = natted("full-cone")
    c = inside.socket(51820)
    s = server.socket(P1)
    s.sendto(b"knock", ("198.51.100.1", 51820))
    net.run_until_idle()
    assert c.drain() == [] and net.stats["dropped:nat-no-mapping"] == 1
    r.forward_port(51820, ("198.18.1.10", 51820))
    s.sendto(b"knock", ("198.51.100.1", 51820))
    net.run_until_idle()
    assert c.drain() == [(b"knock", (SERVER_A, P1))]


def test_mapping_timeout_and_refresh() -> None:
    net, r, inside, server = natted(NatBehavior(mapping_timeout=30.0))
    c, s = inside.socket(4000), server.socket(P1)
    c.sendto(b"open", (SERVER_A, P1))
    net.run_for(20.0)
    s.sendto(b"alive", ("198.51.100.1", 4000))  # inbound does not refresh by default
    net.run_for(10.5)
    s.sendto(b"expired", ("198.51.100.1", 4000))
    net.run_until_idle()
    assert [d for d, _ in c.drain()] == [b"alive"]
    assert r.mappings() == []
    # with inbound refresh, steady inbound traffic keeps the mapping
    net, r, inside, server = natted(NatBehavior(mapping_timeout=30.0, inbound_refreshes=True))
    c, s = inside.socket(4000), server.socket(P1)
    c.sendto(b"open", (SERVER_A, P1))
    for _ in range(4):
        net.run_for(20.0)
        s.sendto(b"tick", ("198.51.100.1", 4000))
    net.run_until_idle()
    assert len(c.drain()) == 4


@pytest.mark.parametrize("mapping", [EI, AD, APD])
def test_mapping_dependence(mapping: Dependence) -> None:
    net, r, inside, server = natted(NatBehavior(mapping=mapping, port_preservation=False))
    c = inside.socket(4000)
    socks = [server.socket(P1, address=SERVER_A), server.socket(P2, address=SERVER_A), server.socket(P1, address=SERVER_B)]
    for s in socks:
        c.sendto(b"m", s.local_address)
    net.run_until_idle()
    p_a1, p_a2, p_b1 = ((s.recvfrom() or (b"", ("", 0)))[1][1] for s in socks)
    assert (p_a1 == p_a2) == (mapping is not APD)
    assert (p_a1 == p_b1) == (mapping is EI)


def test_hairpinning_on_and_off() -> None:
    for hairpin in (True, False):
        net, r, inside, server = natted(NatBehavior(filtering=EI, hairpinning=hairpin))
        other = net.host("in2", "198.18.1.11", segment=r.lan)
        a, b = inside.socket(4000), other.socket(5000)
        a.sendto(b"open", (SERVER_A, P1))  # a's mapping: 198.51.100.1:4000
        b.sendto(b"via-public", ("198.51.100.1", 4000))
        net.run_until_idle()
        got = a.drain()
        if hairpin:
            assert got == [(b"via-public", ("198.51.100.1", 5000))]  # sender's external mapping
        else:
            assert got == [] and net.stats["dropped:no-hairpin"] == 1


def test_nested_nat_cgnat() -> None:
    net = FakeNetwork()
    cgn = net.router("cgn", public="198.51.100.7", lan="100.64.0.0/24", behavior="symmetric")
    home = net.router("home", public="100.64.0.20", lan="198.18.2.0/24", upstream=cgn.lan, behavior="port-restricted-cone")
    pc = net.host("pc", "198.18.2.5", segment=home.lan)
    srv = net.host("srv", SERVER_A)
    c, s = pc.socket(6000), srv.socket(P1)
    c.sendto(b"deep", (SERVER_A, P1))
    net.run_until_idle()
    data, src = s.recvfrom() or (b"", ("", 0))
    assert data == b"deep" and src[0] == "198.51.100.7"
    s.sendto(b"reply", src)
    net.run_until_idle()
    assert c.recvfrom() == (b"reply", (SERVER_A, P1))


def test_router_renumbering_loses_mappings() -> None:
    net, r, inside, server = natted("full-cone")
    c, s = inside.socket(4000), server.socket(P1)
    c.sendto(b"1", (SERVER_A, P1))
    net.run_until_idle()
    r.set_public_address("198.51.100.2")
    assert r.mappings() == []
    s.sendto(b"to-old", ("198.51.100.1", 4000))
    c.sendto(b"2", (SERVER_A, P1))
    net.run_until_idle()
    assert c.drain() == []
    assert [src for _, src in s.drain()] == [("198.51.100.1", 4000), ("198.51.100.2", 4000)]


def test_presets_and_bad_profiles() -> None:
    assert NatBehavior.preset("symmetric").mapping is APD
    assert NatBehavior.preset("restricted-cone", hairpinning=True).hairpinning
    with pytest.raises(ValueError):
        NatBehavior.preset("moderate")
    with pytest.raises(ValueError):
        LinkProfile(loss=1.5)
    net = FakeNetwork()
    with pytest.raises(ValueError):
        net.host("a", "192.0.2.1").attach(net.segment("lan", "198.18.0.0/24"), "10.0.0.1")


# --- simulation: probe each NAT type from outside, as the lab's self-test does -----------------------
#
# Same procedure and vocabulary as shoal.lab.selftest (which runs it against real nftables
# NATs in network namespaces): mapping EIM/ADM/APDM ("none" without NAT), filtering
# EIF/ADF/APDF ("open" without NAT), one-way hairpin with the source the receiver sees.
# We add a two-way hairpin "punch" (both inside hosts send to each other's mapping), which is
# what a hole-punching node does, and a mapping-lifetime check.

E11, E12, E21 = (SERVER_A, P1), (SERVER_A, P2), (SERVER_B, P1)


class Responder:
    """STUN-like server on two addresses x two ports. b"map": answer with the source seen.
    b"filter": answer from each of E11, E12, E21 (payload: the endpoint answering)."""

    def __init__(self, host: Host) -> None:
        self.socks = {ep: host.socket(ep[1], address=ep[0]) for ep in (E11, E12, E21, (SERVER_B, P2))}
        for ep, sock in self.socks.items():
            sock.on_datagram = self._handler(sock)

    def _handler(self, sock: FakeSocket):  # type: ignore[no-untyped-def]
        def on(data: bytes, src: tuple[str, int]) -> None:
            if data == b"map":
                sock.sendto(b"map %s:%d" % (src[0].encode(), src[1]), src)
            elif data == b"filter":
                for ep in (E11, E12, E21):
                    self.socks[ep].sendto(b"via %s:%d" % (ep[0].encode(), ep[1]), src)

        return on


def _ep(text: bytes) -> tuple[str, int]:
    ip, port = text.decode().split(" ", 1)[1].rsplit(":", 1)
    return ip, int(port)


def ask_map(net: FakeNetwork, sock: FakeSocket, server: tuple[str, int], tries: int = 5) -> tuple[str, int] | None:
    for _ in range(tries):  # retries, because the lossy scenarios lose requests
        sock.drain()
        sock.sendto(b"map", server)
        net.run_for(0.5)
        got = [d for d, _ in sock.drain() if d.startswith(b"map ")]
        if got:
            return _ep(got[0])
    return None


def measure(net: FakeNetwork, clients: list[Host], lifetime: float | None) -> dict[str, object]:
    h1 = clients[0]
    s = h1.socket()
    m11, m12, m21 = (ask_map(net, s, e) for e in (E11, E12, E21))
    assert m11 and m12 and m21
    if m11 == (h1.address, s.port):
        mapping = "none"
    else:
        mapping = "EIM" if m11 == m12 == m21 else "ADM" if m11 == m12 else "APDM"
    f = h1.socket()  # a fresh socket: no mapping has talked to anyone yet
    via: set[tuple[str, int]] = set()
    for _ in range(5):
        f.sendto(b"filter", E11)
        net.run_for(0.5)
        via |= {_ep(d) for d, _ in f.drain()}
        if E11 in via:
            break
    if mapping == "none":
        filtering = "open" if via == {E11, E12, E21} else "?"
    else:
        filtering = "EIF" if E21 in via else "ADF" if E12 in via else "APDF"
    out: dict[str, object] = {"mapping": mapping, "filtering": filtering}
    if len(clients) >= 2:
        # one-way hairpin (the lab's test): the sender sends to the listener's mapping
        listen, send = clients[0].socket(), clients[1].socket()
        ml, ms = ask_map(net, listen, E11), ask_map(net, send, E11)
        assert ml and ms
        for _ in range(5):
            send.sendto(b"hairpin", ml)
            net.run_for(0.05)
        got = listen.drain()
        out["hairpin"] = "yes" if got else "no"
        out["hairpin_source_is_mapping"] = bool(got) and got[0][1] == ms
        # two-way punch: both send to the other's mapping, as hole punching does
        x, y = clients[0].socket(), clients[1].socket()
        mx, my = ask_map(net, x, E11), ask_map(net, y, E11)
        assert mx and my
        for _ in range(3):
            x.sendto(b"punch", my)
            y.sendto(b"punch", mx)
            net.run_for(0.5)
        out["hairpin_punch"] = "yes" if (x.drain() and y.drain()) else "no"
    if lifetime is not None and mapping != "none":
        alive = []
        for frac in (0.9, 1.1):
            z = h1.socket()
            mz = ask_map(net, z, E11)
            assert mz
            net.run_for(frac * lifetime - 0.5)
            for _ in range(3):
                net.nodes["srv"]._sockets[(SERVER_A, P1)].sendto(b"still there?", mz)  # type: ignore[attr-defined]
            net.run_for(0.5)
            alive.append(bool(z.drain()))
        out["lifetime"] = "ok" if alive == [True, False] else f"wrong {alive}"
    return out


# Intended behaviour -> what the measurement must show (hairpinning switched on where noted).
SCENARIOS: dict[str, dict[str, object]] = {
    "public": {"mapping": "none", "filtering": "open"},
    "full-cone": {"mapping": "EIM", "filtering": "EIF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "no"},
    "full-cone+hairpin": {"mapping": "EIM", "filtering": "EIF", "hairpin": "yes", "hairpin_source_is_mapping": True, "hairpin_punch": "yes"},
    # one-way hairpin needs EIF: the listener never sent to the router's own address
    "restricted-cone+hairpin": {"mapping": "EIM", "filtering": "ADF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "yes"},
    "port-restricted-cone": {"mapping": "EIM", "filtering": "APDF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "no"},
    # the one-way send is filtered (the listener never sent to the sender); punching works
    "port-restricted-cone+hairpin": {"mapping": "EIM", "filtering": "APDF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "yes"},
    # each side punches toward a mapping the other never uses on the hairpin path
    "symmetric+hairpin": {"mapping": "APDM", "filtering": "APDF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "no"},
    "address-dependent": {"mapping": "ADM", "filtering": "ADF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "no"},
    "double-nat": {"mapping": "EIM", "filtering": "APDF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "no"},
    "cgnat-symmetric": {"mapping": "APDM", "filtering": "APDF", "hairpin": "no", "hairpin_source_is_mapping": False, "hairpin_punch": "no"},
}


def build(scenario: str, seed: int, *, trace: bool = False, loss: float = 0.0) -> tuple[FakeNetwork, list[Host]]:
    net = FakeNetwork(Scheduler(), seed=seed, trace=trace)
    wan = LinkProfile(latency=0.015, jitter=0.01, loss=loss, reorder=0.1)
    lan = LinkProfile(latency=0.001)
    srv = net.host("srv", SERVER_A, link=LinkProfile(latency=0.005))
    srv.attach(net.internet, SERVER_B, LinkProfile(latency=0.005))
    Responder(srv)
    if scenario == "public":
        return net, [net.host("pub", "192.0.2.50", link=wan)]
    name, _, extra = scenario.partition("+")
    kw = dict(hairpinning=extra == "hairpin", mapping_timeout=60.0, port_preservation=not name.endswith("symmetric"))
    if name == "address-dependent":
        behavior = NatBehavior(mapping=AD, filtering=AD, **kw)  # type: ignore[arg-type]
    elif name in ("double-nat", "cgnat-symmetric"):
        outer_type = "port-restricted-cone" if name == "double-nat" else "symmetric"
        outer = net.router("isp", public="198.51.100.9", lan="100.64.0.0/16", behavior=NatBehavior.preset(outer_type, **kw), link=wan)  # type: ignore[arg-type]
        home = net.router("home", public="100.64.0.5", lan="198.18.3.0/24", upstream=outer.lan, behavior="port-restricted-cone")
        return net, [net.host(f"h{i}", f"198.18.3.{10 + i}", segment=home.lan, link=lan) for i in range(2)]
    else:
        behavior = NatBehavior.preset(name, **kw)  # type: ignore[arg-type]
    r = net.router("home", public="198.51.100.1", lan="198.18.3.0/24", behavior=behavior, link=wan)
    return net, [net.host(f"h{i}", f"198.18.3.{10 + i}", segment=r.lan, link=lan) for i in range(2)]


@pytest.mark.sim
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_self_test_measures_each_nat_type(scenario: str) -> None:
    net, clients = build(scenario, seed=5)
    got = measure(net, clients, lifetime=60.0)
    want = dict(SCENARIOS[scenario])
    if scenario != "public":
        want["lifetime"] = "ok"
    assert got == want


@pytest.mark.sim
@pytest.mark.parametrize("scenario", ["port-restricted-cone", "symmetric+hairpin"])
def test_self_test_survives_loss(scenario: str) -> None:
    lost = 0
    for seed in range(5):
        net, clients = build(scenario, seed=seed, loss=0.2)
        got = measure(net, clients[:1], lifetime=None)
        assert got == {k: SCENARIOS[scenario][k] for k in ("mapping", "filtering")}, seed
        lost += net.stats["lost"]
    assert lost > 0


@pytest.mark.sim
def test_determinism_same_seed_same_trace() -> None:
    def run(seed: int) -> list[tuple[object, ...]]:
        net, hosts = build("symmetric+hairpin", seed, trace=True, loss=0.2)
        socks = [h.socket() for h in hosts]
        for i in range(300):
            socks[i % 2].sendto(i.to_bytes(2, "big"), E11 if i % 3 else E21)
            net.run_for(0.003)
        measure(net, hosts, lifetime=None)
        assert net.trace is not None
        return net.trace

    a, b, c = run(11), run(11), run(12)
    assert a == b
    assert a != c
    assert {"sent", "delivered", "lost", "nat-map", "dropped:nat-filtered"} <= {e[1] for e in a}


@pytest.mark.sim
def test_many_scenarios_in_one_process() -> None:
    names = list(SCENARIOS)
    for n in range(40):
        net, hosts = build(names[n % len(names)], seed=n)
        assert ask_map(net, hosts[0].socket(), E11) is not None


def test_roaming_between_nats_and_port_reuse_after_timeout() -> None:
    net = FakeNetwork()
    home = net.router("home", public="198.51.100.1", lan="198.18.1.0/24", behavior=NatBehavior(mapping_timeout=30.0))
    cafe = net.router("cafe", public="198.51.100.2", lan="198.18.9.0/24", behavior="symmetric")
    laptop = net.host("laptop", "198.18.1.10", segment=home.lan)
    srv = net.host("srv", SERVER_A)
    c, s = laptop.socket(4000), srv.socket(P1)
    c.sendto(b"home", (SERVER_A, P1))
    net.run_for(1.0)
    laptop.move(cafe.lan, "198.18.9.44")
    c.sendto(b"cafe", (SERVER_A, P1))
    net.run_for(1.0)
    assert [(d, src[0]) for d, src in s.drain()] == [(b"home", "198.51.100.1"), (b"cafe", "198.51.100.2")]
    # home's mapping for 198.18.1.10:4000 expired, so another host may take external port 4000
    net.run_for(40.0)
    other = net.host("other", "198.18.1.11", segment=home.lan)
    other.socket(4000).sendto(b"again", (SERVER_A, P1))
    net.run_for(1.0)
    assert s.drain() == [(b"again", ("198.51.100.1", 4000))]


class Keepalive:
    """A toy sans-IO engine: every `period` seconds it wants to send one datagram."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.deadline = period

    def next_deadline(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> list[bytes]:
        self.deadline = now + self.period
        return [b"keepalive"]


@pytest.mark.sim
@pytest.mark.parametrize(("period", "reachable"), [(25.0, True), (40.0, False)])
def test_engine_keepalives_hold_a_nat_mapping_open(period: float, reachable: bool) -> None:
    net = FakeNetwork(seed=3)
    r = net.router("r", public="198.51.100.1", lan="198.18.1.0/24", behavior=NatBehavior(mapping_timeout=30.0))
    node = net.host("node", "198.18.1.10", segment=r.lan, link=LinkProfile(latency=0.01))
    srv = net.host("srv", SERVER_A)
    sock, server_sock = node.socket(51820), srv.socket(P1)
    sock.sendto(b"hello", (SERVER_A, P1))
    net.scheduler.add_engine(Keepalive(period), on_output=lambda out: [sock.sendto(d, (SERVER_A, P1)) for d in out])
    net.run_for(200.0)
    mapped = server_sock.drain()[0][1]
    server_sock.sendto(b"call me maybe", mapped)
    net.run_for(1.0)
    assert (sock.drain() == [(b"call me maybe", (SERVER_A, P1))]) is reachable
