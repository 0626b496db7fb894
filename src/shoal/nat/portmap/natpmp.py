"""NAT-PMP (RFC 6886) messages: a sans-IO codec.

Owns: the bytes of NAT-PMP requests and the parsing of a gateway's answers. No sockets, no
clock. `decode_response` raises only `NatPmpError` on bad input of whatever shape
(`tests/nat/portmap/test_natpmp.py` fuzzes it); encoders raise `ValueError` on misuse.
Constants are in `shoal.constants` (NATPMP_*).

Wire format (big-endian; client -> gateway UDP port 5351, answers come from that port):

    external address request (2 bytes)      version 0 | opcode 0
    external address response (12 bytes)    version 0 | opcode 128 | result (2) |
                                            epoch: seconds since the gateway's start (4) |
                                            external IPv4 address (4)
    map request (12 bytes)                  version 0 | opcode 1 (UDP) or 2 (TCP) |
                                            reserved 0 (2) | internal port (2) |
                                            suggested external port (2) | lifetime s (4)
    map response (16 bytes)                 version 0 | opcode 128+1/2 | result (2) |
                                            epoch (4) | internal port (2) |
                                            mapped external port (2) | lifetime s (4)

Deleting a mapping is a map request with lifetime 0 and suggested external port 0 (section
3.4). Result codes (section 3.5): 0 success, 1 unsupported version, 2 not authorized or
refused, 3 network failure, 4 out of resources, 5 unsupported opcode. An error answer may be
as short as 8 bytes (version, opcode, result, epoch): a PCP-only gateway answers a NAT-PMP
request that way, and a NAT-PMP gateway answers a PCP request with version 0 result 1.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct

from shoal.constants import (
    NATPMP_OP_EXTERNAL,
    NATPMP_OP_MAP_TCP,
    NATPMP_OP_MAP_UDP,
    NATPMP_RESPONSE_BIT,
    NATPMP_VERSION,
)

__all__ = ["NatPmpError", "Response", "RESULT_NAMES", "external_request", "map_request", "decode_response"]

RESULT_NAMES = {0: "success", 1: "unsupported version", 2: "not authorized or refused",
                3: "network failure", 4: "out of resources", 5: "unsupported opcode"}


class NatPmpError(ValueError):
    """The bytes are not a valid NAT-PMP response (the gateway's fault, never the caller's)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """One decoded answer. `op` is the request opcode (0 external, 1 UDP, 2 TCP)."""

    op: int
    result: int
    epoch: int
    external_ip: str | None = None  # external address response, on success
    internal_port: int | None = None  # map responses, on success
    external_port: int | None = None
    lifetime: int | None = None

    @property
    def ok(self) -> bool:
        return self.result == 0

    @property
    def result_name(self) -> str:
        return RESULT_NAMES.get(self.result, f"result {self.result}")


def external_request() -> bytes:
    return bytes((NATPMP_VERSION, NATPMP_OP_EXTERNAL))


def map_request(internal_port: int, suggested_external_port: int, lifetime: int, *, udp: bool = True) -> bytes:
    """A map (lifetime > 0) or delete (lifetime 0: the suggested port is sent as 0) request."""
    if not 0 < internal_port <= 0xFFFF or not 0 <= suggested_external_port <= 0xFFFF:
        raise ValueError(f"bad ports {internal_port!r}, {suggested_external_port!r}")
    if not 0 <= lifetime <= 0xFFFFFFFF:
        raise ValueError(f"bad lifetime {lifetime!r}")
    op = NATPMP_OP_MAP_UDP if udp else NATPMP_OP_MAP_TCP
    return struct.pack("!BBHHHI", NATPMP_VERSION, op, 0, internal_port,
                       suggested_external_port if lifetime else 0, lifetime)


def decode_response(data: bytes) -> Response:
    """Parse one answer; NatPmpError on anything malformed (and only NatPmpError)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise NatPmpError(f"not bytes: {type(data).__name__}")
    data = bytes(data)
    if len(data) < 8:
        raise NatPmpError(f"{len(data)} bytes is shorter than a NAT-PMP response")
    version, opcode, result, epoch = struct.unpack_from("!BBHI", data)
    if version != NATPMP_VERSION:
        raise NatPmpError(f"version {version}")
    if not opcode & NATPMP_RESPONSE_BIT:
        raise NatPmpError(f"opcode {opcode} is a request")
    op = opcode & ~NATPMP_RESPONSE_BIT
    if result != 0:
        return Response(op, result, epoch)
    if op == NATPMP_OP_EXTERNAL:
        if len(data) != 12:
            raise NatPmpError(f"external address response of {len(data)} bytes")
        return Response(op, 0, epoch, external_ip=str(ipaddress.IPv4Address(data[8:12])))
    if op in (NATPMP_OP_MAP_UDP, NATPMP_OP_MAP_TCP):
        if len(data) != 16:
            raise NatPmpError(f"map response of {len(data)} bytes")
        internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
        if internal == 0:
            raise NatPmpError("map response for internal port 0")
        return Response(op, 0, epoch, internal_port=internal, external_port=external, lifetime=lifetime)
    raise NatPmpError(f"unknown opcode {op}")
