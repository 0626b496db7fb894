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

Reflection (issue 18 F14). A reply goes only to the request's source address (RESPONSE-PORT
may change the port, never the address); CHANGE-REQUEST moves the reply's source endpoint,
never its destination. A spoofer who forges the source can still aim replies at a victim,
so:

  - rate: `handle(..., now)` answers a source only while its token buckets have a token
    (`shoal.nat.sourcelimit`: per address STUN_RATE_PER_ADDRESS/s, burst
    STUN_BURST_PER_ADDRESS; per /24 or /48 prefix STUN_RATE_PER_PREFIX/s, burst
    STUN_BURST_PER_PREFIX); a refused request is dropped and counted
    (`dropped:rate-limited:address` / `:prefix`). Without `now` (codec tests) no limit applies.
  - size: a reply is at most max(request size, the essential reply), where the essential
    reply is the header, XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS (RFC 5780
    servers) and FINGERPRINT when the request had one. MAPPED-ADDRESS (only RFC 3489
    clients read it, and they are refused anyway), SOFTWARE and a FINGERPRINT the client did
    not use are added only while they fit in the request's size; an error's reason phrase
    is cut to fit. A 20-byte request got 88 bytes (4.4x) before; now 56 (2.8x) on an RFC 5780
    server, 44 (2.2x) on a one-address one; a request of 88 bytes or more is never amplified.
    PADDING is never echoed (it cannot make a reply larger than the request).
  - RESPONSE-PORT with PADDING -> 400 (RFC 5780 section 7.5: the server MUST NOT process such
    a request). RESPONSE-PORT otherwise keeps its RFC 5780 meaning: a spoofer picks the
    victim's port with the forged source port anyway, so it adds no reach; the rate and size
    rules bound what it can send.

Counters: `bytes_in` (requests that got a reply) and `bytes_out` (those replies), so the
amplification factor is bytes_out / bytes_in.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress

