"""Denial-of-service limits of the control channel (issue 18 F7, F8), sans-IO.

Owns: the token bucket (and `Buckets`, a bounded table of them by key, also used by the
coordination core's password budgets), the admission of control sessions before their Noise handshake
completes (`Admission`), the cache of message1 ephemeral keys that refuses a replayed
handshake before any X25519 work (`ReplayCache`), and the per-session rate limits with
coalescing (`SessionLimiter`). No sockets, no clock: every call takes `now` (monotonic
seconds). The constants are in `shoal.constants` (sections F7 and F8). The server's glue
(`shoal.server.app`) drives these; the wire effects are documented there and in
`shoal.control.transport` (close codes 1013 and 4029).

Admission (F7). A session is *unauthenticated* from the WebSocket accept until the node's
first transport frame decrypts (`shoal.control.transport.accept` returns). `Admission.admit`
is called before anything is read; it refuses (returns a reason; the glue closes the socket
at once, before any X25519) when any of these is reached, checked in this order:

    pending sessions    CONTROL_PREAUTH_MAX in all, CONTROL_PREAUTH_PER_ADDR per source
                        address, CONTROL_PREAUTH_PER_PREFIX per source prefix
                        (IPv4 /CONTROL_PREFIX_V4, IPv6 /CONTROL_PREFIX_V6)
    handshake starts    token buckets per address, per prefix and for the whole server
                        (CONTROL_HANDSHAKE_{BURST,RATE}[_PER_ADDR|_PER_PREFIX])

A bucket is spent only when every check passed (a refused attempt costs nobody budget).
An admitted session holds a `Ticket` until `release` (authenticated or gone). The bucket
tables keep at most CONTROL_ADMISSION_MAX_ENTRIES entries (least recently used dropped:
a dropped bucket comes back full, which only ever errs on the side of admitting).

Why no cookie as WireGuard has: WireGuard's cookie proves that a UDP sender can receive at
its source address before the responder does Curve25519 work. The control channel runs over
TCP: the TCP handshake already proves the source address, so a cookie round trip would add
latency and prove nothing new; the limits above, keyed by that proven address, are the cheap
refusal. (Spoofed sources cannot open a TCP connection at all.)

Replays (F7). A replayed message1 cannot get in: the server's message2 derives the session
keys from a fresh server ephemeral, and only the holder of the node's static and ephemeral
private keys can seal the first frame (`accept` waits for it). To make replays cost nothing
either, `ReplayCache` remembers the ephemeral public key (the first 32 bytes) of every
message1 that verified; a message1 whose ephemeral key is remembered is refused before any
X25519. An honest node makes a fresh ephemeral for every attempt, so it never collides.
At most CONTROL_REPLAY_CACHE keys are kept (oldest dropped): a replay older than that costs
one handshake's work and still gets nowhere.

Per-session limits (F8). `SessionLimiter.check(msg, now)` classifies each decoded message of
a logged-in session and returns what to do with it:

    class       messages                                         over the limit
    ----------  -----------------------------------------------  -------------------------
    cheap       Ping, PeerReport                                 DROP
    fanout      SetOnline, SetNickname, SetAccess, Approve,      REFUSE: Result(ok=False,
                Reject, Evict, LeaveNetwork, DeleteNetwork       code "rate_limited")
    password    CreateNetwork, JoinNetwork, SetPassword          REFUSE
    candidates  Candidates                                       coalesced (see below)
    resync      ResyncRequest                                    coalesced
    (none)      Login, Logout                                    always PASS

Candidates are coalesced: one is carried out at once when the last one carried out is at
least CONTROL_CANDIDATES_COALESCE old; otherwise it is HELD as the session's pending
Candidates (replacing any held one: a Candidates message is the whole set) and `due(now)`
releases the latest when that holds again. Their bucket limits arrivals: a Candidates over
it still replaces the held one (the latest always wins) but counts as excess (below). So a flooding node
fans out at most one Candidates per CONTROL_CANDIDATES_COALESCE, and the superseded ones
never reach the core or any co-member's queue. ResyncRequest is coalesced the same way by
its bucket (several held ones are one resync). Nothing a node sends is lost: the latest
Candidates and a wanted resync are always carried out, only later.

Every message over its class limit (a Candidates arriving with its bucket empty, a
ResyncRequest held because its bucket is empty, counts too) takes one token from the session's excess bucket (CONTROL_RATE_EXCESS); when it
is empty `check` answers CLOSE: the glue sends Error(code "rate_limited") and closes that
session with CLOSE_RATE_LIMITED. After that every message is DROPped. An honest node stays
far below every limit (it pings every 5 s and sends a few Candidates on a network change).
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from shoal import constants as C
from shoal.control import messages as m

__all__ = [
    "TokenBucket", "Buckets", "Admission", "Ticket", "ReplayCache", "SessionLimiter", "Verdict", "source_prefix",
    "MESSAGE_CLASS",
]


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `take(now)` spends one if there is one."""

    __slots__ = ("burst", "rate", "tokens", "stamp")

    def __init__(self, burst: float, rate: float, now: float) -> None:
        if burst < 1 or rate <= 0:
            raise ValueError(f"a token bucket needs burst >= 1 and rate > 0 (got {burst}, {rate})")
        self.burst, self.rate = float(burst), float(rate)
        self.tokens = float(burst)
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def ready(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= 1.0 - 1e-9

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0 - 1e-9:
            self.tokens = max(0.0, self.tokens - 1.0)
            return True
        return False

    def when_ready(self, now: float) -> float:
        """The earliest time a token is there (now, if one is)."""
        self._refill(now)
        return now if self.tokens >= 1.0 - 1e-9 else now + (1.0 - self.tokens) / self.rate


def source_prefix(addr: str, v4: int = C.CONTROL_PREFIX_V4, v6: int = C.CONTROL_PREFIX_V6) -> str:
    """The prefix that groups `addr` ("198.51.100.0/24", "2001:db8::/56" with the default
    lengths); the text itself if it is not an address (then it is its own group)."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    plen = v4 if ip.version == 4 else v6
    return str(ipaddress.ip_network(f"{ip}/{plen}", strict=False))


class Buckets:
    """A bounded LRU table of token buckets by key (a dropped key comes back with a full bucket)."""

    def __init__(self, burst: float, rate: float, max_entries: int) -> None:
        self.burst, self.rate, self.max_entries = burst, rate, max_entries
        self._t: OrderedDict[str, TokenBucket] = OrderedDict()

    def get(self, key: str, now: float) -> TokenBucket:
        b = self._t.get(key)
        if b is None:
            b = self._t[key] = TokenBucket(self.burst, self.rate, now)
            while len(self._t) > self.max_entries:
                self._t.popitem(last=False)
        else:
            self._t.move_to_end(key)
        return b

    def __len__(self) -> int:
        return len(self._t)


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted unauthenticated session (give it back with `Admission.release`)."""

    addr: str
    prefix: str


class Admission:
    """Caps on unauthenticated control sessions; see the module docstring."""

    def __init__(self, now: float, *, max_pending: int = C.CONTROL_PREAUTH_MAX,
                 per_addr: int = C.CONTROL_PREAUTH_PER_ADDR, per_prefix: int = C.CONTROL_PREAUTH_PER_PREFIX,
                 max_entries: int = C.CONTROL_ADMISSION_MAX_ENTRIES) -> None:
        self.max_pending, self.per_addr, self.per_prefix = max_pending, per_addr, per_prefix
        self.pending = 0
        self._by_addr: dict[str, int] = {}
        self._by_prefix: dict[str, int] = {}
        self._addr_buckets = Buckets(C.CONTROL_HANDSHAKE_BURST_PER_ADDR, C.CONTROL_HANDSHAKE_RATE_PER_ADDR, max_entries)
        self._prefix_buckets = Buckets(C.CONTROL_HANDSHAKE_BURST_PER_PREFIX, C.CONTROL_HANDSHAKE_RATE_PER_PREFIX,
                                        max_entries)
        self._global = TokenBucket(C.CONTROL_HANDSHAKE_BURST, C.CONTROL_HANDSHAKE_RATE, now)
        self.stats = {"admitted": 0, "refused_pending": 0, "refused_rate": 0}

    def admit(self, addr: str | None, now: float) -> Ticket | str:
        """A Ticket, or the reason (one line) for refusing this session at once."""
        addr = addr or "?"
        prefix = source_prefix(addr)
        if self.pending >= self.max_pending:
            self.stats["refused_pending"] += 1
            return f"server busy: {self.pending} handshakes in progress"
        if self._by_addr.get(addr, 0) >= self.per_addr:
            self.stats["refused_pending"] += 1
            return f"too many handshakes in progress from {addr}"
        if self._by_prefix.get(prefix, 0) >= self.per_prefix:
            self.stats["refused_pending"] += 1
            return f"too many handshakes in progress from {prefix}"
        ab, pb = self._addr_buckets.get(addr, now), self._prefix_buckets.get(prefix, now)
        for bucket, who in ((ab, addr), (pb, prefix), (self._global, "all sources")):
            if not bucket.ready(now):
                self.stats["refused_rate"] += 1
                return f"too many handshakes from {who}; retry in {bucket.when_ready(now) - now:.1f} s"
        ab.take(now), pb.take(now), self._global.take(now)
        self.pending += 1
        self._by_addr[addr] = self._by_addr.get(addr, 0) + 1
        self._by_prefix[prefix] = self._by_prefix.get(prefix, 0) + 1
        self.stats["admitted"] += 1
        return Ticket(addr, prefix)

    def release(self, ticket: Ticket) -> None:
        """The session authenticated or ended. Releasing a ticket twice is a bug (ValueError)."""
        n, k = self._by_addr.get(ticket.addr, 0), self._by_prefix.get(ticket.prefix, 0)
        if n <= 0 or k <= 0 or self.pending <= 0:
            raise ValueError(f"ticket {ticket} released twice")
        self.pending -= 1
        if n == 1:
            del self._by_addr[ticket.addr]
        else:
            self._by_addr[ticket.addr] = n - 1
        if k == 1:
            del self._by_prefix[ticket.prefix]
        else:
            self._by_prefix[ticket.prefix] = k - 1


class ReplayCache:
    """Ephemeral keys of verified message1s (bounded, oldest dropped); see the docstring."""

    def __init__(self, size: int = C.CONTROL_REPLAY_CACHE) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self.replays = 0

    def seen(self, ephemeral: bytes) -> bool:
        """True (and counted) if this ephemeral key was used by a verified message1 before."""
        if bytes(ephemeral) in self._seen:
            self.replays += 1
            return True
        return False

    def remember(self, ephemeral: bytes) -> None:
        self._seen[bytes(ephemeral)] = None
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)


