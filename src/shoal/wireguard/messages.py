"""Wire formats of WireGuard's four message types (whitepaper 5.4.2-5.4.6): parse and build.

Every message starts with a little-endian u32 whose low byte is the type and whose upper
three bytes are reserved and must be zero (wireguard-go reads the whole u32, so a non-zero
reserved byte makes the message unknown). All integers are little-endian. Sizes are strict:
a handshake message of the wrong length is dropped.

Handshake initiation, type 1, 148 bytes:
    off  size  field
      0     1  type = 1
      1     3  reserved = 0
      4     4  sender index (u32, chosen by the initiator)
      8    32  unencrypted ephemeral (initiator's ephemeral public key)
     40    48  encrypted static  = AEAD(k, 0, initiator static public key, H) (32 + 16 tag)
     88    28  encrypted timestamp = AEAD(k, 0, TAI64N, H)               (12 + 16 tag)
    116    16  mac1 = MAC(HASH("mac1----" || responder static), bytes 0..116)
    132    16  mac2 = MAC(cookie, bytes 0..132) or zeros

Handshake response, type 2, 92 bytes:
      0     1  type = 2
      1     3  reserved = 0
      4     4  sender index (u32, chosen by the responder)
      8     4  receiver index (the initiator's sender index)
     12    32  unencrypted ephemeral (responder's ephemeral public key)
     44    16  encrypted nothing = AEAD(k, 0, empty, H) (tag only)
     60    16  mac1 = MAC(HASH("mac1----" || initiator static), bytes 0..60)
     76    16  mac2 = MAC(cookie, bytes 0..76) or zeros

Cookie reply, type 3, 64 bytes:
      0     1  type = 3
      1     3  reserved = 0
      4     4  receiver index (the sender index of the message being answered)
      8    24  nonce (random)
     32    32  encrypted cookie = XAEAD(HASH("cookie--" || responder static), nonce,
                                        cookie (16), mac1 of the answered message) (16 + 16 tag)

Transport data, type 4, 32 bytes or more:
      0     1  type = 4
      1     3  reserved = 0
      4     4  receiver index (the peer's index for this session)
      8     8  counter (u64, the AEAD nonce)
     16   >=16 encrypted packet = AEAD(Tsend, counter, padded packet, empty) (tag included)

In both handshake messages mac1 starts 32 bytes and mac2 16 bytes before the end.

Parsers return None for anything malformed and never raise on network input (`MessageError`
exists for callers that prefer an exception and is raised only by `*_or_raise` helpers).
Builders raise ValueError/TypeError on caller mistakes (wrong field sizes, index out of range).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shoal.constants import (
    COOKIE_NONCE_LEN,
    COOKIE_LEN,
    KEY_LEN,
    MAC_LEN,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    TAG_LEN,
    TIMESTAMP_LEN,
)

__all__ = [
    "MessageError",
    "Initiation",
    "Response",
    "CookieReply",
    "Transport",
    "message_type",
    "parse_initiation",
    "parse_response",
    "parse_cookie_reply",
    "parse_transport",
    "build_transport_header",
    "parse",
    "parse_or_raise",
    "INITIATION_MAC1_OFFSET",
    "INITIATION_MAC2_OFFSET",
    "RESPONSE_MAC1_OFFSET",
    "RESPONSE_MAC2_OFFSET",
]

ENCRYPTED_STATIC_LEN = KEY_LEN + TAG_LEN  # 48
ENCRYPTED_TIMESTAMP_LEN = TIMESTAMP_LEN + TAG_LEN  # 28
ENCRYPTED_NOTHING_LEN = TAG_LEN  # 16
ENCRYPTED_COOKIE_LEN = COOKIE_LEN + TAG_LEN  # 32

INITIATION_MAC1_OFFSET = MESSAGE_INITIATION_SIZE - 2 * MAC_LEN  # 116
INITIATION_MAC2_OFFSET = MESSAGE_INITIATION_SIZE - MAC_LEN  # 132
RESPONSE_MAC1_OFFSET = MESSAGE_RESPONSE_SIZE - 2 * MAC_LEN  # 60
RESPONSE_MAC2_OFFSET = MESSAGE_RESPONSE_SIZE - MAC_LEN  # 76

_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_U32 = struct.Struct("<I")
assert _INITIATION.size == MESSAGE_INITIATION_SIZE
assert _RESPONSE.size == MESSAGE_RESPONSE_SIZE
assert _COOKIE_REPLY.size == MESSAGE_COOKIE_REPLY_SIZE
assert _TRANSPORT_HEADER.size == MESSAGE_TRANSPORT_HEADER_SIZE

_BYTES_LIKE = (bytes, bytearray, memoryview)


class MessageError(ValueError):
    """A message from the network is malformed (only raised by `parse_or_raise`)."""


def _check(name: str, value: bytes, size: int) -> bytes:
    if not isinstance(value, _BYTES_LIKE):
        raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return bytes(value)


def _check_index(name: str, value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} must be a u32, got {value!r}")
    return value


def message_type(data: bytes | bytearray | memoryview) -> int | None:
    """The message type (1-4) if the 4-byte header is well formed, else None."""
    if not isinstance(data, _BYTES_LIKE) or len(data) < 4:
        return None
    kind = _U32.unpack_from(data)[0]
    return kind if MESSAGE_INITIATION <= kind <= MESSAGE_TRANSPORT else None


@dataclass(frozen=True, slots=True)
class Initiation:
    sender: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def __post_init__(self) -> None:
        _check_index("sender", self.sender)
        _check("ephemeral", self.ephemeral, KEY_LEN)
        _check("encrypted_static", self.encrypted_static, ENCRYPTED_STATIC_LEN)
        _check("encrypted_timestamp", self.encrypted_timestamp, ENCRYPTED_TIMESTAMP_LEN)
        _check("mac1", self.mac1, MAC_LEN)
        _check("mac2", self.mac2, MAC_LEN)

    def to_bytes(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    sender: int
    receiver: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_LEN)
    mac2: bytes = bytes(MAC_LEN)

    def __post_init__(self) -> None:
        _check_index("sender", self.sender)
        _check_index("receiver", self.receiver)
        _check("ephemeral", self.ephemeral, KEY_LEN)
        _check("encrypted_nothing", self.encrypted_nothing, ENCRYPTED_NOTHING_LEN)
        _check("mac1", self.mac1, MAC_LEN)
        _check("mac2", self.mac2, MAC_LEN)

    def to_bytes(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    receiver: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _check_index("receiver", self.receiver)
        _check("nonce", self.nonce, COOKIE_NONCE_LEN)
        _check("encrypted_cookie", self.encrypted_cookie, ENCRYPTED_COOKIE_LEN)

    def to_bytes(self) -> bytes:
        return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.encrypted_cookie)


@dataclass(frozen=True, slots=True)
class Transport:
    receiver: int
    counter: int
    encrypted: bytes  # ciphertext || tag, at least 16 bytes

    def to_bytes(self) -> bytes:
        return build_transport_header(self.receiver, self.counter) + self.encrypted


def parse_initiation(data: bytes | bytearray | memoryview) -> Initiation | None:
    if not isinstance(data, _BYTES_LIKE) or len(data) != MESSAGE_INITIATION_SIZE:
        return None
    kind, sender, eph, static, ts, mac1, mac2 = _INITIATION.unpack(data)
    if kind != MESSAGE_INITIATION:
        return None
    return Initiation(sender, eph, static, ts, mac1, mac2)


def parse_response(data: bytes | bytearray | memoryview) -> Response | None:
    if not isinstance(data, _BYTES_LIKE) or len(data) != MESSAGE_RESPONSE_SIZE:
        return None
    kind, sender, receiver, eph, nothing, mac1, mac2 = _RESPONSE.unpack(data)
    if kind != MESSAGE_RESPONSE:
        return None
    return Response(sender, receiver, eph, nothing, mac1, mac2)


def parse_cookie_reply(data: bytes | bytearray | memoryview) -> CookieReply | None:
    if not isinstance(data, _BYTES_LIKE) or len(data) != MESSAGE_COOKIE_REPLY_SIZE:
        return None
    kind, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
    if kind != MESSAGE_COOKIE_REPLY:
        return None
    return CookieReply(receiver, nonce, cookie)


def parse_transport(data: bytes | bytearray | memoryview) -> Transport | None:
    """Split a transport message; the payload is a copy (bytes) of everything after the header."""
    if not isinstance(data, _BYTES_LIKE) or len(data) < MESSAGE_TRANSPORT_MIN_SIZE:
        return None
    kind, receiver, counter = _TRANSPORT_HEADER.unpack_from(data)
    if kind != MESSAGE_TRANSPORT:
        return None
    return Transport(receiver, counter, bytes(data[MESSAGE_TRANSPORT_HEADER_SIZE:]))


def build_transport_header(receiver: int, counter: int) -> bytes:
    """The 16-byte transport header; `receiver` is u32, `counter` u64 (struct.error otherwise)."""
    return _TRANSPORT_HEADER.pack(MESSAGE_TRANSPORT, receiver, counter)


_PARSERS = {
    MESSAGE_INITIATION: parse_initiation,
    MESSAGE_RESPONSE: parse_response,
    MESSAGE_COOKIE_REPLY: parse_cookie_reply,
    MESSAGE_TRANSPORT: parse_transport,
}


def parse(data: bytes | bytearray | memoryview) -> Initiation | Response | CookieReply | Transport | None:
    """Parse any message by its type; None if unknown or malformed."""
    kind = message_type(data)
    if kind is None:
        return None
    return _PARSERS[kind](data)


def parse_or_raise(data: bytes | bytearray | memoryview) -> Initiation | Response | CookieReply | Transport:
    msg = parse(data)
    if msg is None:
        raise MessageError("malformed or unknown WireGuard message")
    return msg
