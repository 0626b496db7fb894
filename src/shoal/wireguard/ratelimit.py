"""Per-source handshake rate limiter (wireguard-go ratelimiter.go, Linux ratelimiter.c).

Owns: the token buckets deciding whether a handshake message from a source address may
cost us a Diffie-Hellman while the device is under load. The device consults it only for
handshake messages that already carry a valid mac2 (the source proved its address with a
cookie round trip), so the addresses counted here are not spoofed.

Bucket rule (wireguard-go, in integer nanoseconds):

- packet cost = 1e9 / RATELIMIT_PACKETS_PER_SECOND (50 ms), bucket size = cost *
  RATELIMIT_BURST (250 ms): a source may send a burst of 5, then 20 per second;
- a new source is allowed at once and starts with `size - cost` tokens;
- otherwise tokens grow by the time elapsed since that source's last message (capped at
  the bucket size), and the message is allowed if tokens >= cost, which are then spent.

The `>=` is the Linux rule; wireguard-go writes `>`, which only differs when no time at all
passes between messages (a fake clock): with `>` a same-instant burst is 4, not 5.

Keys: an IPv4 source is keyed by its address (an IPv4-mapped IPv6 address counts as IPv4);
an IPv6 source by its /64, as the Linux implementation does (wireguard-go keys the full
/128). One host owns a whole /64, so keying the /128 would let it multiply its budget and
fill the table from a single subnet.

Memory bound: at most `max_entries` (RATELIMIT_MAX_ENTRIES = 65536, the Linux figure for a
machine with more than 1 GiB) sources are tracked. While the table is full a message from
an untracked source is denied (Linux's behaviour on reaching `max_entries`); tracked sources
keep their buckets. Entries idle for more than RATELIMIT_GC_INTERVAL (1 s) are dropped at
most once per RATELIMIT_GC_INTERVAL, during `allow()` or an explicit `collect()`. An entry
idle that long has refilled to a full bucket (250 ms), so collecting it never changes a
decision: a returning source starts with the same tokens a full bucket would leave it.

Sans-IO: `now` (seconds, monotonic) is passed in; nothing here reads a clock.
"""

from __future__ import annotations

import ipaddress

from shoal.constants import (
    RATELIMIT_BURST,
    RATELIMIT_GC_INTERVAL,
    RATELIMIT_MAX_ENTRIES,
    RATELIMIT_PACKETS_PER_SECOND,
)

__all__ = ["RateLimiter", "source_key"]

_NS = 1_000_000_000
_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def source_key(source_ip: bytes | str) -> bytes:
    """Bucket key of a source: 4 bytes for IPv4, the first 8 bytes (the /64) for IPv6."""
    if isinstance(source_ip, str):
        source_ip = ipaddress.ip_address(source_ip).packed
    n = len(source_ip)
    if n == 4:
        return bytes(source_ip)
    if n == 16:
        if source_ip[:12] == _V4_MAPPED_PREFIX:
            return bytes(source_ip[12:])
        return bytes(source_ip[:8])
    raise ValueError(f"a source address is 4 or 16 bytes, got {n}")


class RateLimiter:
    """Token bucket per source address; see the module docstring for the exact rule."""

    __slots__ = ("_table", "_cost", "_size", "_max_entries", "_gc_interval_ns", "_next_gc", "denied_full")

    def __init__(
        self,
        *,
        packets_per_second: int = RATELIMIT_PACKETS_PER_SECOND,
        burst: int = RATELIMIT_BURST,
        max_entries: int = RATELIMIT_MAX_ENTRIES,
        gc_interval: float = RATELIMIT_GC_INTERVAL,
    ) -> None:
        if packets_per_second <= 0 or burst <= 0 or max_entries <= 0 or gc_interval <= 0:
            raise ValueError("rate, burst, table size and GC interval must be positive")
        self._cost = _NS // packets_per_second
        self._size = self._cost * burst
        self._max_entries = max_entries
        self._gc_interval_ns = round(gc_interval * _NS)
        # key -> [last seen (ns), tokens (ns)]
        self._table: dict[bytes, list[int]] = {}
        self._next_gc: int | None = None
        self.denied_full = 0  # messages denied because the table was full (a counter for stats)

    def allow(self, source_ip: bytes | str, now: float) -> bool:
        """Whether a handshake message from `source_ip` at time `now` may be processed."""
        now_ns = round(now * _NS)
        next_gc = self._next_gc
        if next_gc is not None and now_ns >= next_gc:
            self._collect_ns(now_ns)
        key = source_key(source_ip)
        table = self._table
        entry = table.get(key)
        if entry is None:
            if len(table) >= self._max_entries:
                self.denied_full += 1
                return False
            table[key] = [now_ns, self._size - self._cost]
            if self._next_gc is None:
                self._next_gc = now_ns + self._gc_interval_ns
            return True
        tokens = entry[1]
        if now_ns > entry[0]:  # a clock that steps back adds nothing (and takes nothing)
            tokens += now_ns - entry[0]
            if tokens > self._size:
                tokens = self._size
            entry[0] = now_ns
        if tokens >= self._cost:
            entry[1] = tokens - self._cost
            return True
        entry[1] = tokens
        return False

    def collect(self, now: float) -> int:
        """Drop entries idle for more than the GC interval; returns how many were dropped."""
        return self._collect_ns(round(now * _NS))

    def next_deadline(self) -> float | None:
        """When the next garbage collection is due (None while the table is empty)."""
        return None if self._next_gc is None else self._next_gc / _NS

    def __len__(self) -> int:
        return len(self._table)

    def _collect_ns(self, now_ns: int) -> int:
        horizon = now_ns - self._gc_interval_ns
        table = self._table
        stale = [k for k, e in table.items() if e[0] < horizon]
        for k in stale:
            del table[k]
        self._next_gc = now_ns + self._gc_interval_ns if table else None
        return len(stale)
