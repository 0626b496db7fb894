"""Tests of shoal.wireguard.tai64n: layout, whitening, ordering."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shoal.wireguard import tai64n
from shoal.constants import TAI64N_WHITENER_MASK

STEP_NS = TAI64N_WHITENER_MASK + 1  # 2**24 ns

# Unix time range of interest: 1970 .. year ~2500, in nanoseconds.
wall_ns = st.integers(min_value=0, max_value=16_725_225_600 * 10**9)


def test_known_answers() -> None:
    assert tai64n.stamp_ns(0) == bytes.fromhex("400000000000000a" "00000000")
    # 2023-11-14T22:13:20.123456789Z: the nanoseconds lose their low 24 bits.
    ts = tai64n.stamp_ns(1_700_000_000_123_456_789)
    assert ts[:8] == (0x400000000000000A + 1_700_000_000).to_bytes(8, "big")
    assert int.from_bytes(ts[8:], "big") == 123_456_789 & ~0xFFFFFF == 117_440_512
    assert len(ts) == 12


def test_whitening_same_step_equal_next_step_later() -> None:
    # The property wireguard-go's TestMonotonic checks: within one whitening step the label
    # does not move; one nanosecond past the step it is strictly later.
    start = 1_700_000_000 * 10**9 + 5 * STEP_NS + 1234
    to_next = TAI64N_WHITENER_MASK - (start % 10**9) % STEP_NS
    same = start + to_next
    nxt = same + 1
    assert tai64n.stamp_ns(same) == tai64n.stamp_ns(start)
    assert not tai64n.after(tai64n.stamp_ns(same), tai64n.stamp_ns(start))
    assert tai64n.after(tai64n.stamp_ns(nxt), tai64n.stamp_ns(start))


def test_second_boundary() -> None:
    a = tai64n.stamp_ns(41 * 10**9 + 999_999_999)
    b = tai64n.stamp_ns(42 * 10**9)
    assert tai64n.after(b, a)
    assert tai64n.decode(b) == (42, 0)


def test_before_epoch_floors_like_go() -> None:
    # -0.5 s is second -1 plus 500 ms (Go: Unix() = -1, Nanosecond() = 5e8).
    secs, nanos = tai64n.decode(tai64n.stamp_ns(-500_000_000))
    assert secs == -1 and nanos == 500_000_000 & ~TAI64N_WHITENER_MASK


def test_zero_is_before_everything() -> None:
    assert tai64n.after(tai64n.stamp(0.0), tai64n.ZERO)


def test_decode_rejects_bad_length() -> None:
    with pytest.raises(ValueError):
        tai64n.decode(b"\x00" * 11)


@given(wall_ns, wall_ns)
def test_order_is_monotonic(a: int, b: int) -> None:
    ta, tb = tai64n.stamp_ns(a), tai64n.stamp_ns(b)
    if a <= b:
        assert not tai64n.after(ta, tb)
    # whitened labels differ exactly when the times fall into different steps
    same_step = (a // 10**9 == b // 10**9) and (a % 10**9) // STEP_NS == (b % 10**9) // STEP_NS
    assert (ta == tb) == same_step
    assert tai64n.after(ta, tb) == (ta != tb and a > b)


@given(wall_ns)
def test_decode_roundtrip(ns: int) -> None:
    secs, nanos = tai64n.decode(tai64n.stamp_ns(ns))
    assert secs == ns // 10**9
    assert nanos == (ns % 10**9) & ~TAI64N_WHITENER_MASK
    assert nanos % STEP_NS == 0


@given(st.integers(min_value=0, max_value=4_102_444_800 * 10**6))  # microseconds to 2100
def test_float_and_ns_agree_away_from_step_edges(us: int) -> None:
    ns = us * 1000
    offset = (ns % 10**9) % STEP_NS
    assume(2000 <= offset <= STEP_NS - 2000)  # near a step edge float precision decides
    assert tai64n.stamp(ns / 1e9) == tai64n.stamp_ns(ns)
