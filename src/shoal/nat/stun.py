"""STUN messages (RFC 5389) with the RFC 5780 behaviour-discovery attributes: a sans-IO codec.

Owns: turning STUN bytes into a `Message` and back. No sockets, no clock. Every constant is
in `shoal.constants` (STUN_*). `decode` raises only `StunError` on bad input, of
whatever shape (`tests/nat/test_stun.py` fuzzes it); `encode` raises `ValueError` when the
caller misuses it.

Wire format (all integers big-endian, network order):

    header (20 bytes)
      0      2   message type: 00 | M11..M7 | C1 | M6..M4 | C0 | M3..M0
                 (top two bits zero; 12-bit method M, 2-bit class C interleaved)
                 class C: 0b00 request, 0b01 indication, 0b10 success response, 0b11 error
                 method Binding = 0x001: request 0x0001, success 0x0101, error 0x0111
      2      2   message length: bytes of attributes after the header (a multiple of 4)
      4      4   magic cookie 0x2112A442 (RFC 3489 "classic STUN" messages lack it: refused)
      8     12   transaction id, chosen at random by the client, echoed by the server

    attributes, one after another (TLV)
      0      2   type   0x0000-0x7FFF comprehension-required, 0x8000-0xFFFF optional
      2      2   length of the value (without padding)
      4      n   value, then zero to three padding bytes up to a multiple of 4

Attribute values understood here:

    MAPPED-ADDRESS       0x0001  0x00 | family (0x01 IPv4, 0x02 IPv6) | port (2) | address (4/16)
    XOR-MAPPED-ADDRESS   0x0020  as MAPPED-ADDRESS, but port XOR (cookie >> 16) and the
                                 address XOR cookie (IPv4) or cookie || transaction id (IPv6)
    OTHER-ADDRESS        0x802C  RFC 5780: the server's alternate address and port (address format)
    RESPONSE-ORIGIN      0x802B  RFC 5780: the address and port the response was sent from
    CHANGE-REQUEST       0x0003  RFC 5780: 4 bytes, flags 0x04 "change IP", 0x02 "change port":
                                 answer from the other address and/or the other port
    RESPONSE-PORT        0x0027  RFC 5780: port (2) | 2 padding bytes: send the response to the
                                 request's source address but this port
    ERROR-CODE           0x0009  2 zero bytes | 5 zero bits + class (3 bits, the hundreds) |
                                 number (0-99) | UTF-8 reason phrase (at most 763 bytes)
    UNKNOWN-ATTRIBUTES   0x000A  a list of 16-bit attribute types (in a 420 response)
    SOFTWARE             0x8022  UTF-8 text, at most 763 bytes (fewer than 128 characters)
    FINGERPRINT          0x8028  CRC-32 of the message up to this attribute, XOR 0x5354554E;
                                 the header's length already counts this attribute; it must be
                                 the last attribute. A wrong fingerprint makes the message invalid.

Other attributes are kept raw (`Message.attributes`, in order). A request carrying a
comprehension-required attribute outside `KNOWN_REQUIRED` is answered with error 420 and an
UNKNOWN-ATTRIBUTES list (`unknown_required`); optional ones are ignored. USERNAME,
MESSAGE-INTEGRITY, REALM, NONCE and PADDING are recognised and ignored: Shoal's STUN is
unauthenticated (it only tells a client its own address).

Hard limits checked while decoding: at most STUN_MAX_MESSAGE_SIZE bytes, at most
MAX_ATTRIBUTES attributes, header length equal to the datagram's remainder and a multiple of 4.
"""

from __future__ import annotations

import binascii
import dataclasses
import ipaddress
import struct

from shoal.endpoint import Endpoint
from shoal.constants import (
    STUN_ATTR_CHANGE_REQUEST,
    STUN_ATTR_ERROR_CODE,
    STUN_ATTR_FINGERPRINT,
    STUN_ATTR_MAPPED_ADDRESS,
    STUN_ATTR_MESSAGE_INTEGRITY,
    STUN_ATTR_NONCE,
    STUN_ATTR_OTHER_ADDRESS,
    STUN_ATTR_PADDING,
    STUN_ATTR_REALM,
    STUN_ATTR_RESPONSE_ORIGIN,
    STUN_ATTR_RESPONSE_PORT,
    STUN_ATTR_SOFTWARE,
    STUN_ATTR_UNKNOWN_ATTRIBUTES,
    STUN_ATTR_USERNAME,
    STUN_ATTR_XOR_MAPPED_ADDRESS,
    STUN_CHANGE_IP,
    STUN_CHANGE_PORT,
    STUN_CLASS_ERROR,
    STUN_CLASS_INDICATION,
    STUN_CLASS_REQUEST,
    STUN_CLASS_SUCCESS,
    STUN_FINGERPRINT_XOR,
    STUN_HEADER_SIZE,
    STUN_MAGIC_COOKIE,
    STUN_MAX_MESSAGE_SIZE,
    STUN_METHOD_BINDING,
    STUN_TRANSACTION_ID_SIZE,
)

