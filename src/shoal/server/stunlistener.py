"""The server's STUN listener: asyncio UDP glue around `shoal.nat.responder.StunResponder`.

Owns: one UDP socket per local STUN endpoint (address x port: up to four, A1:P1, A1:P2,
A2:P1, A2:P2 for RFC 5780) and sending each reply from the socket the responder names. Each
socket is bound to one address (never the wildcard), so a reply leaves from exactly the
address and port the client must see; sockets are never connected (ICMP errors from gone
clients are ignored). The clock (time.monotonic) for the responder's per-source rate limit
is read here. All protocol decisions are the responder's; counters are in
`responder.stats` plus `stats` here.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from shoal.endpoint import Endpoint
from shoal.endpoint import text as endpoint_text
from shoal.nat.responder import StunResponder

__all__ = ["StunListener", "default_stun_addresses", "run_with_stun"]

log = logging.getLogger("shoal.server.stun")


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, listener: StunListener, local: Endpoint) -> None:
        self.listener = listener
        self.local = local

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.listener._received(data, (addr[0], addr[1]), self.local)

    def error_received(self, exc: Exception) -> None:
        self.listener.stats["socket-errors"] += 1


class StunListener:
    """`await start()` binds every endpoint of `responder` (OSError if one cannot be bound:
    nothing stays bound then); `close()` releases them at the loop's next iteration."""

    def __init__(self, responder: StunResponder) -> None:
        self.responder = responder
        self.transports: dict[Endpoint, asyncio.DatagramTransport] = {}
        self.stats: collections.Counter[str] = collections.Counter()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for ep in self.responder.local_endpoints():
                transport, _ = await loop.create_datagram_endpoint(lambda ep=ep: _Protocol(self, ep), local_addr=ep)
                self.transports[ep] = transport  # type: ignore[assignment]
        except OSError as e:
            self.close()
            await asyncio.sleep(0)  # transports close their sockets on the next loop iteration
            raise OSError(e.errno, f"STUN listener cannot bind {ep[0]}:{ep[1]}: {e.strerror}") from None
        log.info("STUN on %s", ", ".join(f"{a}:{p}" for a, p in self.transports))

    def _received(self, data: bytes, src: Endpoint, local: Endpoint) -> None:
        self.stats["received"] += 1
        reply = self.responder.handle(data, src, local, time.monotonic())
        if reply is None:
            return
        transport = self.transports.get(reply.local)
        if transport is None or transport.is_closing():
            self.stats["dropped:no-socket"] += 1
            return
        try:
            transport.sendto(reply.data, reply.dst)
            self.stats["sent"] += 1
        except OSError:
            self.stats["send-errors"] += 1

    def close(self) -> None:
        for t in self.transports.values():
            t.close()
        self.transports.clear()


def default_stun_addresses(listen_host: str, local_addresses: list[str]) -> list[str]:
    """Where `shoal server` answers STUN unless told (`--stun-addr`): the listen address (or,
    listening on a wildcard, the first local address) plus one more local address of the same
    IP version when the host has one (RFC 5780 needs two). A loopback listen address gets no
    second address (never a real interface next to a test server); loopback alone when the
    host has nothing else."""
    import ipaddress

    want = ipaddress.ip_address(listen_host)
    if want.is_loopback:
        return [str(want)]
    same = [a for a in local_addresses if ipaddress.ip_address(a).version == want.version
            and not ipaddress.ip_address(a).is_loopback]
    if want.is_unspecified and not same:
        return ["127.0.0.1" if want.version == 4 else "::1"]
    first = same[0] if want.is_unspecified else str(want)
    out = [first]
    for a in same:
        if a != first:
            out.append(a)
            break
    return out


async def run_with_stun(main: Awaitable[None], responder: StunResponder | None,
                        report: Callable[[str], None] | None = None) -> None:
    """Run `main` (the HTTP server) with a STUN listener beside it for its whole life. A STUN
    endpoint that cannot be bound (port taken) is logged and STUN stays off: the coordination
    server itself still runs."""
    listener = None
    if responder is not None:
        listener = StunListener(responder)
        try:
            await listener.start()
            text = "STUN on UDP " + ", ".join(endpoint_text(t) for t in listener.transports)
            if not responder.rfc5780:
                text += " (one address or port: no RFC 5780 behaviour discovery)"
        except OSError as e:
            text = f"STUN is off: {e}"
            log.warning("%s", text)
            listener = None
        if report is not None:
            report(text)
    try:
        await main
    finally:
        if listener is not None:
            listener.close()
            await asyncio.sleep(0)  # let the transports release their ports
