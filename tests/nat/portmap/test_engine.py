"""Tests of shoal.nat.portmap.engine (sans-IO, fake time): mapping with PCP and NAT-PMP,
retransmission and giving up, renewal at half the lifetime, address changes, gateway
restarts (epoch), renewal failure until expiry, deletion, and that nothing a gateway sends
raises (fuzz)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.nat.portmap.engine import UdpPortMapping
from shoal.constants import PORTMAP_FINAL_WAIT, PORTMAP_RTO

GW, ME, PORT = "198.18.1.1", "198.18.1.2", 40000
SRC = (GW, 5351)
V4MAPPED = b"\x00" * 10 + b"\xff\xff"


def nonces():
    c = itertools.count(1)
    return lambda n: next(c).to_bytes(n, "big")


class FakeGateway:
    """Answers PCP MAP and NAT-PMP requests like a small gateway would."""

    def __init__(self, ext_ip: str = "203.0.113.11", epoch_base: float = 1000.0) -> None:
        self.ext_ip = ext_ip
        self.epoch_base = epoch_base
        self.port_shift = 0
        self.result = 0
        self.lifetimes: list[int] = []
        self.granted: int | None = None

    def epoch(self, now: float) -> int:
        return int(self.epoch_base + now)

    def answer(self, data: bytes, now: float) -> bytes:
        ip = bytes(int(x) for x in self.ext_ip.split("."))
        if data[0] == 2:  # PCP MAP
            lifetime = struct.unpack_from("!I", data, 4)[0]
            self.lifetimes.append(lifetime)
            nonce, proto, internal, suggested = data[24:36], data[36], *struct.unpack_from("!HH", data, 40)
            ext = (suggested or internal) + self.port_shift if lifetime else 0
            granted = (self.granted or lifetime) if lifetime else 0
            return (struct.pack("!BBxBII12x", 2, 0x81, self.result, granted, self.epoch(now)) + nonce
                    + struct.pack("!B3xHH", proto, internal, ext) + V4MAPPED + ip)
        if data[1] == 0:  # NAT-PMP external address
            return struct.pack("!BBHI", 0, 128, self.result, self.epoch(now)) + ip
        internal, suggested, lifetime = struct.unpack_from("!HHI", data, 4)
        self.lifetimes.append(lifetime)
        ext = (suggested or internal) + self.port_shift if lifetime else 0
        return struct.pack("!BBHIHHI", 0, 129, self.result, self.epoch(now), internal, ext,
                           (self.granted or lifetime) if lifetime else 0)


def run(m: UdpPortMapping, gw: FakeGateway | None, now: float) -> None:
    """Deliver everything in the outbox to the gateway and its answers back."""
    for data, dst in m.take_outbox():
        assert dst == SRC
        if gw is not None:
            m.receive(gw.answer(data, now), SRC, now)


def mapping(proto: str, **kw) -> UdpPortMapping:
    return UdpPortMapping(proto, GW, ME, PORT, random_bytes=nonces(), **kw)


@pytest.mark.parametrize("proto", ["pcp", "natpmp"])
def test_maps_and_renews_at_half_lifetime(proto: str) -> None:
    m, gw = mapping(proto, lifetime=600), FakeGateway()
    m.start(0.0)
    run(m, gw, 0.01)
    (ev,) = m.take_events()
    assert (ev.kind, ev.external, ev.lifetime) == ("mapped", ("203.0.113.11", PORT), 600)
    assert m.external == ("203.0.113.11", PORT) and m.phase == "mapped"
    assert m.next_deadline() == pytest.approx(300.01)
    assert m.handle_timer(299.0) == []
    out = m.handle_timer(300.01)
    assert out and m.stats["renewals"] == 1
    for data, _ in out:
        m.receive(gw.answer(data, 300.02), SRC, 300.02)
    assert m.take_events() == [] and m.stats["renewed"] == 1 and gw.lifetimes == [600, 600]
    assert m.next_deadline() == pytest.approx(600.02)


@pytest.mark.parametrize("proto", ["pcp", "natpmp"])
def test_no_answer_gives_up_after_the_schedule(proto: str) -> None:
    m = mapping(proto)
    m.start(0.0)
    per_send = len(m.take_outbox())
    sends = [0.0]
    while (d := m.next_deadline()) is not None and d < 10:
        if m.handle_timer(d):
            sends.append(d)
        if m.phase == "failed":
            break
    assert sends == [0.0, PORTMAP_RTO, 3 * PORTMAP_RTO]
    assert m.phase == "failed" and m.stats["sent"] == 3 * per_send
    (ev,) = m.take_events()
    assert ev.kind == "failed" and "no" in ev.note and d == pytest.approx(3 * PORTMAP_RTO + PORTMAP_FINAL_WAIT)


@pytest.mark.parametrize("proto,name", [("pcp", "NOT_AUTHORIZED"), ("natpmp", "not authorized")])
def test_error_result_fails_with_its_name(proto: str, name: str) -> None:
    m, gw = mapping(proto), FakeGateway()
    gw.result = 2
    m.start(0.0)
    run(m, gw, 0.0)
    (ev,) = m.take_events()
    assert ev.kind == "failed" and name in ev.note and m.external is None


def test_pcp_refused_by_a_natpmp_only_gateway() -> None:
    m = mapping("pcp")
    m.start(0.0)
    m.take_outbox()
    assert m.receive(struct.pack("!BBHI", 0, 129, 1, 5), SRC, 0.01)
    (ev,) = m.take_events()
    assert ev.kind == "failed" and "no PCP" in ev.note


def test_natpmp_needs_both_answers() -> None:
    m, gw = mapping("natpmp"), FakeGateway()
    m.start(0.0)
    out = m.take_outbox()
    assert [d[:2] for d, _ in out] == [b"\x00\x00", b"\x00\x01"]
    m.receive(gw.answer(out[1][0], 0.0), SRC, 0.0)
    assert m.take_events() == [] and m.external is None
    m.receive(gw.answer(out[0][0], 0.0), SRC, 0.0)
    assert m.take_events()[0].kind == "mapped"


@pytest.mark.parametrize("proto", ["pcp", "natpmp"])
def test_changed_address_or_port_is_an_event(proto: str) -> None:
    m, gw = mapping(proto, lifetime=100), FakeGateway()
    m.start(0.0)
    run(m, gw, 0.0)
    m.take_events()
    gw.ext_ip, gw.port_shift = "198.51.100.10", 5
    for data, _ in m.handle_timer(50.0):
        m.receive(gw.answer(data, 50.0), SRC, 50.0)
    (ev,) = m.take_events()
    assert ev.kind == "changed" and ev.external == ("198.51.100.10", PORT + 5) and "203.0.113.11" in ev.note


def test_pcp_renewal_suggests_the_port_it_holds() -> None:
    m, gw = mapping("pcp", lifetime=100), FakeGateway()
    gw.port_shift = 7
    m.start(0.0)
    run(m, gw, 0.0)
    gw.port_shift = 0
    (data, _), = m.handle_timer(50.0)
    assert struct.unpack_from("!H", data, 42)[0] == PORT + 7
    assert data[24:36] == (1).to_bytes(12, "big")  # the same nonce


def test_renewal_failure_keeps_mapping_until_expiry_then_lost_and_retries() -> None:
    m, gw = mapping("pcp", lifetime=100, retry_interval=30), FakeGateway()
    m.start(0.0)
    run(m, gw, 0.0)
    m.take_events()
    now = 0.0
    while (d := m.next_deadline()) is not None and d <= 100.0:
        now = d
        m.handle_timer(now)  # answers are never delivered
        assert m.external is not None or now >= 100.0
    assert now == pytest.approx(100.0)
    assert [e.kind for e in m.take_events()] == ["lost"] and m.external is None and m.phase == "idle"
    assert m.next_deadline() == pytest.approx(130.0)
    for data, _ in m.handle_timer(130.0):
        m.receive(gw.answer(data, 130.0), SRC, 130.0)
    assert [e.kind for e in m.take_events()] == ["mapped"]


def test_gateway_restart_is_seen_in_the_epoch() -> None:
    m, gw = mapping("pcp", lifetime=1000), FakeGateway(epoch_base=5000)
    m.start(0.0)
    run(m, gw, 0.0)
    m.take_events()
    # an unsolicited ANNOUNCE from a gateway whose epoch restarted
    announce = struct.pack("!BBxBII12x", 2, 0x80, 0, 0, 3)
    assert m.receive(announce, SRC, 10.0)
    assert m.stats["gateway-restarts"] == 1
    out = m.take_outbox()
    assert len(out) == 1 and struct.unpack_from("!I", out[0][0], 4)[0] == 1000
    # an epoch that advanced normally is no restart
    m2, gw2 = mapping("natpmp"), FakeGateway()
    m2.start(0.0)
    run(m2, gw2, 0.0)
    assert m2.receive(struct.pack("!BBHI", 0, 128, 0, int(gw2.epoch(20.0))) + bytes(4), SRC, 20.0)
    assert m2.stats["gateway-restarts"] == 0 and m2.take_outbox() == []


@pytest.mark.parametrize("proto", ["pcp", "natpmp"])
def test_delete_sends_lifetime_zero(proto: str) -> None:
    m, gw = mapping(proto), FakeGateway()
    m.start(0.0)
    run(m, gw, 0.0)
    m.take_events()
    m.delete(5.0)
    out = m.take_outbox()
    assert len(out) == 1  # NAT-PMP too: no external address request for a delete
    for data, _ in out:
        m.receive(gw.answer(data, 5.0), SRC, 5.0)
    assert gw.lifetimes[-1] == 0
    (ev,) = m.take_events()
    assert ev.kind == "deleted" and m.phase == "closed" and m.external is None and m.next_deadline() is None


def test_delete_without_answer_ends_and_without_mapping_is_immediate() -> None:
    m, gw = mapping("pcp"), FakeGateway()
    m.start(0.0)
    run(m, gw, 0.0)
    m.delete(1.0)
    while (d := m.next_deadline()) is not None:
        m.handle_timer(d)
    assert [e.kind for e in m.take_events()][-1] == "deleted" and m.phase == "closed"
    n = mapping("natpmp")
    n.delete(0.0)
    assert [e.kind for e in n.take_events()] == ["deleted"] and n.take_outbox() == []


def test_foreign_and_mismatched_answers_are_dropped() -> None:
    m, gw = mapping("pcp"), FakeGateway()
    m.start(0.0)
    (data, _), = m.take_outbox()
    good = gw.answer(data, 0.0)
    assert not m.receive(good, ("198.18.1.9", 5351), 0.0)  # not the gateway
    wrong_nonce = good[:24] + b"\xee" * 12 + good[36:]
    assert m.receive(wrong_nonce, SRC, 0.0) and m.stats["dropped:unmatched"] == 1
    assert m.receive(b"\x02garbage", SRC, 0.0) and m.stats["dropped:malformed"] == 1
    assert m.external is None
    assert m.receive(good, SRC, 0.0) and m.external is not None


def test_misuse() -> None:
    with pytest.raises(ValueError):
        UdpPortMapping("upnp", GW, ME, PORT)
    with pytest.raises(ValueError):
        UdpPortMapping("pcp", GW, ME, 0)
    m = mapping("pcp")
    m.start(0.0)
    with pytest.raises(ValueError):
        m.start(0.0)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["pcp", "natpmp"]), st.lists(st.binary(max_size=80), max_size=6), st.booleans())
def test_fuzz_gateway_answers_never_raise(proto: str, datagrams: list[bytes], mapped_first: bool) -> None:
    m, gw = mapping(proto, lifetime=60), FakeGateway()
    m.start(0.0)
    if mapped_first:
        run(m, gw, 0.0)
    now = 0.0
    for data in datagrams:
        now += 0.1
        m.receive(data, SRC, now)
        m.handle_timer(now)
    m.delete(now)
    while (d := m.next_deadline()) is not None:
        m.handle_timer(d)
    assert m.phase == "closed"
