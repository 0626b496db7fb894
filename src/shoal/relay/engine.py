"""The relay engine (sans-IO): authenticates nodes, keeps their bindings, forwards opaque
frames by destination node key between nodes that share a network.

Owns: node bindings (node key -> where it is reachable: a UDP endpoint or a stream session),
the challenge/response authentication, per-node token buckets, binding expiry and the drop
counters. Frames: `shoal.relay.frames`. No sockets, no clock: the glue
(`shoal.relay.service`, later the server) calls

    receive(data, binding, now)    one frame from a UDP endpoint or a WebSocket session
    disconnect(binding, now)       a stream session ended
    tick(now)                      at or after next_deadline()
    take_outbox()                  -> [(frame bytes, binding)] to send, in order

and never sees an exception for anything a client sends. Payloads are never inspected,
decrypted or logged: the relay operator sees WireGuard ciphertext and node keys only.

Authentication (the relay holds a static X25519 key, normally the coordination server's,
which every node already pins):

    node -> relay   HELLO(node_key)
    relay -> node   CHALLENGE(nonce)       nonce = t (8, ms, BE) || MAC(secret, "chal" || t ||
                                           node_key || binding)   -- stateless, bound to this
                                           binding and key, valid RELAY_CHALLENGE_TTL seconds
    node -> relay   AUTH(node_key, nonce, proof)
                                           k = KDF1(X25519(node, relay), "shoal-relay-v1")
                                           proof = MAC(k, "node" || nonce || node_key || relay_pub)
    relay -> node   AUTH_OK(token, timeout, MAC(k, "relay" || nonce || token || node_key))

Only the holder of the node's private key (or the relay's) can compute k, so a valid proof
proves the key; the relay's answer proves the relay to the node. Both sides then hold the
binding key kb = KDF1(k, "bind" || nonce || token) (`binding_key`: from k, which each side
already has, so no X25519 more; fresh for every AUTH).

Tagged frames (issue 18 F12: anyone who can spoof the relay's UDP address could otherwise
reset a node's binding with one ERROR):

    KEEPALIVE  node's tag   MAC(kb, frame without tag)   checked by the relay (else no PONG)
    PONG       relay's tag  MAC(kb, frame without tag)   seq echoes the KEEPALIVE's: the
                                                         client takes only a seq it sent and
                                                         newer than the last PONG (no replays)
    ERROR not member / unknown destination (answers to a bound node's SEND)
               relay's tag  MAC(kb, frame without tag)
    ERROR auth refused / full (answers to an AUTH whose nonce this relay issued to this
               binding, when the relay holds k for that key)
               relay's tag  MAC(k, "refuse" || nonce || frame without tag): only the client
                            that was given that nonce accepts it
    ERROR unauthenticated   never tagged: the relay does not know who asks (it restarted,
                            the binding expired, the node's address changed)

A client acts only on tags that verify; untagged or badly tagged ERRORs are counted and
dropped, except that an ERROR unauthenticated is a hint: the client, still bound, sends one
HELLO (at most every RELAY_HINT_INTERVAL s) and keeps its token until a proven AUTH_OK
replaces it. A re-AUTH from the same binding keeps the token (only kb changes), so a spoofed
hint costs the node nothing but one handshake. RECV is not tagged: its payload is
WireGuard ciphertext or a sealed disco message, authenticated end to end, so a forged RECV
can only inject what the receiver rejects, and its src_key only chooses which peer's
virtual endpoint the packet seems to come from; moving that peer's endpoint takes a packet
that authenticates as that peer (an on-path attacker's rewrite of a real one, who can drop
traffic anyway). A tag on every RECV (BLAKE2s over the payload) would cost the relay about
3 us per 1380-byte frame, nearly tripling its forwarding cost (issue 18 F12 measurement). A nonce is accepted once
(replays are refused until it expires), only from the binding it was issued to (a captured
AUTH replayed from elsewhere fails) and only fresh. A spoofed UDP source never sees the
challenge.

AUTH checks (issue 18 F11), cheapest and unspoofable first, so that strangers spend nothing
shared: nonce MAC (bound to this binding: a spoofed source never saw it), freshness, replay;
then `may_bind(key)` (the key is a node the server knows and that is present: random keys
are refused here, before any X25519 or shared budget: drop_auth_not_member); then, for a
UDP source, its own token buckets (`shoal.nat.sourcelimit`: RELAY_AUTH_RATE_PER_ADDRESS/s
per address or IPv6 /64, RELAY_AUTH_RATE_PER_PREFIX/s per /24 or /48:
drop_auth_rate_limited_address / _prefix, no answer); then k: cached per key (k depends on
the key alone, so it is kept whether or not the proof verifies, at most RELAY_MAX_NODES keys,
oldest dropped first), else one X25519 under the global bucket RELAY_AUTH_RATE/s
(drop_auth_rate_limited); then the proof. Without `may_bind` (tests, in-memory meshes) every
proven key may bind.

Bindings. A successful AUTH binds the key to that binding with a fresh random 8-byte token
(kept when the same key authenticates again from the same binding);
SEND and KEEPALIVE (also tagged with kb) must carry it and come from that binding (an off-path spoofer of the
node's address cannot send as it). A new AUTH from elsewhere moves the binding (the old one
is forgotten: a node whose NAT mapping changed, or that switched UDP <-> WebSocket, simply
authenticates again when told ERROR unauthenticated). A binding with no frame from its node
for RELAY_BINDING_TIMEOUT seconds expires; a stream binding ends on disconnect.

Forwarding a SEND(token, dst, payload) from binding b, checks in this order (each failure is
dropped and counted under `stats[reason]`):

    drop_malformed            not a valid frame, or a relay->node kind
    drop_unauthenticated      b is not bound, or the token is wrong -> ERROR unauthenticated
                              (untagged); a KEEPALIVE like that, or with a bad tag: no answer
    drop_rate_limited         the sender's bucket (packets/s and payload bytes/s) is empty
    drop_not_member           may_relay(src, dst) is False -> ERROR not_member, tagged (the relay
                              never says whether a non-member is connected)
    drop_unknown_destination  dst has no binding -> ERROR unknown_destination, tagged
    forwarded                 RECV(src, payload) to dst's binding (forwarded_bytes += len)

Auth refusals: drop_auth_forged (bad nonce MAC or bad proof or weak key),
drop_auth_replayed, drop_auth_stale (challenge too old or from the future),
drop_auth_not_member, drop_auth_rate_limited(_address, _prefix), drop_full (RELAY_MAX_NODES bound). `may_relay` is the membership
oracle (the server core answers "do these two nodes share a network where both are online");
it is asked for every frame, so membership changes apply at once.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Union

from shoal.constants import (
    RELAY_AUTH_BURST,
    RELAY_AUTH_BURST_PER_ADDRESS,
    RELAY_AUTH_BURST_PER_PREFIX,
    RELAY_AUTH_MAX_SOURCES,
    RELAY_AUTH_RATE,
    RELAY_AUTH_RATE_PER_ADDRESS,
    RELAY_AUTH_RATE_PER_PREFIX,
    RELAY_BINDING_TIMEOUT,
    RELAY_BURST_BYTES,
    RELAY_BURST_PACKETS,
    RELAY_CHALLENGE_TTL,
    RELAY_MAX_NODES,
    RELAY_RATE_BYTES,
    RELAY_RATE_PACKETS,
    RELAY_TOKEN_SIZE,
)
from shoal.nat.sourcelimit import SourceLimiter
from shoal.relay import frames as f
from shoal.wireguard.crypto import DH, KDF1, MAC, WeakKeyError, constant_time_eq
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = [
    "UdpBinding", "StreamBinding", "Binding", "RelayLimits", "RelayEngine", "MayRelay", "MayBind",
    "auth_key", "node_proof", "relay_proof", "KDF_LABEL", "binding_key", "tag", "refusal_tag",
]

log = logging.getLogger("shoal.relay")

KDF_LABEL = b"shoal-relay-v1"
_ZERO_KEY = bytes(32)


class UdpBinding(NamedTuple):
    """A node reachable at a UDP endpoint of the relay's socket."""

    ip: str
    port: int


