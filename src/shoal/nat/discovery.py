"""NAT behaviour discovery (RFC 5780 section 4, RFC 4787 terms): a sans-IO STUN client engine.

Owns: one netcheck run from one UDP socket against one STUN server with a second address
and port (A1:P1 primary, A2:P2 from OTHER-ADDRESS). Bytes and `now` in; datagrams to send
(`take_outbox`), one deadline (`next_deadline`/`handle_timer`) and a `Result` out. No socket,
no clock; the random transaction ids come from an injected `random_bytes`.

Tests, in this order, all from the same socket (so from the same NAT mapping):

    phase      request                          answered from  tells
    binding    T1  -> A1:P1                     A1:P1          UDP works?  reflexive M1,
                                                               OTHER-ADDRESS A2:P2, RTT
    filtering  F1  -> A1:P1 change IP and port  A2:P2          arrives: filtering endpoint-independent
               F2  -> A1:P1 change port         A1:P2          arrives (F1 not): address-dependent
                                                               neither: address-and-port-dependent
    mapping    T2  -> A2:P1                     A2:P1          M2 == M1: mapping endpoint-independent
               T3  -> A2:P2                     A2:P2          else M3 == M2: address-dependent,
                                                               else address-and-port-dependent

Filtering runs before mapping on purpose: once the socket has sent to A2 or to P2, the NAT
lets their answers in whatever its filter, and the filtering answer would be wrong.
Mapping `none` means M1 is one of our own endpoints (no NAT); filtering then describes a
host firewall (`endpoint-independent` = open). F1/F2 answers must come from the endpoint the
CHANGE-REQUEST asked for; a server that answers from the original one does not do RFC 5780
and filtering stays `unknown`. Without OTHER-ADDRESS (a plain STUN server) only the
binding phase runs: reflexive address and RTT, mapping and filtering `unknown`.

Retransmission (per request, same bytes, same transaction id; the one schedule of
`shoal.nat.transaction`, RFC 5389 section 7.2.1 with shorter numbers from `shoal.constants`): sends at 0, RTO, 3 RTO, 7 RTO ... up to
`max_transmissions`, then waits `final_wait` and gives up (no answer = "did not arrive").
RTT samples are taken only from answers to requests sent once (Karn's rule).

Bad input (not STUN, unknown transaction, wrong class, malformed attributes) is dropped and
counted in `stats`; `receive` returns whether the datagram was one of ours.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import os
from collections.abc import Callable, Iterable

from shoal.endpoint import Endpoint, text
from shoal.nat import stun
from shoal.nat.stun import StunError
from shoal.nat.transaction import Transaction
from shoal.constants import (
    STUN_CLASS_ERROR,
    STUN_CLASS_SUCCESS,
    STUN_FINAL_WAIT,
    STUN_MAX_TRANSMISSIONS,
    STUN_METHOD_BINDING,
    STUN_RTO,
    STUN_TRANSACTION_ID_SIZE,
)

__all__ = ["Behavior", "Result", "Discovery", "nat_type_name"]


class Behavior(str, enum.Enum):
    """RFC 4787 dependence of a mapping or a filter (plus "none" and "unknown")."""

    NONE = "none"  # no NAT at all (mapping only)
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


def nat_type_name(udp: bool, mapping: Behavior, filtering: Behavior) -> str:
    """The classic name for a (mapping, filtering) pair."""
    B = Behavior
    if not udp:
        return "udp-blocked"
    if mapping is B.UNKNOWN or filtering is B.UNKNOWN:
        return "unknown"
    if mapping is B.NONE:
        return "open" if filtering is B.ENDPOINT_INDEPENDENT else "firewalled"
    if mapping is not B.ENDPOINT_INDEPENDENT:
        return "symmetric"
    return {B.ENDPOINT_INDEPENDENT: "full-cone", B.ADDRESS_DEPENDENT: "restricted-cone",
            B.ADDRESS_AND_PORT_DEPENDENT: "port-restricted-cone"}[filtering]


@dataclasses.dataclass(frozen=True)
class Result:
    """What one discovery run found. Times are seconds."""

    server: Endpoint
    udp: bool  # did the primary endpoint answer at all?
    reflexive: Endpoint | None = None  # M1: our address and port as the server sees it
    other: Endpoint | None = None  # the server's OTHER-ADDRESS (None: no RFC 5780)
    mapping: Behavior = Behavior.UNKNOWN
    filtering: Behavior = Behavior.UNKNOWN
    mapped: tuple[tuple[Endpoint, Endpoint], ...] = ()  # (server endpoint asked, reflexive seen)
    rtt: float | None = None  # best RTT to the primary endpoint (None: no clean sample)
    rtt_other: float | None = None  # best RTT to the other address
    software: str | None = None  # the server's SOFTWARE attribute
    notes: tuple[str, ...] = ()
    duration: float = 0.0

    behind_nat: bool | None = None  # None: no reflexive address, or our own endpoints unknown

    @property
    def mapping_varies_by_destination(self) -> bool | None:
        if self.mapping is Behavior.UNKNOWN:
            return None
        return self.mapping not in (Behavior.NONE, Behavior.ENDPOINT_INDEPENDENT)

    @property
    def nat_type(self) -> str:
        return nat_type_name(self.udp, self.mapping, self.filtering)

    def to_json(self) -> dict[str, object]:
        def ep(a: Endpoint | None) -> str | None:
            return None if a is None else text(a)

        return {
            "server": ep(self.server), "udp": self.udp, "reflexive": ep(self.reflexive),
            "other_address": ep(self.other), "behind_nat": self.behind_nat,
            "mapping": self.mapping.value, "mapping_varies_by_destination": self.mapping_varies_by_destination,
            "filtering": self.filtering.value, "nat_type": self.nat_type,
            "mapped": [{"asked": ep(a), "seen": ep(s)} for a, s in self.mapped],
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "rtt_other_ms": None if self.rtt_other is None else round(self.rtt_other * 1000, 3),
            "server_software": self.software, "notes": list(self.notes), "duration_s": round(self.duration, 3),
        }


@dataclasses.dataclass(kw_only=True)
class _Tx(Transaction):
    """A test of the run: its retransmission schedule (`Transaction`) and what came back."""

    name: str
    expect_from: Endpoint | None
    answer: stun.Message | None = None
    answer_src: Endpoint | None = None

    @property
    def finished(self) -> bool:
        return self.answer is not None or self.gave_up


class Discovery:
    """One discovery run; see the module docstring. Call `start(now)` first."""

    def __init__(
        self,
        server: Endpoint,
        *,
        local: Iterable[Endpoint] = (),
        rto: float = STUN_RTO,
        max_transmissions: int = STUN_MAX_TRANSMISSIONS,
        final_wait: float = STUN_FINAL_WAIT,
        random_bytes: Callable[[int], bytes] = os.urandom,
        software: str | None = None,
    ) -> None:
        if rto <= 0 or final_wait <= 0 or max_transmissions < 1:
            raise ValueError("rto and final_wait must be > 0, max_transmissions >= 1")
        self.server: Endpoint = (str(server[0]), int(server[1]))
        self.local = {(str(a), int(p)) for a, p in local}
        self.rto = rto
        self.max_transmissions = max_transmissions
        self.final_wait = final_wait
        self._random = random_bytes
        self._software = software
        self._txs: dict[bytes, _Tx] = {}
        self._outbox: list[tuple[bytes, Endpoint]] = []
        self.phase = "new"  # new -> binding -> filtering -> mapping -> done
        self.result: Result | None = None
        self.stats: collections.Counter[str] = collections.Counter()
        self._started = 0.0
        self._other: Endpoint | None = None
        self._notes: list[str] = []
        self._filtering = Behavior.UNKNOWN

    # ------------------------------------------------------------------ engine interface

    @property
    def done(self) -> bool:
        return self.result is not None

    def start(self, now: float) -> None:
        if self.phase != "new":
            raise ValueError("a Discovery runs once; make a new one")
        self._started = now
        self.phase = "binding"
        self._send("T1", self.server, self.server, now)

    def take_outbox(self) -> list[tuple[bytes, Endpoint]]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        times = [t.deadline for t in self._txs.values() if not t.finished and t.deadline is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[tuple[bytes, Endpoint]]:
        for tx in list(self._txs.values()):
            if tx.finished:
                continue
            again = tx.on_timer(now)
            if again is not None:
                self._sent(again, tx)
            elif tx.gave_up:
                self.stats["gave-up"] += 1
        self._advance(now)
        return self.take_outbox()

    def receive(self, data: bytes, src: Endpoint, now: float) -> bool:
        """A datagram from `src`: True if it answered one of our requests (consumed)."""
        head = stun.peek_transaction(data)
        if head is None:
            self.stats["dropped:not-stun"] += 1
            return False
        method, cls, txid = head
        tx = self._txs.get(txid)
        if tx is None:
            self.stats["dropped:unknown-transaction"] += 1
            return False
        if method != STUN_METHOD_BINDING or cls not in (STUN_CLASS_SUCCESS, STUN_CLASS_ERROR):
            self.stats["dropped:not-a-response"] += 1
            return True
        if tx.finished:
            self.stats["dropped:duplicate"] += 1
            return True
        try:
            msg = stun.decode(data)
            if cls == STUN_CLASS_SUCCESS:
                if msg.reflexive_address() is None:
                    raise StunError("no XOR-MAPPED-ADDRESS or MAPPED-ADDRESS")
                msg.other_address()
            else:
                msg.error_code()
        except StunError as e:
            self.stats["dropped:malformed"] += 1
            self._note(f"malformed answer to {tx.name}: {e}")
            return True
        tx.answer, tx.answer_src = msg, (str(src[0]), int(src[1]))
        tx.answered(now)
        self.stats["answers"] += 1
        self._advance(now)
        return True

    # ------------------------------------------------------------------ internals

    def _note(self, text: str) -> None:
        if text not in self._notes:
            self._notes.append(text)

    def _send(self, name: str, dst: Endpoint, expect_from: Endpoint | None, now: float,
              change_ip: bool = False, change_port: bool = False) -> _Tx:
        txid = self._random(STUN_TRANSACTION_ID_SIZE)
        if len(txid) != STUN_TRANSACTION_ID_SIZE or txid in self._txs:
            raise ValueError("random_bytes gave a short or repeated transaction id")
        data = stun.binding_request(txid, change_ip=change_ip, change_port=change_port, software=self._software)
        tx = _Tx(txid=txid, dst=dst, data=data, name=name, expect_from=expect_from, rto=self.rto,
                 max_transmissions=self.max_transmissions, final_wait=self.final_wait)
        self._txs[txid] = tx
        self._sent(tx.transmit(now), tx)
        return tx

    def _sent(self, datagram: tuple[bytes, Endpoint], tx: _Tx) -> None:
        self._outbox.append(datagram)
        self.stats["sent"] += 1
        if tx.sends > 1:
            self.stats["retransmitted"] += 1

    def _tx(self, name: str) -> _Tx | None:
        return next((t for t in self._txs.values() if t.name == name), None)

    def _ok(self, tx: _Tx | None) -> stun.Message | None:
        """The success answer of `tx`, if it has one."""
        if tx is None or tx.answer is None or tx.answer.cls != STUN_CLASS_SUCCESS:
            return None
        return tx.answer

    def _advance(self, now: float) -> None:
        if self.phase == "binding":
            t1 = self._tx("T1")
            assert t1 is not None
            if not t1.finished:
                return
            ok = self._ok(t1)
            if ok is None:
                if t1.answer is not None:
                    code = t1.answer.error_code()
                    self._note(f"the server answered with error {code[0] if code else '?'} {code[1] if code else ''}".strip())
                    self._finish(now, udp=True)
                else:
                    self._note("no answer from the STUN server: UDP blocked, or the server is down")
                    self._finish(now, udp=False)
                return
            other = ok.other_address()
            if other is None or other[0] == self.server[0] or other[1] == self.server[1]:
                self._note("the server gave no usable OTHER-ADDRESS (no RFC 5780): mapping and filtering not tested")
                self._finish(now, udp=True)
                return
            self._other = other
            self.phase = "filtering"
            self._send("F1", self.server, other, now, change_ip=True, change_port=True)
            self._send("F2", self.server, (self.server[0], other[1]), now, change_port=True)
        if self.phase == "filtering":
            f1, f2 = self._tx("F1"), self._tx("F2")
            assert f1 is not None and f2 is not None
            if self._answered_as_asked(f1):
                self._filtering = Behavior.ENDPOINT_INDEPENDENT
            elif not f1.finished or not f2.finished:
                return
            elif self._answered_as_asked(f2):
                self._filtering = Behavior.ADDRESS_DEPENDENT
            elif self._ok(f1) is not None or self._ok(f2) is not None:
                self._note("the server ignored CHANGE-REQUEST: filtering not tested")
                self._filtering = Behavior.UNKNOWN
            elif f1.answer is not None or f2.answer is not None:
                self._note("the server refused CHANGE-REQUEST: filtering not tested")
                self._filtering = Behavior.UNKNOWN
            else:
                self._filtering = Behavior.ADDRESS_AND_PORT_DEPENDENT
            for t in (f1, f2):  # no more retransmissions of the filtering tests
                if not t.finished:
                    t.stop()
            assert self._other is not None
            self.phase = "mapping"
            self._send("T2", (self._other[0], self.server[1]), None, now)
            self._send("T3", self._other, None, now)
        if self.phase == "mapping":
            t2, t3 = self._tx("T2"), self._tx("T3")
            assert t2 is not None and t3 is not None
            if not (t2.finished and t3.finished):  # T3 also when EIM is clear: RTT and the table
                return
            self._finish(now, udp=True)

    def _answered_as_asked(self, tx: _Tx) -> bool:
        return self._ok(tx) is not None and tx.answer_src == tx.expect_from

    def _reflexive(self, name: str) -> Endpoint | None:
        ok = self._ok(self._tx(name))
        return None if ok is None else ok.reflexive_address()

    def _finish(self, now: float, *, udp: bool) -> None:
        for t in self._txs.values():
            if not t.finished:
                t.stop()
        m1, m2, m3 = self._reflexive("T1"), self._reflexive("T2"), self._reflexive("T3")
        mapping = Behavior.UNKNOWN
        filtering = self._filtering
        if m1 is not None and m1 in self.local:
            mapping = Behavior.NONE
        elif m1 is not None and m2 is not None:
            if m2 == m1:
                mapping = Behavior.ENDPOINT_INDEPENDENT
            elif m3 is not None:
                mapping = Behavior.ADDRESS_DEPENDENT if m3 == m2 else Behavior.ADDRESS_AND_PORT_DEPENDENT
            else:
                self._note("no answer from the other address and port: mapping not fully tested")
        elif m1 is not None and self._other is not None:
            self._note("no answer from the server's other address: mapping not tested")
        mapped = tuple((t.dst, a) for t in self._txs.values() if t.name in ("T1", "T2", "T3")
                       for a in [self._reflexive(t.name)] if a is not None)
        t1 = self._ok(self._tx("T1"))
        rtts = [t.rtt for t in self._txs.values() if t.rtt is not None and t.dst == self.server and t.name == "T1"]
        rtts_other = [t.rtt for t in self._txs.values() if t.rtt is not None and t.name in ("T2", "T3")]
        behind: bool | None = None
        if m1 is not None and (self.local or mapping is not Behavior.UNKNOWN):
            behind = m1 not in self.local
        self.phase = "done"
        self.result = Result(
            server=self.server, udp=udp, reflexive=m1, other=self._other, mapping=mapping,
            filtering=filtering if udp else Behavior.UNKNOWN, mapped=mapped,
            rtt=min(rtts) if rtts else None, rtt_other=min(rtts_other) if rtts_other else None,
            software=t1.software() if t1 is not None else None, notes=tuple(self._notes),
            duration=now - self._started, behind_nat=behind,
        )
