"""Reconnect backoff: grows exponentially, capped, jittered within [d/2, d], resets."""

from __future__ import annotations

import pytest

from shoal.daemon.backoff import Backoff


def test_bounds_grow_then_cap_and_reset():
    seen: list[tuple[float, float]] = []
    b = Backoff(base=0.5, cap=4.0, uniform=lambda lo, hi: seen.append((lo, hi)) or hi)
    delays = [b.next_delay() for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert seen[0] == (0.25, 0.5) and seen[-1] == (2.0, 4.0)
    b.reset()
    assert b.next_delay() == 0.5


def test_real_jitter_stays_in_range_and_varies():
    b = Backoff(base=1.0, cap=8.0)
    values = []
    for _ in range(200):
        b.reset()
        b.failures = 3
        values.append(b.next_delay())
    assert all(4.0 <= v <= 8.0 for v in values)
    assert len(set(values)) > 150


def test_many_failures_do_not_overflow():
    b = Backoff(base=0.5, cap=15.0, uniform=lambda lo, hi: hi)
    b.failures = 10_000
    assert b.next_delay() == 15.0


def test_bad_parameters():
    with pytest.raises(ValueError):
        Backoff(base=0, cap=1)
    with pytest.raises(ValueError):
        Backoff(base=2, cap=1)
