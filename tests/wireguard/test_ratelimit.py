"""Tests of shoal.wireguard.ratelimit: bucket rule against an integer model, cap, keys."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import RATELIMIT_BURST, RATELIMIT_PACKETS_PER_SECOND
from shoal.wireguard.ratelimit import RateLimiter, source_key

COST = 10**9 // RATELIMIT_PACKETS_PER_SECOND
SIZE = COST * RATELIMIT_BURST


class Model:
    """The bucket rule in integer nanoseconds, one bucket per key, never collected."""

    def __init__(self) -> None:
        self.buckets: dict[bytes, tuple[int, int]] = {}

    def allow(self, key: bytes, now_ns: int) -> bool:
        if key not in self.buckets:
            self.buckets[key] = (now_ns, SIZE - COST)
            return True
        last, tokens = self.buckets[key]
        if now_ns > last:
            tokens = min(SIZE, tokens + now_ns - last)
            last = now_ns
        ok = tokens >= COST
        self.buckets[key] = (last, tokens - COST if ok else tokens)
        return ok


SOURCES = ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2", "2001:db8:0:1::1", "::ffff:192.0.2.1"]


MS = 10**6
# Gaps around the interesting durations: one packet cost, the bucket size, the GC interval.
gap = st.sampled_from([0, 1, MS, 10 * MS, 49 * MS, 50 * MS, 51 * MS, 100 * MS, 150 * MS, 249 * MS, 250 * MS, 251 * MS, 999 * MS, 1000 * MS, 1001 * MS]) | st.integers(0, 3 * 10**9)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SOURCES) - 1), gap, st.integers(1, 7)), max_size=100))
def test_matches_integer_model_and_gc_is_invisible(events: list[tuple[int, int, int]]) -> None:
    # `eager` collects before every message, the most aggressive schedule a caller could use
    rl, eager, model = RateLimiter(), RateLimiter(), Model()
    now_ns = 10**9
    for src, dt, burst in events:
        now_ns += dt
        now = now_ns / 1e9
        ip = SOURCES[src]
        raw = ip if src % 2 else ipaddress.ip_address(ip).packed  # str and bytes
        for _ in range(burst):  # several messages at the same instant drain the bucket
            expect = model.allow(source_key(ip), round(now * 1e9))
            assert rl.allow(raw, now) == expect
            eager.collect(now)
            assert eager.allow(raw, now) == expect


def test_collecting_a_half_refilled_bucket_would_be_visible() -> None:
    # Why GC waits for a full refill: 150 ms after draining, a source has 3 messages of
    # budget, not a fresh bucket's 5. The limiter keeps the entry and gives 3.
    rl = RateLimiter()
    assert sum(rl.allow("192.0.2.1", 1.0) for _ in range(6)) == 5
    assert rl.collect(1.15) == 0
    assert sum(rl.allow("192.0.2.1", 1.15) for _ in range(6)) == 3


def test_burst_then_rate() -> None:
    rl = RateLimiter()
    ip = b"\xc0\x00\x02\x07"
    assert [rl.allow(ip, 5.0) for _ in range(7)] == [True] * RATELIMIT_BURST + [False] * 2
    # 10 s at 100 messages per second: 20 per second get through.
    allowed = sum(rl.allow(ip, 5.0 + i / 100) for i in range(1, 1001))
    assert allowed == 200
    # after a quarter second of silence the bucket is full again
    assert sum(rl.allow(ip, 15.26) for _ in range(10)) == RATELIMIT_BURST


def test_sources_are_independent_and_ipv6_keyed_by_64() -> None:
    rl = RateLimiter()
    for _ in range(RATELIMIT_BURST):
        assert rl.allow("2001:db8:1:2::1", 0.0)
    assert not rl.allow("2001:db8:1:2::ffff", 0.0)  # same /64: same bucket
    assert rl.allow("2001:db8:1:3::1", 0.0)  # next /64
    assert rl.allow("198.51.100.1", 0.0)
    assert source_key("::ffff:198.51.100.1") == source_key("198.51.100.1") == bytes([198, 51, 100, 1])
    with pytest.raises(ValueError):
        rl.allow(b"\x01\x02", 0.0)


def test_clock_stepping_back_grants_nothing() -> None:
    rl = RateLimiter()
    for _ in range(RATELIMIT_BURST):
        assert rl.allow("192.0.2.9", 100.0)
    assert not rl.allow("192.0.2.9", 99.0)
    assert not rl.allow("192.0.2.9", 100.0)
    assert rl.allow("192.0.2.9", 100.05)


def test_table_is_capped_and_recovers_after_gc() -> None:
    rl = RateLimiter(max_entries=100)
    results = [rl.allow(bytes([10, 0, i >> 8, i & 255]), 0.0) for i in range(1000)]
    assert results == [True] * 100 + [False] * 900
    assert len(rl) == 100 and rl.denied_full == 900
    assert rl.allow(bytes([10, 0, 0, 5]), 0.5)  # tracked sources keep their buckets
    assert rl.next_deadline() == 1.0
    # at t=1.0 GC runs, but the entries are only 1.0 s (not more) idle: still full
    assert not rl.allow(b"\x0b\x00\x00\x01", 1.0)
    assert rl.allow(b"\x0b\x00\x00\x01", 2.1)  # all 100 entries idle > 1 s: collected
    assert len(rl) == 1
    assert rl.collect(3.0) == 0 and rl.collect(3.2) == 1
    assert len(rl) == 0 and rl.next_deadline() is None


def test_flood_of_distinct_sources_stays_bounded() -> None:
    rl = RateLimiter()  # default cap, 65536
    peak = 0
    for i in range(150_000):
        now = i / 50_000  # 50k distinct sources per second for 3 s
        rl.allow(i.to_bytes(4, "big"), now)
        peak = max(peak, len(rl)) if i % 1000 == 0 else peak
    assert peak <= 65536 and len(rl) <= 65536
    assert rl.denied_full > 0
