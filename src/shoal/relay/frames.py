"""Relay frames: the wire format between a node and a relay (UDP datagrams and WebSocket messages).

Owns: encoding and strict parsing of every relay frame. The same bytes travel as one UDP
datagram or as one binary WebSocket message (the carrier keeps frame boundaries, so there
are no length fields). Payloads are opaque: the relay forwards WireGuard ciphertext (or
disco messages) by destination node key and never looks inside.

Header (4 bytes), then a body fixed by the kind (ERROR: with or without its tag):

    offset size  field
    0      2     magic RELAY_MAGIC = b"SR" (0x53 0x52: neither STUN, whose first two bits
                 are 00, nor a WireGuard message, whose first byte is 1..4)
    2      1     version RELAY_VERSION = 2 (version 1 had no tags on KEEPALIVE, PONG and
                 ERROR; a version-1 frame is a FrameError, so both ends move together)
    3      1     kind

    kind  name       direction       body
    1     HELLO      node -> relay   node_key (32)                                   36 bytes
    2     CHALLENGE  relay -> node   nonce (24)                                      28 bytes
    3     AUTH       node -> relay   node_key (32) | nonce (24) | proof (16)         76 bytes
    4     AUTH_OK    relay -> node   token (8) | timeout_s (u16 BE) | proof (16)     30 bytes
    5     SEND       node -> relay   token (8) | dst_key (32) | payload (0..MAX)     >= 44 bytes
    6     RECV       relay -> node   src_key (32) | payload (0..MAX)                 >= 36 bytes
    7     KEEPALIVE  node -> relay   token (8) | seq (u64 BE) | tag (16)             36 bytes
    8     PONG       relay -> node   seq (u64 BE) | tag (16)                         28 bytes
    9     ERROR      relay -> node   code (1) | key (32)                             37 bytes
                                     code (1) | key (32) | tag (16)                  53 bytes

Tags (issue 18 F12: a relay->node control frame from the relay's address proves the relay)
are 16-byte keyed BLAKE2s MACs, computed by `shoal.relay.engine` (keys, labels, what each
covers). KEEPALIVE's tag is the node's, PONG echoes its seq under the relay's tag, a tagged
ERROR is the relay's; an ERROR without a tag (37 bytes) is one the relay could not tag
(it does not know who asks) and a client treats it only as a hint. RECV carries no tag: its
payload is authenticated end to end (WireGuard, sealed disco), see the engine's docstring.

A relay->node answer to a frame a stranger can send (a spoofed UDP source) is never larger
than that frame (CHALLENGE 28 < HELLO 36, AUTH_OK 30 and ERROR 53 < AUTH 76, PONG 28 <
KEEPALIVE 36; a SEND from an unknown binding or with a wrong token gets an untagged ERROR,
37 < SEND 44; a KEEPALIVE with a wrong token or tag gets nothing), so a relay cannot be used
to amplify spoofed UDP traffic. The one larger answer (a tagged ERROR, 53, to a SEND of 44)
goes only to a bound node at its own binding, after its token matched. The authentication handshake is `shoal.relay.engine`'s docstring.

ERROR codes: 1 unknown destination (key = dst), 2 not a member (dst: the two nodes share no
network), 3 unauthenticated (key = zeros: authenticate again, e.g. after the relay restarted
or the node's address changed), 4 authentication refused (key = node key), 5 relay full.

Limits: a frame is at most RELAY_MAX_FRAME (65535) bytes, so a SEND payload is at most
MAX_PAYLOAD = 65535 - 44 = 65491 bytes and the RECV carrying it is 8 bytes shorter than the
SEND (a WireGuard message is at most MTU + 32 bytes, far below). A fixed-size kind with any
other length, an unknown magic/version/kind or an oversized frame is a `FrameError`; `parse`
raises nothing else, whatever the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Union

from shoal.constants import (
    RELAY_HEADER_SIZE,
    RELAY_MAGIC,
    RELAY_MAX_FRAME,
    RELAY_NONCE_SIZE,
    RELAY_PROOF_SIZE,
    RELAY_TAG_SIZE,
    RELAY_TOKEN_SIZE,
    RELAY_VERSION,
)

__all__ = [
    "FrameError", "Hello", "Challenge", "Auth", "AuthOk", "Send", "Recv", "Keepalive", "Pong",
    "Error", "Frame", "parse", "looks_like_relay", "KIND_HELLO", "KIND_CHALLENGE", "KIND_AUTH",
    "KIND_AUTH_OK", "KIND_SEND", "KIND_RECV", "KIND_KEEPALIVE", "KIND_PONG", "KIND_ERROR",
    "ERR_UNKNOWN_DESTINATION", "ERR_NOT_MEMBER", "ERR_UNAUTHENTICATED", "ERR_AUTH_REFUSED",
    "ERR_FULL", "TAG_SIZE", "SEND_OVERHEAD", "RECV_HEADER", "SEND_HEADER", "RELAY_MAX_FRAME", "encode_send", "encode_recv", "RECV_OVERHEAD", "MAX_PAYLOAD", "KEY_SIZE",
]

KEY_SIZE = 32
TAG_SIZE = RELAY_TAG_SIZE
KIND_HELLO = 1
KIND_CHALLENGE = 2
KIND_AUTH = 3
KIND_AUTH_OK = 4
KIND_SEND = 5
KIND_RECV = 6
KIND_KEEPALIVE = 7
KIND_PONG = 8
KIND_ERROR = 9

ERR_UNKNOWN_DESTINATION = 1
ERR_NOT_MEMBER = 2
ERR_UNAUTHENTICATED = 3
ERR_AUTH_REFUSED = 4
ERR_FULL = 5
_ERROR_CODES = frozenset({ERR_UNKNOWN_DESTINATION, ERR_NOT_MEMBER, ERR_UNAUTHENTICATED, ERR_AUTH_REFUSED, ERR_FULL})

SEND_OVERHEAD = RELAY_HEADER_SIZE + RELAY_TOKEN_SIZE + KEY_SIZE  # 44
RECV_OVERHEAD = RELAY_HEADER_SIZE + KEY_SIZE  # 36
MAX_PAYLOAD = RELAY_MAX_FRAME - SEND_OVERHEAD  # 65491

_HDR = {kind: RELAY_MAGIC + bytes((RELAY_VERSION, kind)) for kind in range(1, 10)}
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
RECV_HEADER = _HDR[KIND_RECV]
SEND_HEADER = _HDR[KIND_SEND]


class FrameError(Exception):
    """The bytes are not a valid relay frame (the peer misbehaved); drop and count."""


@dataclass(frozen=True, slots=True)
class Hello:
    node_key: bytes

    def encode(self) -> bytes:
        _check(self.node_key, KEY_SIZE, "node_key")
        return _HDR[KIND_HELLO] + self.node_key


@dataclass(frozen=True, slots=True)
class Challenge:
    nonce: bytes

    def encode(self) -> bytes:
        _check(self.nonce, RELAY_NONCE_SIZE, "nonce")
        return _HDR[KIND_CHALLENGE] + self.nonce


@dataclass(frozen=True, slots=True)
class Auth:
    node_key: bytes
    nonce: bytes
    proof: bytes

    def encode(self) -> bytes:
        _check(self.node_key, KEY_SIZE, "node_key")
        _check(self.nonce, RELAY_NONCE_SIZE, "nonce")
        _check(self.proof, RELAY_PROOF_SIZE, "proof")
        return _HDR[KIND_AUTH] + self.node_key + self.nonce + self.proof


@dataclass(frozen=True, slots=True)
class AuthOk:
    token: bytes
    timeout: int  # seconds the binding lives without a frame from the node
    proof: bytes

    def encode(self) -> bytes:
        _check(self.token, RELAY_TOKEN_SIZE, "token")
        _check(self.proof, RELAY_PROOF_SIZE, "proof")
        if not 0 <= self.timeout <= 0xFFFF:
            raise ValueError("timeout must fit in 16 bits")
        return _HDR[KIND_AUTH_OK] + self.token + _U16.pack(self.timeout) + self.proof


@dataclass(frozen=True, slots=True)
class Send:
    token: bytes
    dst_key: bytes
    payload: bytes

    def encode(self) -> bytes:
        return encode_send(self.token, self.dst_key, self.payload)


@dataclass(frozen=True, slots=True)
class Recv:
    src_key: bytes
    payload: bytes

    def encode(self) -> bytes:
        return encode_recv(self.src_key, self.payload)


@dataclass(frozen=True, slots=True)
class Keepalive:
    token: bytes
    seq: int
    tag: bytes

    def signed(self) -> bytes:
        """The bytes the tag covers (the frame without its tag)."""
        _check(self.token, RELAY_TOKEN_SIZE, "token")
        return _HDR[KIND_KEEPALIVE] + self.token + _u64(self.seq)

    def encode(self) -> bytes:
        _check(self.tag, TAG_SIZE, "tag")
        return self.signed() + self.tag


@dataclass(frozen=True, slots=True)
class Pong:
    seq: int
    tag: bytes

    def signed(self) -> bytes:
        return _HDR[KIND_PONG] + _u64(self.seq)

    def encode(self) -> bytes:
        _check(self.tag, TAG_SIZE, "tag")
        return self.signed() + self.tag


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    key: bytes
    tag: bytes | None = None  # None: the relay could not tag it (a hint only)

    def signed(self) -> bytes:
        if self.code not in _ERROR_CODES:
            raise ValueError(f"unknown relay error code {self.code}")
        _check(self.key, KEY_SIZE, "key")
        return _HDR[KIND_ERROR] + bytes((self.code,)) + self.key

    def encode(self) -> bytes:
        if self.tag is None:
            return self.signed()
        _check(self.tag, TAG_SIZE, "tag")
        return self.signed() + self.tag


Frame = Union[Hello, Challenge, Auth, AuthOk, Send, Recv, Keepalive, Pong, Error]


def _u64(value: int) -> bytes:
    if not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError("seq must fit in 64 bits")
    return _U64.pack(value)


def _check(value: bytes, size: int, what: str) -> None:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise ValueError(f"{what} must be {size} bytes")


def encode_send(token: bytes, dst_key: bytes, payload: bytes) -> bytes:
    """SEND frame (the hot path: no dataclass)."""
    _check(token, RELAY_TOKEN_SIZE, "token")
    _check(dst_key, KEY_SIZE, "dst_key")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"".join((_HDR[KIND_SEND], token, dst_key, payload))


def encode_recv(src_key: bytes, payload: bytes) -> bytes:
    """RECV frame (the hot path: no dataclass)."""
    _check(src_key, KEY_SIZE, "src_key")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"".join((_HDR[KIND_RECV], src_key, payload))


def looks_like_relay(data: bytes) -> bool:
    """Cheap demultiplexing test for a shared socket: magic and version match."""
    return len(data) >= RELAY_HEADER_SIZE and data[0:2] == RELAY_MAGIC and data[2] == RELAY_VERSION


_FIXED = {
    KIND_HELLO: RELAY_HEADER_SIZE + KEY_SIZE,
    KIND_CHALLENGE: RELAY_HEADER_SIZE + RELAY_NONCE_SIZE,
    KIND_AUTH: RELAY_HEADER_SIZE + KEY_SIZE + RELAY_NONCE_SIZE + RELAY_PROOF_SIZE,
    KIND_AUTH_OK: RELAY_HEADER_SIZE + RELAY_TOKEN_SIZE + 2 + RELAY_PROOF_SIZE,
    KIND_KEEPALIVE: RELAY_HEADER_SIZE + RELAY_TOKEN_SIZE + 8 + TAG_SIZE,
    KIND_PONG: RELAY_HEADER_SIZE + 8 + TAG_SIZE,
}
_ERROR_BARE = RELAY_HEADER_SIZE + 1 + KEY_SIZE  # 37
_ERROR_TAGGED = _ERROR_BARE + TAG_SIZE  # 53
_MIN = {KIND_SEND: SEND_OVERHEAD, KIND_RECV: RECV_OVERHEAD}


def parse(data: bytes) -> Frame:
    """Parse one frame; FrameError (and nothing else) for anything that is not a valid frame."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError("not bytes")
    data = bytes(data)
    n = len(data)
    if n < RELAY_HEADER_SIZE:
        raise FrameError(f"frame of {n} bytes is shorter than the header")
    if n > RELAY_MAX_FRAME:
        raise FrameError(f"frame of {n} bytes exceeds {RELAY_MAX_FRAME}")
    if data[0:2] != RELAY_MAGIC:
        raise FrameError("bad magic")
    if data[2] != RELAY_VERSION:
        raise FrameError(f"unsupported version {data[2]}")
    kind = data[3]
    fixed = _FIXED.get(kind)
    if fixed is not None:
        if n != fixed:
            raise FrameError(f"kind {kind} frame must be {fixed} bytes, got {n}")
    elif kind in _MIN:
        if n < _MIN[kind]:
            raise FrameError(f"kind {kind} frame of {n} bytes is too short")
    elif kind == KIND_ERROR:
        if n not in (_ERROR_BARE, _ERROR_TAGGED):
            raise FrameError(f"error frame must be {_ERROR_BARE} or {_ERROR_TAGGED} bytes, got {n}")
    else:
        raise FrameError(f"unknown kind {kind}")
    b = data[RELAY_HEADER_SIZE:]
    if kind == KIND_SEND:
        t = RELAY_TOKEN_SIZE
        return Send(b[:t], b[t:t + KEY_SIZE], b[t + KEY_SIZE:])
    if kind == KIND_RECV:
        return Recv(b[:KEY_SIZE], b[KEY_SIZE:])
    if kind == KIND_HELLO:
        return Hello(b)
    if kind == KIND_CHALLENGE:
        return Challenge(b)
    if kind == KIND_AUTH:
        k, nn = KEY_SIZE, RELAY_NONCE_SIZE
        return Auth(b[:k], b[k:k + nn], b[k + nn:])
    if kind == KIND_AUTH_OK:
        t = RELAY_TOKEN_SIZE
        return AuthOk(b[:t], _U16.unpack_from(b, t)[0], b[t + 2:])
    if kind == KIND_KEEPALIVE:
        t = RELAY_TOKEN_SIZE
        return Keepalive(b[:t], _U64.unpack_from(b, t)[0], b[t + 8:])
    if kind == KIND_PONG:
        return Pong(_U64.unpack_from(b, 0)[0], b[8:])
    code = b[0]
    if code not in _ERROR_CODES:
        raise FrameError(f"unknown error code {code}")
    return Error(code, b[1:1 + KEY_SIZE], b[1 + KEY_SIZE:] or None)