# ------------------------------------------------------------------ per session


class Verdict(enum.Enum):
    PASS = "pass"  # carry it out now
    DROP = "drop"  # ignore it
    REFUSE = "refuse"  # answer Result(ok=False, code="rate_limited"), do not carry it out
    HOLD = "hold"  # kept; `due(now)` hands it (or a later one of its kind) back
    CLOSE = "close"  # send Error(code="rate_limited") and close the session


MESSAGE_CLASS: dict[type, str] = {
    m.Ping: "cheap", m.PeerReport: "cheap",
    m.SetOnline: "fanout", m.SetNickname: "fanout", m.SetAccess: "fanout", m.Approve: "fanout",
    m.Reject: "fanout", m.Evict: "fanout", m.LeaveNetwork: "fanout", m.DeleteNetwork: "fanout",
    m.CreateNetwork: "password", m.JoinNetwork: "password", m.SetPassword: "password",
    m.Candidates: "candidates", m.ResyncRequest: "resync",
}
_RATES = {
    "cheap": C.CONTROL_RATE_CHEAP, "fanout": C.CONTROL_RATE_FANOUT, "password": C.CONTROL_RATE_PASSWORD,
    "candidates": C.CONTROL_RATE_CANDIDATES, "resync": C.CONTROL_RATE_RESYNC,
}


