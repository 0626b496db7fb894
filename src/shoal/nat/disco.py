"""Disco: the sealed ping/pong/call-me-maybe messages of path discovery (issue #5 part 3).

Owns the wire format and codec (`DiscoCodec`) of the path-discovery messages that nodes send
each other on the WireGuard data socket to find, punch and keep direct paths
(`shoal.nat.paths` is the engine deciding what to send). Sans-IO: bytes and `now` in, bytes
out; anything wrong with a datagram is dropped and counted in `DiscoCodec.stats`, never raised.

Wire format (all integers big-endian)::

    offset  size  field
    0       6     magic  b"SHL\\xf0\\x9f\\x90"  (constants.DISCO_MAGIC)
    6       32    sender's node public key (X25519)
    38      24    nonce, random per message
    62      n+16  box = XChaCha20-Poly1305(key, nonce, plaintext, ad = magic || sender key)
                  key = KDF1(X25519(our node private key, their node public key),
                             "shoal disco v1")  (the same key in both directions)

    plaintext = version (1, = 1) || type (1) || body
      type 1 Ping         tx id (12) || sender's node public key again (32)
      type 2 Pong         tx id (12) || observed source address (the ping's source)
      type 3 CallMeMaybe  count (1, 0..16) || count x (kind (1) || address)
    address   = family (1: 4 or 6) || IP (4 or 16) || port (2, non-zero)
    kind      = CandidateKind: 1 local (host/LAN), 2 reflexive, 3 port-mapped, 4 predicted

Why the magic can never start a WireGuard message: WireGuard messages begin with a
little-endian 32-bit type 1..4, i.e. a byte 0x01..0x04 and three zero bytes; the magic begins
0x53 ('S') followed by three non-zero bytes. STUN messages begin with two zero bits (0x53 is
01...), and relay frames (constants.RELAY_MAGIC, b"SR") differ in the second byte ('H'). The
last three bytes (a fish emoji's UTF-8 prefix) make a collision with anything text-like
unlikely. A data socket therefore demultiplexes on the first bytes alone.

Limits and checks, in order (each drop is counted under its reason in `stats`):
``not-disco`` (no magic), ``oversized`` (> DISCO_MAX_SIZE), ``truncated`` (shorter than header
+ tag + smallest plaintext), ``unknown-peer`` (sender key not one of ours), ``forged`` (the box
does not open: wrong key, changed bytes), ``malformed`` (bad version, type, lengths, address,
count, trailing bytes, a Ping whose inner key differs from the outer one), ``replayed`` (the
same sender and nonce, or the same sender, type and tx id, seen within DISCO_REPLAY_TTL; the
cache keeps at most DISCO_REPLAY_MAX entries). A replay older than the TTL is opened again; it
is harmless: a Pong is only used by the engine when its tx id matches a ping still
outstanding, an old Ping only earns a Pong to its source, an old CallMeMaybe only adds probes.
The sender's node key is authenticated by the box (only the holder of that key's private half,
or us, can seal under the shared key).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
import os
import struct
from collections.abc import Callable, Iterable

from shoal.endpoint import Endpoint
from shoal.constants import (
    DISCO_MAGIC,
    DISCO_MAX_CANDIDATES,
    DISCO_MAX_SIZE,
    DISCO_NONCE_LEN,
    DISCO_REPLAY_MAX,
    DISCO_REPLAY_TTL,
    DISCO_TX_ID_LEN,
    DISCO_VERSION,
    KEY_LEN,
    TAG_LEN,
)
from shoal.wireguard.crypto import DH, KDF1, XAEAD_decrypt, XAEAD_encrypt, WeakKeyError
from shoal.wireguard.keys import PrivateKey

__all__ = [
    "Endpoint",
    "CandidateKind",
    "Ping",
    "Pong",
    "CallMeMaybe",
    "DiscoMessage",
    "DiscoCodec",
    "is_disco",
    "encode_plaintext",
    "decode_plaintext",
    "HEADER_LEN",
]

HEADER_LEN = len(DISCO_MAGIC) + KEY_LEN + DISCO_NONCE_LEN  # 62
_KDF_LABEL = b"shoal disco v1"
TYPE_PING, TYPE_PONG, TYPE_CALL_ME_MAYBE = 1, 2, 3
_MIN_PLAINTEXT = 2 + 1  # version, type, the smallest body (an empty CallMeMaybe's count)


class CandidateKind(enum.IntEnum):
    """Where a candidate address came from (the wire value of a CallMeMaybe entry)."""

    LOCAL = 1  # an address of the node's own interface (host / LAN)
    REFLEXIVE = 2  # as a STUN server saw it
    MAPPED = 3  # a port mapping (UPnP IGD, NAT-PMP, PCP) or a static forward
    PREDICTED = 4  # a guessed port of a NAT whose mapping varies by destination


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    tx_id: bytes
    node_key: bytes  # the sender's node public key, echoed inside the box


@dataclasses.dataclass(frozen=True, slots=True)
class Pong:
    tx_id: bytes
    src: Endpoint  # the source address the ping arrived from, as the answering node saw it


@dataclasses.dataclass(frozen=True, slots=True)
class CallMeMaybe:
    candidates: tuple[tuple[CandidateKind, Endpoint], ...]


DiscoMessage = Ping | Pong | CallMeMaybe


class _Malformed(Exception):
    pass


def is_disco(data: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram on the data socket is a disco message (by its magic prefix)."""
    return bytes(data[: len(DISCO_MAGIC)]) == DISCO_MAGIC


