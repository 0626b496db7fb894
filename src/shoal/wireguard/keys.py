"""Typed 32-byte WireGuard keys: `PrivateKey`, `PublicKey`, `PresharedKey`.

Owns: key generation (clamped X25519 scalars, as `wg genkey`), base64 text form (as in
wg-quick configs and `wg show`), and validation. The three types are distinct `bytes`
subclasses so that a node key can never be passed where a pre-shared key is expected
(type checkers catch it; `Handshake` also checks at run time).

Every constructor validates the length (32 bytes) and raises `ValueError` with a message
naming the key type on bad base64 or a bad length. Keys compare and hash like bytes;
`repr()` of a private or pre-shared key never shows the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable
from typing import Self

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from shoal.constants import KEY_LEN

__all__ = ["PrivateKey", "PublicKey", "PresharedKey", "clamp"]


def clamp(scalar: bytes) -> bytes:
    """Clamp a 32-byte X25519 scalar (RFC 7748 section 5): clear bits 0-2 and 255, set 254."""
    if len(scalar) != KEY_LEN:
        raise ValueError(f"X25519 scalar must be {KEY_LEN} bytes, got {len(scalar)}")
    b = bytearray(scalar)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


class _Key32(bytes):
    """A 32-byte key; subclasses differ only in type and in how much of them `repr` shows."""

    _kind = "key"

    def __new__(cls, value: bytes | bytearray | memoryview) -> Self:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{cls.__name__} takes bytes, not {type(value).__name__}")
        if len(value) != KEY_LEN:
            raise ValueError(f"{cls._kind} must be {KEY_LEN} bytes, got {len(value)}")
        return super().__new__(cls, value)

    @classmethod
    def from_base64(cls, text: str | bytes) -> Self:
        """Parse the standard base64 form (44 characters, as `wg` prints); strict."""
        if isinstance(text, str):
            try:
                raw_text = text.strip().encode("ascii")
            except UnicodeEncodeError:
                raise ValueError(f"{cls._kind} is not valid base64: non-ASCII characters") from None
        else:
            raw_text = bytes(text).strip()
        try:
            raw = base64.b64decode(raw_text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{cls._kind} is not valid base64: {exc}") from None
        if len(raw) != KEY_LEN:
            raise ValueError(f"{cls._kind} must decode to {KEY_LEN} bytes, got {len(raw)}")
        return cls(raw)

    def to_base64(self) -> str:
        return base64.b64encode(self).decode("ascii")

    @classmethod
    def from_hex(cls, text: str) -> Self:
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"{cls._kind} is not valid hex: {exc}") from None
        return cls(raw)

    def hex_str(self) -> str:
        return bytes(self).hex()


class PublicKey(_Key32):
    """An X25519 public key (a node's static key or an ephemeral)."""

    _kind = "public key"

    def fingerprint(self) -> str:
        """A short, stable label for logs: the first 8 base64 characters (as Tailscale/wg UIs)."""
        return self.to_base64()[:8]

    def short(self) -> str:
        return f"[{self.fingerprint()}]"

    def __repr__(self) -> str:
        return f"PublicKey({self.to_base64()!r})"

    def __str__(self) -> str:
        return self.to_base64()


class PrivateKey(_Key32):
    """An X25519 private scalar. Clamping is applied by the curve operation; `generate` clamps."""

    _kind = "private key"

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> Self:
        """A fresh clamped key; `rng` (n -> n random bytes) lets simulations be deterministic."""
        return cls(clamp(rng(KEY_LEN)))

    @classmethod
    def from_seed(cls, seed: bytes) -> Self:
        """Deterministic key from arbitrary seed bytes (tests and simulations only)."""
        return cls(clamp(hashlib.blake2s(seed).digest()))

    def _x25519(self) -> X25519PrivateKey:
        # Parsed once per key object and cached: X25519PrivateKey construction costs a few µs.
        cached = self.__dict__.get("_obj")
        if cached is None:
            cached = X25519PrivateKey.from_private_bytes(bytes(self))
            self.__dict__["_obj"] = cached
        return cached

    def public_key(self) -> PublicKey:
        cached = self.__dict__.get("_pub")
        if cached is None:
            cached = PublicKey(self._x25519().public_key().public_bytes_raw())
            self.__dict__["_pub"] = cached
        return cached

    def exchange(self, public: PublicKey | bytes) -> bytes:
        """Raw X25519(self, public). Raises `ValueError` if the result is all zeros
        (a low-order public key); see `crypto.DH`."""
        return self._x25519().exchange(X25519PublicKey.from_public_bytes(bytes(public)))

    def __repr__(self) -> str:
        return f"PrivateKey(<secret>, public={self.public_key().fingerprint()})"

    def __str__(self) -> str:
        return "<private key>"


class PresharedKey(_Key32):
    """The optional symmetric key mixed in at the `psk` token; all zeros when unused."""

    _kind = "pre-shared key"
    ZERO: PresharedKey

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> Self:
        return cls(rng(KEY_LEN))

    def is_zero(self) -> bool:
        return self == PresharedKey.ZERO

    def __repr__(self) -> str:
        return "PresharedKey(<zero>)" if self.is_zero() else "PresharedKey(<secret>)"

    def __str__(self) -> str:
        return "<pre-shared key>"


PresharedKey.ZERO = PresharedKey(bytes(KEY_LEN))
