"""The STUN server engine: answers Binding requests, with RFC 5780 behaviour discovery. Sans-IO.

Owns: what the server's STUN listener says to whom and from which of its local endpoints. The
asyncio glue (`shoal.server.stunlistener`) binds one UDP socket per local endpoint and calls
`handle(data, src, local)`; the returned `Reply` names the local endpoint to send it from.

Endpoints. The server has one or two addresses (A1, A2) and one or two ports (P1, P2), so up
to four local endpoints A1:P1, A1:P2, A2:P1, A2:P2 (`local_endpoints()`). For a request that
arrived on Ax:Py:

    reply from        (A-other if CHANGE-REQUEST "change IP" else Ax) :
                      (P-other if CHANGE-REQUEST "change port" else Py)
    sent to             the request's source; with RESPONSE-PORT (RFC 5780 section 7.5) the
                        source address and that port
    XOR-MAPPED-ADDRESS  the request's source (the client's reflexive address)
    MAPPED-ADDRESS      the same, for RFC 3489-era clients
    RESPONSE-ORIGIN     the endpoint the reply is sent from
    OTHER-ADDRESS       A-other:P-other (only when the server has both a second address and
                        a second port: RFC 5780 section 6.1)
    SOFTWARE, FINGERPRINT

Errors (sent from Ax:Py): a request with comprehension-required attributes we do not know
-> 420 with UNKNOWN-ATTRIBUTES; CHANGE-REQUEST for an address/port we do not have -> 420
(RFC 5780: CHANGE-REQUEST is then an attribute we cannot honour); a STUN-shaped request whose
attributes do not parse, or a request of another method -> 400. Anything else that is not a
request (responses, indications, garbage, classic RFC 3489 STUN) is dropped and counted in
`stats` - never raised. The engine keeps no per-client state and has no timers.

Reflection: a reply is never larger than about 4x the request and goes only to the request's
source address (RESPONSE-PORT may change the port, never the address); CHANGE-REQUEST moves
the reply's source endpoint, never its destination.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress

from shoal.nat import stun
from shoal.nat.stun import Address, Message, StunError
from shoal.constants import (
    STUN_ATTR_ERROR_CODE,
    STUN_ATTR_MAPPED_ADDRESS,
    STUN_ATTR_OTHER_ADDRESS,
    STUN_ATTR_RESPONSE_ORIGIN,
    STUN_ATTR_SOFTWARE,
    STUN_ATTR_UNKNOWN_ATTRIBUTES,
    STUN_ATTR_XOR_MAPPED_ADDRESS,
    STUN_CLASS_ERROR,
    STUN_CLASS_REQUEST,
    STUN_CLASS_SUCCESS,
    STUN_ERROR_BAD_REQUEST,
    STUN_ERROR_UNKNOWN_ATTRIBUTE,
    STUN_METHOD_BINDING,
)

__all__ = ["Reply", "StunResponder"]


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """Send `data` from the local endpoint `local` to `dst`."""

    local: Address
    dst: Address
    data: bytes


class StunResponder:
    """See the module docstring. `addresses`: A1[, A2]; `ports`: P1[, P2]."""

    def __init__(self, addresses: list[str], ports: list[int], *, software: str = "shoal") -> None:
        if not 1 <= len(addresses) <= 2 or not 1 <= len(ports) <= 2:
            raise ValueError("a STUN responder has one or two addresses and one or two ports")
        addrs = [str(ipaddress.ip_address(a)) for a in addresses]
        if len(set(addrs)) != len(addrs) or len(set(ports)) != len(ports):
            raise ValueError("the two addresses (and the two ports) must differ")
        if len({ipaddress.ip_address(a).version for a in addrs}) != 1:
            raise ValueError("both addresses must be of one IP version")
        for p in ports:
            if not 0 < p < 65536:
                raise ValueError(f"bad port {p!r}")
        self.addresses = addrs
        self.ports = list(ports)
        self.software = software
        self.stats: collections.Counter[str] = collections.Counter()

    def local_endpoints(self) -> list[Address]:
        return [(a, p) for a in self.addresses for p in self.ports]

    @property
    def rfc5780(self) -> bool:
        """True when the server can answer CHANGE-REQUEST and name an OTHER-ADDRESS."""
        return len(self.addresses) == 2 and len(self.ports) == 2

    def _other(self, items: list, value: object) -> object:
        return items[1] if value == items[0] else items[0]

    def handle(self, data: bytes, src: Address, local: Address) -> Reply | None:
        """One datagram `data` from `src` arrived on our endpoint `local`: the reply, if any."""
        local = (str(local[0]), int(local[1]))
        if local not in self.local_endpoints():
            raise ValueError(f"{local} is not one of this responder's endpoints")
        head = stun.peek_transaction(data)
        if head is None:
            self.stats["dropped:not-stun"] += 1
            return None
        method, cls, txid = head
        if cls != STUN_CLASS_REQUEST:
            self.stats["dropped:not-a-request"] += 1
            return None
        try:
            msg = stun.decode(data)
            change_ip, change_port = msg.change_request()
            response_port = msg.response_port()
        except StunError as e:
            self.stats["error:400"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_BAD_REQUEST, f"Bad Request: {e}"[:120])
        if method != STUN_METHOD_BINDING:
            self.stats["error:400"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_BAD_REQUEST, "Bad Request: only Binding")
        unknown = msg.unknown_required()
        if unknown:
            self.stats["error:420"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_UNKNOWN_ATTRIBUTE, "Unknown Attribute", unknown)
        if (change_ip and len(self.addresses) < 2) or (change_port and len(self.ports) < 2):
            self.stats["error:420"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_UNKNOWN_ATTRIBUTE,
                               "Unknown Attribute: no alternate address/port", [0x0003])
        ip = self._other(self.addresses, local[0]) if change_ip else local[0]
        port = self._other(self.ports, local[1]) if change_port else local[1]
        origin: Address = (str(ip), int(port))  # type: ignore[arg-type]
        attrs: list[tuple[int, bytes]] = [
            (STUN_ATTR_XOR_MAPPED_ADDRESS, stun.encode_xor_address(src, txid)),
            (STUN_ATTR_MAPPED_ADDRESS, stun.encode_address(src)),
            (STUN_ATTR_RESPONSE_ORIGIN, stun.encode_address(origin)),
        ]
        if self.rfc5780:
            other = (str(self._other(self.addresses, local[0])), int(self._other(self.ports, local[1])))  # type: ignore[arg-type]
            attrs.append((STUN_ATTR_OTHER_ADDRESS, stun.encode_address(other)))
        if self.software:
            attrs.append((STUN_ATTR_SOFTWARE, self.software.encode()[: stun.MAX_TEXT_BYTES]))
        self.stats["binding"] += 1
        if change_ip or change_port:
            self.stats["binding:changed"] += 1
        out = stun.encode(Message(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, txid, tuple(attrs)))
        return Reply(origin, src if response_port is None else (src[0], response_port), out)

    def _error(self, method: int, txid: bytes, src: Address, local: Address, code: int, reason: str,
               unknown: list[int] | None = None) -> Reply:
        attrs: list[tuple[int, bytes]] = [(STUN_ATTR_ERROR_CODE, stun.encode_error_code(code, reason))]
        if unknown:
            attrs.append((STUN_ATTR_UNKNOWN_ATTRIBUTES, b"".join(t.to_bytes(2, "big") for t in unknown[:16])))
        if self.software:
            attrs.append((STUN_ATTR_SOFTWARE, self.software.encode()[: stun.MAX_TEXT_BYTES]))
        out = stun.encode(Message(method & 0xFFF, STUN_CLASS_ERROR, txid, tuple(attrs)))
        return Reply(local, src, out)