def _encode_addr(addr: Endpoint) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = int(addr[1])
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port!r}")
    return bytes([ip.version]) + ip.packed + struct.pack(">H", port)


def _decode_addr(buf: bytes, off: int) -> tuple[Endpoint, int]:
    if off >= len(buf):
        raise _Malformed("address missing")
    fam = buf[off]
    n = 4 if fam == 4 else 16 if fam == 6 else 0
    if not n:
        raise _Malformed("address family")
    end = off + 1 + n + 2
    if end > len(buf):
        raise _Malformed("address truncated")
    ip = ipaddress.ip_address(buf[off + 1 : off + 1 + n])
    (port,) = struct.unpack_from(">H", buf, off + 1 + n)
    if port == 0:
        raise _Malformed("port 0")
    return (str(ip), port), end


def encode_plaintext(msg: DiscoMessage) -> bytes:
    """The versioned plaintext of one message; ValueError on misuse (bad lengths, too many)."""
    head = bytes([DISCO_VERSION])
    if isinstance(msg, Ping):
        if len(msg.tx_id) != DISCO_TX_ID_LEN or len(msg.node_key) != KEY_LEN:
            raise ValueError("Ping needs a 12-byte tx id and a 32-byte key")
        return head + bytes([TYPE_PING]) + msg.tx_id + msg.node_key
    if isinstance(msg, Pong):
        if len(msg.tx_id) != DISCO_TX_ID_LEN:
            raise ValueError("Pong needs a 12-byte tx id")
        return head + bytes([TYPE_PONG]) + msg.tx_id + _encode_addr(msg.src)
    if isinstance(msg, CallMeMaybe):
        if len(msg.candidates) > DISCO_MAX_CANDIDATES:
            raise ValueError(f"at most {DISCO_MAX_CANDIDATES} candidates")
        body = bytes([len(msg.candidates)])
        for kind, addr in msg.candidates:
            body += bytes([int(CandidateKind(kind))]) + _encode_addr(addr)
        return head + bytes([TYPE_CALL_ME_MAYBE]) + body
    raise TypeError(f"not a disco message: {msg!r}")


def decode_plaintext(pt: bytes) -> DiscoMessage:
    """Parse a plaintext; raises `_Malformed` (internal) on anything not exactly right."""
    if len(pt) < _MIN_PLAINTEXT or pt[0] != DISCO_VERSION:
        raise _Malformed("version")
    kind, body = pt[1], pt[2:]
    if kind == TYPE_PING:
        if len(body) != DISCO_TX_ID_LEN + KEY_LEN:
            raise _Malformed("ping length")
        return Ping(body[:DISCO_TX_ID_LEN], body[DISCO_TX_ID_LEN:])
    if kind == TYPE_PONG:
        if len(body) < DISCO_TX_ID_LEN:
            raise _Malformed("pong length")
        addr, end = _decode_addr(body, DISCO_TX_ID_LEN)
        if end != len(body):
            raise _Malformed("trailing bytes")
        return Pong(body[:DISCO_TX_ID_LEN], addr)
    if kind == TYPE_CALL_ME_MAYBE:
        count = body[0]
        if count > DISCO_MAX_CANDIDATES:
            raise _Malformed("too many candidates")
        off, cands = 1, []
        for _ in range(count):
            if off >= len(body):
                raise _Malformed("candidate missing")
            try:
                ck = CandidateKind(body[off])
            except ValueError:
                raise _Malformed("candidate kind") from None
            addr, off = _decode_addr(body, off + 1)
            cands.append((ck, addr))
        if off != len(body):
            raise _Malformed("trailing bytes")
        return CallMeMaybe(tuple(cands))
    raise _Malformed("type")


