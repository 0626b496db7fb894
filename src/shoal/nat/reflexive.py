"""Reflexive address of the WireGuard data socket, kept current (sans-IO STUN client).

Owns: what the node tells its peers about its NAT, learnt on the data socket itself (the
socket its tunnels use, so the mapping is the one peers must reach): the reflexive address
and whether the NAT's mapping varies by destination ("hard", symmetric). `shoal netcheck`
runs the full RFC 5780 classification on a socket of its own (`shoal.nat.discovery`); this
probe only does what hole punching needs, and never sends CHANGE-REQUEST (answers from other
addresses would open the data socket's NAT filter toward them and disturb nothing, but they
are not needed).

Rounds. A round sends a Binding request to the server's primary STUN endpoint (A1:P1),
retransmitted on the one STUN schedule (`shoal.nat.transaction`). Its answer gives M1 and OTHER-ADDRESS
(A2:P2); a second Binding then goes to A2:P2 and gives M2. M1 != M2: the mapping depends on
the destination (hard). Without OTHER-ADDRESS (a plain RFC 5389 server) hardness is unknown
(reported as not hard). A round runs at `start`, then every REFLEXIVE_REFRESH seconds (which
also keeps the NAT mapping toward the server alive and notices a changed public address; the
daemon shortens the period to REFLEXIVE_REFRESH_RELAYED while a peer is relayed, so a NAT
that became easier is noticed soon), and at once when `restart` is called (the host's
addresses changed).

Output: `result` = (reflexive address or None, hard); `changed` is set when a round ends
with a result different from the previous one (the caller clears it). Datagrams to send come
from `take_outbox`; `receive(data, src, now)` returns whether the datagram was one of ours.
Bad input (garbage, unknown transactions, answers from elsewhere) is dropped and counted.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable

from shoal.endpoint import Endpoint
from shoal.constants import (
    REFLEXIVE_REFRESH,
    STUN_CLASS_SUCCESS,
    STUN_METHOD_BINDING,
    STUN_TRANSACTION_ID_SIZE,
)
from shoal.nat import stun
from shoal.nat.stun import StunError
from shoal.nat.transaction import Transaction

__all__ = ["ReflexiveProbe"]


class ReflexiveProbe:
    def __init__(self, server: Endpoint, *, random_bytes: Callable[[int], bytes] = os.urandom,
                 refresh: float = REFLEXIVE_REFRESH) -> None:
        self.server = (str(server[0]), int(server[1]))
        self._random = random_bytes
        self.refresh = refresh
        self.result: tuple[Endpoint | None, bool] = (None, False)
        self.changed = False
        self.rounds = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self._outbox: list[tuple[bytes, Endpoint]] = []
        self._tx: Transaction | None = None
        self._phase = "idle"  # idle | primary | other
        self._m1: Endpoint | None = None
        self._next_round: float | None = None

    # --- inputs -----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin a round now (also: the host's addresses changed)."""
        self._begin(now)

    restart = start

    def set_refresh(self, refresh: float, now: float) -> None:
        """Change the period between rounds (the next round moves earlier if need be)."""
        self.refresh = refresh
        if self._next_round is not None and self._next_round > now + refresh:
            self._next_round = now + refresh

    def receive(self, data: bytes, src: Endpoint, now: float) -> bool:
        tx = self._tx
        try:
            peek = stun.peek_transaction(data)
        except Exception:  # noqa: BLE001 - never raise for network input
            peek = None
        if peek is None or tx is None or peek[2] != tx.txid:
            self.stats["not-ours"] += 1
            return False
        if (str(src[0]), int(src[1])) != tx.dst:
            self.stats["wrong-source"] += 1
            return True
        try:
            msg = stun.decode(data)
            refl = msg.reflexive_address()
            other = msg.other_address()
        except StunError:
            self.stats["malformed"] += 1
            return True
        if msg.cls != STUN_CLASS_SUCCESS or msg.method != STUN_METHOD_BINDING or refl is None:
            self.stats["error-response"] += 1
            return True
        self._tx = None
        if self._phase == "primary":
            self._m1 = refl
            if other is not None and other != self.server:
                self._phase = "other"
                self._send(other, now)
            else:
                self._finish((refl, False), now)
        else:
            assert self._m1 is not None
            self._finish((self._m1, refl != self._m1), now)
        return True

    # --- timers -----------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        ds = [d for d in (self._next_round,) if d is not None]
        tx = self._tx
        if tx is not None and tx.deadline is not None:
            ds.append(tx.deadline)
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> None:
        tx = self._tx
        if tx is not None:
            again = tx.on_timer(now)
            if again is not None:
                self._outbox.append(again)
                self.stats["sent"] += 1
            elif tx.gave_up:
                self._tx = None
                self.stats["timeout"] += 1
                if self._phase == "other" and self._m1 is not None:
                    self._finish((self._m1, False), now)  # the other address is silent: unknown
                else:
                    self._finish((None, False), now)
        if self._tx is None and self._next_round is not None and now >= self._next_round:
            self._begin(now)

    def take_outbox(self) -> list[tuple[bytes, Endpoint]]:
        out, self._outbox = self._outbox, []
        return out

    # --- internals --------------------------------------------------------------------------

    def _begin(self, now: float) -> None:
        self._phase = "primary"
        self._m1 = None
        self._next_round = None
        self._send(self.server, now)

    def _send(self, dst: Endpoint, now: float) -> None:
        tid = self._random(STUN_TRANSACTION_ID_SIZE)
        self._tx = Transaction(txid=tid, dst=(str(dst[0]), int(dst[1])), data=stun.binding_request(tid))
        self._outbox.append(self._tx.transmit(now))
        self.stats["sent"] += 1

    def _finish(self, result: tuple[Endpoint | None, bool], now: float) -> None:
        self._phase = "idle"
        self.rounds += 1
        if result != self.result:
            self.result = result
            self.changed = True
        self._next_round = now + self.refresh
