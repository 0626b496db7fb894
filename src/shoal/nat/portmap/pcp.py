"""PCP (RFC 6887) messages, MAP and ANNOUNCE opcodes: a sans-IO codec.

Owns: the bytes of PCP requests and the parsing of a PCP server's answers. No sockets, no
clock. `decode_response` raises only `PcpError` on bad input (fuzzed in
`tests/nat/portmap/test_pcp.py`); encoders raise `ValueError` on misuse. Constants are in
`shoal.constants` (PCP_*).

Wire format (big-endian; client -> server UDP port 5351; every message a multiple of 4 bytes
and at most 1100):

    request header (24 bytes)
      0   1   version 2
      1   1   R (top bit) = 0 | opcode (7 bits): 0 ANNOUNCE, 1 MAP
      2   2   reserved 0
      4   4   requested lifetime (seconds; 0 deletes)
      8  16   client IP address (IPv4 as ::ffff:a.b.c.d), must equal the packet's source
    response header (24 bytes)
      0   1   version 2 (a NAT-PMP-only server answers version 0: see shoal.nat.portmap.natpmp)
      1   1   R = 1 | opcode
      2   1   reserved
      3   1   result code
      4   4   lifetime: of the mapping on success, of the error condition otherwise
      8   4   epoch time (seconds since the server's state began)
     12  12   reserved
    MAP opcode body (36 bytes, after either header)
      0  12   mapping nonce (random, chosen by the client; renewals and deletes reuse it)
     12   1   protocol (17 UDP)
     13   3   reserved
     16   2   internal port
     18   2   suggested (request) / assigned (response) external port
     20  16   suggested / assigned external IP address (IPv4-mapped)
    options after the body: code (1) | reserved (1) | length (2) | data, padded to 4 bytes

Options are skipped (their lengths are checked). Result codes: RESULT_NAMES.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from shoal.constants import (
    IPPROTO_UDP,
    PCP_MAX_SIZE,
    PCP_NONCE_LEN,
    PCP_OPCODE_ANNOUNCE,
    PCP_OPCODE_MAP,
    PCP_VERSION,
)

__all__ = ["PcpError", "Response", "RESULT_NAMES", "announce_request", "map_request", "decode_response"]

HEADER_LEN = 24
MAP_LEN = 36
RESULT_NAMES = {
    0: "SUCCESS", 1: "UNSUPP_VERSION", 2: "NOT_AUTHORIZED", 3: "MALFORMED_REQUEST", 4: "UNSUPP_OPCODE",
    5: "UNSUPP_OPTION", 6: "MALFORMED_OPTION", 7: "NETWORK_FAILURE", 8: "NO_RESOURCES",
    9: "UNSUPP_PROTOCOL", 10: "USER_EX_QUOTA", 11: "CANNOT_PROVIDE_EXTERNAL", 12: "ADDRESS_MISMATCH",
    13: "EXCESSIVE_REMOTE_PEERS",
}


class PcpError(ValueError):
    """The bytes are not a valid PCP response (the server's fault, never the caller's)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """One decoded answer. `version` 0 means a NAT-PMP-only server refused PCP."""

    version: int
    opcode: int
    result: int
    lifetime: int
    epoch: int
    nonce: bytes | None = None  # MAP only
    protocol: int | None = None
    internal_port: int | None = None
    external_port: int | None = None
    external_ip: str | None = None

    @property
    def ok(self) -> bool:
        return self.version == PCP_VERSION and self.result == 0

    @property
    def result_name(self) -> str:
        if self.version != PCP_VERSION:
            return f"version {self.version} answer (no PCP)"
        return RESULT_NAMES.get(self.result, f"result {self.result}")


def _mapped(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + a.packed
    return a.packed


def _unmapped(raw: bytes) -> str:
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped is not None else str(a)


def _header(opcode: int, lifetime: int, client_ip: str) -> bytes:
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError(f"bad lifetime {lifetime!r}")
    return struct.pack("!BBHI", PCP_VERSION, opcode, 0, lifetime) + _mapped(client_ip)


def announce_request(client_ip: str) -> bytes:
    return _header(PCP_OPCODE_ANNOUNCE, 0, client_ip)


def map_request(nonce: bytes, client_ip: str, internal_port: int, lifetime: int, *,
                suggested_port: int = 0, suggested_ip: str | None = None, protocol: int = IPPROTO_UDP) -> bytes:
    """A MAP request (lifetime 0 deletes the mapping of this nonce and internal port)."""
    if len(nonce) != PCP_NONCE_LEN:
        raise ValueError(f"a PCP nonce has {PCP_NONCE_LEN} bytes")
    if not 0 < internal_port <= 0xFFFF or not 0 <= suggested_port <= 0xFFFF or not 0 < protocol <= 0xFF:
        raise ValueError(f"bad port or protocol {internal_port!r}, {suggested_port!r}, {protocol!r}")
    ext = _mapped(suggested_ip) if suggested_ip else _mapped("0.0.0.0")
    return (_header(PCP_OPCODE_MAP, lifetime, client_ip) + nonce
            + struct.pack("!B3xHH", protocol, internal_port, suggested_port) + ext)


def decode_response(data: bytes) -> Response:
    """Parse one answer; PcpError on anything malformed (and only PcpError)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PcpError(f"not bytes: {type(data).__name__}")
    data = bytes(data)
    n = len(data)
    if n >= 4 and data[0] == 0:  # a NAT-PMP server: version 0, opcode | 128, result (2)
        result = struct.unpack_from("!H", data, 2)[0]
        return Response(0, data[1] & 0x7F, result, 0, struct.unpack_from("!I", data, 4)[0] if n >= 8 else 0)
    if n < HEADER_LEN or n > PCP_MAX_SIZE or n % 4:
        raise PcpError(f"{n} bytes is no PCP response")
    version, r_op, result, lifetime, epoch = struct.unpack_from("!BBxBII", data)
    if version != PCP_VERSION:
        raise PcpError(f"version {version}")
    if not r_op & 0x80:
        raise PcpError("R bit clear: a request")
    opcode = r_op & 0x7F
    pos = HEADER_LEN
    fields: dict[str, object] = {}
    if opcode == PCP_OPCODE_MAP:
        if n < HEADER_LEN + MAP_LEN:
            if result != 0:  # an error answer may omit the body
                return Response(version, opcode, result, lifetime, epoch)
            raise PcpError(f"MAP response of {n} bytes")
        body = data[pos:pos + MAP_LEN]
        proto, internal, external = struct.unpack_from("!B3xHH", body, PCP_NONCE_LEN)
        fields = {"nonce": body[:PCP_NONCE_LEN], "protocol": proto, "internal_port": internal,
                  "external_port": external, "external_ip": _unmapped(body[20:36])}
        pos += MAP_LEN
    elif opcode != PCP_OPCODE_ANNOUNCE:
        raise PcpError(f"unknown opcode {opcode}")
    while pos < n:  # options: checked, then ignored
        if n - pos < 4:
            raise PcpError("truncated option header")
        length = struct.unpack_from("!H", data, pos + 2)[0]
        pos += 4 + length + (-length % 4)
        if pos > n:
            raise PcpError("option overruns the message")
    return Response(version, opcode, result, lifetime, epoch, **fields)  # type: ignore[arg-type]
