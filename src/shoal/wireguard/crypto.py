"""WireGuard's cryptographic primitives (whitepaper section 5.4), named as in the paper.

Owns:
  HASH(x)        BLAKE2s-256 of x                                   -> 32 bytes
  MAC(key, x)    keyed BLAKE2s with a 16-byte digest                -> 16 bytes
  HMAC(key, x)   HMAC (RFC 2104) over BLAKE2s-256, 64-byte block    -> 32 bytes
  KDF1/2/3(key, x)  HKDF-style chain: t0 = HMAC(key, x), t1 = HMAC(t0, 0x01),
                 t(i) = HMAC(t0, t(i-1) || i)                       -> 1, 2 or 3 x 32 bytes
  DH(priv, pub)  X25519; raises `WeakKeyError` when the result is all zeros (a low-order
                 point), which the handshake treats as an invalid message
  Aead           ChaCha20-Poly1305 (RFC 8439) for one key, nonce = 4 zero bytes ||
                 64-bit little-endian counter; built once per key and reused (building
                 the cipher object costs more than sealing a small packet)
  XAEAD_encrypt/XAEAD_decrypt  XChaCha20-Poly1305 with a 24-byte nonce (cookie replies)

Decryption failures return None instead of raising: their input comes from the network.
Misuse (wrong key length, counter out of range) raises ValueError/TypeError.
"""

from __future__ import annotations

import hashlib
import hmac as _hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError as _NaclCryptoError

from shoal.constants import COOKIE_NONCE_LEN, KEY_LEN, MAC_LEN, TAG_LEN
from shoal.wireguard.keys import PrivateKey

__all__ = [
    "HASH",
    "MAC",
    "HMAC",
    "KDF1",
    "KDF2",
    "KDF3",
    "DH",
    "WeakKeyError",
    "Aead",
    "AEAD_encrypt",
    "AEAD_decrypt",
    "XAEAD_encrypt",
    "XAEAD_decrypt",
    "constant_time_eq",
]

_blake2s = hashlib.blake2s
_hmac_digest = _hmac.digest
_NONCE = struct.Struct("<4xQ")  # 4 zero bytes || little-endian 64-bit counter
_ONE = b"\x01"
_TWO = b"\x02"
_THREE = b"\x03"
constant_time_eq = _hmac.compare_digest


class WeakKeyError(ValueError):
    """X25519 gave the all-zero output: the peer's public key is of low order."""


def HASH(data: bytes) -> bytes:  # noqa: N802 - named as in the whitepaper
    return _blake2s(data).digest()


def MAC(key: bytes, data: bytes) -> bytes:  # noqa: N802
    return _blake2s(data, digest_size=MAC_LEN, key=key).digest()


def HMAC(key: bytes, data: bytes) -> bytes:  # noqa: N802
    return _hmac_digest(key, data, _blake2s)


def KDF1(key: bytes, data: bytes) -> bytes:  # noqa: N802
    t0 = _hmac_digest(key, data, _blake2s)
    return _hmac_digest(t0, _ONE, _blake2s)


def KDF2(key: bytes, data: bytes) -> tuple[bytes, bytes]:  # noqa: N802
    t0 = _hmac_digest(key, data, _blake2s)
    t1 = _hmac_digest(t0, _ONE, _blake2s)
    t2 = _hmac_digest(t0, t1 + _TWO, _blake2s)
    return t1, t2


def KDF3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:  # noqa: N802
    t0 = _hmac_digest(key, data, _blake2s)
    t1 = _hmac_digest(t0, _ONE, _blake2s)
    t2 = _hmac_digest(t0, t1 + _TWO, _blake2s)
    t3 = _hmac_digest(t0, t2 + _THREE, _blake2s)
    return t1, t2, t3


def DH(private: PrivateKey | bytes, public: bytes) -> bytes:  # noqa: N802
    """X25519(private, public). Raises WeakKeyError if the shared secret is all zeros."""
    if len(public) != KEY_LEN:
        raise ValueError(f"public key must be {KEY_LEN} bytes, got {len(public)}")
    if isinstance(private, PrivateKey):
        priv_obj = private._x25519()
    else:
        priv_obj = X25519PrivateKey.from_private_bytes(bytes(private))
    try:
        # OpenSSL refuses (ValueError) when the output is all zeros.
        shared = priv_obj.exchange(X25519PublicKey.from_public_bytes(bytes(public)))
    except ValueError as exc:
        raise WeakKeyError("X25519 produced the all-zero shared secret") from exc
    if shared == bytes(KEY_LEN):  # belt and braces: never hand out a zero secret
        raise WeakKeyError("X25519 produced the all-zero shared secret")
    return shared


class Aead:
    """ChaCha20-Poly1305 under one fixed key with WireGuard's counter nonces.

    `encrypt(counter, plaintext, ad)` -> ciphertext || 16-byte tag
    `decrypt(counter, ciphertext, ad)` -> plaintext, or None if the tag does not verify
    """

    __slots__ = ("_aead", "_enc", "_dec")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"AEAD key must be {KEY_LEN} bytes, got {len(key)}")
        self._aead = ChaCha20Poly1305(bytes(key))
        self._enc = self._aead.encrypt
        self._dec = self._aead.decrypt

    def encrypt(self, counter: int, plaintext: bytes, ad: bytes | None = None) -> bytes:
        return self._enc(_NONCE.pack(counter), plaintext, ad)

    def decrypt(self, counter: int, ciphertext: bytes, ad: bytes | None = None) -> bytes | None:
        try:
            return self._dec(_NONCE.pack(counter), ciphertext, ad)
        except InvalidTag:
            return None

    def seal_with_nonce(self, nonce: bytes, plaintext: bytes, ad: bytes = b"") -> bytes:
        """Raw RFC 8439 seal with an explicit 12-byte nonce (known-answer tests, not the wire)."""
        return self._enc(nonce, plaintext, ad)

    def open_with_nonce(self, nonce: bytes, ciphertext: bytes, ad: bytes = b"") -> bytes | None:
        try:
            return self._dec(nonce, ciphertext, ad)
        except InvalidTag:
            return None


def AEAD_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:  # noqa: N802
    """One-shot AEAD for the handshake (each handshake key is used once)."""
    return ChaCha20Poly1305(key).encrypt(_NONCE.pack(counter), plaintext, ad)


def AEAD_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes | None:  # noqa: N802
    if len(ciphertext) < TAG_LEN:
        return None
    try:
        return ChaCha20Poly1305(key).decrypt(_NONCE.pack(counter), ciphertext, ad)
    except InvalidTag:
        return None


def XAEAD_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:  # noqa: N802
    if len(key) != KEY_LEN or len(nonce) != COOKIE_NONCE_LEN:
        raise ValueError("XAEAD needs a 32-byte key and a 24-byte nonce")
    return crypto_aead_xchacha20poly1305_ietf_encrypt(bytes(plaintext), bytes(ad), bytes(nonce), bytes(key))


def XAEAD_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes | None:  # noqa: N802
    if len(key) != KEY_LEN or len(nonce) != COOKIE_NONCE_LEN:
        raise ValueError("XAEAD needs a 32-byte key and a 24-byte nonce")
    if len(ciphertext) < TAG_LEN:
        return None
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(ciphertext), bytes(ad), bytes(nonce), bytes(key)
        )
    except _NaclCryptoError:
        return None