__all__ = [
    "Endpoint",
    "StunError",
    "Message",
    "decode",
    "encode",
    "is_stun",
    "peek_transaction",
    "encode_address",
    "decode_address",
    "encode_xor_address",
    "decode_xor_address",
    "encode_change_request",
    "encode_error_code",
    "KNOWN_REQUIRED",
    "MAX_ATTRIBUTES",
    "binding_request",
]

MAX_ATTRIBUTES = 32
MAX_TEXT_BYTES = 763
_FAMILY_V4, _FAMILY_V6 = 0x01, 0x02
_COOKIE_BYTES = struct.pack("!I", STUN_MAGIC_COOKIE)
_CLASSES = (STUN_CLASS_REQUEST, STUN_CLASS_INDICATION, STUN_CLASS_SUCCESS, STUN_CLASS_ERROR)

# Comprehension-required attributes a Shoal STUN server processes (or may safely ignore).
KNOWN_REQUIRED: frozenset[int] = frozenset({
    STUN_ATTR_MAPPED_ADDRESS, STUN_ATTR_XOR_MAPPED_ADDRESS, STUN_ATTR_CHANGE_REQUEST,
    STUN_ATTR_ERROR_CODE, STUN_ATTR_UNKNOWN_ATTRIBUTES, STUN_ATTR_USERNAME,
    STUN_ATTR_MESSAGE_INTEGRITY, STUN_ATTR_REALM, STUN_ATTR_NONCE, STUN_ATTR_PADDING,
    STUN_ATTR_RESPONSE_PORT,
})


class StunError(ValueError):
    """The bytes are not a valid STUN message (the peer's fault; never the caller's)."""


def _type_of(method: int, cls: int) -> int:
    return ((method & 0xF80) << 2) | ((method & 0x070) << 1) | (method & 0x00F) | ((cls & 2) << 7) | ((cls & 1) << 4)


