"""Tunnel liveness rules on a fake clock: probes only while checking, up/checking/down timing,
evidence from rx counters and probe answers, server-requested checks."""

from __future__ import annotations

from shoal.daemon import liveness as L
from shoal.daemon.liveness import Liveness
from shoal.wireguard.keys import PrivateKey

A, B = (PrivateKey.from_seed(bytes([i])).public_key() for i in (1, 2))


def run(lv: Liveness, rx: dict, t0: float, t1: float, answer: set = frozenset(), step: float = L.LIVENESS_TICK):
    """Tick from t0 to t1; peers in `answer` answer every probe at once. Returns probes sent."""
    sent = []
    t = t0
    while t <= t1 + 1e-9:
        lv.set_peers(rx, t)
        for k in lv.due_probes(t):
            sent.append((t, k))
            if k in answer:
                lv.seen(k, t + 0.001, probe=True)
        lv.update(t)
        t += step
    return sent


def test_passive_mode_sends_nothing_and_shows_idle_or_up():
    lv = Liveness()
    assert run(lv, {A: 0, B: 0}, 0, 60) == []
    assert lv.state(A) == L.IDLE
    lv.set_peers({A: 100, B: 0}, 61)
    lv.update(61)
    assert lv.state(A) == L.UP and lv.state(B) == L.IDLE
    assert lv.last_seen_ago(A, 62) == 1 and lv.last_seen_ago(B, 62) is None


def test_dead_peer_is_down_within_30_s_and_still_probed_live_one_stays_up():
    lv = Liveness()
    rx = {A: 10, B: 10}
    run(lv, rx, 0, 5)
    lv.set_active(True, 5.0)  # server lost
    sent = run(lv, rx, 5, 40, answer={A})
    down = [c for c in lv.changes if c.key == B and c.new == L.DOWN]
    assert len(down) == 1 and "still probing" in down[0].reason
    assert lv.state(A) == L.UP and lv.state(B) == L.DOWN
    # B was probed every PROBE_INTERVAL through the whole outage, A too (quiet but answering)
    b_times = [t for t, k in sent if k == B]
    assert len(b_times) >= (40 - 5) / L.PROBE_INTERVAL - 1
    assert all(b - a <= L.PROBE_INTERVAL + L.LIVENESS_TICK for a, b in zip(b_times, b_times[1:]))
    # a peer last seen at t=5 is down by 5 + DOWN_AFTER + one tick (< 30 s)
    lv2 = Liveness()
    lv2.set_peers({B: 0}, 0)
    lv2.set_active(True, 0)
    lv2.seen(B, 5.0)
    when = None
    t = 5.0
    while when is None and t < 60:
        lv2.due_probes(t)
        if any(c.new == L.DOWN for c in lv2.update(t)):
            when = t
        t += L.LIVENESS_TICK
    assert when is not None and when - 5.0 <= L.DOWN_AFTER + L.LIVENESS_TICK < 30


def test_traffic_needs_no_probes_and_a_returning_peer_is_up_at_once():
    lv = Liveness()
    lv.set_peers({A: 0}, 0)
    lv.set_active(True, 0)
    sent = []
    for i in range(1, 40):  # rx grows every tick: the tunnel carries traffic
        t = i * L.LIVENESS_TICK
        lv.set_peers({A: i}, t)
        sent += lv.due_probes(t)
        lv.update(t)
    assert sent == []  # every tick brought evidence: nothing to probe
    run(lv, {A: 39}, 20, 60)
    assert lv.state(A) == L.DOWN
    lv.set_peers({A: 40}, 60.2)  # it answers again
    assert [c.new for c in lv.update(60.2)] == [L.UP]


def test_reconnecting_ends_the_checks_except_the_servers_requests():
    lv = Liveness()
    lv.set_peers({A: 0, B: 0}, 0)
    lv.set_active(True, 0)
    assert set(lv.due_probes(0)) == {A, B}
    assert lv.set_requested(B, True, 1)
    lv.set_active(False, 2)
    assert [k for k, _ in lv.checking()] == [B]
    assert lv.due_probes(10) == [B]
    lv.set_requested(B, False, 11)
    assert lv.due_probes(20) == [] and list(lv.checking()) == []
    assert not lv.set_requested(PrivateKey.from_seed(b"x").public_key(), True, 0)  # unknown peer


def test_removed_peers_are_forgotten_and_new_ones_join_an_active_check():
    lv = Liveness()
    lv.set_peers({A: 0}, 0)
    lv.set_active(True, 0)
    lv.set_peers({B: 5}, 1)
    assert A not in lv.peers and lv.peers[B].check_since == 1 and lv.peers[B].rx_bytes == 5
