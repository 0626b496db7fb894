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
    (this is how roaming is noticed); a CallMeMaybe replaces the candidates the previous one
    gave (it is the peer's whole current set) and starts a new burst, at most one per
    PATH_CALL_ME_MAYBE_GAP. A candidate whose address is not usable
    (`shoal.endpoint.usable`: loopback, multicast, overlay, ...) is never probed.
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
  - Hard NAT, one side only (birthday probing). The hard side H (its NAT maps every
    destination to a new random port) cannot be reached at its data socket's mapping toward
    the easy side E: that port is random, and E's filter admits only address:ports E has sent
    to. So both sides multiply their chances:
      * H, at start + PATH_BIRTHDAY_START, sends one ping from each of PATH_BIRTHDAY_SOCKETS
        extra sockets ("birthday sockets", `Transmit.sock` 1..N; the caller opens them) to E's
        reflexive address: H's NAT now holds N random ports open toward E;
      * E, at start + PATH_SPRAY_START, sprays pings at H's reflexive IP: first the
        PATH_PREDICT_WINDOW ports above each reflexive port H reported (sequential
        allocators), then distinct random ports, PATH_SPRAY_BUDGET probes at PATH_SPRAY_RATE/s.
    A spray ping that hits one of H's N ports passes H's NAT (that socket sent to E's address)
    and reaches birthday socket k: H answers from k and pings back from k (a learned
    candidate on socket k), which passes E's filter (E sent to that port). With N = 256 and
    1024 random probes a hit is ~98% likely (1 - (1 - N/64512)^1024). Both repeat every
    PATH_SPRAY_BACKOFF s while not direct. The chosen path then names its socket
    (`Path.sock`); the caller sends that peer's traffic from it. Both hard: no spray (two
    random ports would have to coincide), the relay is used.
  - Whom we spray (issue 18 F10): candidates are the peer's claims, so a member could name a
    victim's address with nat_hard and make every co-member spray it. Spray and birthday
    pings therefore aim only at a public IP (`shoal.endpoint.sprayable`) the peer
    has shown it owns: the IP the server saw its control connection come from
    (`set_remote_candidates(observed=...)`, PeerInfo.observed_ip), or an IP from which an
    expected pong came (sealed by the peer, answering a tx id we sent there). Any other
    candidate only gets plain probes (one ping per round). Every spray or birthday ping also
    takes a token per peer and per target IP from a `SprayLimit` the daemon shares between
    its engines (PATH_SPRAY_PEER_BUDGET, PATH_SPRAY_TARGET_BUDGET per PATH_SPRAY_WINDOW); a
    refused probe ends that attempt (counted "spray-limited").
"""

from __future__ import annotations

import dataclasses
import enum
import random
from collections.abc import Iterable

from shoal.constants import (
    PATH_BIRTHDAY_SOCKETS,
    PATH_BIRTHDAY_START,
    PATH_CALL_ME_MAYBE_GAP,
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
    PATH_SPRAY_MAX_KEYS,
    PATH_SPRAY_PEER_BUDGET,
    PATH_SPRAY_RATE,
    PATH_SPRAY_START,
    PATH_SPRAY_TARGET_BUDGET,
    PATH_SPRAY_WINDOW,
    PATH_SWITCH_MARGIN,
    PATH_TRUST,
)
from shoal import endpoint
from shoal.endpoint import Endpoint
from shoal.lan.storm import StormLimiter
from shoal.nat.disco import CallMeMaybe, CandidateKind, DiscoCodec, DiscoMessage, Ping, Pong

__all__ = ["PathKind", "Path", "PathEvent", "Transmit", "PathEngine", "SprayLimit", "LEARNED"]

LEARNED = "learned"  # source of a candidate learnt from a ping's source address


class PathKind(enum.Enum):
    DIRECT = "direct"
    RELAY = "relay"


@dataclasses.dataclass(frozen=True, slots=True)
class Path:
    kind: PathKind
    addr: Endpoint | None  # the peer's endpoint (direct) or None (relay)
    rtt: float | None = None
    lan: bool = False
    sock: int = 0  # 0: the data socket; k > 0: birthday socket k (hard NAT, see the rules)


@dataclasses.dataclass(frozen=True, slots=True)
class PathEvent:
    kind: str  # "chosen" (first path), "changed", "lost" (a direct path stopped answering)
    at: float
    path: Path | None
    previous: Path | None


@dataclasses.dataclass(frozen=True, slots=True)
class Transmit:
    data: bytes
    dst: Endpoint | None  # None with via_relay: the relay knows the peer by its node key
    via_relay: bool = False
    sock: int = 0  # send from the data socket (0) or from birthday socket k (1..PATH_BIRTHDAY_SOCKETS)


Key = tuple[Endpoint, int]  # a candidate: the peer's address, and which of our sockets reaches it


class _Cand:
    __slots__ = ("addr", "sock", "kind", "source", "last_pong", "rtt", "missed", "last_ping")

    def __init__(self, addr: Endpoint, kind: CandidateKind, source: str, sock: int = 0) -> None:
        self.addr = addr
        self.sock = sock
        self.kind = kind
        self.source = source
        self.last_pong: float | None = None
        self.rtt: float | None = None
        self.missed = False
        self.last_ping = -1e18


class SprayLimit:
    """Spray budgets, shared by all of a daemon's engines: per peer and per target IP.

    Every probe (a sprayed ping or a birthday ping) takes one token from its peer's bucket,
    then one from its target IP's bucket (`shoal.lan.storm.StormLimiter`: a new key starts
    full, `budget` tokens, refilled at budget / window per second, at most `max_keys` buckets
    per level). A probe either refuses is not sent and ends that attempt (a refusal by the
    target may have spent the peer's token: stricter, never looser)."""

    def __init__(self, *, peer_budget: int = PATH_SPRAY_PEER_BUDGET, target_budget: int = PATH_SPRAY_TARGET_BUDGET,
                 window: float = PATH_SPRAY_WINDOW, max_keys: int = PATH_SPRAY_MAX_KEYS) -> None:
        self.peer = StormLimiter(peer_budget / window, peer_budget, max_keys)
        self.target = StormLimiter(target_budget / window, target_budget, max_keys)

    def allow(self, peer: bytes, ip: str, now: float) -> bool:
        return self.peer.allow(peer, None, now) and self.target.allow(ip, None, now)


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
        spray_limit: SprayLimit | None = None,
    ) -> None:
        if not codec.knows(peer):
            raise ValueError("the codec does not know this peer's key")
        self.codec = codec
        self.peer = bytes(peer)
        self.local_hard = local_hard
        self.peer_hard = peer_hard
        self._rng = rng if rng is not None else random.Random()
        self._cands: dict[Key, _Cand] = {}
        self._pending: dict[bytes, tuple[Key, float]] = {}  # tx id -> (pinged, sent at)
        self._birthday_at: float | None = None
        self.relay = False
        self.path: Path | None = None
        self.events: list[PathEvent] = []
        self.stats: dict[str, int] = {}
        self._local: tuple[tuple[CandidateKind, Endpoint], ...] = ()
        self._started_at: float | None = None
        self._burst_left = 0
        self._next_probe: float | None = None
        self._next_heartbeat: float | None = None
        self._spray_at: float | None = None
        self._spray_queue: list[Endpoint] = []
        self._spray_next: float | None = None
        self._limit = spray_limit if spray_limit is not None else SprayLimit()
        self._observed = ""  # the IP the server saw the peer at (PeerInfo.observed_ip)
        self._confirmed: set[str] = set()  # IPs an expected, sealed pong came from
        self._cmm_burst = -1e18  # when a CallMeMaybe last started a burst

    # --- inputs -----------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _add(self, addr: Endpoint, kind: CandidateKind, source: str, sock: int = 0) -> _Cand | None:
        addr = (str(addr[0]), int(addr[1]))
        c = self._cands.get((addr, sock))
        if c is None:
            if not endpoint.usable(addr[0]):  # loopback, multicast, overlay, ...: never probed
                self._count("candidate-unusable")
                return None
            if source == LEARNED and sum(1 for x in self._cands.values() if x.source == LEARNED) >= PATH_MAX_LEARNED:
                self._count("learned-limit")
                return None
            c = self._cands[(addr, sock)] = _Cand(addr, kind, source, sock)
        elif kind == CandidateKind.LOCAL:
            c.kind = kind
        return c

    def set_remote_candidates(
        self, candidates: Iterable[tuple[CandidateKind, Endpoint]], now: float, *, relay: bool = False,
        observed: str | None = None,
    ) -> list[Transmit]:
        """The peer's candidates from the control plane (replacing the previous ones) and the
        IP the server saw it at (`observed`, PeerInfo.observed_ip; None keeps the last one)."""
        if observed is not None:
            try:
                self._observed = str(endpoint.parse_ip(observed)) if observed else ""
            except endpoint.EndpointError:
                self._observed = ""
        keep = {}
        for kind, addr in candidates:
            c = self._add(addr, CandidateKind(kind), "control")
            if c is not None:
                keep[(c.addr, c.sock)] = c
        for k, c in list(self._cands.items()):
            if c.source == "control" and k not in keep and (self.path is None or (self.path.addr, self.path.sock) != k):
                del self._cands[k]
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
            self._spray_at = at + PATH_SPRAY_START
        if self.local_hard and not self.peer_hard:
            self._birthday_at = at + PATH_BIRTHDAY_START

    def set_hardness(self, *, local_hard: bool, peer_hard: bool, now: float) -> None:
        """Our NAT's or the peer's NAT's mapping behaviour became known or changed: spray or
        open birthday mappings soon if that now applies (see the rules)."""
        if (local_hard, peer_hard) == (self.local_hard, self.peer_hard):
            return
        self.local_hard, self.peer_hard = local_hard, peer_hard
        if self._started_at is None:
            return
        if peer_hard and not local_hard:
            at = now + PATH_SPRAY_START
            self._spray_at = at if self._spray_at is None else min(self._spray_at, at)
        if local_hard and not peer_hard:
            at = now + PATH_BIRTHDAY_START
            self._birthday_at = at if self._birthday_at is None else min(self._birthday_at, at)

    def set_local_candidates(self, candidates: Iterable[tuple[CandidateKind, Endpoint]], now: float) -> list[Transmit]:
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

    def handle_message(self, msg: DiscoMessage, src: Endpoint, now: float, *, via_relay: bool = False,
                       sock: int = 0) -> list[Transmit]:
        """A disco message from this peer (opened by the codec), received on our socket
        `sock` (0: the data socket); returns what to send."""
        src = (str(src[0]), int(src[1]))
        out: list[Transmit] = []
        if isinstance(msg, Ping):
            self._count("ping-in")
            reply = self.codec.seal(self.peer, Pong(msg.tx_id, src))
            out.append(Transmit(reply, None if via_relay else src, via_relay, sock=0 if via_relay else sock))
            if not via_relay and self._started_at is not None:
                c = self._cands.get((src, sock)) or self._add(src, CandidateKind.REFLEXIVE, LEARNED, sock)
                if c is not None and not self._alive(c, now) and now - c.last_ping >= PATH_PING_TIMEOUT / 4:
                    out.append(self._ping(c, now))  # triggered check: their NAT just opened toward us
        elif isinstance(msg, Pong):
            pend = self._pending.get(msg.tx_id)
            if pend is None or via_relay:
                self._count("pong-unexpected")
                return out
            key, sent = pend
            if key != (src, sock):
                self._count("pong-wrong-source")
                return out
            del self._pending[msg.tx_id]
            self._confirmed.add(src[0])  # the peer got our ping there: it owns that address
            c = self._cands.get(key) or self._add(src, CandidateKind.PREDICTED, "spray", sock)
            if c is None:
                return out
            self._count("pong-in")
            c.last_pong, c.missed = now, False
            rtt = now - sent
            c.rtt = rtt if c.rtt is None else 0.75 * c.rtt + 0.25 * rtt
            out += self._select(now)
        elif isinstance(msg, CallMeMaybe):
            self._count("call-me-maybe-in")
            keep = set()
            for kind, addr in msg.candidates:
                c = self._add(addr, kind, "call-me-maybe")
                if c is not None:
                    keep.add((c.addr, c.sock))
            cur = (self.path.addr, self.path.sock) if self.path is not None else None
            for k, c in list(self._cands.items()):  # the peer's whole current set: replaces the last one
                if c.source == "call-me-maybe" and k not in keep and k != cur:
                    del self._cands[k]
            if self._started_at is not None and now - self._cmm_burst >= PATH_CALL_ME_MAYBE_GAP:
                self._cmm_burst = now
                self._burst(now)
                out += self.handle_timer(now)
        return out

    # --- timers -----------------------------------------------------------------------------

    def _burst(self, now: float) -> None:
        self._burst_left = PATH_PROBE_ROUNDS
        self._next_probe = now if self._started_at is None else max(now, self._started_at)

    def _ping(self, c: _Cand, now: float) -> Transmit:
        tx, data = self.codec.ping(self.peer)
        self._pending[tx] = ((c.addr, c.sock), now)
        c.last_ping = now
        self._count("ping-out")
        return Transmit(data, c.addr, sock=c.sock)

    def _alive(self, c: _Cand, now: float) -> bool:
        return c.last_pong is not None and now - c.last_pong <= PATH_TRUST and not c.missed

    def next_deadline(self) -> float | None:
        ds = [d for d in (self._next_probe, self._next_heartbeat, self._spray_next, self._spray_at, self._birthday_at)
              if d is not None]
        if self._pending:
            ds.append(min(s for _, s in self._pending.values()) + PATH_PING_TIMEOUT)
        if self.path is not None and self.path.kind is PathKind.DIRECT and (self.path.addr, self.path.sock) in self._cands:
            lp = self._cands[(self.path.addr, self.path.sock)].last_pong  # type: ignore[index]
            if lp is not None:
                ds.append(lp + PATH_TRUST + 1e-9)
        return min(ds) if ds else None

    def handle_timer(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        for tx, (key, sent) in list(self._pending.items()):  # misses
            if now >= sent + PATH_PING_TIMEOUT:  # the same sum as next_deadline (float-exact)
                del self._pending[tx]
                c = self._cands.get(key)
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
            c = self._cands.get((cur.addr, cur.sock))  # type: ignore[arg-type]
            if c is not None and now - c.last_ping >= PATH_HEARTBEAT / 2:
                out.append(self._ping(c, now))
            self._next_heartbeat = now + PATH_HEARTBEAT
        out += self._spray(now)
        out += self._birthday(now)
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
                self._count("spray-started" if self._spray_queue else "spray-no-owned-target")
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
                if not self._limit.allow(self.peer, addr[0], now):
                    self._count("spray-limited")
                    self._spray_queue = []
                    break
                tx, data = self.codec.ping(self.peer)
                self._pending[tx] = ((addr, 0), now)
                self._count("spray-out")
                out.append(Transmit(data, addr))
            self._spray_next = now + 10 / PATH_SPRAY_RATE if self._spray_queue else None
        return out

    def _birthday(self, now: float) -> list[Transmit]:
        """Hard side: one ping from each birthday socket to the peer's reflexive address, so
        our NAT holds PATH_BIRTHDAY_SOCKETS mappings toward it while the easy peer sprays."""
        if self._birthday_at is None or now < self._birthday_at:
            return []
        if not (self.local_hard and not self.peer_hard):
            self._birthday_at = None
            return []
        self._birthday_at = now + PATH_SPRAY_BACKOFF
        if self._direct_alive(now):
            return []
        targets = self._spray_targets_base()
        if not targets:
            return []
        self._count("birthday-started")
        out: list[Transmit] = []
        for k in range(1, PATH_BIRTHDAY_SOCKETS + 1):
            if not self._limit.allow(self.peer, targets[0][0], now):
                self._count("spray-limited")
                break
            tx, data = self.codec.ping(self.peer)
            self._pending[tx] = ((targets[0], k), now)
            out.append(Transmit(data, targets[0], sock=k))
        return out

    @property
    def observed(self) -> str:
        """The IP the server saw the peer at, as last given ("" none)."""
        return self._observed

    def _owned(self, ip: str) -> bool:
        """The peer showed it owns this public IP: the server saw it there, or a pong came."""
        return (ip == self._observed or ip in self._confirmed) and endpoint.sprayable(ip)

    def _spray_targets_base(self) -> list[Endpoint]:
        return [c.addr for c in self._cands.values()
                if c.kind in (CandidateKind.REFLEXIVE, CandidateKind.MAPPED) and c.source != LEARNED and c.sock == 0
                and self._owned(c.addr[0])]

    def _spray_targets(self) -> list[Endpoint]:
        refl = self._spray_targets_base()
        if not refl:
            return []
        ip = refl[0][0]
        ports = [p for a in refl if a[0] == ip for p in (a[1],)]
        seen = {(ip, p) for p in ports}
        targets: list[Endpoint] = []
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
        return Path(PathKind.DIRECT, c.addr, c.rtt, c.kind == CandidateKind.LOCAL, c.sock)

    def _select(self, now: float) -> list[Transmit]:
        alive = [c for c in self._cands.values() if self._alive(c, now)]
        chosen: _Cand | None = None
        if alive:
            best = min(alive, key=lambda c: c.rtt or 0.0)
            lan = [c for c in alive if c.kind == CandidateKind.LOCAL and (c.rtt or 0.0) <= (best.rtt or 0.0) + PATH_LAN_MARGIN]
            chosen = min(lan, key=lambda c: c.rtt or 0.0) if lan else best
            cur = self.path
            if cur is not None and cur.kind is PathKind.DIRECT and (cur.addr, cur.sock) != (chosen.addr, chosen.sock):
                cc = self._cands.get((cur.addr, cur.sock))  # type: ignore[arg-type]
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
        if (old is None) != (new is None) or (
                old is not None and new is not None and (old.kind, old.addr, old.sock) != (new.kind, new.addr, new.sock)):
            if old is not None and old.kind is PathKind.DIRECT:
                oc = self._cands.get((old.addr, old.sock))  # type: ignore[arg-type]
                if oc is None or not self._alive(oc, now):
                    self.events.append(PathEvent("lost", now, new, old))
            elif old is not None and new is None:  # the relay went away and nothing direct answers
                self.events.append(PathEvent("lost", now, None, old))
            if new is not None:
                self.events.append(PathEvent("chosen" if old is None else "changed", now, new, old))
            self._next_heartbeat = now + PATH_HEARTBEAT if new is not None and new.kind is PathKind.DIRECT else None
        self.path = new
        return []

    def pop_events(self) -> list[PathEvent]:
        ev, self.events = self.events, []
        return ev
