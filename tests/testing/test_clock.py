"""Tests of shoal.testing.clock: the fake clock and the deadline-driven scheduler."""

from __future__ import annotations

import math

import pytest

from shoal.testing.clock import FakeClock, Scheduler


class Periodic:
    """A toy sans-IO engine: a timer every `period` seconds, returns what it 'sends'."""

    def __init__(self, name: str, period: float, start: float = 0.0) -> None:
        self.name = name
        self.period = period
        self.deadline: float | None = start + period
        self.fired_at: list[float] = []

    def next_deadline(self) -> float | None:
        return self.deadline

    def handle_timer(self, now: float) -> list[str]:
        self.fired_at.append(now)
        assert self.deadline is not None
        self.deadline += self.period
        return [f"{self.name}@{now:g}"]


def test_fake_clock() -> None:
    c = FakeClock(10.0)
    assert c.now() == c() == 10.0
    assert c.advance(0.5) == 10.5
    assert c.advance_to(3.0) == 10.5  # never backwards
    assert c.advance_to(12.0) == 12.0
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            c.advance(bad)
    with pytest.raises(ValueError):
        c.advance_to(math.nan)


def test_callbacks_run_in_time_then_fifo_order() -> None:
    s = Scheduler()
    log: list[str] = []
    s.call_at(2.0, log.append, "b1")
    s.call_at(1.0, log.append, "a")
    s.call_at(2.0, log.append, "b2")
    h = s.call_at(1.5, log.append, "cancelled")
    h.cancel()
    s.call_later(3.0, log.append, "c")
    assert s.next_time() == 1.0
    assert s.run_until(2.5) == 3
    assert log == ["a", "b1", "b2"] and s.now() == 2.5
    s.call_at(0.0, log.append, "past")  # already past: runs at now, not before
    s.run_until_idle()
    assert log == ["a", "b1", "b2", "past", "c"] and s.now() == 3.0
    with pytest.raises(ValueError):
        s.call_later(-1.0, log.append, "x")


def test_engines_fire_at_their_deadlines_and_output_is_routed() -> None:
    s = Scheduler(FakeClock(100.0))
    a, b = Periodic("a", 1.0, 100.0), Periodic("b", 2.5, 100.0)
    out: list[str] = []
    s.add_engine(a, on_output=out.extend)
    s.add_engine(b, on_output=out.extend)
    s.run_until(105.0)
    assert a.fired_at == [101.0, 102.0, 103.0, 104.0, 105.0]
    assert b.fired_at == [102.5, 105.0]
    # at 105 both are due: registration order decides
    assert out[-2:] == ["a@105", "b@105"]
    assert s.now() == 105.0


def test_callbacks_before_engines_at_the_same_instant_and_rearming() -> None:
    s = Scheduler()
    eng = Periodic("e", 1.0)
    log: list[str] = []
    s.add_engine(eng, fire=lambda now: log.append(f"engine {now}") or eng.handle_timer(now))

    def packet_arrives() -> None:
        log.append("packet")
        eng.deadline = 1.2  # an arriving packet re-arms the engine's timer

    s.call_at(1.0, packet_arrives)
    s.run_until(1.5)
    assert log == ["packet", "engine 1.2"]


def test_removed_engine_and_no_timer() -> None:
    s = Scheduler()
    eng = Periodic("e", 1.0)
    reg = s.add_engine(eng)
    s.run_until(2.0)
    reg.remove()
    eng.deadline = None
    s.run_until(10.0)
    assert eng.fired_at == [1.0, 2.0] and reg.fired == 2
    assert s.next_time() is None
    with pytest.raises(TypeError):
        s.add_engine(object())  # type: ignore[arg-type]


def test_stuck_engine_is_reported_not_spun_forever() -> None:
    class Stuck:
        def next_deadline(self) -> float:
            return 1.0  # never moves

        def handle_timer(self, now: float) -> None:
            pass

    s = Scheduler(max_fires_per_instant=50)
    s.add_engine(Stuck())
    with pytest.raises(RuntimeError, match="deadline does not move"):
        s.run_until(2.0)


def test_run_until_true_and_idle_bound() -> None:
    s = Scheduler()
    eng = Periodic("e", 0.25)
    s.add_engine(eng)
    assert s.run_until_true(lambda: len(eng.fired_at) >= 3, timeout=10.0)
    assert s.now() == 0.75
    assert not s.run_until_true(lambda: False, timeout=1.0)
    assert s.now() == 1.75
    with pytest.raises(RuntimeError):
        s.run_until_idle(max_steps=10)  # a periodic engine never goes idle


def test_deterministic_interleaving() -> None:
    def run() -> list[str]:
        s = Scheduler()
        out: list[str] = []
        for i, period in enumerate([0.3, 0.2, 0.5, 0.1]):
            s.add_engine(Periodic(f"e{i}", period), on_output=out.extend)
        for k in range(10):
            s.call_at(k * 0.15, out.append, f"cb{k}")
        s.run_until(3.0)
        return out

    first = run()
    assert first == run()
    assert len(first) > 50