def _split_type(t: int) -> tuple[int, int]:
    method = ((t & 0x3E00) >> 2) | ((t & 0x00E0) >> 1) | (t & 0x000F)
    cls = ((t & 0x0100) >> 7) | ((t & 0x0010) >> 4)
    return method, cls


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """One decoded STUN message. `attributes` are (type, raw value) in wire order."""

    method: int
    cls: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()
    fingerprint: bool = False  # a (valid) FINGERPRINT was present

    def get(self, attr_type: int) -> bytes | None:
        """The first value of `attr_type` (RFC 5389: later duplicates are ignored)."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    # typed views; each raises StunError if the attribute is present but malformed
    def xor_mapped_address(self) -> Endpoint | None:
        v = self.get(STUN_ATTR_XOR_MAPPED_ADDRESS)
        return None if v is None else decode_xor_address(v, self.transaction_id)

    def mapped_address(self) -> Endpoint | None:
        v = self.get(STUN_ATTR_MAPPED_ADDRESS)
        return None if v is None else decode_address(v)

    def reflexive_address(self) -> Endpoint | None:
        """XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (old servers)."""
        a = self.xor_mapped_address()
        return a if a is not None else self.mapped_address()

    def other_address(self) -> Endpoint | None:
        v = self.get(STUN_ATTR_OTHER_ADDRESS)
        return None if v is None else decode_address(v)

    def response_origin(self) -> Endpoint | None:
        v = self.get(STUN_ATTR_RESPONSE_ORIGIN)
        return None if v is None else decode_address(v)

    def change_request(self) -> tuple[bool, bool]:
        """(change IP, change port); (False, False) when absent."""
        v = self.get(STUN_ATTR_CHANGE_REQUEST)
        if v is None:
            return False, False
        if len(v) != 4:
            raise StunError(f"CHANGE-REQUEST of {len(v)} bytes")
        flags = struct.unpack("!I", v)[0]
        return bool(flags & STUN_CHANGE_IP), bool(flags & STUN_CHANGE_PORT)

    def response_port(self) -> int | None:
        v = self.get(STUN_ATTR_RESPONSE_PORT)
        if v is None:
            return None
        if len(v) != 4 or v[:2] == b"\x00\x00":
            raise StunError(f"RESPONSE-PORT {v.hex()}")
        return struct.unpack_from("!H", v)[0]

    def error_code(self) -> tuple[int, str] | None:
        v = self.get(STUN_ATTR_ERROR_CODE)
        if v is None:
            return None
        if not 4 <= len(v) <= 4 + MAX_TEXT_BYTES:
            raise StunError(f"ERROR-CODE of {len(v)} bytes")
        klass, number = v[2] & 0x07, v[3]
        if not 3 <= klass <= 6 or number > 99:
            raise StunError(f"ERROR-CODE class {klass} number {number}")
        return klass * 100 + number, v[4:].decode("utf-8", "replace")

    def unknown_attributes(self) -> list[int]:
        v = self.get(STUN_ATTR_UNKNOWN_ATTRIBUTES)
        if v is None:
            return []
        if len(v) % 2:
            raise StunError("UNKNOWN-ATTRIBUTES of odd length")
        return [struct.unpack_from("!H", v, i)[0] for i in range(0, len(v), 2)]

    def software(self) -> str | None:
        v = self.get(STUN_ATTR_SOFTWARE)
        return None if v is None else v.decode("utf-8", "replace")

    def unknown_required(self) -> list[int]:
        """Comprehension-required attribute types outside KNOWN_REQUIRED, each once."""
        out: list[int] = []
        for t, _ in self.attributes:
            if t < 0x8000 and t not in KNOWN_REQUIRED and t not in out:
                out.append(t)
        return out


# ------------------------------------------------------------------ attribute values


def encode_address(addr: Endpoint) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port!r}")
    family = _FAMILY_V4 if ip.version == 4 else _FAMILY_V6
    return struct.pack("!BBH", 0, family, port) + ip.packed


def decode_address(value: bytes) -> Endpoint:
    if len(value) < 4:
        raise StunError(f"address attribute of {len(value)} bytes")
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    raw = value[4:]
    if family == _FAMILY_V4 and len(raw) == 4:
        return str(ipaddress.IPv4Address(raw)), port
    if family == _FAMILY_V6 and len(raw) == 16:
        return str(ipaddress.IPv6Address(raw)), port
    raise StunError(f"address family {family} with {len(raw)} address bytes")


def _xor_mask(transaction_id: bytes, n: int) -> bytes:
    return (_COOKIE_BYTES + transaction_id)[:n]


def encode_xor_address(addr: Endpoint, transaction_id: bytes) -> bytes:
    plain = encode_address(addr)
    port = struct.unpack_from("!H", plain, 2)[0] ^ (STUN_MAGIC_COOKIE >> 16)
    raw = plain[4:]
    masked = bytes(a ^ b for a, b in zip(raw, _xor_mask(transaction_id, len(raw))))
    return plain[:2] + struct.pack("!H", port) + masked


def decode_xor_address(value: bytes, transaction_id: bytes) -> Endpoint:
    if len(value) < 4:
        raise StunError(f"address attribute of {len(value)} bytes")
    port = struct.unpack_from("!H", value, 2)[0] ^ (STUN_MAGIC_COOKIE >> 16)
    raw = value[4:]
    plain = bytes(a ^ b for a, b in zip(raw, _xor_mask(transaction_id, len(raw))))
    return decode_address(value[:2] + struct.pack("!H", port) + plain)


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    return struct.pack("!I", (STUN_CHANGE_IP if change_ip else 0) | (STUN_CHANGE_PORT if change_port else 0))


def encode_error_code(code: int, reason: str) -> bytes:
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code {code} outside 300..699")
    text = reason.encode()[:MAX_TEXT_BYTES]
    return struct.pack("!HBB", 0, code // 100, code % 100) + text


# ------------------------------------------------------------------ messages


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 5389 section 8): top bits zero, cookie, length fits."""
    return (
        len(data) >= STUN_HEADER_SIZE
        and data[0] & 0xC0 == 0
        and data[4:8] == _COOKIE_BYTES
        and struct.unpack_from("!H", data, 2)[0] == len(data) - STUN_HEADER_SIZE
    )


def peek_transaction(data: bytes) -> tuple[int, int, bytes] | None:
    """(method, class, transaction id) of something that looks like STUN, or None."""
    if not is_stun(data):
        return None
    method, cls = _split_type(struct.unpack_from("!H", data, 0)[0])
    return method, cls, bytes(data[8:STUN_HEADER_SIZE])


