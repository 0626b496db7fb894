"""Tests of shoal.lan.mactable: each learning rule of the docstring, aging, bounds (per network
and in all), forgetting, and a property against a plain-dict model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lan.mactable import LOCAL, MacTable

M1, M2, M3 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002"), bytes.fromhex("020000000003")


def test_learn_rules() -> None:
    t = MacTable(aging=300)
    assert t.learn("n", M1, "ben", 0.0) == "new"
    assert t.learn("n", M1, "ben", 1.0) == "refresh"
    assert t.learn("n", M1, "cat", 2.0) == "claimed"  # ben's entry is live: bound to ben
    assert t.lookup("n", M1, 2.0) == "ben" and t.moves["n"] == 0 and t.stats["claimed"] == 1
    assert t.learn("n", M1, "cat", 301.0) == "moved"  # ben's entry aged out: a real move
    assert t.moves["n"] == 1
    assert t.lookup("n", M1, 301.0) == "cat"
    assert t.learn("n", bytes.fromhex("01005e0000fb"), "ben", 0.0) == "invalid"
    assert t.learn("n", b"\xff" * 6, "ben", 0.0) == "invalid"
    assert t.learn("n", bytes(6), "ben", 0.0) == "invalid"
    assert t.learn("n", b"\x02\x00", "ben", 0.0) == "invalid"
    assert len(t) == 1


def test_networks_are_separate() -> None:
    t = MacTable()
    t.learn("x", M1, "ben", 0.0)
    assert t.lookup("y", M1, 0.0) is None
    t.learn("y", M1, LOCAL, 0.0)
    assert t.lookup("x", M1, 0.0) == "ben" and t.lookup("y", M1, 0.0) == LOCAL


def test_aging() -> None:
    t = MacTable(aging=10)
    t.learn("n", M1, "ben", 0.0)
    t.learn("n", M2, "ben", 5.0)
    assert t.lookup("n", M1, 9.99) == "ben"
    assert t.lookup("n", M1, 10.0) is None  # expired: the caller floods
    assert t.expire(10.0) == 1 and len(t) == 1
    assert t.learn("n", M1, "cat", 11.0) == "new"
    assert t.expire(100.0) == 2 and len(t) == 0 and t.networks() == []


def test_bound_per_network_evicts_oldest() -> None:
    t = MacTable(aging=100, max_per_network=2)
    t.learn("n", M1, "a", 0.0)
    t.learn("n", M2, "a", 1.0)
    t.learn("n", M1, "a", 2.0)  # refresh: M2 is now the oldest
    t.learn("n", M3, "a", 3.0)
    assert t.lookup("n", M2, 3.0) is None and t.lookup("n", M1, 3.0) == "a" and t.stats["evicted"] == 1
    t.learn("m", M3, "a", 3.0)  # another network has its own room
    assert len(t) == 3


def test_bound_per_network_prefers_expired() -> None:
    t = MacTable(aging=10, max_per_network=2)
    t.learn("n", M1, "a", 0.0)
    t.learn("n", M2, "a", 9.0)
    t.learn("n", M3, "a", 12.0)  # M1 expired: dropped, M2 kept
    assert t.lookup("n", M2, 12.0) == "a" and t.stats["expired"] == 1 and t.stats["evicted"] == 0


def test_bound_total() -> None:
    t = MacTable(aging=100, max_total=2)
    t.learn("x", M1, "a", 0.0)
    t.learn("y", M2, "a", 1.0)
    t.learn("z", M3, "a", 2.0)
    assert len(t) == 2 and t.lookup("x", M1, 2.0) is None and t.networks() == ["y", "z"]


def test_forget() -> None:
    t = MacTable()
    t.learn("x", M1, "ben", 0.0)
    t.learn("x", M2, "cat", 0.0)
    t.learn("y", M3, "ben", 0.0)
    t.forget_port("ben")
    assert len(t) == 1 and t.entries("x") == {M2: ("cat", 0.0)} and t.networks() == ["x"]
    t.forget_network("x")
    assert len(t) == 0


def test_misuse() -> None:
    with pytest.raises(ValueError):
        MacTable(aging=0)


ops = st.lists(st.tuples(st.sampled_from(["x", "y"]), st.integers(1, 6), st.sampled_from(["a", "b", LOCAL]),
                         st.floats(0, 3, allow_nan=False)), max_size=60)


@given(ops)
@settings(max_examples=300, deadline=None)
def test_matches_model(steps: list[tuple[str, int, str, float]]) -> None:
    t = MacTable(aging=5, max_per_network=4, max_total=6)
    model: dict[tuple[str, bytes], tuple[str, float]] = {}
    now = 0.0
    for network, m, port, gap in steps:
        now += gap
        mac = bytes((2, 0, 0, 0, 0, m))
        before = t.lookup(network, mac, now)
        verdict = t.learn(network, mac, port, now)
        if before is not None and before != port and port != LOCAL:
            assert verdict == "claimed"  # a live MAC of another port is never taken by a peer
        if verdict == "claimed":
            assert t.lookup(network, mac, now) == before
            continue
        model[(network, mac)] = (port, now)
        assert len(t) <= 6 and all(len(t.entries(n)) <= 4 for n in ("x", "y"))
        for (n, k), (p, seen) in model.items():
            got = t.lookup(n, k, now)
            # a live table entry is always right; a missing one (evicted/expired) means flood
            assert got is None or got == p
            if now - seen >= 5:
                assert got is None
        assert t.lookup(network, mac, now) == port  # what was just learned is always found


# ------------------------------------------------------------------ issue 18 F16: MAC binding

def test_a_member_cannot_take_another_members_live_mac() -> None:
    t = MacTable(aging=300)
    t.learn("n", M1, "ben", 0.0)
    for when in (1.0, 150.0, 299.9):
        assert t.learn("n", M1, "eve", when) == "claimed"
    assert t.lookup("n", M1, 299.9) == "ben" and t.stats["claimed"] == 3
    t.learn("n", M1, "ben", 299.9)  # ben keeps using it: still ben's
    assert t.learn("n", M1, "eve", 500.0) == "claimed"


def test_a_member_cannot_take_our_mac() -> None:
    t = MacTable(aging=300)
    t.learn("n", M1, LOCAL, 0.0)
    assert t.learn("n", M1, "eve", 1.0) == "claimed" and t.lookup("n", M1, 1.0) == LOCAL
    t.pin_local(M2)
    for when in (0.0, 1000.0):  # pinned: never, even with no live entry
        assert t.learn("n", M2, "eve", when) == "claimed" and t.lookup("n", M2, when) is None
    assert t.learn("n", M2, LOCAL, 1.0) == "new"


def test_legitimate_moves_still_work() -> None:
    t = MacTable(aging=300)
    t.learn("n", M1, "ben", 0.0)
    assert t.learn("n", M1, LOCAL, 1.0) == "moved"  # the VM moved to us: our interface wins
    t.learn("n", M2, "ben", 0.0)
    t.forget_port("ben")  # ben left
    assert t.learn("n", M2, "cat", 1.0) == "new"
    t.learn("n", M3, "cat", 0.0)
    t.learn("n", M1, "cat", 2.0)  # M1 is LOCAL and live: refused
    t.retain("n", {"ben"})  # cat went offline in n: its MACs there are freed, LOCAL's kept
    assert t.lookup("n", M3, 3.0) is None and t.lookup("n", M1, 3.0) == LOCAL
    assert t.learn("n", M3, "ben", 3.0) == "new"
