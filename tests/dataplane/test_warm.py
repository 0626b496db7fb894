"""The latency keeper: its schedule on a fake clock, and real `shoal wg` processes in the lab.

The lab half counts the interface process's wake-ups (voluntary context switches of its
loop thread) to check what a user would: while pings flow every 10 ms it wakes about once a
millisecond, without it about once per packet; once data stops, and over a tunnel that only
carries keepalives, it does not wake for this at all; `--no-warm` turns it off.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.constants import WARM_HOLD, WARM_INTERVAL
from shoal.lab import HostSpec, Lab, Topology
from shoal.dataplane.warm import Rehearsal, Tick, WarmSchedule

from tests.wg.wglab import End, ping, wait_for_ping

# ------------------------------------------------------------------ schedule (fake clock)


def test_first_tick_is_one_interval_after_data():
    w = WarmSchedule()
    assert not w.armed and w.next_at is None
    w.data(10.0)
    assert w.start(10.0) == pytest.approx(10.0 + WARM_INTERVAL)
    assert w.armed


def test_tick_skips_right_after_traffic_and_warms_when_quiet():
    w = WarmSchedule(interval=0.001, hold=2.0)
    w.data(5.0)
    w.start(5.0)
    assert w.tick(5.0005) is Tick.SKIP  # a packet woke us within the interval: hot already
    assert w.next_at == pytest.approx(5.0015)
    assert w.tick(5.0015) is Tick.WARM
    assert w.tick(6.9) is Tick.WARM
    assert w.armed


def test_ticks_stop_after_the_hold_and_restart_with_data():
    w = WarmSchedule(interval=0.001, hold=2.0)
    w.data(1.0)
    w.start(1.0)
    assert w.tick(3.0) is Tick.STOP
    assert not w.armed and w.next_at is None
    w.data(7.0)
    w.start(7.0)
    assert w.tick(7.002) is Tick.WARM


@given(st.floats(0, 1000), st.floats(0, 10))
def test_tick_matches_the_rule(last, quiet):
    w = WarmSchedule(interval=0.001, hold=2.0)
    w.data(last)
    w.start(last)
    now = last + quiet
    quiet = now - last  # what the schedule sees: float addition need not round-trip
    tick = w.tick(now)
    expected = Tick.STOP if quiet >= 2.0 else Tick.SKIP if quiet < 0.001 else Tick.WARM
    assert tick is expected
    assert w.armed == (tick is not Tick.STOP)


@pytest.mark.parametrize("interval,hold", [(0, 1), (-1, 1), (2, 1), (1, 1)])
def test_bad_schedule_is_refused(interval, hold):
    with pytest.raises(ValueError):
        WarmSchedule(interval=interval, hold=hold)


def test_rehearsal_moves_its_packet_every_time_and_stays_bounded():
    r = Rehearsal()
    for _ in range(2000):
        assert r.run() == 1
    # a clock that never moves: no timer ever comes due, the heaps hold one entry per peer
    assert len(r.a._heap) <= 1 and len(r.b._heap) <= 2
    assert not r.a.outbox and not r.b.outbox and not r.b.to_tun
    assert r.b.stats["rx_invalid_or_replayed"] == 0
    assert sum(p.stats.rx_bytes for p in r.b.peers.values()) > 2000 * 64


def test_rehearsal_engines_are_their_own():
    r1, r2 = Rehearsal(), Rehearsal()
    keys = {r1.a.public_key, r1.b.public_key, r2.a.public_key, r2.b.public_key}
    assert len(keys) == 4  # fresh random keys every time: never an interface's key or session


# ------------------------------------------------------------------ lab: real processes

A4, B4 = "100.64.9.1", "100.64.9.2"
A6, B6 = "fd7a:5:9::1", "fd7a:5:9::2"


def _wakeups(pid: int) -> int:
    """Voluntary context switches of the process's main (event loop) thread."""
    text = Path(f"/proc/{pid}/task/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("voluntary_ctxt_switches"))


def _rate(pid: int, seconds: float, during=None) -> float:
    before, t0 = _wakeups(pid), time.monotonic()
    if during is not None:
        during()
    else:
        time.sleep(seconds)
    return (_wakeups(pid) - before) / (time.monotonic() - t0)


@pytest.fixture(scope="module")
def lab():
    with Lab(Topology(clients=[HostSpec("a"), HostSpec("b")])) as lab:
        yield lab


def _tunnel(lab, tmp_path: Path, args: tuple[str, ...] = (), keepalive: int = 0):
    a = End(lab.host("a"), "shoal", A4, A6)
    b = End(lab.host("b"), "shoal", B4, B6)
    a.start(b.peer_section(keepalive=keepalive), tmp_path, args=args)
    b.start(a.peer_section(keepalive=keepalive), tmp_path, args=args)
    wait_for_ping(a.host, B4, 20)
    return a, b




@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
@pytest.mark.timeout(120)
def test_wakes_every_millisecond_while_data_flows_and_not_when_idle(lab, tmp_path):
    a, b = _tunnel(lab, tmp_path, keepalive=1)  # keepalives every second: not data
    try:
        pings = lambda: ping(a.host, B4, count=200, interval=0.01, wait=1)  # noqa: E731
        busy = _rate(a.proc.pid, 0, during=pings)
        # 100 pings/s wake it ~200 times/s by themselves; the keeper adds a tick per quiet ms
        assert busy > 450, f"{busy:.0f} wake-ups/s while pinging every 10 ms"
        time.sleep(WARM_HOLD + 0.5)
        idle = _rate(a.proc.pid, 3.0)
        # only keepalives (1/s each way), the engine's timers and the asyncio loop remain
        assert idle < 30, f"{idle:.0f} wake-ups/s on a tunnel that carries only keepalives"
    finally:
        a.stop()
        b.stop()


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
@pytest.mark.timeout(120)
def test_no_warm_turns_it_off(lab, tmp_path):
    a, b = _tunnel(lab, tmp_path, args=("--no-warm",))
    try:
        busy = _rate(a.proc.pid, 0, during=lambda: ping(a.host, B4, count=200, interval=0.01, wait=1))
        assert busy < 300, f"{busy:.0f} wake-ups/s with --no-warm while pinging every 10 ms"
        r = ping(a.host, B4, count=3, interval=0.2)
        assert r.returncode == 0, r.stdout
    finally:
        a.stop()
        b.stop()
