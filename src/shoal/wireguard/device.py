"""The WireGuard device engine: many peers behind one key, one socket and one interface (sans-IO).

Owns: the peer table, the index table (32-bit indices -> pending handshakes and sessions),
cryptokey routing (allowed IPs), the cookie checker and "under load" state, the per-source
handshake rate limiter, and the timer heap. It is byte-compatible with a stock WireGuard peer.

Inputs (all take `now`, seconds on a monotonic clock):
    send(packets, now)             IP packets the OS wrote to the interface
    receive(datagrams, now)        (payload, (ip, port)) read from the UDP socket
    tick(now)                      call when `next_deadline()` has passed
Outputs (drained by the I/O adapter after each call):
    outbox: list[(datagram, endpoint)]   to send on the UDP socket, in order
    to_tun: list[bytes]                  IP packets to write to the interface
    to_ext: list[(PublicKey, bytes)]     LAN extension plaintexts (first nibble 5, see
                                         shoal.lan.extension) from peers flagged `shoal`
    events: list[DeviceEvent]            handshakes done, endpoints changed (for logs/UIs)

Rules (whitepaper 5-6, wireguard-go device/*):
- Handshake messages need a valid mac1. While *under load* (more than
  UNDER_LOAD_HANDSHAKES_PER_SECOND handshake messages arrived in the last second, and for
  UNDER_LOAD_AFTER_TIME after), a message without a valid mac2 gets a cookie reply and no
  Diffie-Hellman is done; with a valid mac2 it must also pass the per-source-IP rate limiter.
- An initiation is accepted only with a TAI64N timestamp greater than the last one accepted
  from that peer and at most one per HANDSHAKE_INITIATION_RATE, so replays create nothing.
- A transport message is accepted only under a live session (age < REJECT_AFTER_TIME), with a
  valid tag and a fresh counter (RFC 6479 window), and its inner packet's source address must
  route (allowed IPs) to the very peer whose session carried it.
- A peer's endpoint follows the source of its last authenticated packet (roaming), and
  only such a packet counts as "received" for the timers (it clears the new-handshake timer,
  re-arms persistent keepalive): a transport message whose tag fails or whose counter is a
  replay, a truncated or unknown-index message, or a handshake message that fails any check
  (mac1, cookie, AEAD, TAI64N replay, flood limit, unknown index) moves nothing, whatever
  its source address (issue 18 F1: the receiver index is cleartext on every packet, so a
  stranger who reads one can forge the header, not the tag). Per batch, `receive` notes the
  endpoint of the last run of authenticated packets per peer.
- LAN extensions (docs/lan.md): `send_extension(peer, plaintexts, now)` seals plaintexts
  for one peer flagged `PeerConfig.shoal` (no allowed-IPs lookup; staged like `send` when
  there is no session). A decrypted plaintext whose first nibble is C.LAN_EXT_MARKER from a
  `shoal` peer goes to `to_ext` whole (padding included: the extension format ignores it),
  without the allowed-IPs source check (shoal.lan.switch checks origins), and counts as data
  for the timers; from any other peer it is `rx_inner_malformed`, as in wireguard-go.
- Bad input from the network never raises out of this module: it is dropped and counted in
  `stats`.

Owner: a Device is driven by exactly one task (the I/O adapter's loop); nothing is thread-safe.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import math
import os
import random as _random
import socket
import struct
from collections import Counter
from collections.abc import Callable, Iterable

from cryptography.exceptions import InvalidTag

from shoal import constants as C
from shoal.wireguard.allowedips import AllowedIPs
from shoal.wireguard.cookie import CookieChecker
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from shoal.wireguard.noise import SessionKeys, consume_initiation, create_response
from shoal.wireguard.peer import Endpoint, Peer, PeerConfig
from shoal.wireguard.ratelimit import RateLimiter
from shoal.wireguard.session import Keypair, padding_for
from shoal.wireguard import tai64n

MAX_TIMER_HANDSHAKES = int(C.REKEY_ATTEMPT_TIME / C.REKEY_TIMEOUT)  # 18 attempts, then give up
_U32 = struct.Struct("<I")
_EMPTY = b""
_EXT = C.LAN_EXT_MARKER
_UNVETTED = object()  # receive(): "the next transport packet must be vetted" (F2)


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceEvent:
    kind: str  # "handshake-complete" | "endpoint-changed" | "handshake-gave-up" | "session-zeroized"
    peer: PublicKey
    endpoint: Endpoint | None = None


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """IP bytes || big-endian port: what cookies are bound to."""
    host, port = endpoint
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host) + port.to_bytes(2, "big")


class Device:
    """A WireGuard interface's protocol state. See the module docstring."""

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        mtu: int = C.DEFAULT_MTU,
        timers: C.Timers = C.DEFAULT_TIMERS,
        rng: Callable[[int], bytes] = os.urandom,
        wall_offset: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(private_key, PrivateKey):
            raise TypeError("private_key must be a PrivateKey")
        self.mtu = mtu
        self.timers = timers
        self.rng = rng
        self.wall_offset = wall_offset  # wall clock = now + wall_offset (for TAI64N timestamps)
        self.random = _random.Random(seed if seed is not None else int.from_bytes(rng(8), "big"))
        self.outbox: list[tuple[bytes, Endpoint]] = []
        self.to_tun: list[bytes] = []
        self.to_ext: list[tuple[PublicKey, bytes]] = []
        self.events: list[DeviceEvent] = []
        self.stats: Counter[str] = Counter()
        self.peers: dict[PublicKey, Peer] = {}
        self.routes = AllowedIPs()
        self._indices: dict[int, Peer | Keypair] = {}
        self._static_static: dict[bytes, bytes] = {}  # peer key -> DH(our static, its static)
        self._heap: list[tuple[float, int, Peer]] = []
        self._heap_seq = 0
        self._limiter = RateLimiter()
        self._hs_window_start = -math.inf
        self._hs_window_count = 0
        self._under_load_until = -math.inf
        self._set_key(private_key)

    # ----------------------------------------------------------------- configuration

    def _set_key(self, private_key: PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.cookie_checker = CookieChecker(self.public_key)

    def set_private_key(self, private_key: PrivateKey) -> None:
        """Change the interface key: every session and handshake is forgotten."""
        if private_key == self.private_key:
            return
        configs = [self.peer_config(p) for p in self.peers.values()]
        for peer in list(self.peers.values()):
            self.remove_peer(peer.public_key)
        self._set_key(private_key)
        for config in configs:
            if config.public_key != self.public_key:
                self.add_peer(config)

    def peer_config(self, peer: Peer) -> PeerConfig:
        return PeerConfig(
            public_key=peer.public_key,
            preshared_key=peer.preshared_key,
            allowed_ips=self.allowed_ips(peer),
            endpoint=peer.endpoint,
            persistent_keepalive=peer.persistent_keepalive,
            shoal=peer.shoal,
        )

    def add_peer(self, config: PeerConfig, now: float | None = None) -> Peer:
        """Add a peer, or update the existing one with that key (sessions are kept)."""
        if not isinstance(config.public_key, PublicKey):
            raise TypeError("public_key must be a PublicKey")
        if config.public_key == self.public_key:
            raise ValueError("a peer cannot have the interface's own public key")
        peer = self.peers.get(config.public_key)
        if peer is None:
            if len(self.peers) >= C.MAX_PEERS:
                raise ValueError(f"too many peers (max {C.MAX_PEERS})")
            peer = Peer(config, self.private_key)
            self.peers[config.public_key] = peer
            self._static_static[peer.public_key] = peer.handshake.precomputed_static_static
        else:
            psk = config.preshared_key or PresharedKey.ZERO
            if psk != peer.preshared_key:
                peer.preshared_key = psk
                peer.handshake.set_preshared(psk)
            if config.endpoint is not None:
                peer.endpoint = config.endpoint
            peer.shoal = config.shoal
        self.set_allowed_ips(peer, config.allowed_ips)
        self.set_persistent_keepalive(peer, config.persistent_keepalive, now)
        return peer

    def set_allowed_ips(self, peer: Peer, prefixes: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        """Replace the peer's prefixes; a prefix another peer had moves to this one (as in wg)."""
        self.routes.remove_value(peer)
        for prefix in prefixes:
            self.routes.insert(prefix, peer)

    def allowed_ips(self, peer: Peer) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return self.routes.entries_for(peer)

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float | None) -> None:
        if interval < 0 or interval > 65535:
            raise ValueError("persistent keepalive must be 0..65535 seconds")
        turned_on = interval > 0 and peer.persistent_keepalive == 0
        peer.persistent_keepalive = interval
        if interval == 0:
            peer.persistent_at = None
        elif turned_on and now is not None:
            # wireguard-go sends a keepalive at once when persistent keepalive is switched on
            self._send_keepalive(peer, now)

    def remove_peer(self, public_key: PublicKey) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        peer.removed = True
        self._static_static.pop(public_key, None)
        self.routes.remove_value(peer)
        self._forget_sessions(peer)
        peer.staged.clear()

    # ----------------------------------------------------------------- index table

    def _new_index(self, owner: Peer | Keypair) -> int:
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index not in self._indices:
                self._indices[index] = owner
                return index

    def _free(self, keypairs: Iterable[Keypair]) -> None:
        for keypair in keypairs:
            if self._indices.get(keypair.local_index) is keypair:
                del self._indices[keypair.local_index]

    def _forget_sessions(self, peer: Peer) -> None:
        self._free(peer.keypairs.clear())
        if peer.handshake_index is not None:
            self._indices.pop(peer.handshake_index, None)
            peer.handshake_index = None
        peer.handshake.clear()

    # ----------------------------------------------------------------- timers

    def _arm(self, peer: Peer, when: float) -> None:
        if when < peer.scheduled:
            peer.scheduled = when
            self._heap_seq += 1
            heapq.heappush(self._heap, (when, self._heap_seq, peer))

    def _ephemeral(self) -> PrivateKey:
        return PrivateKey.generate(self.rng)

    def _jitter(self) -> float:
        return self.random.uniform(0.0, self.timers.rekey_timeout_jitter_max)

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            when, _, peer = heap[0]
            if peer.removed or when != peer.scheduled:
                heapq.heappop(heap)
                continue
            return when
        return None

    def tick(self, now: float) -> None:
        """Run every timer that is due at `now`."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, peer = heapq.heappop(heap)
            if peer.removed or when != peer.scheduled:
                continue
            peer.scheduled = math.inf
            self._run_timers(peer, now)
            nxt = peer.next_deadline()
            if nxt is not None:
                self._arm(peer, nxt)

    def _run_timers(self, peer: Peer, now: float) -> None:
        t = self.timers
        if peer.retransmit_at is not None and peer.retransmit_at <= now:
            peer.retransmit_at = None
            if peer.handshake_attempts >= MAX_TIMER_HANDSHAKES:
                # give up: drop what waited for a session, and forget keys later
                peer.staged.clear()
                peer.send_keepalive_at = None
                if peer.zeroize_at is None:
                    peer.zeroize_at = now + t.zeroize_after
                self.events.append(DeviceEvent("handshake-gave-up", peer.public_key, peer.endpoint))
                self.stats["handshake_gave_up"] += 1
            else:
                peer.handshake_attempts += 1
                self._initiate(peer, now, retry=True)
        if peer.send_keepalive_at is not None and peer.send_keepalive_at <= now:
            peer.send_keepalive_at = None
            self._send_keepalive(peer, now)
            if peer.need_another_keepalive:
                peer.need_another_keepalive = False
                peer.send_keepalive_at = now + t.keepalive_timeout
        if peer.new_handshake_at is not None and peer.new_handshake_at <= now:
            peer.new_handshake_at = None
            self._initiate(peer, now, retry=False)
        if peer.path_handshake_at is not None and peer.path_handshake_at <= now:
            peer.path_handshake_at = None
            if not self._usable(peer.keypairs.current, now):
                self._initiate_on_new_path(peer, now)
        if peer.zeroize_at is not None and peer.zeroize_at <= now:
            peer.zeroize_at = None
            self._forget_sessions(peer)
            self.events.append(DeviceEvent("session-zeroized", peer.public_key, peer.endpoint))
        if peer.persistent_at is not None and peer.persistent_at <= now:
            peer.persistent_at = None
            if peer.persistent_keepalive > 0:
                self._send_keepalive(peer, now)

    def _packet_sent(self, peer: Peer, now: float) -> None:
        """Any authenticated packet went to `peer` (timersAnyAuthenticatedPacketSent/Traversal)."""
        peer.send_keepalive_at = None
        if peer.persistent_keepalive > 0:
            peer.persistent_at = now + peer.persistent_keepalive
            self._arm(peer, peer.persistent_at)

    def _packet_received(self, peer: Peer, now: float) -> None:
        """Any authenticated packet came from `peer` (…Received/Traversal)."""
        peer.new_handshake_at = None
        if peer.persistent_keepalive > 0:
            peer.persistent_at = now + peer.persistent_keepalive
            self._arm(peer, peer.persistent_at)

    def _session_derived(self, peer: Peer, now: float) -> None:
        peer.zeroize_at = now + self.timers.zeroize_after
        self._arm(peer, peer.zeroize_at)

    def _handshake_complete(self, peer: Peer, now: float) -> None:
        peer.retransmit_at = None
        peer.handshake_attempts = 0
        peer.sent_last_minute_handshake = False
        peer.stats.handshakes += 1
        peer.stats.last_handshake_wall = now + self.wall_offset
        self.events.append(DeviceEvent("handshake-complete", peer.public_key, peer.endpoint))

    def _set_endpoint(self, peer: Peer, endpoint: Endpoint) -> None:
        if peer.endpoint != endpoint:
            peer.endpoint = endpoint
            self.events.append(DeviceEvent("endpoint-changed", peer.public_key, endpoint))

    # ----------------------------------------------------------------- handshakes out

    def _initiate(self, peer: Peer, now: float, *, retry: bool) -> None:
        if not retry:
            peer.handshake_attempts = 0
            if now - peer.last_initiation_sent < self.timers.rekey_timeout:
                return
        if peer.endpoint is None:
            self.stats["no_endpoint"] += 1
            return
        peer.last_initiation_sent = now
        if peer.handshake_index is not None:
            self._indices.pop(peer.handshake_index, None)
        peer.handshake_index = self._new_index(peer)
        message = peer.handshake.create_initiation(
            peer.handshake_index, tai64n.stamp(now + self.wall_offset), self._ephemeral()
        )
        message = peer.cookies.add_macs(message, now)
        self.outbox.append((message, peer.endpoint))
        self.stats["initiations_sent"] += 1
        self._packet_sent(peer, now)
        peer.retransmit_at = now + self.timers.rekey_timeout + self._jitter()
        self._arm(peer, peer.retransmit_at)

    def set_endpoint(self, public_key: PublicKey, endpoint: Endpoint, now: float) -> None:
        """Point the peer at `endpoint` (a path chosen by NAT traversal). When the endpoint
        changes and there is no usable session, a handshake starts at once on the new path
        (the last initiation most likely went where nobody answers)."""
        peer = self.peers.get(public_key)
        if peer is None:
            return
        changed = peer.endpoint != endpoint
        self._set_endpoint(peer, endpoint)
        if self._usable(peer.keypairs.current, now):
            if peer.staged:
                self._flush_staged(peer, now)
        elif changed:
            self._initiate_on_new_path(peer, now)

    def _initiate_on_new_path(self, peer: Peer, now: float) -> None:
        """A fresh initiation now, or NEW_PATH_HANDSHAKE_GAP after the last one: two
        initiations within one whitened step (~16.8 ms) carry the same TAI64N timestamp, and
        the responder refuses the second as a replay; it also refuses one that arrives within
        HANDSHAKE_INITIATION_RATE of the previous (which may have come the slower way)."""
        due = peer.last_initiation_sent + C.NEW_PATH_HANDSHAKE_GAP
        if now < due:
            peer.path_handshake_at = due
            self._arm(peer, due)
            return
        peer.last_initiation_sent = -math.inf
        self._initiate(peer, now, retry=False)

    def initiate_handshake(self, peer: PublicKey, now: float) -> None:
        """Start a handshake now (as `wg` does when a peer is added with an endpoint)."""
        p = self.peers.get(peer)
        if p is not None:
            self._initiate(p, now, retry=False)

    # ----------------------------------------------------------------- sending data

    def _usable(self, keypair: Keypair | None, now: float) -> bool:
        t = self.timers
        return (
            keypair is not None
            and now - keypair.created < t.reject_after_time
            and keypair.send_counter < t.reject_after_messages
        )

    def _flush_staged(self, peer: Peer, now: float) -> None:
        """Seal every staged packet under the current session, or start a handshake."""
        keypair = peer.keypairs.current
        if peer.endpoint is None or not self._usable(keypair, now):
            self._initiate(peer, now, retry=False)
            return
        assert keypair is not None
        endpoint = peer.endpoint
        data = False
        sent = 0
        out = self.outbox
        limit = self.timers.reject_after_messages
        while peer.staged:
            if keypair.send_counter >= limit:
                break
            packet = peer.staged.popleft()
            if packet:
                data = True
                packet += bytes(padding_for(len(packet), self.mtu))
            message = keypair.seal(packet)
            sent += len(message)
            out.append((message, endpoint))
        peer.stats.tx_bytes += sent
        self._packet_sent(peer, now)
        if data:
            self._data_sent(peer, now)
        t = self.timers
        if peer.staged or (
            keypair.is_initiator
            and (keypair.send_counter > t.rekey_after_messages or now - keypair.created > t.rekey_after_time)
        ):
            self._initiate(peer, now, retry=False)

    def _data_sent(self, peer: Peer, now: float) -> None:
        if peer.new_handshake_at is None:
            t = self.timers
            peer.new_handshake_at = now + t.keepalive_timeout + t.rekey_timeout + self._jitter()
            self._arm(peer, peer.new_handshake_at)

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(_EMPTY)
        self._flush_staged(peer, now)

    def send_extension(self, peer_key: PublicKey, plaintexts: Iterable[bytes], now: float) -> None:
        """Seal LAN extension plaintexts for one Shoal peer, in order, on its current session.

        No allowed-IPs lookup: the caller chose the peer. Without a usable session they are
        staged and a handshake starts, as for `send`. A peer that is unknown or not flagged
        `shoal` gets nothing (counted): a stock WireGuard peer never sees an extension."""
        peer = self.peers.get(peer_key)
        if peer is None:
            self.stats["ext_no_peer"] += 1
            return
        if not peer.shoal:
            self.stats["ext_not_shoal"] += 1
            return
        staged = peer.staged
        before = len(staged)
        for p in plaintexts:
            if p:
                staged.append(p)
        if len(staged) != before:
            self._flush_staged(peer, now)

    def send(self, packets: Iterable[bytes], now: float) -> None:
        """IP packets from the interface: route each to its peer and seal it.

        The per-packet path is written out inline and remembers the previous packet's peer,
        so a run of packets to one peer costs a lookup and a seal each; per-peer bookkeeping
        (timers, rekey) runs once per batch. Packets for a peer without a usable session
        are staged and a handshake is started.
        """
        lookup = self.routes.lookup
        out = self.outbox
        mtu = self.mtu
        reject_messages = self.timers.reject_after_messages
        sent_to: list[Peer] = []  # peers that got packets sealed here (usually one)
        staged_for: list[Peer] = []  # peers whose packets wait for a session
        last_peer: Peer | None = None
        keypair: Keypair | None = None
        endpoint: Endpoint | None = None
        for packet in packets:
            n = len(packet)
            if n == 0:
                continue
            version = packet[0] >> 4
            if version == 4 and n >= 20:
                peer = lookup(packet[16:20])
            elif version == 6 and n >= 40:
                peer = lookup(packet[24:40])
            else:
                self.stats["tun_malformed"] += 1
                continue
            if peer is None:
                self.stats["no_route"] += 1
                continue
            if peer is not last_peer:
                last_peer = peer
                keypair = peer.keypairs.current
                endpoint = peer.endpoint
                if endpoint is None or peer.staged or not self._usable(keypair, now):
                    keypair = None
                elif peer not in sent_to:
                    sent_to.append(peer)
            if keypair is None or keypair.send_counter >= reject_messages:
                keypair = None  # no session, or it was used up mid-batch
                peer.staged.append(packet)
                if peer not in staged_for:
                    staged_for.append(peer)
                continue
            pad = (-n) % 16
            if pad:
                if n + pad > mtu:
                    pad = padding_for(n, mtu)
                packet += bytes(pad)
            counter = keypair.send_counter
            keypair.send_counter = counter + 1
            nonce = counter.to_bytes(8, "little")
            message = keypair._header_prefix + nonce + keypair._send_aead.encrypt(b"\x00\x00\x00\x00" + nonce, packet, None)
            out.append((message, endpoint))  # type: ignore[arg-type]
            peer.stats.tx_bytes += len(message)
        t = self.timers
        for peer in sent_to:
            self._packet_sent(peer, now)
            self._data_sent(peer, now)
            current = peer.keypairs.current
            if current is not None and current.is_initiator and (
                current.send_counter > t.rekey_after_messages or now - current.created > t.rekey_after_time
            ):
                self._initiate(peer, now, retry=False)
        for peer in staged_for:
            self._flush_staged(peer, now)

    # ----------------------------------------------------------------- receiving

    def _under_load(self, now: float) -> bool:
        if now - self._hs_window_start >= 1.0:
            self._hs_window_start = now
            self._hs_window_count = 0
        self._hs_window_count += 1
        if self._hs_window_count > C.UNDER_LOAD_HANDSHAKES_PER_SECOND:
            self._under_load_until = now + C.UNDER_LOAD_AFTER_TIME
        return now < self._under_load_until

    def receive(self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float) -> None:
        """Datagrams from the UDP socket. Never raises on bad input; drops and counts it.

        The transport path is written out inline: it runs once per packet, and per-peer
        bookkeeping (endpoint, timers) is done once per batch for the peers that sent an
        authenticated, non-replayed packet (from that packet's source: the last one wins).
        A handshake message first settles the bookkeeping of the packets before it.
        """
        indices = self._indices
        reject_after = self.timers.reject_after_time
        reject_messages = self.timers.reject_after_messages
        to_tun = self.to_tun
        routes = self.routes.lookup
        stats = self.stats
        touched: dict[int, tuple[Peer, Endpoint, bool]] = {}
        # The current run: consecutive transport packets under one vetted keypair from one
        # endpoint. `last_keypair` is _UNVETTED (never an index-table value, not even None)
        # when the next packet must be vetted again. `authed`: a packet of the run passed
        # its tag and replay checks; only then does the run count (endpoint, timers).
        last_keypair: object = _UNVETTED
        last_source = b""
        last_endpoint: Endpoint | None = None
        got_data = False
        authed = False
        peer: Peer | None = None
        unpack = _U32.unpack_from
        for data, endpoint in datagrams:
            n = len(data)
            if n >= C.MESSAGE_TRANSPORT_MIN_SIZE and data[0] == C.MESSAGE_TRANSPORT and data[1:4] == b"\x00\x00\x00":
                keypair = indices.get(unpack(data, 4)[0])
                if keypair is not last_keypair or endpoint != last_endpoint:
                    if keypair.__class__ is not Keypair:
                        stats["rx_unknown_index"] += 1
                        continue
                    if now - keypair.created >= reject_after:  # type: ignore[union-attr]
                        stats["rx_expired_session"] += 1
                        continue
                    if authed:
                        self._note_batch(touched, peer, last_endpoint, got_data)  # type: ignore[arg-type]
                    peer = keypair.peer  # type: ignore[union-attr]
                    last_keypair = keypair
                    last_endpoint = endpoint
                    got_data = False
                    authed = False
                    last_source = b""
                counter_bytes = data[8:16]
                try:
                    plaintext = keypair._recv_aead.decrypt(  # type: ignore[union-attr]
                        b"\x00\x00\x00\x00" + counter_bytes, memoryview(data)[16:], None
                    )
                except InvalidTag:
                    stats["rx_invalid_or_replayed"] += 1
                    continue
                if not keypair.replay.validate_counter(int.from_bytes(counter_bytes, "little"), reject_messages):  # type: ignore[union-attr]
                    stats["rx_invalid_or_replayed"] += 1
                    continue
                authed = True
                if peer.keypairs.next is keypair:  # type: ignore[union-attr]
                    # the initiator used the session we answered: it is confirmed
                    self._free(peer.keypairs.promote_next(keypair))  # type: ignore[union-attr, arg-type]
                    self._set_endpoint(peer, endpoint)  # type: ignore[arg-type]
                    self._handshake_complete(peer, now)  # type: ignore[arg-type]
                    if peer.staged:  # type: ignore[union-attr]
                        self._flush_staged(peer, now)  # type: ignore[arg-type]
                peer.stats.rx_bytes += n  # type: ignore[union-attr]
                if not plaintext:
                    continue  # keepalive
                m = len(plaintext)
                version = plaintext[0] >> 4
                if version == 4 and m >= 20:
                    length = (plaintext[2] << 8) | plaintext[3]
                    source = plaintext[12:16]
                elif version == 6 and m >= 40:
                    length = ((plaintext[4] << 8) | plaintext[5]) + 40
                    source = plaintext[8:24]
                elif version == _EXT and peer.shoal:  # type: ignore[union-attr]
                    self.to_ext.append((peer.public_key, plaintext))  # type: ignore[union-attr]
                    got_data = True
                    continue
                else:
                    stats["rx_inner_malformed"] += 1
                    continue
                if length > m or length < 20:
                    stats["rx_inner_malformed"] += 1
                    continue
                if source != last_source:
                    if routes(source) is not peer:
                        stats["rx_source_not_allowed"] += 1
                        continue
                    last_source = source
                to_tun.append(plaintext if length == m else plaintext[:length])
                got_data = True
            elif n >= 4 and data[0] in (C.MESSAGE_INITIATION, C.MESSAGE_RESPONSE, C.MESSAGE_COOKIE_REPLY):
                # rare: settle what came before, so a session the message installs (and the
                # endpoint it authenticated) is not overridden by older packets of the batch
                if authed:
                    self._note_batch(touched, peer, last_endpoint, got_data)  # type: ignore[arg-type]
                    authed = got_data = False
                if touched:
                    self._received(touched, now)
                    touched = {}
                try:
                    self._receive_handshake_message(data, endpoint, now)
                except Exception:  # noqa: BLE001 - a peer must never crash the engine
                    stats["rx_handshake_error"] += 1
                last_keypair = _UNVETTED  # a handshake may have rotated sessions
            else:
                stats["rx_malformed"] += 1
        if authed:
            self._note_batch(touched, peer, last_endpoint, got_data)  # type: ignore[arg-type]
        if touched:
            self._received(touched, now)

    def _received(self, touched: dict[int, tuple[Peer, Endpoint, bool]], now: float) -> None:
        """Per-peer bookkeeping for the runs of authenticated packets noted in `touched`."""
        for peer, endpoint, got_data in touched.values():
            if peer.removed:
                continue
            self._set_endpoint(peer, endpoint)
            self._packet_received(peer, now)
            if got_data:
                if peer.send_keepalive_at is None:
                    peer.send_keepalive_at = now + self.timers.keepalive_timeout
                    self._arm(peer, peer.send_keepalive_at)
                else:
                    peer.need_another_keepalive = True
            self._keep_fresh_receiving(peer, now)

    @staticmethod
    def _note_batch(touched: dict[int, tuple[Peer, Endpoint, bool]], peer: Peer, endpoint: Endpoint, got_data: bool) -> None:
        """Remember that `peer` sent authenticated packets in this batch (last endpoint wins).
        Only for a run with at least one packet that passed its tag and replay checks."""
        previous = touched.get(id(peer))
        touched[id(peer)] = (peer, endpoint, got_data or (previous is not None and previous[2]))

    def _keep_fresh_receiving(self, peer: Peer, now: float) -> None:
        if peer.sent_last_minute_handshake:
            return
        keypair = peer.keypairs.current
        t = self.timers
        if (
            keypair is not None
            and keypair.is_initiator
            and now - keypair.created > t.reject_after_time - t.keepalive_timeout - t.rekey_timeout
        ):
            peer.sent_last_minute_handshake = True
            self._initiate(peer, now, retry=False)

    def _receive_handshake_message(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        kind = data[0]
        n = len(data)
        if data[1:4] != b"\x00\x00\x00":
            self.stats["rx_malformed"] += 1
            return
        if kind == C.MESSAGE_COOKIE_REPLY:
            if n != C.MESSAGE_COOKIE_REPLY_SIZE:
                self.stats["rx_malformed"] += 1
                return
            owner = self._indices.get(_U32.unpack_from(data, 4)[0])
            peer = owner.peer if isinstance(owner, Keypair) else owner
            if not isinstance(peer, Peer) or not peer.cookies.consume_reply(data, now):
                self.stats["rx_cookie_invalid"] += 1
                return
            self.stats["cookies_received"] += 1
            return
        expected = C.MESSAGE_INITIATION_SIZE if kind == C.MESSAGE_INITIATION else C.MESSAGE_RESPONSE_SIZE
        if n != expected:
            self.stats["rx_malformed"] += 1
            return
        if not self.cookie_checker.check_mac1(data):
            self.stats["rx_bad_mac1"] += 1
            return
        if self._under_load(now):
            source = endpoint_bytes(endpoint)
            if not self.cookie_checker.check_mac2(data, source, now):
                sender = _U32.unpack_from(data, 4)[0]
                reply = self.cookie_checker.create_reply(data, sender, source, now, self.rng)
                self.outbox.append((reply, endpoint))
                self.stats["cookies_sent"] += 1
                return
            if not self._limiter.allow(source[:-2], now):
                self.stats["rx_rate_limited"] += 1
                return
        if kind == C.MESSAGE_INITIATION:
            self._consume_initiation(data, endpoint, now)
        else:
            self._consume_response(data, endpoint, now)

    def _consume_initiation(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        self.stats["dh_initiations"] += 1
        result = consume_initiation(self.private_key, self.public_key, data, self._static_static)
        if result is None:
            self.stats["rx_initiation_invalid"] += 1
            return
        peer = self.peers.get(result.remote_static)
        if peer is None:
            self.stats["rx_unknown_peer"] += 1
            return
        if not tai64n.after(result.timestamp, peer.greatest_timestamp):
            self.stats["rx_initiation_replayed"] += 1
            return
        if now - peer.last_initiation_received < C.HANDSHAKE_INITIATION_RATE:
            self.stats["rx_initiation_flood"] += 1
            return
        peer.greatest_timestamp = result.timestamp
        peer.last_initiation_received = now
        local_index = self._new_index(peer)  # reserved now, owned by the keypair below
        try:
            message, keys = create_response(result, peer.preshared_key, local_index, self._ephemeral())
        finally:
            self._indices.pop(local_index, None)
        message = peer.cookies.add_macs(message, now)
        self._install_session(peer, keys, local_index, False, endpoint, now)
        self.outbox.append((message, endpoint))
        self.stats["responses_sent"] += 1
        self._packet_sent(peer, now)

    def _consume_response(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        owner = self._indices.get(_U32.unpack_from(data, 8)[0])
        if not isinstance(owner, Peer) or owner.handshake_index is None:
            self.stats["rx_response_unknown_index"] += 1
            return
        peer = owner
        self.stats["dh_responses"] += 1
        keys = peer.handshake.consume_response(data)
        if keys is None:
            self.stats["rx_response_invalid"] += 1
            return
        self._indices.pop(peer.handshake_index, None)
        local_index = peer.handshake_index
        peer.handshake_index = None
        self._install_session(peer, keys, local_index, True, endpoint, now)
        self._handshake_complete(peer, now)
        self._send_keepalive(peer, now)

    def _install_session(
        self, peer: Peer, keys: SessionKeys, local_index: int, initiator: bool, endpoint: Endpoint, now: float
    ) -> None:
        """A handshake message authenticated `peer` from `endpoint`: its new session goes in."""
        keypair = Keypair(
            send_key=keys.send_key,
            receive_key=keys.receive_key,
            local_index=local_index,
            remote_index=keys.remote_index,
            is_initiator=initiator,
            created=now,
            peer=peer,
        )
        self._indices[local_index] = keypair
        self._free(peer.keypairs.install(keypair))
        self._set_endpoint(peer, endpoint)
        self._packet_received(peer, now)
        self._session_derived(peer, now)

    # ----------------------------------------------------------------- draining

    def take_outbox(self) -> list[tuple[bytes, Endpoint]]:
        out, self.outbox = self.outbox, []
        return out

    def take_to_tun(self) -> list[bytes]:
        out, self.to_tun = self.to_tun, []
        return out

    def take_extensions(self) -> list[tuple[PublicKey, bytes]]:
        out, self.to_ext = self.to_ext, []
        return out

    def take_events(self) -> list[DeviceEvent]:
        out, self.events = self.events, []
        return out
