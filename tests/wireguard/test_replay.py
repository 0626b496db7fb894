"""Tests of shoal.wireguard.replay against a set-based reference model of the same window."""

from __future__ import annotations


from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE
from shoal.wireguard.replay import ReplayFilter

W = REPLAY_WINDOW_SIZE
LIMIT = REJECT_AFTER_MESSAGES


class Model:
    """What the window promises, stated plainly: a set of seen counters and the maximum."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0

    def validate(self, counter: int, limit: int) -> bool:
        if counter < 0 or counter >= limit:
            return False
        if counter <= self.last and self.last - counter > W:
            return False
        if counter in self.seen:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


# An operation is a recipe applied to the current state, so sequences stay near the
# interesting places (window edges, duplicates, the limit) instead of scattering in 2**64.
op = st.one_of(
    st.tuples(st.just("delta"), st.integers(-W - 200, W + 200)),
    st.tuples(st.just("edge"), st.integers(-3, 3)),  # last - W + k
    st.tuples(st.just("dup"), st.integers(0, 10**6)),  # a counter seen before
    st.tuples(st.just("abs"), st.integers(0, 2**64 + 5)),
    st.tuples(st.just("jump"), st.integers(1, 2**40)),  # huge forward jump
    st.tuples(st.just("limit"), st.integers(-3, 3)),  # near REJECT_AFTER_MESSAGES
    st.tuples(st.just("block"), st.integers(-2, 130)),  # block boundaries 64*k +- 1
)


def materialise(kind: str, arg: int, model: Model, history: list[int]) -> int:
    last = model.last
    if kind == "delta":
        return last + arg
    if kind == "edge":
        return last - W + arg
    if kind == "dup":
        return history[arg % len(history)] if history else 0
    if kind == "abs":
        return arg
    if kind == "jump":
        return last + arg
    if kind == "limit":
        return LIMIT + arg
    if kind == "block":
        return ((last >> 6) + arg) * 64 + (arg % 3) - 1
    raise AssertionError(kind)


@settings(max_examples=350, deadline=None)
@given(st.lists(op, min_size=1, max_size=300), st.sampled_from([LIMIT, 10_000, 2**20]))
def test_matches_reference_model(ops: list[tuple[str, int]], limit: int) -> None:
    f, m = ReplayFilter(), Model()
    history: list[int] = []
    for kind, arg in ops:
        c = materialise(kind, arg, m, history)
        expect = m.validate(c, limit)
        assert f.validate_counter(c, limit) == expect, (kind, arg, c)
        history.append(c)
        assert f.last == m.last


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * W), min_size=1, max_size=2000))
def test_dense_random_sequences(counters: list[int]) -> None:
    f, m = ReplayFilter(), Model()
    for c in counters:
        assert f.validate_counter(c) == m.validate(c, LIMIT), c


def test_long_reordered_stream_zero_divergence() -> None:
    # 200k counters: in order, with reordering up to 1.5 windows, duplicates and big gaps.
    import random

    rng = random.Random(6479)
    f, m = ReplayFilter(), Model()
    base = 0
    divergences = 0
    for _ in range(200_000):
        r = rng.random()
        if r < 0.6:
            base += 1
            c = base
        elif r < 0.85:
            c = base - rng.randint(0, W + W // 2)
        elif r < 0.95:
            c = base - rng.randint(0, 40)  # likely duplicate
        elif r < 0.999:
            base += rng.randint(1, 200)
            c = base
        else:
            base += rng.randint(W, 2**30)
            c = base
        divergences += f.validate_counter(c) != m.validate(c, LIMIT)
    assert divergences == 0


def test_explicit_edges() -> None:
    f = ReplayFilter()
    assert f.validate_counter(0)
    assert not f.validate_counter(0)
    assert f.validate_counter(W + 10)
    assert not f.validate_counter(9)  # W + 10 - 9 = W + 1 > W: too old
    assert f.validate_counter(10)  # exactly W behind: still inside
    assert not f.validate_counter(10)
    assert f.validate_counter(11)
    assert not f.validate_counter(LIMIT)
    assert f.validate_counter(LIMIT - 1)
    assert not f.validate_counter(LIMIT - 1)
    assert not f.validate_counter(2**64)
    assert not f.validate_counter(-1)
    f.reset()
    assert f.last == 0
    assert f.validate_counter(0) and f.validate_counter(5)


def test_jump_of_exactly_ring_size_clears_everything() -> None:
    f = ReplayFilter()
    for c in range(64 * 3):
        assert f.validate_counter(c)
    assert f.validate_counter(64 * (128 + 2) + 5)  # lands on a recycled block
    assert f.validate_counter(64 * 130 + 5 - W)  # inside window, never seen
    assert not f.validate_counter(64 * 2 + 5)  # same ring slot but far too old


def test_long_in_order_stream_all_accepted_once() -> None:
    f = ReplayFilter()
    v = f.validate_counter
    n = 200_000
    assert all(v(c) for c in range(n))
    assert not any(v(c) for c in range(n - 100, n))