def decode(data: bytes) -> Message:
    """Parse one STUN message; StunError on anything malformed (and only StunError)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StunError(f"not bytes: {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if n < STUN_HEADER_SIZE:
        raise StunError(f"{n} bytes is shorter than a STUN header")
    if n > STUN_MAX_MESSAGE_SIZE:
        raise StunError(f"{n} bytes is more than {STUN_MAX_MESSAGE_SIZE}")
    mtype, length = struct.unpack_from("!HH", data, 0)
    if mtype & 0xC000:
        raise StunError("the two top bits of the type are not zero")
    if data[4:8] != _COOKIE_BYTES:
        raise StunError("no magic cookie (classic RFC 3489 STUN is not supported)")
    if length != n - STUN_HEADER_SIZE or length % 4:
        raise StunError(f"length field {length} does not match {n - STUN_HEADER_SIZE} bytes of attributes")
    method, cls = _split_type(mtype)
    txid = data[8:STUN_HEADER_SIZE]
    attrs: list[tuple[int, bytes]] = []
    fingerprint = False
    pos = STUN_HEADER_SIZE
    while pos < n:
        if fingerprint:
            raise StunError("an attribute after FINGERPRINT")
        if n - pos < 4:
            raise StunError("truncated attribute header")
        atype, alen = struct.unpack_from("!HH", data, pos)
        start, end = pos + 4, pos + 4 + alen
        if end > n:
            raise StunError(f"attribute 0x{atype:04x} of {alen} bytes overruns the message")
        if len(attrs) >= MAX_ATTRIBUTES:
            raise StunError(f"more than {MAX_ATTRIBUTES} attributes")
        value = data[start:end]
        if atype == STUN_ATTR_FINGERPRINT:
            if alen != 4:
                raise StunError(f"FINGERPRINT of {alen} bytes")
            want = (binascii.crc32(data[:pos]) ^ STUN_FINGERPRINT_XOR) & 0xFFFFFFFF
            if struct.unpack("!I", value)[0] != want:
                raise StunError("wrong FINGERPRINT")
            fingerprint = True
        else:
            attrs.append((atype, value))
        pos = end + (-alen % 4)
    if pos != n:
        raise StunError("attribute padding overruns the message")
    return Message(method, cls, txid, tuple(attrs), fingerprint)


def encode(msg: Message, *, fingerprint: bool = True) -> bytes:
    """The wire bytes of `msg` (its `fingerprint` flag is ignored: `fingerprint` decides)."""
    if not 0 <= msg.method <= 0xFFF or msg.cls not in _CLASSES:
        raise ValueError(f"bad method {msg.method!r} or class {msg.cls!r}")
    if len(msg.transaction_id) != STUN_TRANSACTION_ID_SIZE:
        raise ValueError("a transaction id has 12 bytes")
    body = bytearray()
    for atype, value in msg.attributes:
        if not 0 <= atype <= 0xFFFF or len(value) > 0xFFFF or atype == STUN_ATTR_FINGERPRINT:
            raise ValueError(f"bad attribute 0x{atype:x} ({len(value)} bytes)")
        body += struct.pack("!HH", atype, len(value)) + value + bytes(-len(value) % 4)
    extra = 8 if fingerprint else 0
    head = struct.pack("!HH", _type_of(msg.method, msg.cls), len(body) + extra) + _COOKIE_BYTES + msg.transaction_id
    out = head + bytes(body)
    if fingerprint:
        crc = (binascii.crc32(out) ^ STUN_FINGERPRINT_XOR) & 0xFFFFFFFF
        out += struct.pack("!HHI", STUN_ATTR_FINGERPRINT, 4, crc)
    if len(out) > STUN_MAX_MESSAGE_SIZE:
        raise ValueError(f"message of {len(out)} bytes exceeds {STUN_MAX_MESSAGE_SIZE}")
    return out


def binding_request(transaction_id: bytes, *, change_ip: bool = False, change_port: bool = False,
                    software: str | None = None, fingerprint: bool = True) -> bytes:
    """A Binding request, with CHANGE-REQUEST when either flag is set."""
    attrs: list[tuple[int, bytes]] = []
    if software:
        attrs.append((STUN_ATTR_SOFTWARE, software.encode()[:MAX_TEXT_BYTES]))
    if change_ip or change_port:
        attrs.append((STUN_ATTR_CHANGE_REQUEST, encode_change_request(change_ip, change_port)))
    return encode(Message(STUN_METHOD_BINDING, STUN_CLASS_REQUEST, transaction_id, tuple(attrs)), fingerprint=fingerprint)