class StreamBinding(NamedTuple):
    """A node reachable over one stream (WebSocket) session, numbered by the glue."""

    session: int


Binding = Union[UdpBinding, StreamBinding]
MayRelay = Callable[[bytes, bytes], bool]
MayBind = Callable[[bytes], bool]


@dataclass(frozen=True)
class RelayLimits:
    """Rates and timers (tests build smaller ones; the defaults are shoal.constants')."""

    rate_bytes: float = RELAY_RATE_BYTES
    burst_bytes: float = RELAY_BURST_BYTES
    rate_packets: float = RELAY_RATE_PACKETS
    burst_packets: float = RELAY_BURST_PACKETS
    auth_rate: float = RELAY_AUTH_RATE
    auth_burst: float = RELAY_AUTH_BURST
    binding_timeout: float = RELAY_BINDING_TIMEOUT
    challenge_ttl: float = RELAY_CHALLENGE_TTL
    max_nodes: int = RELAY_MAX_NODES


def auth_key(shared: bytes) -> bytes:
    """The per-(node, relay) MAC key from their X25519 shared secret."""
    return KDF1(shared, KDF_LABEL)


def node_proof(k: bytes, nonce: bytes, node_key: bytes, relay_public: bytes) -> bytes:
    return MAC(k, b"node" + nonce + node_key + relay_public)


