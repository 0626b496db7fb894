"""Unit tests of shoal.nat.paths on a fake clock: each rule, with datagrams hand-delivered."""

from __future__ import annotations

import random

from shoal.constants import (
    PATH_HEARTBEAT,
    PATH_PING_TIMEOUT,
    PATH_PREDICT_WINDOW,
    PATH_REPROBE_INTERVAL,
    PATH_BIRTHDAY_SOCKETS,
    PATH_SPRAY_BACKOFF,
    PATH_SPRAY_BUDGET,
    PATH_SPRAY_PEER_BUDGET,
    PATH_SPRAY_RATE,
    PATH_SPRAY_TARGET_BUDGET,
    PATH_SPRAY_WINDOW,
)
from shoal.nat.disco import CallMeMaybe, CandidateKind, DiscoCodec, Ping, Pong
from shoal.nat.paths import PathEngine, PathKind, SprayLimit, Transmit
from shoal.wireguard.keys import PrivateKey

L, R = CandidateKind.LOCAL, CandidateKind.REFLEXIVE
LAN_B = ("198.18.0.11", 41641)
WAN_B = ("203.0.113.7", 41641)
ME = ("203.0.113.5", 41641)


def setup(limit: SprayLimit | None = None, seed: bytes = b"pb", **kw: bool) -> tuple[PathEngine, DiscoCodec, DiscoCodec]:
    a = DiscoCodec(PrivateKey.from_seed(b"pa"), random_bytes=random.Random(1).randbytes)
    b = DiscoCodec(PrivateKey.from_seed(seed), random_bytes=random.Random(2).randbytes)
    a.add_peer(b.public_key)
    b.add_peer(a.public_key)
    eng = PathEngine(a, b.public_key, rng=random.Random(3), spray_limit=limit, **kw)
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


def spray_run(observed: str = WAN_B[0], cand: tuple[str, int] = WAN_B, until: float = 10.0,
              limit: SprayLimit | None = None, **kw: bool) -> tuple[PathEngine, list[tuple[float, tuple[str, int]]]]:
    """Run one engine whose peer reports `cand` (and the server saw it at `observed`); the
    datagrams other than the plain pings to `cand` itself (spray and birthday probes)."""
    eng, a, b = setup(limit=limit, **kw)
    eng.set_remote_candidates([(R, cand)], 0.0, relay=True, observed=observed)
    eng.start(0.0)
    sent: list[tuple[float, tuple[str, int]]] = []
    now = 0.0
    while now < until:
        d = eng.next_deadline()
        now = until if d is None else d
        for t in eng.handle_timer(now):
            if t.dst is not None and (t.dst != cand or t.sock != 0):
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
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True, observed=WAN_B[0])
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


# ---------------------------------------------------------------- spray only at owned addresses (issue 18 F10)

VICTIM = ("198.51.100.200", 80)


def test_victim_named_by_a_hard_peer_gets_no_spray_probes() -> None:
    eng, sent = spray_run(observed=WAN_B[0], cand=VICTIM, until=130.0, peer_hard=True)
    assert [d for _, d in sent if d[0] == VICTIM[0]] == [] and "spray-out" not in eng.stats
    eng, sent = spray_run(observed="", cand=VICTIM, until=130.0, peer_hard=True)  # nothing observed
    assert sent == [] and "spray-out" not in eng.stats


def test_victim_named_by_an_easy_peer_gets_no_birthday_pings_from_our_hard_side() -> None:
    eng, sent = spray_run(observed=WAN_B[0], cand=VICTIM, until=130.0, local_hard=True)
    assert sent == [] and "birthday-started" not in eng.stats
    eng, sent = spray_run(observed=WAN_B[0], until=1.0, local_hard=True)  # at the observed address: yes
    assert len(sent) == PATH_BIRTHDAY_SOCKETS and {d for _, d in sent} == {WAN_B}


def test_observed_but_private_address_is_never_sprayed() -> None:
    lan = ("192.168.1.7", 41641)
    eng, sent = spray_run(observed=lan[0], cand=lan, until=70.0, peer_hard=True)
    assert sent == [] and "spray-out" not in eng.stats


def test_candidate_confirmed_by_a_pong_may_be_sprayed_later() -> None:
    other = ("198.51.100.9", 41641)  # not where the server saw the peer
    eng, a, b = setup(peer_hard=True)
    eng.set_remote_candidates([(R, other)], 0.0, relay=True, observed=WAN_B[0])
    eng.start(0.0)
    tx = pings(eng.handle_timer(0.0), b, 0.0)
    answer(eng, b, tx[other], other, 0.02)  # the peer proved it receives there
    sprayed: list[tuple[str, int]] = []
    now = 0.02
    while now < PATH_SPRAY_BACKOFF + 10.0:  # the pongs stop: the next attempt sprays
        d = eng.next_deadline()
        now = PATH_SPRAY_BACKOFF + 10.0 if d is None else d
        sprayed += [t.dst for t in eng.handle_timer(now) if t.dst is not None and t.dst != other]
    assert len(sprayed) == PATH_SPRAY_BUDGET and {d[0] for d in sprayed} == {other[0]}


