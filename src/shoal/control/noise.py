"""Noise_IK_25519_ChaChaPoly_BLAKE2s for the control channel (Noise spec rev 34), sans-IO.

Owns: the two handshake messages between a node (initiator, who knows and pins the
server's static key) and the coordination server (responder, who learns the node's static
key), and the transport `Session` that follows. Built on `shoal.wireguard.crypto` (the same
BLAKE2s HASH/HMAC-HKDF, X25519 and ChaCha20-Poly1305 as WireGuard, nonce = 4 zero bytes ||
64-bit little-endian counter). No sockets, no clock: bytes in, bytes out.

Pattern IK with prologue PROLOGUE = b"shoal-control-v1":

    <- s
    ...
    -> e, es, s, ss        message1 (node -> server)
    <- e, ee, se           message2 (server -> node)

Wire format (all lengths in bytes; AEAD(x) = ChaCha20-Poly1305 ciphertext of x || 16-byte tag):

    message1 = e.pub (32) || AEAD(node s.pub) (48) || AEAD(payload) (len + 16)   >= 96 bytes
    message2 = e.pub (32) || AEAD(payload) (len + 16)                             >= 48 bytes
    transport frame = one or more Noise transport messages, back to back: the plaintext is
        cut into chunks of MAX_PLAINTEXT (65519) bytes (an empty plaintext is one empty
        chunk); each chunk is sealed with the next nonce and empty associated data, giving
        at most MAX_MESSAGE_LEN (65535) bytes. The receiver cuts the frame at every 65535
        bytes, so the framing needs no length fields (the carrier, a WebSocket message,
        keeps the frame boundaries). `ciphertext_len(n)` is the sealed size of n bytes.

Every Noise message is at most 65535 bytes (spec section 3). Transport counters are strict
and in order (the carrier is ordered and reliable): frame k must carry nonces k, k+1, ...
exactly; a replayed, reordered, truncated or forged frame fails. Nonce 2^64-1 is never used
(spec section 5.1).

API:
    client = ClientHandshake(node_key, server_public, payload=b"")
    m1 = client.message1()
    server = ServerHandshake(server_key)
    node_public, payload = server.read_message1(m1)         # raises HandshakeFailed
    m2 = server.message2(payload=b"")
    server_session = server.split()
    client_session, payload = client.read_message2(m2)      # raises HandshakeFailed
    ct = session.encrypt(pt); pt = peer_session.decrypt(ct) # raises DecryptFailed

Input from the network only ever raises `HandshakeFailed` or `DecryptFailed`; caller
mistakes (calls out of order, oversized payloads, exhausted nonces) raise ValueError or
TypeError. Note that message1 alone does not prove the node holds its private key (it can be
replayed); the proof is the first transport frame from the node that decrypts.
"""

from __future__ import annotations

from collections.abc import Callable

from shoal.wireguard.crypto import AEAD_decrypt, AEAD_encrypt, DH, HASH, KDF2, Aead, WeakKeyError
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = [
    "PROTOCOL_NAME",
    "PROLOGUE",
    "MAX_MESSAGE_LEN",
    "MAX_PLAINTEXT",
    "MESSAGE1_MIN_LEN",
    "MESSAGE2_MIN_LEN",
    "ClientHandshake",
    "ServerHandshake",
    "Session",
    "HandshakeFailed",
    "DecryptFailed",
    "ciphertext_len",
]

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"shoal-control-v1"
DHLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535
MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAGLEN
MESSAGE1_MIN_LEN = DHLEN + (DHLEN + TAGLEN) + TAGLEN
MESSAGE2_MIN_LEN = DHLEN + TAGLEN
MAX_NONCE = 2**64 - 1  # reserved: never used to encrypt

# InitializeSymmetric: the name is longer than HASHLEN, so h = HASH(name); ck = h.
_H0 = HASH(PROTOCOL_NAME) if len(PROTOCOL_NAME) > 32 else PROTOCOL_NAME.ljust(32, b"\x00")
_CK0 = _H0
_H_PROLOGUE = HASH(_H0 + PROLOGUE)  # MixHash(prologue)


class HandshakeFailed(Exception):
    """A handshake message from the network did not verify (wrong key, tampered, malformed).

    `wrong_server_key` is True when message1 could not have been made for this server's key
    (its encrypted static key does not open): the node pinned another server key."""

    def __init__(self, message: str, *, wrong_server_key: bool = False) -> None:
        super().__init__(message)
        self.wrong_server_key = wrong_server_key


class DecryptFailed(Exception):
    """A transport frame did not verify (tampered, truncated, replayed, reordered)."""