def relay_proof(k: bytes, nonce: bytes, token: bytes, node_key: bytes) -> bytes:
    return MAC(k, b"relay" + nonce + token + node_key)


def binding_key(k: bytes, nonce: bytes, token: bytes) -> bytes:
    """The key of one binding (one AUTH): tags KEEPALIVE, PONG and a bound node's ERRORs."""
    return KDF1(k, b"bind" + nonce + token)


def tag(kb: bytes, signed: bytes) -> bytes:
    """The tag of a KEEPALIVE, PONG or bound node's ERROR (`signed`: the frame without it)."""
    return MAC(kb, signed)


def refusal_tag(k: bytes, nonce: bytes, signed: bytes) -> bytes:
    """The tag of an ERROR answering the AUTH that carried `nonce`."""
    return MAC(k, b"refuse" + nonce + signed)


def _binding_bytes(b: Binding) -> bytes:
    if isinstance(b, UdpBinding):
        return b"u" + b.ip.encode() + b"|" + b.port.to_bytes(2, "big")
    return b"s" + b.session.to_bytes(8, "big")


def _short(key: bytes) -> str:
    return PublicKey(key).short()


class _Node:
    __slots__ = ("key", "binding", "token", "kb", "last_seen", "tok_bytes", "tok_packets", "refill_at")

    def __init__(self, key: bytes, binding: Binding, token: bytes, now: float, limits: RelayLimits) -> None:
        self.key = key
        self.binding = binding
        self.token = token
        self.kb = b""
        self.last_seen = now
        self.tok_bytes = limits.burst_bytes
        self.tok_packets = limits.burst_packets
        self.refill_at = now


