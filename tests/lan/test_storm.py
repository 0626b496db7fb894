"""Tests of shoal.lan.storm: burst then rate, independence of keys, counters, time going
backwards, the bound on buckets, and a property: over any schedule a key never passes more
than burst + rate * elapsed packets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lan.storm import StormLimiter


def test_burst_then_rate() -> None:
    s = StormLimiter(rate=10, burst=5)
    assert [s.allow("a", "n", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert s.allow("a", "n", 0.05) is False  # half a token
    assert s.allow("a", "n", 0.1) is True  # one token refilled
    assert s.counters("a", "n") == (6, 3)
    assert s.stats["passed"] == 6 and s.stats["dropped"] == 3


def test_keys_are_independent() -> None:
    s = StormLimiter(rate=1, burst=2)
    for _ in range(2):
        assert s.allow("a", "x", 0.0)
    assert not s.allow("a", "x", 0.0)
    assert s.allow("a", "y", 0.0) and s.allow("b", "x", 0.0)  # other network, other sender


def test_refill_caps_at_burst_and_time_backwards() -> None:
    s = StormLimiter(rate=100, burst=3)
    assert all(s.allow("a", "n", 0.0) for _ in range(3))
    assert [s.allow("a", "n", 1000.0) for _ in range(4)] == [True, True, True, False]
    assert not s.allow("a", "n", 5.0)  # clock went back: nothing refilled, no error
    assert s.allow("a", "n", 1000.011)


def test_cost() -> None:
    s = StormLimiter(rate=1000, burst=1500)
    assert s.allow("a", "n", 0.0, cost=1400)
    assert not s.allow("a", "n", 0.0, cost=200)


def test_bounded_keys_and_forget() -> None:
    s = StormLimiter(rate=1, burst=1, max_keys=3)
    for i in range(3):
        s.allow(i, "n", 0.0)
    s.allow("new", "n", 0.1)  # no bucket full again yet: least recently used goes
    assert len(s) == 3 and s.counters(0, "n") == (0, 0) and s.stats["evicted"] == 1
    s.allow("later", "n", 10.0)  # every old bucket is full again: all forgotten
    assert len(s) == 1 and s.stats["forgotten"] == 3
    s.forget("later")
    assert len(s) == 0


def test_misuse() -> None:
    with pytest.raises(ValueError):
        StormLimiter(rate=0)
    with pytest.raises(ValueError):
        StormLimiter(burst=0.5)


@given(st.lists(st.floats(0, 2, allow_nan=False), min_size=1, max_size=300), st.integers(1, 20), st.integers(1, 50))
@settings(max_examples=200, deadline=None)
def test_never_more_than_burst_plus_rate(gaps: list[float], burst: int, rate: int) -> None:
    s = StormLimiter(rate=rate, burst=burst)
    now = 0.0
    passed = 0
    for gap in gaps:
        now += gap
        passed += s.allow("a", "n", now)
        assert passed <= burst + rate * now + 1e-9
