"""`shoal netcheck` in the daemon: asyncio glue running `shoal.nat.discovery.Discovery` on a UDP socket.

Owns: one netcheck run's socket, its timer and the daemon's last result. The engine decides
everything; this file moves datagrams between it and a socket of its own (bound to an
ephemeral port on all addresses, never connected), follows `next_deadline()`, and gives up
after `RUN_TIMEOUT` whatever happens. A datagram that is not an answer is ignored.

Which server: the STUN endpoint given in the request ("server": "host[:port]"), else the
pinned coordination server's host on STUN_PORT (the server answers STUN there by default,
`shoal server --stun-port`).

Local API (`POST /v1/netcheck`, body {"server": optional "host[:port]"}) answers the
`Result.to_json()` fields plus "port_mapping" (`shoal.nat.portmap.client.probe()` run beside
the discovery: which of PCP, NAT-PMP and UPnP IGD the gateway offers; the gateway is the
default one, else the next hop towards the STUN server) and "relays" (the daemon's relay
connection: UDP or WebSocket, address, round trip; `relay_report`). The reflexive address is
that of the netcheck socket; the tunnel socket's own mapping is kept by the daemon's traversal
(`shoal status`): with endpoint-independent mapping it differs only in the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from shoal.endpoint import Endpoint
from shoal.nat.discovery import Discovery, Result
from shoal.nat.portmap.client import ProbeResult, find_gateway, probe
from shoal.constants import STUN_PORT

__all__ = ["run_discovery", "parse_server", "netcheck_payload", "probe_port_mapping", "api_netcheck", "RUN_TIMEOUT"]

RUN_TIMEOUT = 15.0
PORT_MAPPING_NOTE = "not checked"
RELAYS_NOTE = "no relay connection (not logged in, or the server does not relay)"


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.: the engine retransmits
        pass


def parse_server(text: str, default_port: int = STUN_PORT) -> Endpoint:
    """"host", "host:port", "[v6]:port" or a URL (its host; the port is STUN's) -> (host, port)."""
    text = text.strip()
    if "://" in text:
        host = urlsplit(text).hostname
        if not host:
            raise ValueError(f"no host in {text!r}")
        return host, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and (not port.isdigit() or not 0 < int(port) < 65536)):
        raise ValueError(f"want host[:port], got {text!r}")
    return host, int(port) if port else default_port


async def _resolve(host: str, port: int) -> Endpoint:
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # IPv4 first
    if not infos:
        raise OSError(f"cannot resolve {host}")
    return infos[0][4][0], port


async def run_discovery(server: Endpoint, *, local_ips: list[str] | None = None,
                        timeout: float = RUN_TIMEOUT, **engine: Any) -> Result:
    """One discovery run from a fresh socket; `local_ips` are the host's own addresses (to
    tell "no NAT"; None: found by asking the kernel which source address reaches `server`)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    done = loop.create_future()
    timer: asyncio.TimerHandle | None = None
    d: Discovery | None = None
    transport: asyncio.DatagramTransport | None = None

    def flush(extra: list[tuple[bytes, Endpoint]] = []) -> None:  # noqa: B006 - never mutated
        assert d is not None and transport is not None
        for data, dst in [*extra, *d.take_outbox()]:
            with contextlib.suppress(OSError):
                transport.sendto(data, dst)
        reschedule()

    def reschedule() -> None:
        nonlocal timer
        assert d is not None
        if timer is not None:
            timer.cancel()
            timer = None
        if d.done:
            if not done.done():
                done.set_result(d.result)
            return
        deadline = d.next_deadline()
        if deadline is not None:
            timer = loop.call_at(deadline, fire)

    def fire() -> None:
        assert d is not None
        flush(d.handle_timer(loop.time()))  # handle_timer hands back the outbox

    def on_datagram(data: bytes, src: Endpoint) -> None:
        if d is not None and d.receive(data, src, loop.time()):
            flush()

    transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(on_datagram), family=family,
                                                       local_addr=("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        if local_ips is None:
            local_ips = _source_ips(server, family)
        d = Discovery(server, local=[(ip, port) for ip in local_ips], **engine)
        d.start(loop.time())
        flush()
        return await asyncio.wait_for(done, timeout)
    finally:
        if timer is not None:
            timer.cancel()
        transport.close()


def _source_ips(server: Endpoint, family: int) -> list[str]:
    """The address the kernel would send from towards `server` (no packet is sent)."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.connect(server)
        return [s.getsockname()[0]]
    except OSError:
        return []
    finally:
        s.close()


def relay_report(traversal: Any) -> dict[str, Any]:
    """The daemon's relay connection as netcheck shows it: where, how, its round trip."""
    relay = traversal.info()["relay"] if traversal is not None else None
    if not relay or not relay["ready"]:
        return {"note": RELAYS_NOTE, "relays": []}
    where = relay["udp"] if relay["mode"] == "udp" else relay["ws"]
    return {"note": "", "relays": [{"via": relay["mode"], "address": where, "rtt_ms": relay["rtt_ms"]}]}


def netcheck_payload(result: Result, port_mapping: ProbeResult | None = None,
                     relays: dict[str, Any] | None = None) -> dict[str, Any]:
    pm: dict[str, Any] = ({"available": None, "protocols": [], "note": PORT_MAPPING_NOTE} if port_mapping is None
                          else port_mapping.to_json())
    return {**result.to_json(), "port_mapping": pm, "relays": relays or {"note": RELAYS_NOTE, "relays": []},
            "checked_at": time.time()}


async def probe_port_mapping(server: Endpoint) -> ProbeResult:
    """Which port mapping protocols the gateway towards `server` offers (never raises)."""
    try:
        gateway = find_gateway(server[0])
        if gateway is None:
            return ProbeResult(None, notes=["no default gateway and no next hop towards the server"])
        return await probe(gateway)
    except Exception as e:  # a bug here must not cost the user the rest of netcheck
        return ProbeResult(None, notes=[f"port mapping probe failed: {type(e).__name__}: {e}"])


async def api_netcheck(daemon: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The local API handler (`daemon` is a `shoal.daemon.daemon.Daemon`)."""
    from shoal.daemon.localapi import HttpError

    text = body.get("server")
    if text is not None and not isinstance(text, str):
        raise HttpError(400, "'server' must be a string host[:port]", "invalid")
    if not text:
        pin = getattr(daemon, "pin", None)
        if pin is None:
            raise HttpError(409, "not logged in and no STUN server given: `shoal netcheck --server HOST[:PORT]`",
                            "not_logged_in")
        text = pin.url
    try:
        server = await _resolve(*parse_server(text))
    except (ValueError, OSError) as e:
        raise HttpError(400, f"STUN server: {e}", "invalid") from None
    mapping = asyncio.ensure_future(probe_port_mapping(server))
    try:
        result = await run_discovery(server)
    except (OSError, asyncio.TimeoutError) as e:
        mapping.cancel()
        raise HttpError(502, f"netcheck failed: {e}", "netcheck_failed") from None
    payload = netcheck_payload(result, await mapping, relay_report(getattr(daemon, "traversal", None)))
    daemon.netcheck = payload  # the last result, for status readers
    return payload