class RelayEngine:
    """See the module docstring. Attribute owner: the one task that calls the methods."""

    def __init__(
        self,
        private_key: PrivateKey,
        may_relay: MayRelay,
        *,
        may_bind: MayBind | None = None,
        limits: RelayLimits = RelayLimits(),
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not isinstance(private_key, PrivateKey):
            raise TypeError("private_key must be a PrivateKey")
        self._private = private_key
        self.public_key: PublicKey = private_key.public_key()
        self._may_relay = may_relay
        self._may_bind = may_bind
        self._sources = SourceLimiter(rate=RELAY_AUTH_RATE_PER_ADDRESS, burst=RELAY_AUTH_BURST_PER_ADDRESS,
                                      prefix_rate=RELAY_AUTH_RATE_PER_PREFIX, prefix_burst=RELAY_AUTH_BURST_PER_PREFIX,
                                      max_keys=RELAY_AUTH_MAX_SOURCES)
        self.limits = limits
        self._rng = rng
        self._secret = rng(32)
        self.stats: Counter[str] = Counter()
        self._nodes: dict[bytes, _Node] = {}
        self._by_binding: dict[Binding, _Node] = {}
        self._keys: dict[bytes, bytes] = {}  # node key -> auth_key, after a successful AUTH
        self._used: dict[bytes, float] = {}  # accepted nonces -> when they expire
        self._used_heap: list[tuple[float, bytes]] = []
        self._expiry: list[tuple[float, bytes]] = []  # (deadline, node key), lazily refreshed
        self._outbox: list[tuple[bytes, Binding]] = []
        self._auth_tokens = limits.auth_burst
        self._auth_refill_at: float | None = None

    # ------------------------------------------------------------------ queries

    def binding_of(self, node_key: bytes) -> Binding | None:
        node = self._nodes.get(bytes(node_key))
        return node.binding if node else None

    def node_at(self, binding: Binding) -> bytes | None:
        node = self._by_binding.get(binding)
        return node.key if node else None

    def __len__(self) -> int:
        return len(self._nodes)

    def take_outbox(self) -> list[tuple[bytes, Binding]]:
        out, self._outbox = self._outbox, []
        return out

    def next_deadline(self) -> float | None:
        cands = []
        if self._expiry:
            cands.append(self._expiry[0][0])
        if self._used_heap:
            cands.append(self._used_heap[0][0])
        return min(cands) if cands else None

    # ------------------------------------------------------------------ inputs

    def receive(self, data: bytes, binding: Binding, now: float) -> None:
        """One frame from `binding`; answers and forwards land in the outbox."""
        # Hot path first: a SEND from a bound node, without building a dataclass.
        if (len(data) >= f.SEND_OVERHEAD and data[3] == f.KIND_SEND and f.looks_like_relay(data)
                and len(data) <= f.RELAY_MAX_FRAME):
            self._send(data, binding, now)
            return
        try:
            frame = f.parse(data)
        except f.FrameError:
            self.stats["drop_malformed"] += 1
            return
        if isinstance(frame, f.Hello):
            self._hello(frame, binding, now)
        elif isinstance(frame, f.Auth):
            self._auth(frame, binding, now)
        elif isinstance(frame, f.Keepalive):
            node = self._by_binding.get(binding)
            if (node is None or not constant_time_eq(node.token, frame.token)
                    or not constant_time_eq(frame.tag, tag(node.kb, frame.signed()))):
                self.stats["drop_unauthenticated"] += 1  # no answer: the node notices the missing PONG
                return
            node.last_seen = now
            self.stats["keepalive"] += 1
            pong = f.Pong(frame.seq, b"")
            self._outbox.append((f.Pong(frame.seq, tag(node.kb, pong.signed())).encode(), binding))
        else:  # relay -> node kinds
            self.stats["drop_malformed"] += 1

    def disconnect(self, binding: Binding, now: float) -> None:
        node = self._by_binding.pop(binding, None)
        if node is not None:
            del self._nodes[node.key]
            self.stats["disconnected"] += 1
            log.info("relay: %s disconnected", _short(node.key))

    def tick(self, now: float) -> None:
        while self._used_heap and self._used_heap[0][0] <= now:
            _, nonce = heapq.heappop(self._used_heap)
            self._used.pop(nonce, None)
        while self._expiry and self._expiry[0][0] <= now:
            _, key = heapq.heappop(self._expiry)
            node = self._nodes.get(key)
            if node is None:
                continue
            deadline = node.last_seen + self.limits.binding_timeout
            if deadline > now:
                heapq.heappush(self._expiry, (deadline, key))
                continue
            del self._nodes[key]
            self._by_binding.pop(node.binding, None)
            self.stats["expired"] += 1
            log.info("relay: binding of %s expired", _short(key))

    # ------------------------------------------------------------------ auth

    def _nonce_mac(self, t: bytes, node_key: bytes, binding: Binding) -> bytes:
        return MAC(self._secret, b"chal" + t + node_key + _binding_bytes(binding))

    def _hello(self, frame: f.Hello, binding: Binding, now: float) -> None:
        t = max(0, int(now * 1000)).to_bytes(8, "big")
        nonce = t + self._nonce_mac(t, frame.node_key, binding)
        self.stats["challenges"] += 1
        self._outbox.append((f.Challenge(nonce).encode(), binding))

    def _take_auth_token(self, now: float) -> bool:
        lim = self.limits
        if self._auth_refill_at is not None and now > self._auth_refill_at:
            self._auth_tokens = min(lim.auth_burst, self._auth_tokens + (now - self._auth_refill_at) * lim.auth_rate)
        if self._auth_refill_at is None or now > self._auth_refill_at:
            self._auth_refill_at = now
        if self._auth_tokens < 1:
            return False
        self._auth_tokens -= 1
        return True

    def _bindable(self, key: bytes) -> bool:
        if self._may_bind is None:
            return True
        try:
            return bool(self._may_bind(key))
        except Exception:  # the oracle's bug must not take the relay down; fail closed
            log.exception("relay: binding oracle failed")
            self.stats["oracle_error"] += 1
            return False

    def _refuse(self, reason: str, frame: f.Auth, binding: Binding, k: bytes | None = None,
                code: int = f.ERR_AUTH_REFUSED) -> None:
        """Count and answer; tagged with k (see the module docstring) when the nonce is ours
        and k is known."""
        self.stats[reason] += 1
        err = f.Error(code, frame.node_key)
        if k is not None:
            err = f.Error(code, frame.node_key, refusal_tag(k, frame.nonce, err.signed()))
        self._outbox.append((err.encode(), binding))

    def _error(self, node: _Node, code: int, key: bytes) -> None:
        """A tagged ERROR to a bound node about `key`."""
        err = f.Error(code, key)
        self._outbox.append((f.Error(code, key, tag(node.kb, err.signed())).encode(), node.binding))

    def _auth(self, frame: f.Auth, binding: Binding, now: float) -> None:
        key, nonce = frame.node_key, frame.nonce
        t = nonce[:8]
        if not constant_time_eq(nonce[8:], self._nonce_mac(t, key, binding)):
            self._refuse("drop_auth_forged", frame, binding)
            return
        issued = int.from_bytes(t, "big") / 1000.0
        cached = self._keys.get(key)
        if issued > now + 0.001 or now - issued > self.limits.challenge_ttl:
            self._refuse("drop_auth_stale", frame, binding, cached)
            return
        if nonce in self._used:
            self._refuse("drop_auth_replayed", frame, binding, cached)
            return
        if not self._bindable(key):
            self._refuse("drop_auth_not_member", frame, binding, cached)
            return
        if isinstance(binding, UdpBinding):
            refused = self._sources.allow(binding.ip, now)
            if refused is not None:
                self.stats[f"drop_auth_rate_limited_{refused}"] += 1  # no answer: the client retries later
                return
        k = self._keys.get(key)
        if k is None:
            if not self._take_auth_token(now):
                self.stats["drop_auth_rate_limited"] += 1  # no answer: the client retries later
                return
            try:
                k = auth_key(DH(self._private, key))
            except WeakKeyError:
                self._refuse("drop_auth_forged", frame, binding)
                return
            if len(self._keys) >= self.limits.max_nodes:
                del self._keys[next(iter(self._keys))]
            self._keys[key] = k  # k depends on the key only: a forged proof cannot make us redo the X25519
        if not constant_time_eq(frame.proof, node_proof(k, nonce, key, self.public_key)):
            self._refuse("drop_auth_forged", frame, binding, k)  # tagged for this nonce's binding only
            return
        if key not in self._nodes and len(self._nodes) >= self.limits.max_nodes:
            self._refuse("drop_full", frame, binding, k, f.ERR_FULL)
            return
        expires = issued + self.limits.challenge_ttl
        self._used[nonce] = expires
        heapq.heappush(self._used_heap, (expires, nonce))
        self._bind(key, binding, now)
        node = self._nodes[key]
        node.kb = binding_key(k, nonce, node.token)
        self.stats["auth_ok"] += 1
        timeout = int(self.limits.binding_timeout)
        self._outbox.append((f.AuthOk(node.token, timeout, relay_proof(k, nonce, node.token, key)).encode(), binding))

    def _bind(self, key: bytes, binding: Binding, now: float) -> None:
        other = self._by_binding.pop(binding, None)
        if other is not None and other.key != key:  # this binding spoke for another key before
            del self._nodes[other.key]
            self.stats["binding_replaced"] += 1
        old = self._nodes.get(key)
        if old is not None and old.binding != binding:
            self._by_binding.pop(old.binding, None)
            self.stats["binding_moved"] += 1
            log.info("relay: %s moved to a new binding", _short(key))
        # the same binding keeps its token (a re-AUTH there, e.g. after a spoofed hint, loses
        # no SEND in flight); a new binding gets a fresh one
        token = old.token if old is not None and old.binding == binding else self._rng(RELAY_TOKEN_SIZE)
        if old is None:
            node = _Node(key, binding, token, now, self.limits)
            self._nodes[key] = node
            heapq.heappush(self._expiry, (now + self.limits.binding_timeout, key))
            log.info("relay: %s authenticated", _short(key))
        else:  # keep its bucket: re-authenticating must not refill it
            node = old
            node.binding, node.token, node.last_seen = binding, token, now
        self._by_binding[binding] = node

    # ------------------------------------------------------------------ forwarding

    def _send(self, data: bytes, binding: Binding, now: float) -> None:
        node = self._by_binding.get(binding)
        if node is None or not constant_time_eq(node.token, data[4:12]):
            self.stats["drop_unauthenticated"] += 1
            self._outbox.append((f.Error(f.ERR_UNAUTHENTICATED, _ZERO_KEY).encode(), binding))
            return
        node.last_seen = now
        lim = self.limits
        size = len(data) - f.SEND_OVERHEAD
        if now > node.refill_at:
            dt = now - node.refill_at
            node.tok_bytes = min(lim.burst_bytes, node.tok_bytes + dt * lim.rate_bytes)
            node.tok_packets = min(lim.burst_packets, node.tok_packets + dt * lim.rate_packets)
            node.refill_at = now
        if node.tok_packets < 1 or node.tok_bytes < size:
            self.stats["drop_rate_limited"] += 1
            return
        node.tok_packets -= 1
        node.tok_bytes -= size
        dst = data[12:44]
        try:
            allowed = bool(self._may_relay(node.key, dst))
        except Exception:  # the oracle's bug must not take the relay down; fail closed
            log.exception("relay: membership oracle failed")
            self.stats["oracle_error"] += 1
            allowed = False
        if not allowed:
            self.stats["drop_not_member"] += 1
            self._error(node, f.ERR_NOT_MEMBER, dst)
            return
        peer = self._nodes.get(dst)
        if peer is None:
            self.stats["drop_unknown_destination"] += 1
            self._error(node, f.ERR_UNKNOWN_DESTINATION, dst)
            return
        self.stats["forwarded"] += 1
        self.stats["forwarded_bytes"] += size
        self._outbox.append((b"".join((f.RECV_HEADER, node.key, data[44:])), peer.binding))
