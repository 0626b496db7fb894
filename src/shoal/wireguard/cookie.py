"""mac1/mac2 and cookie replies: WireGuard's DoS mitigation (whitepaper 5.3, 5.4.4, 5.4.7).

Owns: `CookieChecker` (our side, keyed by OUR static public key: verifies mac1 of every
handshake message sent to us, verifies mac2 while under load, and builds cookie replies)
and `CookieGenerator` (one per peer, keyed by THE PEER's public key: fills mac1/mac2 of the
handshake messages we send it, and consumes the cookie replies it sends us).

Definitions (S_m.pub = public key of the receiver of the handshake message):
  mac1   = MAC(HASH("mac1----" || S_m.pub), msg[:-32])
  mac2   = MAC(cookie, msg[:-16])  if we hold a fresh cookie, else 16 zero bytes
  cookie = MAC(R_m, source)        R_m: a random secret that the receiver replaces every
                                   COOKIE_REFRESH_TIME; source: the message's source IP
                                   address bytes || port (as the caller encodes it)
  reply  = type 3 || receiver index || nonce(24) ||
           XAEAD(HASH("cookie--" || S_m.pub), nonce, cookie, ad = mac1 of the message)
(Message layout: `messages.py`.)

Freshness: the responder's secret is valid for COOKIE_REFRESH_TIME after it was made (a new
one is made lazily when a reply is needed); the initiator uses a cookie for
COOKIE_REFRESH_TIME - COOKIE_SECRET_LATENCY after receiving it, so it stops before the
responder's secret can have rotated (the Linux driver's margin). A cookie reply is only
accepted if it authenticates against the mac1 of the last message we sent with this
generator, which binds it to that message.

Sans-IO: `now` (monotonic seconds) and the random source are passed in. Network input
never raises; it yields False.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from shoal.constants import (
    COOKIE_LEN,
    COOKIE_NONCE_LEN,
    COOKIE_REFRESH_TIME,
    COOKIE_SECRET_LATENCY,
    KEY_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
)
from shoal.wireguard.crypto import HASH, MAC, XAEAD_decrypt, XAEAD_encrypt, constant_time_eq
from shoal.wireguard.keys import PublicKey
from shoal.wireguard.messages import CookieReply, parse_cookie_reply

__all__ = ["CookieChecker", "CookieGenerator", "mac1_key", "cookie_key"]

_ZERO_MAC = bytes(MAC_LEN)
_HANDSHAKE_SIZES = (MESSAGE_INITIATION_SIZE, MESSAGE_RESPONSE_SIZE)

Rng = Callable[[int], bytes]


def mac1_key(public: bytes) -> bytes:
    return HASH(LABEL_MAC1 + bytes(public))


def cookie_key(public: bytes) -> bytes:
    return HASH(LABEL_COOKIE + bytes(public))


def _is_handshake(msg: object) -> bool:
    return isinstance(msg, (bytes, bytearray, memoryview)) and len(msg) in _HANDSHAKE_SIZES


class CookieChecker:
    """Our side: verify macs on handshake messages addressed to us; make cookie replies."""

    __slots__ = ("_mac1_key", "_cookie_key", "_secret", "_secret_set", "refresh_time")

    def __init__(self, local_public: PublicKey, refresh_time: float = COOKIE_REFRESH_TIME) -> None:
        if len(local_public) != KEY_LEN:
            raise ValueError("local_public must be 32 bytes")
        self._mac1_key = mac1_key(local_public)
        self._cookie_key = cookie_key(local_public)
        self._secret = b""
        self._secret_set: float | None = None
        self.refresh_time = refresh_time

    def check_mac1(self, msg: bytes | bytearray | memoryview) -> bool:
        if not _is_handshake(msg):
            return False
        mac1_at = len(msg) - 2 * MAC_LEN
        return constant_time_eq(MAC(self._mac1_key, msg[:mac1_at]), msg[mac1_at : mac1_at + MAC_LEN])

    def _secret_fresh(self, now: float) -> bool:
        return self._secret_set is not None and now - self._secret_set <= self.refresh_time

    def check_mac2(self, msg: bytes | bytearray | memoryview, source: bytes, now: float) -> bool:
        """True if mac2 is the MAC under the cookie we would currently give `source`."""
        if not _is_handshake(msg) or not self._secret_fresh(now):
            return False
        cookie = MAC(self._secret, source)
        mac2_at = len(msg) - MAC_LEN
        return constant_time_eq(MAC(cookie, msg[:mac2_at]), msg[mac2_at:])

    def create_reply(
        self,
        msg: bytes | bytearray | memoryview,
        receiver_index: int,
        source: bytes,
        now: float,
        rng: Rng = os.urandom,
    ) -> bytes:
        """A 64-byte cookie reply to `msg` (whose mac1 the caller has already checked)."""
        if not _is_handshake(msg):
            raise ValueError("cookie replies answer handshake messages only")
        if not self._secret_fresh(now):
            secret = rng(KEY_LEN)
            if len(secret) != KEY_LEN:
                raise ValueError("rng returned the wrong number of bytes")
            self._secret = bytes(secret)
            self._secret_set = now
        cookie = MAC(self._secret, source)
        mac1_at = len(msg) - 2 * MAC_LEN
        mac1 = bytes(msg[mac1_at : mac1_at + MAC_LEN])
        nonce = rng(COOKIE_NONCE_LEN)
        encrypted = XAEAD_encrypt(self._cookie_key, nonce, cookie, mac1)
        return CookieReply(receiver_index, nonce, encrypted).to_bytes()


class CookieGenerator:
    """One per peer: add mac1/mac2 to the handshake messages we send it; take its cookies."""

    __slots__ = ("_mac1_key", "_cookie_key", "_cookie", "_cookie_set", "_last_mac1", "refresh_time")

    def __init__(self, remote_public: PublicKey, refresh_time: float = COOKIE_REFRESH_TIME) -> None:
        if len(remote_public) != KEY_LEN:
            raise ValueError("remote_public must be 32 bytes")
        self._mac1_key = mac1_key(remote_public)
        self._cookie_key = cookie_key(remote_public)
        self._cookie = b""
        self._cookie_set: float | None = None
        self._last_mac1: bytes | None = None
        self.refresh_time = refresh_time

    def has_fresh_cookie(self, now: float) -> bool:
        return (
            self._cookie_set is not None
            and now - self._cookie_set < self.refresh_time - COOKIE_SECRET_LATENCY
        )

    def add_macs(self, msg: bytes | bytearray | memoryview, now: float) -> bytes:
        """`msg` with mac1 (always) and mac2 (with a fresh cookie, else zeros) filled in."""
        if not _is_handshake(msg):
            raise ValueError("macs go on handshake initiations and responses only")
        mac1_at = len(msg) - 2 * MAC_LEN
        body = bytes(msg[:mac1_at])
        mac1 = MAC(self._mac1_key, body)
        self._last_mac1 = mac1
        if self.has_fresh_cookie(now):
            mac2 = MAC(self._cookie, body + mac1)
        else:
            mac2 = _ZERO_MAC
        return body + mac1 + mac2

    def consume_reply(self, msg: bytes | bytearray | memoryview, now: float) -> bool:
        """Store the cookie if `msg` is a valid reply to the last message we sent; else False.

        The caller has matched the reply's receiver index to this peer."""
        if self._last_mac1 is None:
            return False
        if not isinstance(msg, (bytes, bytearray, memoryview)) or len(msg) != MESSAGE_COOKIE_REPLY_SIZE:
            return False
        reply = parse_cookie_reply(msg)
        if reply is None:
            return False
        cookie = XAEAD_decrypt(self._cookie_key, reply.nonce, reply.encrypted_cookie, self._last_mac1)
        if cookie is None or len(cookie) != COOKIE_LEN:
            return False
        self._cookie = cookie
        self._cookie_set = now
        return True