def ciphertext_len(plaintext_len: int) -> int:
    """Size of the transport frame carrying `plaintext_len` bytes."""
    chunks = max(1, -(-plaintext_len // MAX_PLAINTEXT))
    return plaintext_len + chunks * TAGLEN


class _Symmetric:
    """The SymmetricState of the spec (CipherState folded in: k and n)."""

    __slots__ = ("ck", "h", "k", "n")

    def __init__(self, ck: bytes, h: bytes) -> None:
        self.ck = ck
        self.h = h
        self.k: bytes | None = None
        self.n = 0

    def copy(self) -> _Symmetric:
        c = _Symmetric(self.ck, self.h)
        c.k, c.n = self.k, self.n
        return c

    def mix_hash(self, data: bytes) -> None:
        self.h = HASH(self.h + data)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = KDF2(self.ck, ikm)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.k is not None  # IK encrypts only after es
        ct = AEAD_encrypt(self.k, self.n, plaintext, self.h)
        self.n += 1
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes | None:
        assert self.k is not None
        pt = AEAD_decrypt(self.k, self.n, ciphertext, self.h)
        if pt is None:
            return None
        self.n += 1
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        return KDF2(self.ck, b"")


def _initial(server_public: bytes) -> _Symmetric:
    st = _Symmetric(_CK0, _H_PROLOGUE)
    st.mix_hash(server_public)  # pre-message "<- s"
    return st


def _check_payload(payload: bytes, overhead: int) -> bytes:
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) + overhead > MAX_MESSAGE_LEN:
        raise ValueError(f"handshake payload of {len(payload)} bytes makes the message exceed {MAX_MESSAGE_LEN}")
    return bytes(payload)


def _dh(private: PrivateKey, public: bytes) -> bytes | None:
    try:
        return DH(private, public)
    except WeakKeyError:
        return None


class Session:
    """Transport keys after the handshake, one per side; strict in-order nonces.

    `handshake_hash` is the final h of the handshake (channel binding, equal on both sides).
    """

    __slots__ = ("_send", "_recv", "send_nonce", "recv_nonce", "handshake_hash")

    def __init__(self, send_key: bytes, recv_key: bytes, handshake_hash: bytes) -> None:
        self._send = Aead(send_key)
        self._recv = Aead(recv_key)
        self.send_nonce = 0
        self.recv_nonce = 0
        self.handshake_hash = handshake_hash

    def encrypt(self, plaintext: bytes) -> bytes:
        """Seal one frame (see the module docstring for chunking). ValueError when the
        64-bit nonce space is used up (a new handshake is needed)."""
        pt = bytes(plaintext)
        chunks = [pt[i : i + MAX_PLAINTEXT] for i in range(0, len(pt), MAX_PLAINTEXT)] or [b""]
        n = self.send_nonce
        if n + len(chunks) > MAX_NONCE:
            raise ValueError("send nonce exhausted: start a new handshake")
        out = []
        for chunk in chunks:
            out.append(self._send.encrypt(n, chunk, b""))
            n += 1
        self.send_nonce = n
        return b"".join(out)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Open one frame sealed by the peer's `encrypt`; DecryptFailed if it does not verify.
        On failure the receive nonce does not move."""
        ct = bytes(ciphertext)
        if len(ct) < TAGLEN:
            raise DecryptFailed(f"frame of {len(ct)} bytes is shorter than a tag")
        n = self.recv_nonce
        out = []
        for i in range(0, len(ct), MAX_MESSAGE_LEN):
            if n >= MAX_NONCE:
                raise DecryptFailed("receive nonce exhausted")
            pt = self._recv.decrypt(n, ct[i : i + MAX_MESSAGE_LEN], b"") if len(ct) - i >= TAGLEN else None
            if pt is None:
                raise DecryptFailed(f"frame does not verify (nonce {n})")
            out.append(pt)
            n += 1
        self.recv_nonce = n
        return b"".join(out)


class ClientHandshake:
    """Initiator (the node). One instance per handshake attempt.

    `ephemeral`/`rng` exist for tests and simulations (deterministic ephemerals)."""

    def __init__(
        self,
        node_key: PrivateKey,
        server_public: PublicKey,
        payload: bytes = b"",
        *,
        ephemeral: PrivateKey | None = None,
        rng: Callable[[int], bytes] | None = None,
    ) -> None:
        if not isinstance(node_key, PrivateKey):
            raise TypeError("node_key must be a PrivateKey")
        if not isinstance(server_public, PublicKey):
            raise TypeError("server_public must be a PublicKey")
        self._s = node_key
        self._rs = server_public
        self._payload = _check_payload(payload, MESSAGE1_MIN_LEN)
        if ephemeral is None:
            ephemeral = PrivateKey.generate(rng) if rng is not None else PrivateKey.generate()
        self._e: PrivateKey | None = ephemeral
        self._st: _Symmetric | None = None
        self._done = False

    def message1(self) -> bytes:
        """-> e, es, s, ss, payload. ValueError if the pinned server key is a low-order point."""
        if self._st is not None or self._e is None:
            raise ValueError("message1 was already made; use a new ClientHandshake")
        st = _initial(self._rs)
        e_pub = self._e.public_key()
        st.mix_hash(e_pub)
        st.mix_key(DH(self._e, self._rs))  # WeakKeyError (a ValueError) for a bad pinned key
        enc_s = st.encrypt_and_hash(self._s.public_key())
        st.mix_key(DH(self._s, self._rs))
        enc_payload = st.encrypt_and_hash(self._payload)
        self._st = st
        return bytes(e_pub) + enc_s + enc_payload

    def read_message2(self, msg: bytes) -> tuple[Session, bytes]:
        """<- e, ee, se, payload. Returns (session, server payload); HandshakeFailed if the
        message was not made by the holder of the pinned server key for our message1."""
        if self._st is None or self._e is None:
            raise ValueError("read_message2 before message1 or after the handshake finished")
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise HandshakeFailed("message2 is not bytes")
        msg = bytes(msg)
        if not MESSAGE2_MIN_LEN <= len(msg) <= MAX_MESSAGE_LEN:
            raise HandshakeFailed(f"message2 of {len(msg)} bytes (expected {MESSAGE2_MIN_LEN}..{MAX_MESSAGE_LEN})")
        st = self._st.copy()  # a forged message2 leaves the handshake untouched
        re = msg[:DHLEN]
        st.mix_hash(re)
        ee = _dh(self._e, re)
        se = _dh(self._s, re)
        if ee is None or se is None:
            raise HandshakeFailed("message2 carries a low-order ephemeral key")
        st.mix_key(ee)
        st.mix_key(se)
        payload = st.decrypt_and_hash(msg[DHLEN:])
        if payload is None:
            raise HandshakeFailed("message2 does not verify: the server does not hold the pinned key")
        k1, k2 = st.split()
        self._e = None  # drop the ephemeral as soon as it is used
        self._st = None
        return Session(k1, k2, st.h), payload


class ServerHandshake:
    """Responder (the server). One instance per connection."""

    def __init__(
        self,
        server_key: PrivateKey,
        *,
        ephemeral: PrivateKey | None = None,
        rng: Callable[[int], bytes] | None = None,
    ) -> None:
        if not isinstance(server_key, PrivateKey):
            raise TypeError("server_key must be a PrivateKey")
        self._s = server_key
        self._e_given = ephemeral
        self._rng = rng
        self._st: _Symmetric | None = None
        self._re: bytes | None = None
        self._rs: PublicKey | None = None
        self._keys: tuple[bytes, bytes, bytes] | None = None

    def read_message1(self, msg: bytes) -> tuple[PublicKey, bytes]:
        """-> e, es, s, ss, payload. Returns (node public key, node payload)."""
        if self._st is not None:
            raise ValueError("message1 was already read on this ServerHandshake")
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise HandshakeFailed("message1 is not bytes")
        msg = bytes(msg)
        if not MESSAGE1_MIN_LEN <= len(msg) <= MAX_MESSAGE_LEN:
            raise HandshakeFailed(f"message1 of {len(msg)} bytes (expected {MESSAGE1_MIN_LEN}..{MAX_MESSAGE_LEN})")
        st = _initial(self._s.public_key())
        re = msg[:DHLEN]
        st.mix_hash(re)
        es = _dh(self._s, re)
        if es is None:
            raise HandshakeFailed("message1 carries a low-order ephemeral key")
        st.mix_key(es)
        rs = st.decrypt_and_hash(msg[DHLEN : DHLEN + DHLEN + TAGLEN])
        if rs is None:
            raise HandshakeFailed(
                "message1 does not verify: it was made for another server key", wrong_server_key=True
            )
        ss = _dh(self._s, rs)
        if ss is None:
            raise HandshakeFailed("message1 carries a low-order static key")
        st.mix_key(ss)
        payload = st.decrypt_and_hash(msg[DHLEN + DHLEN + TAGLEN :])
        if payload is None:
            raise HandshakeFailed("message1 does not verify: the sender does not hold the node key it presents")
        self._st, self._re, self._rs = st, re, PublicKey(rs)
        return self._rs, payload

    def message2(self, payload: bytes = b"") -> bytes:
        """<- e, ee, se, payload (after a successful read_message1)."""
        if self._st is None or self._re is None or self._rs is None or self._keys is not None:
            raise ValueError("message2 needs a successful read_message1 first, and is made once")
        payload = _check_payload(payload, MESSAGE2_MIN_LEN)
        st = self._st
        if self._e_given is not None:
            e = self._e_given
        else:
            e = PrivateKey.generate(self._rng) if self._rng is not None else PrivateKey.generate()
        self._e_given = None
        e_pub = e.public_key()
        st.mix_hash(e_pub)
        st.mix_key(DH(e, self._re))  # cannot be weak: read_message1 checked re and rs
        st.mix_key(DH(e, self._rs))
        enc_payload = st.encrypt_and_hash(payload)
        k1, k2 = st.split()
        self._keys = (k2, k1, st.h)  # responder sends with the second key
        return bytes(e_pub) + enc_payload

    def split(self) -> Session:
        """The server's transport session (after message2)."""
        if self._keys is None:
            raise ValueError("split before message2")
        return Session(*self._keys)
