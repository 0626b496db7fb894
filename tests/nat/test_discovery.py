"""Tests of shoal.nat.discovery: the classification of every NAT type of the fake network
(simulation, fake clock), retransmission under loss, timeouts, servers without RFC 5780, and
bad answers."""

from __future__ import annotations

import itertools

import pytest

from shoal.nat import stun
from shoal.nat.discovery import Behavior, Discovery, Result, nat_type_name
from shoal.nat.responder import StunResponder
from shoal.nat.stun import Message
from shoal.testing.fakenet import Dependence, FakeNetwork, FakeSocket, Host, LinkProfile, NatBehavior
from shoal.constants import STUN_CLASS_SUCCESS, STUN_METHOD_BINDING

A1, A2, P1, P2 = "192.0.2.1", "192.0.2.2", 3478, 3479
EI, AD, APD = Dependence.ENDPOINT_INDEPENDENT, Dependence.ADDRESS_DEPENDENT, Dependence.ADDRESS_AND_PORT_DEPENDENT
B = Behavior


def txids():
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


def stun_server(net: FakeNetwork, addresses: list[str] = [A1, A2], ports: list[int] = [P1, P2],
                link: LinkProfile | None = None) -> StunResponder:
    host = net.host("stun", addresses[0], link=link)
    for a in addresses[1:]:
        host.attach(net.internet, a, link)
    engine = StunResponder(addresses, ports)
    socks: dict[tuple[str, int], FakeSocket] = {ep: host.socket(ep[1], address=ep[0]) for ep in engine.local_endpoints()}
    for ep, sock in socks.items():
        def on(data: bytes, src: tuple[str, int], ep: tuple[str, int] = ep) -> None:
            reply = engine.handle(data, src, ep)
            if reply is not None:
                socks[reply.local].sendto(reply.data, reply.dst)
        sock.on_datagram = on
    return engine


