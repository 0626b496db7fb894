"""Per-peer path engine: probes candidates with disco pings and chooses direct or relayed.

Owns the decision of how one node reaches one peer (issue #5 part 3). Sans-IO: candidates,
received disco messages and `now` in; disco datagrams to send (`Transmit`), the chosen `Path`,
`PathEvent`s and one `next_deadline()` out. Wire format: `shoal.nat.disco`; timers and budgets:
`shoal.constants` (PATH_*).

Inputs
  - `set_remote_candidates`: the peer's candidates from the control plane (host/LAN,
    reflexive, port-mapped) and the relay marker (the peer is reachable through a relay).
  - `start(at)`: the moment the server gave both sides; probing starts then, on both sides
    at once, so each side's first pings open its own NAT toward the other (hole punching).
  - `handle_message(msg, src, now, via_relay)`: a disco message from this peer, already
    opened by `DiscoCodec`. A Ping is answered with a Pong to its source; a Ping from an
    address we did not know is a learned (peer-reflexive) candidate and is probed at once
    (this is how roaming is noticed); a CallMeMaybe adds candidates and starts a new burst.
  - `set_local_candidates`: our own candidates changed (new port mapping, new address):
    a CallMeMaybe goes to the peer through the relay and a new burst starts.

Rules
  - Probing: every candidate at once, every PATH_PROBE_INTERVAL for PATH_PROBE_ROUNDS rounds
    (a burst); afterwards every PATH_REPROBE_INTERVAL (background), so a relayed pair, or one
    on a worse path, upgrades within PATH_REPROBE_INTERVAL + an RTT of a direct path opening.
  - A path is alive while its last pong is at most PATH_TRUST old and no ping sent after
    that pong has gone unanswered for PATH_PING_TIMEOUT. The chosen direct path is pinged
    every PATH_HEARTBEAT, so a dead path is noticed within HEARTBEAT + PING_TIMEOUT.
  - Choice: the alive direct path with the best RTT; a LAN path (the peer's LOCAL candidate)
    wins if its RTT is within PATH_LAN_MARGIN of the best; the current path is kept unless
    the new one is better by PATH_SWITCH_MARGIN (no flapping); the relay only when no direct
    path is alive. A pong counts only if its tx id is outstanding and it comes from the
    address pinged.
  - Hard NAT (`peer_hard`: the peer's mapping varies by destination; `local_hard` false):
    if a burst has found nothing direct after PATH_PROBE_INTERVAL x 2, the easy side sprays
    pings at the peer's reflexive IP: first the PATH_PREDICT_WINDOW ports above each reflexive
    port the peer reported (sequential allocators), then distinct random ports, at most
    PATH_SPRAY_BUDGET probes at PATH_SPRAY_RATE per second, again every PATH_SPRAY_BACKOFF s
    while still not direct. The hard side keeps pinging our reflexive address (ordinary
    probing), holding its mapping toward us open; a spray ping that hits that mapping's port
    passes its filter, and the pong comes back through ours. Both hard: no spray (two random
    ports would have to coincide), the relay is used.
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterable

from shoal.constants import (
    PATH_HEARTBEAT,
    PATH_LAN_MARGIN,
    PATH_MAX_LEARNED,
    PATH_PING_TIMEOUT,
    PATH_PREDICT_WINDOW,
    PATH_PROBE_INTERVAL,
    PATH_PROBE_ROUNDS,
    PATH_REPROBE_INTERVAL,
    PATH_SPRAY_BACKOFF,
    PATH_SPRAY_BUDGET,
    PATH_SPRAY_RATE,
    PATH_SWITCH_MARGIN,
    PATH_TRUST,
)
from shoal.nat.disco import Address, CallMeMaybe, CandidateKind, DiscoCodec, DiscoMessage, Ping, Pong

__all__ = ["PathKind", "Path", "PathEvent", "Transmit", "PathEngine", "LEARNED"]

LEARNED = "learned"  # source of a candidate learnt from a ping's source address


class PathKind(enum.Enum):
    DIRECT = "direct"
    RELAY = "relay"


@dataclasses.dataclass(frozen=True, slots=True)
class Path:
    kind: PathKind
    addr: Address | None  # the peer's endpoint (direct) or None (relay)
    rtt: float | None = None
    lan: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class PathEvent:
    kind: str  # "chosen" (first path), "changed", "lost" (a direct path stopped answering)
    at: float
    path: Path | None
    previous: Path | None


@dataclasses.dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes
    dst: Address | None  # None with via_relay: the relay knows the peer by its node key
    via_relay: bool = False


class _Cand:
    __slots__ = ("addr", "kind", "source", "last_pong", "rtt", "missed", "last_ping")

    def __init__(self, addr: Address, kind: CandidateKind, source: str) -> None:
        self.addr = addr
        self.kind = kind
        self.source = source
        self.last_pong: float | None = None
        self.rtt: float | None = None
        self.missed = False
        self.last_ping = -1e18


class PathEngine:
    """How we reach one peer; see the module docstring for the rules."""

    def __init__(
        self,
        codec: DiscoCodec,
        peer: bytes,
        *,
        local_hard: bool = False,
        peer_hard: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if not codec.knows(peer):
            raise ValueError("the codec does not know this peer's key")
        self.codec = codec
        self.peer = bytes(peer)
        self.local_hard = local_hard
        self.peer_hard = peer_hard
        self._rng = rng if rng is not None else random.Random()
        self._cands: dict[Address, _Cand] = {}
        self._pending: dict[bytes, tuple[Address, float]] = {}  # tx id -> (pinged, sent at)
        self.relay = False
        self.path: Path | None = None
        self.events: list[PathEvent] = []
        self.stats: dict[str, int] = {}
        self._local: tuple[tuple[CandidateKind, Address], ...] = ()
        self._started_at: float | None = None
        self._burst_left = 0
        self._next_probe: float | None = None
        self._next_heartbeat: float | None = None
        self._spray_at: float | None = None
        self._spray_queue: list[Address] = []
        self._spray_next: float | None = None

    # --- inputs -----------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _add(self, addr: Address, kind: CandidateKind, source: str) -> _Cand | None:
        addr = (str(addr[0]), int(addr[1]))
        c = self._cands.get(addr)
        if c is None:
            if source == LEARNED and sum(1 for x in self._cands.values() if x.source == LEARNED) >= PATH_MAX_LEARNED:
                self._count("learned-limit")
                return None
            c = self._cands[addr] = _Cand(addr, kind, source)
        elif kind == CandidateKind.LOCAL:
            c.kind = kind
        return c

    def set_remote_candidates(
        self, candidates: Iterable[tuple[CandidateKind, Address]], now: float, *, relay: bool = False
    ) -> list[Transmit]:
        """The peer's candidates from the control plane (replacing the previous ones)."""
        keep = {}
        for kind, addr in candidates:
            c = self._add(addr, CandidateKind(kind), "control")
            if c is not None:
                keep[c.addr] = c
        for a, c in list(self._cands.items()):
            if c.source == "control" and a not in keep and (self.path is None or self.path.addr != a):
                del self._cands[a]
        self.relay = relay
        out: list[Transmit] = []
        if self._started_at is not None:
            self._burst(now)
            out += self._select(now)
        return out

    def start(self, at: float) -> None:
        """Begin probing at the server-given moment `at` (both sides use the same one)."""
        self._started_at = at
        self._burst(at)
        if self.peer_hard and not self.local_hard:
            self._spray_at = at + 2 * PATH_PROBE_INTERVAL

    def set_local_candidates(self, candidates: Iterable[tuple[CandidateKind, Address]], now: float) -> list[Transmit]:
        """Our own candidates changed: tell the peer (CallMeMaybe via the relay) and re-probe."""
        cands = tuple((CandidateKind(k), (str(a[0]), int(a[1]))) for k, a in candidates)
        if cands == self._local:
            return []
        self._local = cands
        out: list[Transmit] = []
        if self.relay:
            out.append(Transmit(self.codec.seal(self.peer, CallMeMaybe(cands)), None, via_relay=True))
        if self._started_at is not None:
            self._burst(now)
        return out

    def handle_message(self, msg: DiscoMessage, src: Address, now: float, *, via_relay: bool = False) -> list[Transmit]:
        """A disco message from this peer (opened by the codec); returns what to send."""
        src = (str(src[0]), int(src[1]))
        out: list[Transmit] = []
        if isinstance(msg, Ping):
            self._count("ping-in")
            reply = self.codec.seal(self.peer, Pong(msg.tx_id, src))
            out.append(Transmit(reply, None if via_relay else src, via_relay))
            if not via_relay and self._started_at is not None:
                c = self._cands.get(src) or self._add(src, CandidateKind.REFLEXIVE, LEARNED)
                if c is not None and not self._alive(c, now) and now - c.last_ping >= PATH_PING_TIMEOUT / 4:
                    out.append(self._ping(c, now))  # triggered check: their NAT just opened toward us
        elif isinstance(msg, Pong):
            pend = self._pending.get(msg.tx_id)
            if pend is None or via_relay:
                self._count("pong-unexpected")
                return out
            addr, sent = pend
            if addr != src:
                self._count("pong-wrong-source")
                return out
            del self._pending[msg.tx_id]
            c = self._cands.get(addr) or self._add(addr, CandidateKind.PREDICTED, "spray")
            if c is None:
                return out
            self._count("pong-in")
            c.last_pong, c.missed = now, False
            rtt = now - sent
            c.rtt = rtt if c.rtt is None else 0.75 * c.rtt + 0.25 * rtt
            out += self._select(now)
        elif isinstance(msg, CallMeMaybe):
            self._count("call-me-maybe-in")
            for kind, addr in msg.candidates:
                self._add(addr, kind, "call-me-maybe")
            if self._started_at is not None:
                self._burst(now)
                out += self.handle_timer(now)
        return out

    # --- timers -----------------------------------------------------------------------------

    def _burst(self, now: float) -> None:
        self._burst_left = PATH_PROBE_ROUNDS
        self._next_probe = now if self._started_at is None else max(now, self._started_at)

    def _ping(self, c: _Cand, now: float) -> Transmit:
        tx, data = self.codec.ping(self.peer)
        self._pending[tx] = (c.addr, now)
        c.last_ping = now
        self._count("ping-out")
        return Transmit(data, c.addr)

    def _alive(self, c: _Cand, now: float) -> bool:
        return c.last_pong is not None and now - c.last_pong <= PATH_TRUST and not c.missed

    def next_deadline(self) -> float | None:
        ds = [d for d in (self._next_probe, self._next_heartbeat, self._spray_next) if d is not None]
        if self._spray_at is not None:
            ds.append(self._spray_at)
        if self._pending:
            ds.append(min(s for _, s in self._pending.values()) + PATH_PING_TIMEOUT)
        if self.path is not None and self.path.kind is PathKind.DIRECT and self.path.addr in self._cands:
            lp = self._cands[self.path.addr].last_pong
            if lp is not None:
                ds.append(lp + PATH_TRUST + 1e-9)
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for tx, (addr, sent) in list(self._pending.items()):  # misses
            if now >= sent + PATH_PING_TIMEOUT:  # the same sum as next_deadline (float-exact)
                del self._pending[tx]
                c = self._cands.get(addr)
                if c is not None and (c.last_pong is None or c.last_pong < sent):
                    c.missed = True
        if self._next_probe is not None and now >= self._next_probe:
            for c in list(self._cands.values()):
                if c.source != "spray":
                    out.append(self._ping(c, now))
            if self._burst_left > 0:
                self._burst_left -= 1
            self._next_probe = now + (PATH_PROBE_INTERVAL if self._burst_left > 0 else PATH_REPROBE_INTERVAL)
        cur = self.path
        if cur is not None and cur.kind is PathKind.DIRECT and self._next_heartbeat is not None and now >= self._next_heartbeat:
            c = self._cands.get(cur.addr)  # type: ignore[arg-type]
            if c is not None and now - c.last_ping >= PATH_HEARTBEAT / 2:
                out.append(self._ping(c, now))
            self._next_heartbeat = now + PATH_HEARTBEAT
        out += self._spray(now)
        out += self._select(now)
        return out

    # --- hard NAT -----------------------------------------------------------------------------

    def _direct_alive(self, now: float) -> bool:
        return any(self._alive(c, now) for c in self._cands.values())

    def _spray(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        if self._spray_at is not None and now >= self._spray_at:
            self._spray_at = None
            if not self._direct_alive(now):
                self._spray_queue = self._spray_targets()
                self._spray_next = now
                self._count("spray-started")
            if self.peer_hard and not self.local_hard:
                self._spray_at = now + PATH_SPRAY_BACKOFF
        if self._spray_next is not None and now >= self._spray_next:
            if self._direct_alive(now) or not self._spray_queue:
                self._spray_queue, self._spray_next = [], None
                return out
            # send the probes due by now at PATH_SPRAY_RATE (at most 10 per timer firing)
            for _ in range(10):
                if not self._spray_queue:
                    break
                addr = self._spray_queue.pop(0)
                tx, data = self.codec.ping(self.peer)
                self._pending[tx] = (addr, now)
                self._count("spray-out")
                out.append(Transmit(data, addr))
            self._spray_next = now + 10 / PATH_SPRAY_RATE if self._spray_queue else None
        return out

    def _spray_targets(self) -> list[Address]:
        refl = [c.addr for c in self._cands.values() if c.kind in (CandidateKind.REFLEXIVE, CandidateKind.MAPPED) and c.source != LEARNED]
        if not refl:
            return []
        ip = refl[0][0]
        ports = [p for a in refl if a[0] == ip for p in (a[1],)]
        seen = {(ip, p) for p in ports}
        targets: list[Address] = []
        for p in ports:
            for d in range(1, PATH_PREDICT_WINDOW + 1):
                q = p + d
                if q < 65536 and (ip, q) not in seen:
                    seen.add((ip, q))
                    targets.append((ip, q))
        while len(targets) < PATH_SPRAY_BUDGET and len(seen) < 64512:
            q = self._rng.randint(1024, 65535)
            if (ip, q) not in seen:
                seen.add((ip, q))
                targets.append((ip, q))
        return targets[:PATH_SPRAY_BUDGET]

    # --- choice -----------------------------------------------------------------------------

    def _as_path(self, c: _Cand) -> Path:
        return Path(PathKind.DIRECT, c.addr, c.rtt, c.kind == CandidateKind.LOCAL)

    def _select(self, now: float) -> list[Transmit]:
        alive = [c for c in self._cands.values() if self._alive(c, now)]
        chosen: _Cand | None = None
        if alive:
            best = min(alive, key=lambda c: c.rtt or 0.0)
            lan = [c for c in alive if c.kind == CandidateKind.LOCAL and (c.rtt or 0.0) <= (best.rtt or 0.0) + PATH_LAN_MARGIN]
            chosen = min(lan, key=lambda c: c.rtt or 0.0) if lan else best
            cur = self.path
            if cur is not None and cur.kind is PathKind.DIRECT and cur.addr != chosen.addr:
                cc = self._cands.get(cur.addr)  # type: ignore[arg-type]
                if cc is not None and cc in alive:
                    same_class = (cc.kind == CandidateKind.LOCAL) == (chosen.kind == CandidateKind.LOCAL)
                    if (same_class or cc.kind == CandidateKind.LOCAL) and (chosen.rtt or 0.0) > (cc.rtt or 0.0) - PATH_SWITCH_MARGIN:
                        chosen = cc
        new: Path | None
        if chosen is not None:
            new = self._as_path(chosen)
        elif self.relay:
            new = Path(PathKind.RELAY, None)
        else:
            new = None
        old = self.path
        if (old is None) != (new is None) or (old is not None and new is not None and (old.kind, old.addr) != (new.kind, new.addr)):
            if old is not None and old.kind is PathKind.DIRECT:
                oc = self._cands.get(old.addr)  # type: ignore[arg-type]
                if oc is None or not self._alive(oc, now):
                    self.events.append(PathEvent("lost", now, new, old))
            if new is not None:
                self.events.append(PathEvent("chosen" if old is None else "changed", now, new, old))
            self._next_heartbeat = now + PATH_HEARTBEAT if new is not None and new.kind is PathKind.DIRECT else None
        self.path = new
        return []

    def pop_events(self) -> list[PathEvent]:
        ev, self.events = self.events, []
        return ev