class DiscoCodec:
    """Seals and opens disco messages for one node; knows which peers' keys it accepts.

    `random_bytes(n)` supplies nonces and tx ids (os.urandom by default; a seeded source in
    simulations). Shared keys are computed once per peer and cached.
    """

    def __init__(
        self,
        private: PrivateKey | bytes,
        *,
        peers: Iterable[bytes] = (),
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._private = private if isinstance(private, PrivateKey) else PrivateKey(bytes(private))
        self.public_key: bytes = bytes(self._private.public_key())
        self._random = random_bytes
        self._keys: dict[bytes, bytes] = {}
        self._seen: collections.OrderedDict[tuple[bytes, ...], float] = collections.OrderedDict()
        self.stats: collections.Counter[str] = collections.Counter()
        for p in peers:
            self.add_peer(p)

    # --- peers --------------------------------------------------------------------------------

    def add_peer(self, public_key: bytes) -> None:
        """Accept messages from (and allow sealing to) this node key."""
        pub = bytes(public_key)
        if len(pub) != KEY_LEN:
            raise ValueError("a node key is 32 bytes")
        if pub in self._keys:
            return
        try:
            shared = DH(self._private, pub)
        except WeakKeyError:
            raise ValueError("weak (low-order) node key") from None
        self._keys[pub] = KDF1(shared, _KDF_LABEL)

    def remove_peer(self, public_key: bytes) -> None:
        self._keys.pop(bytes(public_key), None)

    def knows(self, public_key: bytes) -> bool:
        return bytes(public_key) in self._keys

    def new_tx_id(self) -> bytes:
        return self._random(DISCO_TX_ID_LEN)

    # --- sealing ------------------------------------------------------------------------------

    def seal(self, peer: bytes, msg: DiscoMessage) -> bytes:
        """One datagram carrying `msg` to `peer` (a known node key; KeyError otherwise)."""
        key = self._keys[bytes(peer)]
        nonce = self._random(DISCO_NONCE_LEN)
        ad = DISCO_MAGIC + self.public_key
        out = ad + nonce + XAEAD_encrypt(key, nonce, encode_plaintext(msg), ad)
        if len(out) > DISCO_MAX_SIZE:  # cannot happen within DISCO_MAX_CANDIDATES; guard anyway
            raise ValueError("disco message too large")
        return out

    def ping(self, peer: bytes) -> tuple[bytes, bytes]:
        """(tx id, datagram) of a fresh Ping to `peer`."""
        tx = self.new_tx_id()
        return tx, self.seal(peer, Ping(tx, self.public_key))

    # --- opening ------------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.stats["dropped"] += 1
        self.stats[reason] += 1

    def _remember(self, key: tuple[bytes, ...], now: float) -> bool:
        """True if `key` is new (and now remembered); False if seen within the TTL."""
        seen = self._seen
        while seen:  # forget expired entries (insertion order = time order)
            k0, t0 = next(iter(seen.items()))
            if now - t0 <= DISCO_REPLAY_TTL and len(seen) < DISCO_REPLAY_MAX:
                break
            seen.popitem(last=False)
        t = seen.get(key)
        if t is not None and now - t <= DISCO_REPLAY_TTL:
            return False
        seen[key] = now
        seen.move_to_end(key)
        return True

    def open(self, data: bytes | bytearray | memoryview, now: float) -> tuple[bytes, DiscoMessage] | None:
        """(sender node key, message), or None after counting why it was dropped."""
        try:
            return self._open(bytes(data), now)
        except Exception:  # noqa: BLE001 - network input must never raise out of the codec
            self._drop("malformed")
            return None

    def _open(self, data: bytes, now: float) -> tuple[bytes, DiscoMessage] | None:
        if not data.startswith(DISCO_MAGIC):
            self._drop("not-disco")
            return None
        if len(data) > DISCO_MAX_SIZE:
            self._drop("oversized")
            return None
        if len(data) < HEADER_LEN + _MIN_PLAINTEXT + TAG_LEN:
            self._drop("truncated")
            return None
        m = len(DISCO_MAGIC)
        sender = data[m : m + KEY_LEN]
        key = self._keys.get(sender)
        if key is None:
            self._drop("unknown-peer")
            return None
        nonce = data[m + KEY_LEN : HEADER_LEN]
        pt = XAEAD_decrypt(key, nonce, data[HEADER_LEN:], data[: m + KEY_LEN])
        if pt is None:
            self._drop("forged")
            return None
        try:
            msg = decode_plaintext(pt)
        except _Malformed:
            self._drop("malformed")
            return None
        if isinstance(msg, Ping) and msg.node_key != sender:
            self._drop("malformed")
            return None
        if not self._remember((sender, b"n", nonce), now):
            self._drop("replayed")
            return None
        if isinstance(msg, (Ping, Pong)) and not self._remember((sender, bytes([pt[1]]), msg.tx_id), now):
            self._drop("replayed")
            return None
        self.stats["opened"] += 1
        return sender, msg
