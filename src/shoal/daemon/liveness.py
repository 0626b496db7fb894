"""Tunnel liveness: which peers answer, which to probe, which tunnels are down (sans-IO).

Owns: per peer (by public key) when an authenticated packet from it was last seen, whether it
is being checked actively, and its liveness state. The daemon (`shoal.daemon.daemon`) feeds it
once per LIVENESS_TICK and carries out what it asks: probes, logs, reports to the server.

Evidence that a peer is alive is any *authenticated* packet from it: its engine rx counter
grew (data or a WireGuard keepalive, both only count after the AEAD tag verified), a
handshake with it completed, or one of our probes was answered. The probe is an ICMP echo
to the peer's overlay IPv4 sent through the tunnel: it needs the peer's session keys both
ways, so only the real peer can answer, and when no session is left it makes the engine start
a handshake (so probing a dead peer also keeps retrying it).

Modes:
    passive   we are connected to the server and it asked for no check: nothing is sent; a
              tunnel is "up" if the peer was seen within DOWN_AFTER, else "idle" (quiet;
              the server vouches for the peer).
    active    we lost the server (every peer), or the server sent CheckPeer (that peer): a
              peer not seen within PROBE_INTERVAL gets a probe every PROBE_INTERVAL seconds.

States in active mode (t = time since the later of "last seen" and "check started"):

    state      condition                    meaning
    ---------  ---------------------------  -------------------------------------------------
    up         seen within SUSPECT_AFTER    answered lately (probe, data or keepalive)
    checking   t <= DOWN_AFTER              quiet; probes are going out
    down       t > DOWN_AFTER               nothing authenticated for DOWN_AFTER seconds; the
                                            tunnel stays configured and probes continue, so it
                                            is "up" again as soon as the peer answers

So a peer that dies while we are checking is marked down at most DOWN_AFTER + LIVENESS_TICK
(16 s) after its last packet: well inside the 30 s promise. Probes cost one 44-byte ICMP echo
(plus WireGuard overhead) per quiet peer every 2 s, only while checking.

Every state change is an `Change(key, old, new, reason)` in `changes` (the daemon logs them).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.wireguard.keys import PublicKey

PROBE_INTERVAL = 2.0  # seconds between probes to a quiet peer while checking
SUSPECT_AFTER = 5.0  # quiet longer than this while checking: "checking" (two probes unanswered)
DOWN_AFTER = 15.0  # quiet longer than this while checking: "down"
LIVENESS_TICK = 0.5  # how often the daemon feeds the tracker

UP, CHECKING, DOWN, IDLE = "up", "checking", "down", "idle"


@dataclass(slots=True)
class PeerLiveness:
    rx_bytes: int = 0
    last_seen: float = -math.inf
    check_since: float | None = None  # when active checking of this peer began (None: passive)
    requested: bool = False  # the server asked us to check this peer
    next_probe: float = -math.inf
    state: str = IDLE
    probes: int = 0
    answers: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    key: PublicKey
    old: str
    new: str
    reason: str


@dataclass
class Liveness:
    """See the module docstring. Driven by one task; nothing is thread-safe."""

    peers: dict[PublicKey, PeerLiveness] = field(default_factory=dict)
    active: bool = False  # the server connection is lost: check every peer
    changes: list[Change] = field(default_factory=list)

    # ---------------------------------------------------------------- inputs

    def set_peers(self, rx: dict[PublicKey, int], now: float) -> None:
        """The engine's peers and their rx byte counters (call every tick)."""
        for key in [k for k in self.peers if k not in rx]:
            del self.peers[key]
        for key, count in rx.items():
            p = self.peers.get(key)
            if p is None:
                p = self.peers[key] = PeerLiveness(rx_bytes=count)
                if self.active:
                    p.check_since = now
                continue
            if count != p.rx_bytes:
                p.rx_bytes = count
                p.last_seen = now

    def seen(self, key: PublicKey, now: float, *, probe: bool = False) -> None:
        """Authenticated evidence from the peer: a completed handshake, a probe answer."""
        p = self.peers.get(key)
        if p is not None:
            p.last_seen = max(p.last_seen, now)
            if probe:
                p.answers += 1

    def set_active(self, active: bool, now: float) -> None:
        """The server connection was lost (True) or is back (False)."""
        if active == self.active:
            return
        self.active = active
        for p in self.peers.values():
            if active and p.check_since is None:
                p.check_since = now
            elif not active and not p.requested:
                p.check_since = None

    def set_requested(self, key: PublicKey, requested: bool, now: float) -> bool:
        """The server asked to check (True) or said the check is over (False); False if unknown."""
        p = self.peers.get(key)
        if p is None:
            return False
        p.requested = requested
        if requested and p.check_since is None:
            p.check_since = now
        elif not requested and not self.active:
            p.check_since = None
        return True

    # ---------------------------------------------------------------- outputs

    def due_probes(self, now: float) -> list[PublicKey]:
        """Peers to probe now (each at most once per PROBE_INTERVAL)."""
        out = []
        for key, p in self.peers.items():
            if p.check_since is None or now - p.last_seen < PROBE_INTERVAL or now < p.next_probe:
                continue
            p.next_probe = now + PROBE_INTERVAL
            p.probes += 1
            out.append(key)
        return out

    def update(self, now: float) -> list[Change]:
        """Recompute every state; returns (and appends to `changes`) what changed."""
        out = []
        for key, p in self.peers.items():
            new = self._state(p, now)
            if new != p.state:
                out.append(Change(key, p.state, new, self._why(p, new, now)))
                p.state = new
        self.changes += out
        return out

    def state(self, key: PublicKey) -> str | None:
        p = self.peers.get(key)
        return None if p is None else p.state

    def last_seen_ago(self, key: PublicKey, now: float) -> float | None:
        p = self.peers.get(key)
        if p is None or p.last_seen == -math.inf:
            return None
        return max(0.0, now - p.last_seen)

    def checking(self) -> Iterable[tuple[PublicKey, PeerLiveness]]:
        return ((k, p) for k, p in self.peers.items() if p.check_since is not None)

    # ---------------------------------------------------------------- rules

    @staticmethod
    def _state(p: PeerLiveness, now: float) -> str:
        quiet = now - p.last_seen
        if p.check_since is None:
            return UP if quiet <= DOWN_AFTER else IDLE
        if quiet <= SUSPECT_AFTER:
            return UP
        return CHECKING if now - max(p.last_seen, p.check_since) <= DOWN_AFTER else DOWN

    @staticmethod
    def _why(p: PeerLiveness, new: str, now: float) -> str:
        quiet = now - p.last_seen
        ago = "never" if quiet == math.inf else f"{quiet:.1f} s ago"
        if new == UP:
            return f"authenticated packet from the peer (last seen {ago if quiet > 0.05 else 'just now'})"
        if new == CHECKING:
            return f"quiet since {ago}; probing every {PROBE_INTERVAL:g} s"
        if new == DOWN:
            return f"no authenticated packet for {DOWN_AFTER:g} s (last seen {ago}); still probing"
        return "quiet, not checking (the server is reachable and vouches for the peer)"
