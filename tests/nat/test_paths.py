"""Unit tests of shoal.nat.paths on a fake clock: each rule, with datagrams hand-delivered."""

from __future__ import annotations

import random

from shoal.constants import (
    PATH_HEARTBEAT,
    PATH_PING_TIMEOUT,
    PATH_PREDICT_WINDOW,
    PATH_REPROBE_INTERVAL,
    PATH_SPRAY_BUDGET,
    PATH_SPRAY_RATE,
)
from shoal.nat.disco import CallMeMaybe, CandidateKind, DiscoCodec, Ping, Pong
from shoal.nat.paths import PathEngine, PathKind, Transmit
from shoal.wireguard.keys import PrivateKey

L, R = CandidateKind.LOCAL, CandidateKind.REFLEXIVE
LAN_B = ("198.18.0.11", 41641)
WAN_B = ("203.0.113.7", 41641)
ME = ("203.0.113.5", 41641)


def setup(**kw: bool) -> tuple[PathEngine, DiscoCodec, DiscoCodec]:
    a = DiscoCodec(PrivateKey.from_seed(b"pa"), random_bytes=random.Random(1).randbytes)
    b = DiscoCodec(PrivateKey.from_seed(b"pb"), random_bytes=random.Random(2).randbytes)
    a.add_peer(b.public_key)
    b.add_peer(a.public_key)
    eng = PathEngine(a, b.public_key, rng=random.Random(3), **kw)
    return eng, a, b


def pings(out: list[Transmit], b: DiscoCodec, now: float) -> dict[tuple[str, int], bytes]:
    """dst -> tx id of every ping in `out` (opened as the peer would)."""
    got = {}
    for t in out:
        opened = b.open(t.data, now)
        if opened is not None and isinstance(opened[1], Ping) and t.dst is not None:
            got[t.dst] = opened[1].tx_id
    return got


def answer(eng: PathEngine, b: DiscoCodec, tx: bytes, frm: tuple[str, int], now: float) -> None:
    opened = eng.codec.open(b.seal(eng.codec.public_key, Pong(tx, ME)), now)
    assert opened is not None
    eng.handle_message(opened[1], frm, now)


def test_nothing_before_start_then_all_candidates_at_once() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(L, LAN_B), (R, WAN_B)], 0.0, relay=True)
    eng.start(1.0)
    assert eng.next_deadline() == 1.0
    out = eng.handle_timer(1.0)
    assert set(pings(out, b, 1.0)) == {LAN_B, WAN_B}
    assert eng.path is not None and eng.path.kind is PathKind.RELAY  # relay while nothing answers


def test_best_rtt_wins_and_lan_preferred_within_margin() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(L, LAN_B), (R, WAN_B)], 0.0)
    eng.start(0.0)
    tx = pings(eng.handle_timer(0.0), b, 0.0)
    answer(eng, b, tx[WAN_B], WAN_B, 0.010)
    assert eng.path is not None and eng.path.addr == WAN_B and eng.path.kind is PathKind.DIRECT
    answer(eng, b, tx[LAN_B], LAN_B, 0.012)  # LAN 2 ms slower: within the margin -> LAN
    assert eng.path.addr == LAN_B and eng.path.lan
    kinds = [e.kind for e in eng.pop_events()]
    assert kinds == ["chosen", "changed"]


def test_lan_loses_when_much_slower() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(L, LAN_B), (R, WAN_B)], 0.0)
    eng.start(0.0)
    tx = pings(eng.handle_timer(0.0), b, 0.0)
    answer(eng, b, tx[LAN_B], LAN_B, 0.050)
    answer(eng, b, tx[WAN_B], WAN_B, 0.010)
    assert eng.path is not None and eng.path.addr == WAN_B


def test_pong_checks_tx_and_source() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(R, WAN_B)], 0.0)
    eng.start(0.0)
    tx = pings(eng.handle_timer(0.0), b, 0.0)
    answer(eng, b, b"\x00" * 12, WAN_B, 0.01)
    answer(eng, b, tx[WAN_B], ("203.0.113.66", 1), 0.01)
    assert eng.path is None
    assert eng.stats["pong-unexpected"] == 1 and eng.stats["pong-wrong-source"] == 1


def test_ping_answered_and_unknown_source_learned() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(R, WAN_B)], 0.0)
    eng.start(0.0)
    eng.handle_timer(0.0)
    new = ("198.51.100.9", 5000)
    out = eng.handle_message(Ping(b"p" * 12, b.public_key), new, 0.1)
    msgs = [(t.dst, b.open(t.data, 0.1)) for t in out]
    assert any(d == new and isinstance(m[1], Pong) and m[1].src == new for d, m in msgs if m)
    assert any(d == new and isinstance(m[1], Ping) for d, m in msgs if m)  # triggered check


