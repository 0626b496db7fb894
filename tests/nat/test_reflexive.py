"""The data socket's reflexive probe against Shoal's own STUN engine (sans-IO, no sockets).

A tiny in-memory world: a NAT function maps (our socket -> server endpoint) to a reflexive
address, either the same for every destination (easy) or per destination (hard)."""

from __future__ import annotations

import random

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import REFLEXIVE_REFRESH
from shoal.nat.reflexive import ReflexiveProbe
from shoal.nat.responder import StunResponder

A1, A2 = "192.0.2.1", "192.0.2.2"
SERVER = (A1, 3478)


def run(probe: ReflexiveProbe, responder: StunResponder | None, nat, now: float = 0.0, until: float = 10.0,
        drop=lambda dst: False) -> float:
    """Deliver the probe's datagrams through `nat` to the responder and back until idle."""
    while now <= until:
        while out := probe.take_outbox():
            for data, dst in out:
                if responder is None or drop(dst) or dst not in responder.local_endpoints():
                    continue
                reply = responder.handle(data, nat(dst), dst)
                if reply is not None:
                    probe.receive(reply.data, reply.local, now)
        d = probe.next_deadline()
        if d is None or d > until:
            break
        now = max(now, d)
        probe.handle_timer(now)
    return now


def easy(dst):
    return ("203.0.113.5", 40000)


def hard(dst):
    return ("203.0.113.5", 40000 + dst[1] + (0 if dst[0] == A1 else 7))


def test_easy_nat_reflexive_and_not_hard() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(1).randbytes)
    probe.start(0.0)
    run(probe, StunResponder([A1, A2], [3478, 3479]), easy, until=1.0)
    assert probe.result == (("203.0.113.5", 40000), False) and probe.changed


def test_hard_nat_is_noticed_through_other_address() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(2).randbytes)
    probe.start(0.0)
    run(probe, StunResponder([A1, A2], [3478, 3479]), hard, until=1.0)
    refl, is_hard = probe.result
    assert refl == hard(SERVER) and is_hard


def test_plain_stun_server_gives_address_only() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(3).randbytes)
    probe.start(0.0)
    run(probe, StunResponder([A1], [3478]), hard, until=1.0)
    assert probe.result == (hard(SERVER), False)


def test_silent_other_address_keeps_the_reflexive_address() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(4).randbytes)
    probe.start(0.0)
    run(probe, StunResponder([A1, A2], [3478, 3479]), hard, until=5.0, drop=lambda dst: dst[0] == A2)
    assert probe.result == (hard(SERVER), False)


def test_no_answer_means_unknown_then_retries_and_notices_a_change() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(5).randbytes)
    probe.start(0.0)
    t = run(probe, None, easy, until=5.0)
    assert probe.result == (None, False) and probe.stats["timeout"] == 1 and not probe.changed
    assert probe.next_deadline() is not None and probe.next_deadline() <= t + REFLEXIVE_REFRESH
    responder = StunResponder([A1, A2], [3478, 3479])
    t = run(probe, responder, easy, now=t, until=t + REFLEXIVE_REFRESH + 1)
    assert probe.result[0] == ("203.0.113.5", 40000) and probe.changed
    probe.changed = False
    run(probe, responder, lambda dst: ("198.51.100.9", 1234), now=t, until=t + REFLEXIVE_REFRESH + 1)
    assert probe.result[0] == ("198.51.100.9", 1234) and probe.changed and probe.rounds >= 3


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_never_raises(data: bytes, in_flight: bool) -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(6).randbytes)
    if in_flight:
        probe.start(0.0)
        tid = probe.take_outbox()[0][0][8:20]
        data = data[:8] + tid + data[20:] if len(data) >= 20 else data
    probe.receive(data, SERVER, 0.1)
    assert probe.result == (None, False)


def test_answer_from_elsewhere_is_ignored() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(7).randbytes)
    probe.start(0.0)
    (data, dst), = probe.take_outbox()
    reply = StunResponder([A1, A2], [3478, 3479]).handle(data, easy(dst), dst)
    assert reply is not None
    assert probe.receive(reply.data, ("198.51.100.1", 3478), 0.01)  # ours, but from a stranger
    assert probe.result == (None, False) and probe.stats["wrong-source"] == 1


def test_shorter_refresh_moves_the_next_round_earlier() -> None:
    probe = ReflexiveProbe(SERVER, random_bytes=random.Random(8).randbytes)
    probe.start(0.0)
    t = run(probe, StunResponder([A1, A2], [3478, 3479]), easy, until=1.0)
    assert probe.next_deadline() == pytest.approx(t + REFLEXIVE_REFRESH, abs=1.0)
    probe.set_refresh(4.0, t)
    assert probe.next_deadline() == pytest.approx(t + 4.0)
    probe.set_refresh(REFLEXIVE_REFRESH, t)  # longer: the round already planned stays
    assert probe.next_deadline() == pytest.approx(t + 4.0)
