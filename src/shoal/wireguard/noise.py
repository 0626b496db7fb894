"""The Noise_IKpsk2 handshake of WireGuard (whitepaper 5.4.2-5.4.5), sans-IO.

Owns: building and consuming the handshake initiation and response (their encrypted
fields; mac1/mac2 belong to `cookie.py`) and deriving the transport keys. Time and
randomness come in from the caller: the TAI64N timestamp is passed in, and so may the
ephemeral key (it is generated with os.urandom when not given).

Who does what:
  initiator:  hs = Handshake(our_private, peer_public, psk)              (one per peer)
              msg = hs.create_initiation(sender_index, timestamp)        -> macs zeroed
              keys = hs.consume_response(response_bytes)                 -> SessionKeys | None
  responder:  res = consume_initiation(our_private, our_public, msg)     -> InitiationResult | None
              (the caller looks the peer up by res.remote_static, checks res.timestamp is
               newer than the last one, applies the flood limit, finds the psk)
              msg, keys = create_response(res, psk, sender_index)

The transcript (C = chaining key, H = hash; whitepaper notation):
  C = HASH(CONSTRUCTION); H = HASH(C || IDENTIFIER); H = HASH(H || S_r.pub)
  initiation:  C = KDF1(C, E_i.pub); H = HASH(H || E_i.pub)
               C, k = KDF2(C, DH(E_i, S_r)); static = AEAD(k, 0, S_i.pub, H); H = HASH(H || static)
               C, k = KDF2(C, DH(S_i, S_r)); ts = AEAD(k, 0, TAI64N, H);      H = HASH(H || ts)
  response:    C = KDF1(C, E_r.pub); H = HASH(H || E_r.pub)
               C = KDF1(C, DH(E_r, E_i)); C = KDF1(C, DH(E_r, S_i))
               C, t, k = KDF3(C, psk); H = HASH(H || t); empty = AEAD(k, 0, "", H); H = HASH(H || empty)
  transport:   T_i_send, T_i_recv = KDF2(C, "")   (the responder's are swapped)

States of a `Handshake` (initiator side; wireguard-go's handshakeState):
  IDLE --create_initiation--> INITIATION_SENT --consume_response(valid)--> IDLE (+ SessionKeys)
  INITIATION_SENT --create_initiation--> INITIATION_SENT (new ephemeral, new index; the old
  initiation's response is then rejected). An invalid response leaves the state unchanged,
  so a forged packet cannot cancel a pending handshake; a valid one consumes the state, so a
  replayed response is rejected. Ephemeral private keys are dropped as soon as they are used.

Per-peer precomputation (as wireguard-go): DH(S_i, S_r) and the initial hash.

Network input never raises: malformed, forged, low-order-point or wrong-index messages give
None. Caller mistakes (wrong key types, low-order peer key at construction) raise ValueError
or TypeError.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass, field

from shoal.constants import (
    CONSTRUCTION,
    IDENTIFIER,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    TIMESTAMP_LEN,
)
from shoal.wireguard.crypto import (
    AEAD_decrypt,
    AEAD_encrypt,
    DH,
    HASH,
    KDF1,
    KDF2,
    KDF3,
    WeakKeyError,
)
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "Handshake",
    "HandshakeState",
    "InitiationResult",
    "SessionKeys",
    "consume_initiation",
    "create_response",
    "INITIAL_CHAINING_KEY",
    "INITIAL_HASH",
]

INITIAL_CHAINING_KEY = HASH(CONSTRUCTION)
INITIAL_HASH = HASH(INITIAL_CHAINING_KEY + IDENTIFIER)

_MAC_FIELDS = bytes(32)  # mac1 || mac2, filled in by cookie.CookieGenerator.add_macs
# type u32, sender u32, ephemeral, encrypted static, encrypted timestamp (macs appended)
_INIT_HEAD = struct.Struct("<II32s48s28s")
# type u32, sender u32, receiver u32, ephemeral, encrypted nothing (macs appended)
_RESP_HEAD = struct.Struct("<III32s16s")


@functools.lru_cache(maxsize=1024)
def _responder_hash(responder_public: bytes) -> bytes:
    """H after mixing the responder's static public key (depends only on that key)."""
    return HASH(INITIAL_HASH + responder_public)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Transport keys from a completed handshake, plus the two session indices."""

    send_key: bytes = field(repr=False)
    receive_key: bytes = field(repr=False)
    local_index: int
    remote_index: int
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class InitiationResult:
    """What the responder learned from a valid initiation, before the psk enters."""

    remote_static: PublicKey
    remote_index: int  # the initiator's sender index
    timestamp: bytes  # TAI64N, 12 bytes; the caller checks it is newer than the last one
    remote_ephemeral: bytes = field(repr=False)
    chaining_key: bytes = field(repr=False)
    hash: bytes = field(repr=False)


class HandshakeState(enum.Enum):
    IDLE = "idle"
    INITIATION_SENT = "initiation-sent"


def _ephemeral(ephemeral: PrivateKey | None) -> PrivateKey:
    if ephemeral is None:
        return PrivateKey.generate()
    if not isinstance(ephemeral, PrivateKey):
        raise TypeError("ephemeral must be a PrivateKey")
    return ephemeral


class Handshake:
    """Initiator-side handshake state for one peer (one per peer, like wireguard-go's)."""

    __slots__ = (
        "local_private",
        "local_public",
        "remote_public",
        "preshared",
        "precomputed_static_static",
        "_initial_hash",
        "state",
        "local_index",
        "_ephemeral",
        "_chaining_key",
        "_hash",
    )

    def __init__(self, local_private: PrivateKey, remote_public: PublicKey, preshared: PresharedKey) -> None:
        if not isinstance(local_private, PrivateKey):
            raise TypeError("local_private must be a PrivateKey")
        if not isinstance(remote_public, PublicKey):
            raise TypeError("remote_public must be a PublicKey")
        if not isinstance(preshared, PresharedKey):
            raise TypeError("preshared must be a PresharedKey")
        self.local_private = local_private
        self.local_public = local_private.public_key()
        if remote_public == self.local_public:
            raise ValueError("peer's public key is our own key")
        self.remote_public = remote_public
        self.preshared = preshared
        try:
            self.precomputed_static_static = DH(local_private, remote_public)
        except WeakKeyError:
            raise ValueError(f"peer public key {remote_public.fingerprint()} is of low order") from None
        self._initial_hash = _responder_hash(bytes(remote_public))
        self.state = HandshakeState.IDLE
        self.local_index: int | None = None
        self._ephemeral: PrivateKey | None = None
        self._chaining_key = b""
        self._hash = b""

    def set_preshared(self, preshared: PresharedKey) -> None:
        if not isinstance(preshared, PresharedKey):
            raise TypeError("preshared must be a PresharedKey")
        self.preshared = preshared

    def clear(self) -> None:
        """Forget any pending initiation (ephemeral key and transcript)."""
        self.state = HandshakeState.IDLE
        self.local_index = None
        self._ephemeral = None
        self._chaining_key = b""
        self._hash = b""

    def create_initiation(
        self, sender_index: int, timestamp: bytes, ephemeral: PrivateKey | None = None
    ) -> bytes:
        """A 148-byte initiation with mac1/mac2 zeroed; replaces any pending initiation."""
        if not 0 <= sender_index <= 0xFFFFFFFF:
            raise ValueError("sender_index must be a u32")
        if len(timestamp) != TIMESTAMP_LEN:
            raise ValueError(f"timestamp must be {TIMESTAMP_LEN} bytes")
        eph = _ephemeral(ephemeral)
        e_pub = eph.public_key()
        c = KDF1(INITIAL_CHAINING_KEY, e_pub)
        h = HASH(self._initial_hash + e_pub)
        try:
            c, k = KDF2(c, DH(eph, self.remote_public))
        except WeakKeyError:  # cannot happen for a key that passed __init__; be safe anyway
            raise ValueError("peer public key is of low order") from None
        enc_static = AEAD_encrypt(k, 0, self.local_public, h)
        h = HASH(h + enc_static)
        c, k = KDF2(c, self.precomputed_static_static)
        enc_ts = AEAD_encrypt(k, 0, bytes(timestamp), h)
        h = HASH(h + enc_ts)
        self.state = HandshakeState.INITIATION_SENT
        self.local_index = sender_index
        self._ephemeral = eph
        self._chaining_key = c
        self._hash = h
        return _INIT_HEAD.pack(MESSAGE_INITIATION, sender_index, e_pub, enc_static, enc_ts) + _MAC_FIELDS

    def consume_response(self, msg: bytes | bytearray | memoryview) -> SessionKeys | None:
        """Keys if `msg` is the valid response to our pending initiation, else None.

        mac1 (and mac2 under load) are checked by the caller with cookie.CookieChecker."""
        if self.state is not HandshakeState.INITIATION_SENT or self._ephemeral is None:
            return None
        if not isinstance(msg, (bytes, bytearray, memoryview)) or len(msg) != MESSAGE_RESPONSE_SIZE:
            return None
        kind, sender, receiver, e_r, enc_nothing = _RESP_HEAD.unpack_from(msg)
        if kind != MESSAGE_RESPONSE or receiver != self.local_index:
            return None
        c = KDF1(self._chaining_key, e_r)
        h = HASH(self._hash + e_r)
        try:
            c = KDF1(c, DH(self._ephemeral, e_r))
            c = KDF1(c, DH(self.local_private, e_r))
        except WeakKeyError:
            return None
        c, tau, k = KDF3(c, self.preshared)
        h = HASH(h + tau)
        if AEAD_decrypt(k, 0, enc_nothing, h) is None:
            return None
        send, recv = KDF2(c, b"")
        local_index = self.local_index
        assert local_index is not None
        self.clear()
        return SessionKeys(send, recv, local_index, sender, True)


def consume_initiation(
    local_private: PrivateKey,
    local_public: PublicKey,
    msg: bytes | bytearray | memoryview,
    static_static: dict[bytes, bytes] | None = None,
) -> InitiationResult | None:
    """Decrypt an initiation addressed to us; None if it is malformed or not for us.

    mac1 is the caller's to check first (cookie.CookieChecker.check_mac1). The result's
    `remote_static` is the claimed and authenticated sender: the caller must look it up
    among its peers, reject it if unknown, check `timestamp` against that peer's last one
    and rate-limit, then call `create_response` with the peer's psk.

    `static_static` optionally maps a peer public key to the precomputed DH(our static,
    peer static) (`Handshake.precomputed_static_static`), saving one X25519.
    """
    if not isinstance(msg, (bytes, bytearray, memoryview)) or len(msg) != MESSAGE_INITIATION_SIZE:
        return None
    kind, sender, e_i, enc_static, enc_ts = _INIT_HEAD.unpack_from(msg)
    if kind != MESSAGE_INITIATION:
        return None
    c = KDF1(INITIAL_CHAINING_KEY, e_i)
    h = HASH(_responder_hash(bytes(local_public)) + e_i)
    try:
        c, k = KDF2(c, DH(local_private, e_i))
    except WeakKeyError:
        return None
    static = AEAD_decrypt(k, 0, enc_static, h)
    if static is None:
        return None
    h = HASH(h + enc_static)
    ss = static_static.get(static) if static_static is not None else None
    if ss is None:
        try:
            ss = DH(local_private, static)
        except WeakKeyError:
            return None
    c, k = KDF2(c, ss)
    timestamp = AEAD_decrypt(k, 0, enc_ts, h)
    if timestamp is None:
        return None
    h = HASH(h + enc_ts)
    return InitiationResult(
        remote_static=PublicKey(static),
        remote_index=sender,
        timestamp=timestamp,
        remote_ephemeral=e_i,
        chaining_key=c,
        hash=h,
    )


def create_response(
    result: InitiationResult,
    preshared: PresharedKey,
    sender_index: int,
    ephemeral: PrivateKey | None = None,
) -> tuple[bytes, SessionKeys]:
    """The 92-byte response (macs zeroed) and the responder's transport keys."""
    if not isinstance(preshared, PresharedKey):
        raise TypeError("preshared must be a PresharedKey")
    if not 0 <= sender_index <= 0xFFFFFFFF:
        raise ValueError("sender_index must be a u32")
    eph = _ephemeral(ephemeral)
    e_pub = eph.public_key()
    c = KDF1(result.chaining_key, e_pub)
    h = HASH(result.hash + e_pub)
    # Both points were validated when the initiation was consumed (DH gave non-zero results
    # with our static key); an ephemeral of low order would have failed there already.
    try:
        c = KDF1(c, DH(eph, result.remote_ephemeral))
        c = KDF1(c, DH(eph, result.remote_static))
    except WeakKeyError:
        raise ValueError("initiation carried a low-order key") from None
    c, tau, k = KDF3(c, preshared)
    h = HASH(h + tau)
    enc_nothing = AEAD_encrypt(k, 0, b"", h)
    recv, send = KDF2(c, b"")
    msg = _RESP_HEAD.pack(MESSAGE_RESPONSE, sender_index, result.remote_index, e_pub, enc_nothing) + _MAC_FIELDS
    return msg, SessionKeys(send, recv, sender_index, result.remote_index, False)