def test_dead_path_falls_back_to_next_direct_then_relay() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(L, LAN_B), (R, WAN_B)], 0.0, relay=True)
    eng.start(0.0)
    tx = pings(eng.handle_timer(0.0), b, 0.0)
    answer(eng, b, tx[LAN_B], LAN_B, 0.01)
    answer(eng, b, tx[WAN_B], WAN_B, 0.02)
    assert eng.path is not None and eng.path.addr == LAN_B
    now = 0.02
    # from now on only WAN answers
    while now < 6.0:
        d = eng.next_deadline()
        assert d is not None
        now = max(d, now)
        tx = pings(eng.handle_timer(now), b, now)
        if WAN_B in tx:
            answer(eng, b, tx[WAN_B], WAN_B, now + 0.02)
    assert eng.path is not None and eng.path.addr == WAN_B
    assert "lost" in [e.kind for e in eng.events]
    # now nothing answers: relay within heartbeat + timeout (+ one probe interval of slack)
    cut = now
    while eng.path is not None and eng.path.kind is PathKind.DIRECT:
        now = max(eng.next_deadline() or now, now)
        eng.handle_timer(now)
    assert eng.path is not None and eng.path.kind is PathKind.RELAY
    assert now - cut <= PATH_HEARTBEAT + PATH_PING_TIMEOUT + 0.01


def test_background_reprobe_while_relayed() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True)
    eng.start(0.0)
    times = []
    now = 0.0
    while now < 30.0:
        d = eng.next_deadline()
        now = 30.0 if d is None else d
        if pings(eng.handle_timer(now), b, now):
            times.append(now)
    gaps = [y - x for x, y in zip(times, times[1:])]
    assert max(gaps) <= PATH_REPROBE_INTERVAL + 1e-9 and eng.path is not None and eng.path.kind is PathKind.RELAY


def test_call_me_maybe_adds_candidates_and_probes() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([], 0.0, relay=True)
    eng.start(0.0)
    eng.handle_timer(0.0)
    mapped = ("203.0.113.8", 6000)
    out = eng.handle_message(CallMeMaybe(((CandidateKind.MAPPED, mapped),)), ("0.0.0.0", 1), 0.5, via_relay=True)
    assert mapped in pings(out, b, 0.5)


def test_local_candidates_change_sends_call_me_maybe_via_relay() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True)
    out = eng.set_local_candidates([(CandidateKind.MAPPED, ("203.0.113.5", 7000))], 0.0)
    assert len(out) == 1 and out[0].via_relay
    opened = b.open(out[0].data, 0.0)
    assert opened is not None and isinstance(opened[1], CallMeMaybe)
    assert eng.set_local_candidates([(CandidateKind.MAPPED, ("203.0.113.5", 7000))], 0.1) == []


def spray_run(**kw: bool) -> tuple[PathEngine, list[tuple[float, tuple[str, int]]]]:
    eng, a, b = setup(**kw)
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True)
    eng.start(0.0)
    sent: list[tuple[float, tuple[str, int]]] = []
    now = 0.0
    while now < 10.0:
        d = eng.next_deadline()
        now = 10.0 if d is None else d
        for t in eng.handle_timer(now):
            if t.dst is not None and t.dst != WAN_B:
                sent.append((now, t.dst))
    return eng, sent


def test_spray_budget_rate_and_prediction_first() -> None:
    eng, sent = spray_run(peer_hard=True)
    assert len(sent) == PATH_SPRAY_BUDGET == eng.stats["spray-out"]
    assert len({d for _, d in sent}) == PATH_SPRAY_BUDGET
    assert [d[1] for _, d in sent[:PATH_PREDICT_WINDOW]] == [WAN_B[1] + i for i in range(1, PATH_PREDICT_WINDOW + 1)]
    duration = sent[-1][0] - sent[0][0]
    assert duration >= (PATH_SPRAY_BUDGET - 10) / PATH_SPRAY_RATE - 1e-9  # never faster than the rate


def test_no_spray_when_both_hard_or_peer_easy() -> None:
    assert spray_run(peer_hard=True, local_hard=True)[1] == []
    assert spray_run()[1] == []


def test_spray_hit_becomes_a_path() -> None:
    eng, a, b = setup(peer_hard=True)
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True)
    eng.start(0.0)
    now, hit = 0.0, ("203.0.113.7", WAN_B[1] + 3)
    while eng.path is None or eng.path.kind is PathKind.RELAY:
        d = eng.next_deadline()
        now = now if d is None else d
        tx = pings(eng.handle_timer(now), b, now)
        if hit in tx:
            answer(eng, b, tx[hit], hit, now + 0.02)
        assert now < 5.0
    assert eng.path.addr == hit