def test_per_target_cap_holds_across_two_peers_naming_the_same_target() -> None:
    limit = SprayLimit()
    e1, _, b1 = setup(limit=limit, seed=b"p1", peer_hard=True)
    e2, _, b2 = setup(limit=limit, seed=b"p2", peer_hard=True)
    for e in (e1, e2):  # two hard peers behind one public address (both observed there)
        e.set_remote_candidates([(R, WAN_B)], 0.0, relay=True, observed=WAN_B[0])
        e.start(0.0)
    sent = 0
    now, end = 0.0, PATH_SPRAY_WINDOW - 1.0
    while True:
        ds = [d for d in (e1.next_deadline(), e2.next_deadline()) if d is not None]
        now = min(ds) if ds else end
        if now >= end:
            break
        for e in (e1, e2):
            sent += sum(1 for t in e.handle_timer(now) if t.dst is not None and t.dst != WAN_B)
    assert sent <= PATH_SPRAY_TARGET_BUDGET + end * PATH_SPRAY_TARGET_BUDGET / PATH_SPRAY_WINDOW
    assert sent >= PATH_SPRAY_BUDGET  # the first one got its whole attempt
    assert e1.stats.get("spray-limited", 0) + e2.stats.get("spray-limited", 0) >= 1


def test_per_peer_cap_holds_when_the_peer_flips_its_hardness() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True, observed=WAN_B[0])
    eng.start(0.0)
    sent, now, hard = 0, 0.0, False
    while now < PATH_SPRAY_WINDOW - 1.0:
        hard = not hard  # every 0.5 s a new view says hard / easy: each "hard" asks for a spray
        eng.set_hardness(local_hard=False, peer_hard=hard, now=now)
        step = now + 0.5
        while now < step:
            d = eng.next_deadline()
            now = step if d is None or d > step else d
            sent += sum(1 for t in eng.handle_timer(now) if t.dst is not None and t.dst != WAN_B)
    assert sent <= PATH_SPRAY_PEER_BUDGET + now * PATH_SPRAY_PEER_BUDGET / PATH_SPRAY_WINDOW


def _cmm(eng: PathEngine, b: DiscoCodec, addrs: list[tuple[str, int]], now: float) -> list[Transmit]:
    msg = CallMeMaybe(tuple((CandidateKind.REFLEXIVE, x) for x in addrs))
    opened = eng.codec.open(b.seal(eng.codec.public_key, msg), now)
    assert opened is not None
    return eng.handle_message(opened[1], ("0.0.0.0", 1), now, via_relay=True)


def test_call_me_maybe_replaces_the_previous_set_so_candidates_stay_bounded() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([(R, WAN_B)], 0.0, relay=True)
    eng.start(0.0)
    eng.handle_timer(0.0)
    now = 0.0
    for i in range(50):  # each CallMeMaybe names 16 new victims
        now += 2.0
        _cmm(eng, b, [(f"198.51.{100 + i % 2}.{j + 1}", 1000 + i) for j in range(16)], now)
    d = eng.next_deadline()
    out = eng.handle_timer(max(now, d or now))
    assert len(pings(out, b, now)) <= 16 + 1  # the last set and the control candidate


def test_call_me_maybe_flood_starts_at_most_one_burst_per_gap() -> None:
    eng, a, b = setup()
    eng.set_remote_candidates([], 0.0, relay=True)
    eng.start(0.0)
    eng.handle_timer(0.0)
    victims = [("198.51.100.%d" % (j + 1), 80) for j in range(16)]
    sent = 0
    for i in range(100):  # 100 CallMeMaybe in 1 s, all naming the same 16 addresses
        now = 1.0 + i * 0.01
        sent += sum(1 for t in _cmm(eng, b, victims, now) if t.dst is not None)
    assert sent <= 2 * 16


def test_unusable_addresses_are_never_pinged() -> None:
    eng, a, b = setup()
    bad = [("127.0.0.1", 22), ("224.0.0.1", 5), ("0.0.0.0", 5), ("100.64.0.9", 5), ("169.254.0.1", 5)]
    eng.set_remote_candidates([(R, x) for x in bad] + [(R, WAN_B)], 0.0, relay=True)
    eng.start(0.0)
    out = eng.handle_timer(0.0) + _cmm(eng, b, bad, 0.5)
    assert set(pings(out, b, 0.5)) == {WAN_B}
    assert eng.stats["candidate-unusable"] >= len(bad)