from shoal.endpoint import Endpoint
from shoal.nat import stun
from shoal.nat.sourcelimit import SourceLimiter
from shoal.nat.stun import Message, StunError
from shoal.constants import (
    STUN_ATTR_PADDING,
    STUN_BURST_PER_ADDRESS,
    STUN_BURST_PER_PREFIX,
    STUN_HEADER_SIZE,
    STUN_PREFIX_V4,
    STUN_PREFIX_V6,
    STUN_RATE_MAX_SOURCES,
    STUN_RATE_PER_ADDRESS,
    STUN_RATE_PER_PREFIX,
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

    local: Endpoint
    dst: Endpoint
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
        self.limiter = SourceLimiter(rate=STUN_RATE_PER_ADDRESS, burst=STUN_BURST_PER_ADDRESS,
                                     prefix_rate=STUN_RATE_PER_PREFIX, prefix_burst=STUN_BURST_PER_PREFIX,
                                     max_keys=STUN_RATE_MAX_SOURCES, prefix_v4=STUN_PREFIX_V4, prefix_v6=STUN_PREFIX_V6)

    def local_endpoints(self) -> list[Endpoint]:
        return [(a, p) for a in self.addresses for p in self.ports]

    @property
    def rfc5780(self) -> bool:
        """True when the server can answer CHANGE-REQUEST and name an OTHER-ADDRESS."""
        return len(self.addresses) == 2 and len(self.ports) == 2

    def _other(self, items: list, value: object) -> object:
        return items[1] if value == items[0] else items[0]

    def handle(self, data: bytes, src: Endpoint, local: Endpoint, now: float | None = None) -> Reply | None:
        """One datagram `data` from `src` arrived on our endpoint `local` at `now`: the reply, if any."""
        reply = self._handle(data, src, local, now)
        if reply is not None:
            self.stats["bytes_in"] += len(data)
            self.stats["bytes_out"] += len(reply.data)
        return reply

    def _handle(self, data: bytes, src: Endpoint, local: Endpoint, now: float | None) -> Reply | None:
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
        if now is not None:
            refused = self.limiter.allow(str(src[0]), now)
            if refused is not None:
                self.stats[f"dropped:rate-limited:{refused}"] += 1
                return None
        budget = len(data)
        try:
            msg = stun.decode(data)
            change_ip, change_port = msg.change_request()
            response_port = msg.response_port()
        except StunError as e:
            self.stats["error:400"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_BAD_REQUEST, f"Bad Request: {e}"[:120], budget=budget)
        if response_port is not None and msg.get(STUN_ATTR_PADDING) is not None:
            self.stats["error:400"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_BAD_REQUEST, "Bad Request: RESPONSE-PORT with PADDING",
                               budget=budget)
        if method != STUN_METHOD_BINDING:
            self.stats["error:400"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_BAD_REQUEST, "Bad Request: only Binding", budget=budget)
        unknown = msg.unknown_required()
        if unknown:
            self.stats["error:420"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_UNKNOWN_ATTRIBUTE, "Unknown Attribute", unknown, budget=budget)
        if (change_ip and len(self.addresses) < 2) or (change_port and len(self.ports) < 2):
            self.stats["error:420"] += 1
            return self._error(method, txid, src, local, STUN_ERROR_UNKNOWN_ATTRIBUTE,
                               "Unknown Attribute: no alternate address/port", [0x0003], budget=budget)
        ip = self._other(self.addresses, local[0]) if change_ip else local[0]
        port = self._other(self.ports, local[1]) if change_port else local[1]
        origin: Endpoint = (str(ip), int(port))  # type: ignore[arg-type]
        attrs: list[tuple[int, bytes]] = [
            (STUN_ATTR_XOR_MAPPED_ADDRESS, stun.encode_xor_address(src, txid)),
            (STUN_ATTR_RESPONSE_ORIGIN, stun.encode_address(origin)),
        ]
        if self.rfc5780:
            other = (str(self._other(self.addresses, local[0])), int(self._other(self.ports, local[1])))  # type: ignore[arg-type]
            attrs.append((STUN_ATTR_OTHER_ADDRESS, stun.encode_address(other)))
        extras = [(STUN_ATTR_MAPPED_ADDRESS, stun.encode_address(src))]
        if self.software:
            extras.append((STUN_ATTR_SOFTWARE, self.software.encode()[: stun.MAX_TEXT_BYTES]))
        self.stats["binding"] += 1
        if change_ip or change_port:
            self.stats["binding:changed"] += 1
        out = self._fit(STUN_METHOD_BINDING, STUN_CLASS_SUCCESS, txid, attrs, extras, msg.fingerprint, budget)
        return Reply(origin, src if response_port is None else (src[0], response_port), out)

    def _error(self, method: int, txid: bytes, src: Endpoint, local: Endpoint, code: int, reason: str,
               unknown: list[int] | None = None, *, budget: int) -> Reply:
        return Reply(local, src, self._error_bytes(method, txid, code, reason, unknown, False, budget))

    def _error_bytes(self, method: int, txid: bytes, code: int, reason: str, unknown: list[int] | None,
                     fingerprint: bool, budget: int) -> bytes:
        attrs: list[tuple[int, bytes]] = []
        if unknown:
            attrs.append((STUN_ATTR_UNKNOWN_ATTRIBUTES, b"".join(t.to_bytes(2, "big") for t in unknown[:16])))
        fixed = STUN_HEADER_SIZE + 8 + sum(4 + len(v) + (-len(v) % 4) for _, v in attrs)
        room = max(0, budget - fixed) // 4 * 4
        text = reason.encode()[:room].decode("utf-8", "ignore")
        attrs.insert(0, (STUN_ATTR_ERROR_CODE, stun.encode_error_code(code, text)))
        extras = [(STUN_ATTR_SOFTWARE, self.software.encode()[: stun.MAX_TEXT_BYTES])] if self.software else []
        return self._fit(method & 0xFFF, STUN_CLASS_ERROR, txid, attrs, extras, fingerprint, budget)

    @staticmethod
    def _fit(method: int, cls: int, txid: bytes, attrs: list[tuple[int, bytes]], extras: list[tuple[int, bytes]],
             fingerprint: bool, budget: int) -> bytes:
        """The message with `attrs` (always) and FINGERPRINT when the request had one, then
        each of `extras` and an unasked-for FINGERPRINT only while the size stays <= budget."""
        def size(items: list[tuple[int, bytes]], fp: bool) -> int:
            return STUN_HEADER_SIZE + sum(4 + len(v) + (-len(v) % 4) for _, v in items) + (8 if fp else 0)

        chosen = list(attrs)
        for item in extras:
            if size([*chosen, item], fingerprint) <= budget:
                chosen.append(item)
        if not fingerprint and size(chosen, True) <= budget:
            fingerprint = True
        return stun.encode(Message(method, cls, txid, tuple(chosen)), fingerprint=fingerprint)
