"""One STUN client transaction's retransmission schedule (RFC 5389 §7.2.1), sans-IO.

Owns the one rule both STUN clients of the daemon follow (`shoal.nat.discovery` for
`shoal netcheck`, `shoal.nat.reflexive` on the data socket): the request is sent at 0, RTO,
3 RTO, 7 RTO, ... (the wait doubling) until `max_transmissions` sends, then the answer is
awaited `final_wait` more before the transaction gives up. Defaults: STUN_RTO,
STUN_MAX_TRANSMISSIONS, STUN_FINAL_WAIT (`shoal.constants`).

    t = Transaction(txid, dst, data)
    out.append(t.transmit(now))          # the first send
    ... at t.deadline: d = t.on_timer(now) -> a datagram to send again, or None (then
        t.gave_up may have become True)
    ... an answer: t.answered(now)       # no more sends; t.rtt if it was answered to the first send
"""

from __future__ import annotations

import dataclasses

from shoal.constants import STUN_FINAL_WAIT, STUN_MAX_TRANSMISSIONS, STUN_RTO
from shoal.endpoint import Endpoint

__all__ = ["Transaction"]


@dataclasses.dataclass(kw_only=True)
class Transaction:
    txid: bytes
    dst: Endpoint
    data: bytes
    rto: float = STUN_RTO
    max_transmissions: int = STUN_MAX_TRANSMISSIONS
    final_wait: float = STUN_FINAL_WAIT
    sends: int = 0
    first_sent: float = 0.0
    last_sent: float = 0.0
    deadline: float | None = None  # the next send, or the give-up time; None once over
    gave_up: bool = False
    rtt: float | None = None  # set by `answered` when only one send was made (unambiguous)

    def __post_init__(self) -> None:
        if self.rto <= 0 or self.final_wait <= 0 or self.max_transmissions < 1:
            raise ValueError("rto and final_wait must be > 0, max_transmissions >= 1")

    @property
    def over(self) -> bool:
        """Answered or given up: nothing more to send or to wait for."""
        return self.deadline is None and self.sends > 0

    def transmit(self, now: float) -> tuple[bytes, Endpoint]:
        """Send (again) now: the datagram, and the schedule moves on."""
        if self.sends == 0:
            self.first_sent = now
        self.sends += 1
        self.last_sent = now
        if self.sends < self.max_transmissions:
            self.deadline = now + self.rto * (2 ** (self.sends - 1))
        else:
            self.deadline = now + self.final_wait
        return self.data, self.dst

    def on_timer(self, now: float) -> tuple[bytes, Endpoint] | None:
        """At or after `deadline`: the datagram to send again, or None and `gave_up` set once
        the last send's answer is overdue. Before it (or once over): None, nothing changes."""
        if self.deadline is None or now < self.deadline:
            return None
        if self.sends < self.max_transmissions:
            return self.transmit(now)
        self.gave_up, self.deadline = True, None
        return None

    def answered(self, now: float) -> None:
        """An answer came: stop sending and waiting."""
        if self.sends == 1:
            self.rtt = now - self.first_sent
        self.deadline = None

    def stop(self) -> None:
        """Abandon the transaction (its answer no longer matters)."""
        self.gave_up, self.deadline = True, None
