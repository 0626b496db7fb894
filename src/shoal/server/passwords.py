"""Network passwords: salted scrypt hashes, self-describing text form.

Owns: how a network's join password is stored and checked. Stored form (one ASCII line):

    scrypt$<log2 n>$<r>$<p>$<salt, base64>$<32-byte hash, base64>

so parameters can be raised later without breaking old rows. `verify` recomputes with the
stored parameters and compares in constant time. Cost with the defaults (n=2**14, r=8, p=1):
about 50 ms and 16 MiB per check on the reference machine. The server never runs it on its
event loop: the coordination core hands each hash or check out as a `PasswordJob` that the
glue runs on a small thread pool (hashlib.scrypt releases the GIL; `shoal.server.app`). The
core keeps an in-memory fast path for a password it has already verified and limits the
work per node and the failures per node, source prefix and network (`shoal.server.core`),
so only wrong guesses pay the full price, and only a few of them.

Tests and simulations pass `PasswordHasher(log2_n=4)` to stay fast; the text form records it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = ["PasswordHasher", "DEFAULT_LOG2_N"]

DEFAULT_LOG2_N = 14
_SALT_LEN = 16
_HASH_LEN = 32
_MAXMEM = 128 * 1024 * 1024


class PasswordHasher:
    """scrypt with chosen parameters; `hash` needs a salt from the caller's random source."""

    def __init__(self, log2_n: int = DEFAULT_LOG2_N, r: int = 8, p: int = 1) -> None:
        if not 1 <= log2_n <= 20 or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError(f"unreasonable scrypt parameters n=2**{log2_n} r={r} p={p}")
        self.log2_n, self.r, self.p = log2_n, r, p

    @staticmethod
    def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
        return hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=1 << log2_n, r=r, p=p, maxmem=_MAXMEM, dklen=_HASH_LEN
        )

    def hash(self, password: str, salt: bytes) -> str:
        if len(salt) != _SALT_LEN:
            raise ValueError(f"salt must be {_SALT_LEN} bytes")
        digest = self._derive(password, salt, self.log2_n, self.r, self.p)
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        return f"scrypt${self.log2_n}${self.r}${self.p}${b64(salt)}${b64(digest)}"

    @staticmethod
    def verify(password: str, stored: str) -> bool:
        """True if `password` matches `stored`; a malformed stored value never matches."""
        parts = stored.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            return False
        try:
            log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
            salt = base64.b64decode(parts[4], validate=True)
            want = base64.b64decode(parts[5], validate=True)
        except (ValueError, binascii.Error):
            return False
        if not 1 <= log2_n <= 20 or not 1 <= r <= 32 or not 1 <= p <= 16:
            return False
        got = PasswordHasher._derive(password, salt, log2_n, r, p)
        return hmac.compare_digest(got, want)