class SessionLimiter:
    """Rate limits and coalescing for one logged-in control session; see the docstring."""

    def __init__(self, now: float) -> None:
        self._buckets = {cls: TokenBucket(b, r, now) for cls, (b, r) in _RATES.items()}
        self._excess = TokenBucket(*C.CONTROL_RATE_EXCESS, now)
        self._last_candidates = float("-inf")
        self._held_candidates: m.Candidates | None = None
        self._held_resync: m.ResyncRequest | None = None
        self.closed = False
        self.stats = {"passed": 0, "dropped": 0, "refused": 0, "coalesced": 0, "excess": 0}

    @staticmethod
    def limit_text(msg: object) -> str:
        """One line for the Result of a refused request."""
        burst, rate = _RATES[MESSAGE_CLASS[type(msg)]]
        return f"too many requests of this kind: at most {burst:g} at once and {rate:g} per second; slow down"

    def _over(self, now: float) -> bool:
        """One message over its limit; True when the session has used up its excess."""
        self.stats["excess"] += 1
        if not self._excess.take(now):
            self.closed = True
            return True
        return False

    def check(self, msg: m.ClientMessage, now: float) -> Verdict:
        if self.closed:
            self.stats["dropped"] += 1
            return Verdict.DROP
        cls = MESSAGE_CLASS.get(type(msg))
        if cls is None:  # Login, Logout (and anything the core judges itself)
            self.stats["passed"] += 1
            return Verdict.PASS
        bucket = self._buckets[cls]
        if cls == "candidates":
            assert isinstance(msg, m.Candidates)
            if not bucket.take(now) and self._over(now):  # arrivals are limited too
                return Verdict.CLOSE
            if self._held_candidates is None and now >= self._last_candidates + C.CONTROL_CANDIDATES_COALESCE:
                self._last_candidates = now
                self.stats["passed"] += 1
                return Verdict.PASS
            if self._held_candidates is not None:
                self.stats["coalesced"] += 1  # the held one is superseded: never carried out
            self._held_candidates = msg
            return Verdict.HOLD
        if cls == "resync":
            assert isinstance(msg, m.ResyncRequest)
            if self._held_resync is None and bucket.take(now):
                self.stats["passed"] += 1
                return Verdict.PASS
            if self._held_resync is not None:
                self.stats["coalesced"] += 1
            self._held_resync = msg
            if self._over(now):
                return Verdict.CLOSE
            return Verdict.HOLD
        if bucket.take(now):
            self.stats["passed"] += 1
            return Verdict.PASS
        if self._over(now):
            return Verdict.CLOSE
        if cls == "cheap":
            self.stats["dropped"] += 1
            return Verdict.DROP
        self.stats["refused"] += 1
        return Verdict.REFUSE

    def next_deadline(self) -> float | None:
        """When `due` has something to hand back (None: nothing held)."""
        if self.closed:
            return None
        times = []
        if self._held_candidates is not None:
            times.append(self._last_candidates + C.CONTROL_CANDIDATES_COALESCE)
        if self._held_resync is not None:
            b = self._buckets["resync"]
            times.append(b.when_ready(b.stamp))
        return min(times) if times else None

    def due(self, now: float) -> list[m.Candidates | m.ResyncRequest]:
        """Held messages whose time has come, to carry out now (in arrival-class order)."""
        out: list[m.Candidates | m.ResyncRequest] = []
        if self.closed:
            return out
        if self._held_resync is not None and self._buckets["resync"].take(now):
            out.append(self._held_resync)
            self._held_resync = None
        if self._held_candidates is not None and now >= self._last_candidates + C.CONTROL_CANDIDATES_COALESCE:
            out.append(self._held_candidates)
            self._held_candidates = None
            self._last_candidates = now
        self.stats["passed"] += len(out)
        return out
