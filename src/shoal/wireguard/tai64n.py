"""TAI64N timestamps, the replay guard inside a handshake initiation (whitepaper 5.4.2).

Owns: encoding a wall-clock time into the 12-byte TAI64N label WireGuard encrypts into
every initiation, the "is this newer" comparison the responder applies per peer, and
wireguard-go's timestamp whitening.

Wire format (12 bytes, big-endian)::

    0               8           12
    +---------------+-----------+
    | seconds (u64) | nanos u32 |
    +---------------+-----------+
    seconds = TAI64N_BASE + unix_seconds    (TAI64N_BASE = 2**62 + 10)
    nanos   = nanoseconds within the second, with the low 24 bits cleared

Whitening: like wireguard-go (tai64n.go, `whitenerMask = 0x1000000 - 1`) the low 24 bits of
the nanoseconds field are cleared, so the value moves in steps of 2**24 ns (~16.8 ms).
A timestamp then does not reveal the sender's precise clock, and two initiations built
within the same ~16.8 ms step are equal, so the responder rejects the second one as a
replay (it only accepts a timestamp strictly greater than the last one it saw); the
initiator is rate limited to one initiation per 20 ms anyway.

Comparison: the responder keeps the greatest timestamp per peer and accepts an initiation
only if its timestamp is strictly `after` that one. Both fields are big-endian and fixed
width, so byte-wise comparison of the 12 bytes equals numeric comparison.

The clock is never read here: callers pass the wall-clock time in (`time.time()` or, to
keep full precision, `time.time_ns()`), as the sans-IO rule asks.
"""

from __future__ import annotations

import struct

from shoal.constants import TAI64N_BASE, TAI64N_WHITENER_MASK, TIMESTAMP_LEN

__all__ = ["stamp", "stamp_ns", "after", "decode", "ZERO"]

_PACK = struct.Struct(">QI")
_NS_PER_S = 1_000_000_000
_CLEAR_LOW = ~TAI64N_WHITENER_MASK

# The smallest timestamp: a peer we never heard from compares every real timestamp against it.
ZERO = bytes(TIMESTAMP_LEN)


def stamp_ns(wall_ns: int) -> bytes:
    """Whitened TAI64N label for `wall_ns` nanoseconds since the Unix epoch."""
    secs, nanos = divmod(wall_ns, _NS_PER_S)  # floor semantics, like Go's Unix()/Nanosecond()
    return _PACK.pack(TAI64N_BASE + secs, nanos & _CLEAR_LOW)


def stamp(wall_time: float) -> bytes:
    """Whitened TAI64N label for `wall_time` seconds since the Unix epoch (as `time.time()`).

    A float of today's epoch seconds is precise to well under a microsecond, far below the
    ~16.8 ms whitening step, so this gives the same label as `stamp_ns` except for times
    within a fraction of a microsecond of a step boundary.
    """
    secs = int(wall_time // 1)
    nanos = int((wall_time - secs) * _NS_PER_S)
    if nanos >= _NS_PER_S:  # float rounding just below the next second
        secs, nanos = secs + 1, 0
    return _PACK.pack(TAI64N_BASE + secs, nanos & _CLEAR_LOW)


def after(t1: bytes, t2: bytes) -> bool:
    """True if timestamp `t1` is strictly later than `t2` (both 12-byte TAI64N labels)."""
    return t1 > t2


def decode(ts: bytes) -> tuple[int, int]:
    """(unix seconds, nanoseconds) of a 12-byte label; ValueError if the length is wrong."""
    if len(ts) != TIMESTAMP_LEN:
        raise ValueError(f"TAI64N timestamp must be {TIMESTAMP_LEN} bytes, got {len(ts)}")
    secs, nanos = _PACK.unpack(ts)
    return secs - TAI64N_BASE, nanos
