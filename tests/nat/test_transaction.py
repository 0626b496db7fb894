"""The one STUN retransmission schedule (RFC 5389 §7.2.1): 0, RTO, 3 RTO, 7 RTO ..., then the final wait."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.nat.transaction import Transaction


def _t(**kw: object) -> Transaction:
    return Transaction(txid=b"t" * 12, dst=("192.0.2.1", 3478), data=b"req", **kw)  # type: ignore[arg-type]


def test_schedule_doubles_then_waits_and_gives_up() -> None:
    t = _t(rto=0.5, max_transmissions=4, final_wait=2.0)
    sends = [0.0]
    assert t.transmit(0.0) == (b"req", ("192.0.2.1", 3478))
    now = 0.0
    while not t.over:
        now = t.deadline  # type: ignore[assignment]
        if t.on_timer(now) is not None:
            sends.append(now)
    assert sends == [0.0, 0.5, 1.5, 3.5] and now == 5.5 and t.gave_up and t.sends == 4


def test_before_the_deadline_nothing_happens_and_an_answer_stops_it() -> None:
    t = _t(rto=1.0)
    t.transmit(10.0)
    assert t.on_timer(10.5) is None and t.sends == 1 and not t.gave_up
    t.answered(10.25)
    assert t.rtt == 0.25 and t.over and not t.gave_up and t.on_timer(100.0) is None


def test_no_rtt_from_a_retransmitted_request() -> None:
    t = _t(rto=1.0)
    t.transmit(0.0)
    t.on_timer(1.0)
    t.answered(1.1)
    assert t.rtt is None and t.over  # Karn's rule: which send was answered is unknown


@pytest.mark.parametrize("kw", [{"rto": 0}, {"final_wait": -1}, {"max_transmissions": 0}])
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        _t(**kw)


@given(st.floats(0.01, 5), st.integers(1, 9), st.floats(0.01, 20), st.lists(st.floats(0, 100), max_size=40))
def test_never_more_than_max_sends_and_always_over_in_the_end(rto, n, final, times) -> None:  # noqa: ANN001
    t = _t(rto=rto, max_transmissions=n, final_wait=final)
    t.transmit(0.0)
    for now in sorted(times):
        t.on_timer(now)
    assert t.sends <= n
    for _ in range(n + 1):  # unanswered: every deadline passes
        if t.over:
            break
        t.on_timer(max(t.deadline, max(times, default=0.0)))  # type: ignore[type-var]
    assert t.over and t.gave_up and t.sends == n