def run(net: FakeNetwork, client: Host, *, timeout: float = 30.0, **kw) -> tuple[Result, Discovery]:
    sock = client.socket(4242)
    local = [(a, sock.port) for a in client.addresses()]
    d = Discovery((A1, P1), local=local, random_bytes=txids(), **kw)

    def flush(out: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, dst in out:
            sock.sendto(data, dst)

    sock.on_datagram = lambda data, src: (d.receive(data, src, net.clock.now()), flush(d.take_outbox()))
    net.scheduler.add_engine(d, on_output=flush)
    d.start(net.clock.now())
    flush(d.take_outbox())
    assert net.scheduler.run_until_true(lambda: d.done, timeout=timeout)
    assert d.result is not None and d.next_deadline() is None
    return d.result, d


def behind(kind: str | NatBehavior, *, seed: int = 1, link: LinkProfile | None = None) -> tuple[FakeNetwork, Host]:
    net = FakeNetwork(seed=seed)
    stun_server(net)
    r = net.router("nat", public="203.0.113.50", lan="198.18.1.0/24", behavior=kind, link=link)
    return net, net.host("client", "198.18.1.2", segment=r.lan)


CASES = {
    # name: (behavior, mapping, filtering, classic name)
    "full-cone": ("full-cone", B.ENDPOINT_INDEPENDENT, B.ENDPOINT_INDEPENDENT, "full-cone"),
    "restricted-cone": ("restricted-cone", B.ENDPOINT_INDEPENDENT, B.ADDRESS_DEPENDENT, "restricted-cone"),
    "port-restricted": ("port-restricted-cone", B.ENDPOINT_INDEPENDENT, B.ADDRESS_AND_PORT_DEPENDENT, "port-restricted-cone"),
    "symmetric": ("symmetric", B.ADDRESS_AND_PORT_DEPENDENT, B.ADDRESS_AND_PORT_DEPENDENT, "symmetric"),
    "address-dependent-mapping": (NatBehavior(mapping=AD, filtering=AD), B.ADDRESS_DEPENDENT, B.ADDRESS_DEPENDENT, "symmetric"),
    "apd-mapping-ei-filter": (NatBehavior(mapping=APD, filtering=EI), B.ADDRESS_AND_PORT_DEPENDENT, B.ENDPOINT_INDEPENDENT, "symmetric"),
    "symmetric-no-port-preservation": (NatBehavior.preset("symmetric", port_preservation=False),
                                       B.ADDRESS_AND_PORT_DEPENDENT, B.ADDRESS_AND_PORT_DEPENDENT, "symmetric"),
}


@pytest.mark.sim
@pytest.mark.parametrize("name", list(CASES))
def test_every_nat_type_is_classified(name: str) -> None:
    kind, mapping, filtering, classic = CASES[name]
    net, client = behind(kind)
    res, d = run(net, client, software="shoal-test")
    assert res.udp and res.behind_nat is True
    assert (res.mapping, res.filtering, res.nat_type) == (mapping, filtering, classic)
    assert res.reflexive is not None and res.reflexive[0] == "203.0.113.50"
    assert res.other == (A2, P2)
    assert res.mapping_varies_by_destination == (mapping is not B.ENDPOINT_INDEPENDENT)
    assert res.rtt == pytest.approx(0.0) and res.notes == ()
    seen = {asked: got for asked, got in res.mapped}
    assert set(seen) == {(A1, P1), (A2, P1), (A2, P2)}
    if mapping is B.ENDPOINT_INDEPENDENT:
        assert len(set(seen.values())) == 1
    # a negative filtering answer costs the full retransmission schedule; a positive one does not
    if filtering is B.ENDPOINT_INDEPENDENT:
        assert res.duration < 0.01 and d.stats["retransmitted"] == 0
    else:
        assert res.duration == pytest.approx(0.25 + 0.5 + 1.0 + 1.0)


@pytest.mark.sim
def test_public_host_has_no_nat() -> None:
    net = FakeNetwork(seed=3)
    stun_server(net)
    res, _ = run(net, net.host("pub", "203.0.113.11"))
    assert (res.mapping, res.filtering, res.nat_type, res.behind_nat) == (B.NONE, B.ENDPOINT_INDEPENDENT, "open", False)
    assert res.reflexive == ("203.0.113.11", 4242) and res.mapping_varies_by_destination is False


@pytest.mark.sim
def test_double_nat_behind_carrier_nat() -> None:
    net = FakeNetwork(seed=4)
    stun_server(net)
    carrier = net.router("cgnat", public="203.0.113.60", lan="198.19.1.0/24", behavior="port-restricted-cone")
    home = net.router("home", public="198.19.1.2", lan="198.18.2.0/24", behavior="port-restricted-cone",
                      upstream=carrier.lan)
    res, _ = run(net, net.host("c", "198.18.2.2", segment=home.lan))
    assert (res.mapping, res.filtering, res.nat_type) == (B.ENDPOINT_INDEPENDENT, B.ADDRESS_AND_PORT_DEPENDENT,
                                                          "port-restricted-cone")
    assert res.reflexive is not None and res.reflexive[0] == "203.0.113.60"


@pytest.mark.sim
def test_double_nat_symmetric_outer_is_symmetric() -> None:
    net = FakeNetwork(seed=5)
    stun_server(net)
    carrier = net.router("cgnat", public="203.0.113.60", lan="198.19.1.0/24", behavior="symmetric")
    home = net.router("home", public="198.19.1.2", lan="198.18.2.0/24", behavior="full-cone", upstream=carrier.lan)
    res, _ = run(net, net.host("c", "198.18.2.2", segment=home.lan))
    assert (res.mapping, res.filtering) == (B.ADDRESS_AND_PORT_DEPENDENT, B.ADDRESS_AND_PORT_DEPENDENT)


@pytest.mark.sim
def test_udp_blocked_times_out_after_the_schedule() -> None:
    net, client = behind("port-restricted-cone")
    net.nodes["nat"].interfaces[0].link.up = False  # the NAT's WAN: nothing gets out
    res, d = run(net, client)
    assert not res.udp and res.nat_type == "udp-blocked" and res.reflexive is None
    assert (res.mapping, res.filtering) == (B.UNKNOWN, B.UNKNOWN)
    assert res.duration == pytest.approx(2.75) and d.stats["sent"] == 4
    assert "no answer" in res.notes[0]


@pytest.mark.sim
def test_loss_is_survived_by_retransmission() -> None:
    """20 % loss each way on the NAT's WAN link (36 % per round trip), 40 seeded runs of a
    full cone: retransmission keeps the answer right almost always, and loss can only make a
    filter look stricter (an answer that never came), never a mapping look different."""
    outcomes = []
    for seed in range(40):
        net, client = behind("full-cone", seed=seed, link=LinkProfile(loss=0.2))
        res, d = run(net, client)
        outcomes.append((res.udp, res.mapping, res.filtering))
        assert res.mapping in (B.ENDPOINT_INDEPENDENT, B.UNKNOWN)
    right = outcomes.count((True, B.ENDPOINT_INDEPENDENT, B.ENDPOINT_INDEPENDENT))
    assert right >= 36, outcomes


@pytest.mark.sim
def test_loss_classification_rate() -> None:
    ok = 0
    for seed in range(40):
        net, client = behind("symmetric", seed=100 + seed, link=LinkProfile(loss=0.2))
        res, _ = run(net, client)
        ok += (res.mapping, res.filtering) == (B.ADDRESS_AND_PORT_DEPENDENT, B.ADDRESS_AND_PORT_DEPENDENT)
    assert ok >= 36  # each request has 4 tries: P(all lost at 36 % round-trip loss) ~ 1.7 %


@pytest.mark.sim
def test_latency_is_measured_on_clean_samples() -> None:
    net = FakeNetwork(seed=6)
    stun_server(net, link=LinkProfile(latency=0.020))
    res, _ = run(net, net.host("pub", "203.0.113.11", link=LinkProfile(latency=0.005)))
    assert res.rtt == pytest.approx(0.050) and res.rtt_other == pytest.approx(0.050)


@pytest.mark.sim
def test_server_without_rfc5780_gives_the_reflexive_address_only() -> None:
    net = FakeNetwork(seed=7)
    stun_server(net, addresses=[A1], ports=[P1])
    r = net.router("nat", public="203.0.113.50", lan="198.18.1.0/24", behavior="symmetric")
    res, _ = run(net, net.host("client", "198.18.1.2", segment=r.lan))
    assert res.udp and res.reflexive is not None and res.other is None
    assert (res.mapping, res.filtering, res.nat_type) == (B.UNKNOWN, B.UNKNOWN, "unknown")
    assert "OTHER-ADDRESS" in res.notes[0]


@pytest.mark.sim
def test_server_that_ignores_change_request() -> None:
    """A server naming an OTHER-ADDRESS but answering CHANGE-REQUEST from where it was asked:
    filtering must stay unknown, never be guessed."""
    net = FakeNetwork(seed=8)
    host = net.host("stun", A1)
    host.attach(net.internet, A2)
    honest = StunResponder([A1, A2], [P1, P2])
    socks = {ep: host.socket(ep[1], address=ep[0]) for ep in honest.local_endpoints()}
    for ep, sock in socks.items():
        def on(data: bytes, src: tuple[str, int], ep: tuple[str, int] = ep, sock: FakeSocket = sock) -> None:
            msg = stun.decode(data)
            plain = stun.encode(Message(msg.method, msg.cls, msg.transaction_id))  # drop CHANGE-REQUEST
            reply = honest.handle(plain, src, ep)
            assert reply is not None
            sock.sendto(reply.data, src)
        sock.on_datagram = on
    res, _ = run(net, net.host("pub", "203.0.113.11"))
    assert res.filtering is B.UNKNOWN and res.mapping is B.NONE
    assert any("ignored CHANGE-REQUEST" in n for n in res.notes)


def test_bad_answers_are_dropped_and_counted() -> None:
    d = Discovery((A1, P1), random_bytes=txids())
    d.start(0.0)
    [(req, dst)] = d.take_outbox()
    assert dst == (A1, P1)
    txid = stun.decode(req).transaction_id
    assert d.receive(b"garbage", (A1, P1), 0.01) is False
    assert d.receive(stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, bytes(12))), (A1, P1), 0.01) is False
    # ours, but no mapped address: dropped, the request keeps retransmitting
    assert d.receive(stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, txid)), (A1, P1), 0.01) is True
    assert not d.done and d.stats["dropped:malformed"] == 1 and d.stats["dropped:not-stun"] == 1
    assert d.stats["dropped:unknown-transaction"] == 1
    assert d.next_deadline() == pytest.approx(0.25)
    assert d.handle_timer(0.25) == [(req, (A1, P1))]  # the same bytes again


def test_misuse() -> None:
    d = Discovery((A1, P1))
    d.start(0.0)
    with pytest.raises(ValueError):
        d.start(1.0)
    with pytest.raises(ValueError):
        Discovery((A1, P1), rto=0)
    same = Discovery((A1, P1), random_bytes=lambda n: bytes(n))
    same.start(0.0)
    assert same.take_outbox()


def test_nat_type_names() -> None:
    assert nat_type_name(False, B.UNKNOWN, B.UNKNOWN) == "udp-blocked"
    assert nat_type_name(True, B.NONE, B.ADDRESS_AND_PORT_DEPENDENT) == "firewalled"
    assert nat_type_name(True, B.ENDPOINT_INDEPENDENT, B.ADDRESS_DEPENDENT) == "restricted-cone"
