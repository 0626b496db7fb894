"""Broadcast storm control: one token bucket per (sender, network), with counters (sans-IO).

Every broadcast, multicast or flooded frame costs its sender one token (or `cost` tokens) in
the bucket of (sender, network). A bucket holds at most `burst` tokens and refills at `rate`
tokens per second; a packet that finds fewer tokens than its cost is dropped and counted.
Both ends use it: the sending node limits what it replicates (its own key), and every
receiving node limits each sender again (so a modified or buggy peer cannot flood anyone
beyond the rate whatever it sends). Unicast never goes through it.

Rules:
- A new key starts with a full bucket.
- Time going backwards (a caller bug or a clock step) refills nothing and never raises.
- At most `max_keys` buckets are kept: when a new key would exceed it, buckets that are full
  again (idle long enough to have forgotten nothing) are dropped first, then the least
  recently used ones. Forgetting a bucket can only make it fuller, never emptier.
- Counters per key (`counters(sender, network)` -> (passed, dropped)) live with the bucket;
  totals in `stats` ("passed", "dropped") survive forgetting.

Owner: one limiter per direction, driven by the task that runs the LAN engine.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Hashable

from shoal import constants as C


class _Bucket:
    __slots__ = ("tokens", "stamp", "passed", "dropped")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.passed = 0
        self.dropped = 0


class StormLimiter:
    def __init__(self, rate: float = C.LAN_STORM_RATE, burst: float = C.LAN_STORM_BURST,
                 max_keys: int = C.LAN_STORM_MAX_KEYS) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("need rate > 0, burst >= 1, max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[tuple[Hashable, Hashable], _Bucket] = OrderedDict()
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, sender: Hashable, network: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens from (sender, network)'s bucket; False (and counted) if too few."""
        key = (sender, network)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            if now > bucket.stamp:
                bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
                bucket.stamp = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            bucket.passed += 1
            self.stats["passed"] += 1
            return True
        bucket.dropped += 1
        self.stats["dropped"] += 1
        return False

    def counters(self, sender: Hashable, network: Hashable) -> tuple[int, int]:
        """(passed, dropped) of one key since its bucket was made."""
        bucket = self._buckets.get((sender, network))
        return (0, 0) if bucket is None else (bucket.passed, bucket.dropped)

    def forget(self, sender: Hashable) -> None:
        """Drop every bucket of `sender` (a peer that left)."""
        for key in [k for k in self._buckets if k[0] == sender]:
            del self._buckets[key]

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        full = [k for k, b in self._buckets.items() if b.tokens + max(0.0, now - b.stamp) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
            self.stats["forgotten"] += 1
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
            self.stats["evicted"] += 1
