"""One UDP port mapping on a PCP or NAT-PMP gateway: a sans-IO client engine.

Owns: the life of one mapping "gateway external ip:port -> our internal port" with one of
the two protocols spoken on the gateway's port 5351 (`protocol` "pcp" or "natpmp"): ask for
it, renew it, notice it moved or vanished, delete it. Bytes and `now` in; datagrams to send
(`take_outbox`), one deadline (`next_deadline`/`handle_timer`) and `Event`s (`take_events`)
out. No socket, no clock; the PCP nonce comes from an injected `random_bytes`.

Life of a mapping:

    requesting  PCP: one MAP request (nonce, our internal port, suggested external port = the
                internal one). NAT-PMP: an external address request and a UDP map request,
                both needed (the map answer carries no address). Each request is retransmitted
                at 0, RTO, 3 RTO ... `max_transmissions` times, then `final_wait`; no answer
                -> Event "failed" (the gateway does not speak this protocol). An error result
                -> "failed" with its name.
    mapped      Event "mapped" with the external (ip, port) and the granted lifetime. Renewed
                (same requests, same nonce, suggesting the port we hold) after
                `PORTMAP_RENEW_FRACTION` of the granted lifetime; a renewal answer with another
                address or port -> Event "changed". A renewal that fails keeps the mapping until
                it expires, then Event "lost" and a new attempt every PORTMAP_RETRY_INTERVAL.
    deleting    `delete(now)`: the same requests with lifetime 0 (NAT-PMP: external port 0),
                retransmitted like any request; answered or given up -> Event "deleted".

Gateway restarts (RFC 6886 section 3.6, RFC 6887 section 8.5): every answer carries the
gateway's epoch (seconds since its mapping state began). With the previous answer's epoch E0
at our time T0, an answer at T1 must carry at least E0 + 7/8 (T1 - T0) - 2; less means the
gateway lost its state: the mapping is requested again at once (counted in
`stats["gateway-restarts"]`). Unsolicited answers (PCP ANNOUNCE, NAT-PMP external address
announcements, both multicast by the gateway) are checked the same way if the glue passes them.

Answers are accepted only from the gateway's address and port 5351 and only if they match a
pending request (opcode; PCP nonce, protocol and internal port; NAT-PMP internal port).
Anything else is dropped and counted in `stats`; `receive` returns whether it was ours.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable

from shoal.endpoint import Endpoint
from shoal.constants import (
    IPPROTO_UDP,
    NATPMP_OP_EXTERNAL,
    NATPMP_OP_MAP_UDP,
    NATPMP_PORT,
    PCP_NONCE_LEN,
    PCP_OPCODE_MAP,
    PCP_PORT,
    PORTMAP_FINAL_WAIT,
    PORTMAP_LIFETIME,
    PORTMAP_MAX_TRANSMISSIONS,
    PORTMAP_MIN_LIFETIME,
    PORTMAP_RENEW_FRACTION,
    PORTMAP_RETRY_INTERVAL,
    PORTMAP_RTO,
)
from shoal.nat.portmap import natpmp, pcp

__all__ = ["Event", "UdpPortMapping", "PROTOCOLS"]

PROTOCOLS = ("pcp", "natpmp")


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """kind: "mapped" | "changed" | "lost" | "failed" | "deleted"."""

    kind: str
    external: Endpoint | None = None
    lifetime: int | None = None
    note: str = ""


@dataclasses.dataclass
class _Req:
    key: str  # "map" | "ext"
    data: bytes
    sends: int = 0
    next_at: float | None = None
    gave_up: bool = False
    answer: object | None = None


class UdpPortMapping:
    """See the module docstring. `start(now)` first; `external` is the current mapping."""

    def __init__(self, protocol: str, gateway: str, client_ip: str, internal_port: int, *,
                 lifetime: int = PORTMAP_LIFETIME, rto: float = PORTMAP_RTO,
                 max_transmissions: int = PORTMAP_MAX_TRANSMISSIONS, final_wait: float = PORTMAP_FINAL_WAIT,
                 retry_interval: float = PORTMAP_RETRY_INTERVAL,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
        if not 0 < internal_port <= 0xFFFF or lifetime < 1 or rto <= 0 or final_wait <= 0 or max_transmissions < 1:
            raise ValueError("bad port, lifetime or timers")
        self.protocol = protocol
        self.gateway: Endpoint = (gateway, PCP_PORT if protocol == "pcp" else NATPMP_PORT)
        self.client_ip = client_ip
        self.internal_port = internal_port
        self.lifetime = lifetime
        self.rto, self.max_transmissions, self.final_wait = rto, max_transmissions, final_wait
        self.retry_interval = retry_interval
        self.nonce = random_bytes(PCP_NONCE_LEN) if protocol == "pcp" else b""
        if protocol == "pcp" and len(self.nonce) != PCP_NONCE_LEN:
            raise ValueError("random_bytes gave a short nonce")
        self.phase = "new"  # new -> requesting -> mapped | failed | idle -> deleting -> closed
        self.external: Endpoint | None = None
        self.granted: int | None = None  # lifetime the gateway granted
        self.stats: collections.Counter[str] = collections.Counter()
        self._reqs: dict[str, _Req] = {}
        self._outbox: list[tuple[bytes, Endpoint]] = []
        self._events: list[Event] = []
        self._renew_at: float | None = None
        self._expires_at: float | None = None
        self._retry_at: float | None = None
        self._epoch: tuple[int, float] | None = None  # (gateway epoch, our time)

    # ------------------------------------------------------------------ engine interface

    def start(self, now: float) -> None:
        if self.phase != "new":
            raise ValueError("start() once")
        self.phase = "requesting"
        self._request(now, self.lifetime)

    def delete(self, now: float) -> None:
        """Remove the mapping (lifetime-0 requests). Without one, ends at once ("deleted")."""
        if self.phase in ("deleting", "closed"):
            return
        had = self.external is not None or self.phase == "requesting"
        self._renew_at = self._expires_at = self._retry_at = None
        if not had:
            self._close("nothing to delete")
            return
        self.phase = "deleting"
        self._request(now, 0)

    def take_outbox(self) -> list[tuple[bytes, Endpoint]]:
        out, self._outbox = self._outbox, []
        return out

    def take_events(self) -> list[Event]:
        out, self._events = self._events, []
        return out

    def next_deadline(self) -> float | None:
        times = [r.next_at for r in self._reqs.values() if r.next_at is not None]
        times += [t for t in (self._renew_at, self._expires_at, self._retry_at) if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[tuple[bytes, Endpoint]]:
        for r in self._reqs.values():
            if r.next_at is None or r.next_at > now:
                continue
            if r.sends < self.max_transmissions:
                self._transmit(r, now)
            else:
                r.gave_up, r.next_at = True, None
                self.stats["gave-up"] += 1
        if self._reqs and all(r.gave_up or r.answer is not None for r in self._reqs.values()) \
                and any(r.gave_up for r in self._reqs.values()):
            self._no_answer(now)
        if self._expires_at is not None and now >= self._expires_at:
            self._lose(now, "the mapping expired without a successful renewal")
        if self._renew_at is not None and now >= self._renew_at and not self._reqs:
            self._renew_at = None
            self.stats["renewals"] += 1
            self._request(now, self.lifetime)
        if self._retry_at is not None and now >= self._retry_at and not self._reqs:
            self._retry_at = None
            if self.external is None:
                self.phase = "requesting"
            self._request(now, self.lifetime)
        return self.take_outbox()

    def receive(self, data: bytes, src: Endpoint, now: float) -> bool:
        """A datagram from `src`: True if it was the gateway's (consumed)."""
        if (str(src[0]), int(src[1])) != self.gateway:
            self.stats["dropped:not-gateway"] += 1
            return False
        try:
            ans: natpmp.Response | pcp.Response
            ans = pcp.decode_response(data) if self.protocol == "pcp" else natpmp.decode_response(data)
        except (natpmp.NatPmpError, pcp.PcpError):
            self.stats["dropped:malformed"] += 1
            return True
        # a NAT-PMP-only gateway's refusal of PCP (version 0) carries no PCP epoch
        spoke_pcp = isinstance(ans, pcp.Response) and ans.version == 2
        restarted = self._check_epoch(ans.epoch, now) if (spoke_pcp or isinstance(ans, natpmp.Response)) else False
        key = self._match(ans)
        if key is None:
            if restarted and self.phase == "mapped" and not self._reqs:
                self._renew_at = None
                self._request(now, self.lifetime)
            else:
                self.stats["dropped:unmatched"] += 1
            return True
        r = self._reqs[key]
        if r.answer is not None:
            self.stats["dropped:duplicate"] += 1
            return True
        r.answer, r.next_at = ans, None
        self.stats["answers"] += 1
        if all(q.answer is not None for q in self._reqs.values()):
            self._complete(now)
        elif not ans.ok:  # NAT-PMP: one error decides
            self._complete(now)
        return True

    # ------------------------------------------------------------------ internals

    def _request(self, now: float, lifetime: int) -> None:
        self._reqs = {}
        if self.protocol == "pcp":
            port = self.external[1] if self.external else self.internal_port
            ip = self.external[0] if self.external else None
            data = pcp.map_request(self.nonce, self.client_ip, self.internal_port, lifetime,
                                   suggested_port=port, suggested_ip=ip)
            self._reqs["map"] = _Req("map", data)
        else:
            port = self.external[1] if self.external else self.internal_port
            if lifetime:
                self._reqs["ext"] = _Req("ext", natpmp.external_request())
            self._reqs["map"] = _Req("map", natpmp.map_request(self.internal_port, port, lifetime))
        for r in self._reqs.values():
            self._transmit(r, now)

    def _transmit(self, r: _Req, now: float) -> None:
        r.sends += 1
        r.next_at = now + (self.rto * 2 ** (r.sends - 1) if r.sends < self.max_transmissions else self.final_wait)
        self._outbox.append((r.data, self.gateway))
        self.stats["sent"] += 1
        if r.sends > 1:
            self.stats["retransmitted"] += 1

    def _match(self, ans: natpmp.Response | pcp.Response) -> str | None:
        if isinstance(ans, pcp.Response):
            r = self._reqs.get("map")
            if r is None:
                return None
            if ans.version != 2:  # a NAT-PMP-only gateway refusing PCP
                return "map"
            if ans.opcode != PCP_OPCODE_MAP:
                return None
            if ans.ok and (ans.nonce != self.nonce or ans.protocol != IPPROTO_UDP
                           or ans.internal_port != self.internal_port):
                return None
            if not ans.ok and ans.nonce is not None and ans.nonce != self.nonce:
                return None
            return "map"
        if ans.op == NATPMP_OP_EXTERNAL and "ext" in self._reqs:
            return "ext"
        if ans.op == NATPMP_OP_MAP_UDP and "map" in self._reqs:
            if ans.ok and ans.internal_port != self.internal_port:
                return None
            return "map"
        return None

    def _check_epoch(self, epoch: int, now: float) -> bool:
        prev, self._epoch = self._epoch, (epoch, now)
        if prev is None:
            return False
        if epoch < prev[0] + (now - prev[1]) * 7 / 8 - 2:
            self.stats["gateway-restarts"] += 1
            return True
        return False

    def _complete(self, now: float) -> None:
        answers = {k: r.answer for k, r in self._reqs.items()}
        self._reqs = {}
        bad = next((a for a in answers.values() if a is not None and not a.ok), None)  # type: ignore[union-attr]
        if self.phase == "deleting":
            self._close("deleted" if bad is None else f"delete refused: {bad.result_name}")  # type: ignore[union-attr]
            return
        if bad is not None:
            self._fail(now, f"{self.protocol} refused: {bad.result_name}")  # type: ignore[union-attr]
            return
        if self.protocol == "pcp":
            a = answers["map"]
            assert isinstance(a, pcp.Response)
            ext, life = (str(a.external_ip), int(a.external_port or 0)), int(a.lifetime)
        else:
            e, m = answers["ext"], answers["map"]
            assert isinstance(e, natpmp.Response) and isinstance(m, natpmp.Response)
            ext, life = (str(e.external_ip), int(m.external_port or 0)), int(m.lifetime or 0)
        if ext[1] == 0 or life == 0 or ext[0] in ("0.0.0.0", "::"):
            self._fail(now, f"{self.protocol} answered without a usable mapping {ext[0]}:{ext[1]} for {life} s")
            return
        old, self.external, self.granted = self.external, ext, life
        self.phase = "mapped"
        life_eff = max(life, PORTMAP_MIN_LIFETIME)
        self._renew_at = now + life_eff * PORTMAP_RENEW_FRACTION
        self._expires_at = now + life_eff
        self._retry_at = None
        if old is not None:
            self.stats["renewed"] += 1
        if old is None:
            self._events.append(Event("mapped", ext, life))
        elif old != ext:
            self._events.append(Event("changed", ext, life, f"was {old[0]}:{old[1]}"))

    def _no_answer(self, now: float) -> None:
        self._reqs = {}
        if self.phase == "deleting":
            self._close("no answer to the delete")
            return
        self._fail(now, f"no {self.protocol} answer from {self.gateway[0]}")

    def _fail(self, now: float, note: str) -> None:
        self.stats["failures"] += 1
        if self.external is None:  # never mapped, or lost: try again later
            self._events.append(Event("failed", None, None, note))
            self.phase = "failed"
            self._renew_at = self._expires_at = None
            self._retry_at = now + self.retry_interval
            return
        # a renewal failed: keep the mapping until it expires, retry meanwhile
        left = (self._expires_at if self._expires_at is not None else now) - now
        self._retry_at = now + min(self.retry_interval, max(1.0, left / 2))

    def _lose(self, now: float, note: str) -> None:
        self._expires_at = self._renew_at = None
        if self.external is not None:
            self.external, self.granted = None, None
            self._events.append(Event("lost", None, None, note))
        self.phase = "idle"
        self._retry_at = now + self.retry_interval

    def _close(self, note: str) -> None:
        self.phase = "closed"
        self.external = None
        self._reqs = {}
        self._renew_at = self._expires_at = self._retry_at = None
        self._events.append(Event("deleted", None, None, note))
