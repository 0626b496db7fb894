"""Tests of shoal.nat.sourcelimit: two levels (address, prefix), keys, bad addresses never raise."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shoal.nat.sourcelimit import SourceLimiter, prefix_key


def limiter() -> SourceLimiter:
    return SourceLimiter(rate=1, burst=2, prefix_rate=10, prefix_burst=3, max_keys=100)


def test_address_then_prefix() -> None:
    lim = limiter()
    assert [lim.allow("192.0.2.1", 0.0) for _ in range(3)] == [None, None, "address"]
    assert lim.allow("192.0.2.2", 0.0) is None          # the prefix's third token
    assert lim.allow("192.0.2.3", 0.0) == "prefix"
    assert lim.allow("198.51.100.1", 0.0) is None       # another /24
    assert lim.allow("192.0.2.1", 1.0) is None          # refilled


def test_keys() -> None:
    assert prefix_key("192.0.2.77", 24, 48) == prefix_key("::ffff:192.0.2.1", 24, 48)
    assert prefix_key("2001:db8:1:2::1", 24, 48) == prefix_key("2001:db8:1:ffff::9", 24, 48)
    assert prefix_key("2001:db8:1::1", 24, 48) != prefix_key("2001:db8:2::1", 24, 48)


@given(st.text(max_size=40))
def test_bad_addresses_are_refused_not_raised(text: str) -> None:
    assert limiter().allow(text, 0.0) in (None, "address")
