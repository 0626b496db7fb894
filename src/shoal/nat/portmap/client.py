"""Port mapping for the node daemon: asyncio glue around PCP, NAT-PMP and UPnP IGD.

Owns: finding the gateway, asking it for one UDP port mapping to the daemon's data socket,
keeping that mapping alive, telling the daemon when its external address changes, removing
the mapping on close, and `probe()` for `shoal netcheck`. Protocol decisions live in the
sans-IO modules (`engine` for PCP/NAT-PMP, `upnp` for the IGD parsers); this file moves bytes.

Order (`PortMapper.start`, bounded by PORTMAP_START_TIMEOUT):

  1. probe, all at once (about 1.25 s at most, usually a few ms): a PCP ANNOUNCE and a
     NAT-PMP external address request to gateway:5351, and an SSDP M-SEARCH for an IGD
     (multicast on the interface towards the gateway plus unicast to gateway:1900), whose
     description is then fetched and searched for a WANIPConnection / WANPPPConnection;
  2. map with the best protocol that answered: PCP, then NAT-PMP (as soon as the 5351 probe
     is over, without waiting for UPnP), then UPnP (the next one only if the previous
     refuses or stops answering).

PCP/NAT-PMP mappings are renewed by their engine at half the granted lifetime; UPnP ones by
calling AddPortMapping again at half the lease (a gateway that only knows permanent leases,
error 725, gets lease 0 and is never renewed). Every change of the external (ip, port) -
first mapping, new address or port, loss - calls `on_change(external or None)`. `close()`
deletes the mapping (lifetime 0 / DeletePortMapping), waiting at most PORTMAP_CLOSE_TIMEOUT.
Nothing a gateway answers can raise out of this module: bad answers are logged and the
protocol counts as unavailable.

The gateway is the host's default gateway (`default_gateway()`, from /proc/net/route) unless
given (`find_gateway(toward)` falls back to the next hop towards an internet address, for
hosts without a default route such as the lab's); our address is the one the kernel uses
towards it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import socket
import struct
from collections.abc import Callable
from urllib.parse import urlsplit

from shoal.endpoint import Endpoint
from shoal.constants import (
    NATPMP_PORT,
    PCP_OPCODE_ANNOUNCE,
    PCP_PORT,
    PCP_VERSION,
    PORTMAP_CLOSE_TIMEOUT,
    PORTMAP_FINAL_WAIT,
    PORTMAP_LIFETIME,
    PORTMAP_MAX_TRANSMISSIONS,
    PORTMAP_MIN_LIFETIME,
    PORTMAP_RENEW_FRACTION,
    PORTMAP_RETRY_INTERVAL,
    PORTMAP_RTO,
    PORTMAP_SSDP_WAIT,
    PORTMAP_START_TIMEOUT,
    SSDP_ADDR,
    SSDP_MAX_SIZE,
    SSDP_PORT,
    UPNP_HTTP_TIMEOUT,
    UPNP_MAX_DESCRIPTION,
)
from shoal.nat.portmap import natpmp, pcp, upnp
from shoal.nat.portmap.engine import Event, UdpPortMapping

__all__ = ["PortMapper", "ProbeResult", "probe", "default_gateway", "route_gateway", "find_gateway", "source_ip",
           "ALL_PROTOCOLS"]

log = logging.getLogger("shoal.nat.portmap")

ALL_PROTOCOLS = ("pcp", "natpmp", "upnp")
_NAMES = {"pcp": "PCP", "natpmp": "NAT-PMP", "upnp": "UPnP IGD"}
_RTF_UP, _RTF_GATEWAY = 0x1, 0x2


def _routes(route_file: str) -> list[tuple[int, int, int, int, int]]:
    """(destination, mask, gateway, flags, metric) of the IPv4 main table, host byte order."""
    try:
        with open(route_file) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest, gw, flags, metric, mask = (int(cols[1], 16), int(cols[2], 16), int(cols[3], 16),
                                             int(cols[6]), int(cols[7], 16))
        except ValueError:
            continue
        if flags & _RTF_UP:
            out.append((dest, mask, gw, flags, metric))
    return out


def _ip(raw: int) -> str:
    return socket.inet_ntoa(struct.pack("<I", raw))  # /proc/net/route prints little-endian words


def default_gateway(route_file: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway of this network namespace (lowest metric), or None."""
    best = min(((m, gw) for d, mask, gw, f, m in _routes(route_file) if d == 0 and mask == 0 and f & _RTF_GATEWAY and gw),
               default=None)
    return _ip(best[1]) if best else None


def route_gateway(dst: str, route_file: str = "/proc/net/route") -> str | None:
    """The next hop of the most specific main-table route to `dst` (None: on-link or no
    route). For hosts without a default route (the lab's) this is the gateway towards the
    internet."""
    try:
        want = struct.unpack("<I", socket.inet_aton(dst))[0]
    except OSError:
        return None
    best: tuple[int, int, int, int] | None = None  # (-prefix length, metric, gateway, flags)
    for dest, mask, gw, flags, metric in _routes(route_file):
        if want & mask == dest:
            key = (-bin(mask).count("1"), metric, gw, flags)
            if best is None or key[:2] < best[:2]:
                best = key
    if best is None or not best[3] & _RTF_GATEWAY or not best[2]:
        return None
    return _ip(best[2])


def find_gateway(toward: str | None = None) -> str | None:
    """The default gateway, else the next hop towards `toward` (e.g. the STUN server)."""
    gw = default_gateway()
    if gw is None and toward is not None:
        gw = route_gateway(toward)
    return gw


def source_ip(gateway: str) -> str | None:
    """Our address towards `gateway` (no packet is sent)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as s:
        try:
            s.connect((gateway, PCP_PORT))
            return str(s.getsockname()[0])
        except OSError:
            return None


# ---------------------------------------------------------------------------- UDP plumbing


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Endpoint], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: retransmissions decide
        pass


async def _udp(local_ip: str, on_datagram: Callable[[bytes, Endpoint], None]) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Proto(on_datagram), local_addr=(local_ip, 0))
    return transport  # type: ignore[return-value]


def _send(transport: asyncio.DatagramTransport, data: bytes, dst: Endpoint) -> None:
    with contextlib.suppress(OSError):
        transport.sendto(data, dst)


class _EngineGlue:
    """Runs one `UdpPortMapping` on its own socket and timer; events go to `on_event`."""

    def __init__(self, engine: UdpPortMapping, on_event: Callable[[Event], None]) -> None:
        self.engine = engine
        self.on_event = on_event
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    async def open(self) -> None:
        self.transport = await _udp(self.engine.client_ip, self._datagram)
        self.engine.start(self._loop.time())
        self._flush()

    def _datagram(self, data: bytes, src: Endpoint) -> None:
        if self.engine.receive(data, src, self._loop.time()):
            self._flush()

    def _fire(self) -> None:
        self._timer = None
        self._flush(self.engine.handle_timer(self._loop.time()))

    def _flush(self, sent: list[tuple[bytes, Endpoint]] | None = None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data, dst in [*(sent or []), *self.engine.take_outbox()]:
            _send(self.transport, data, dst)
        for ev in self.engine.take_events():
            try:
                self.on_event(ev)
            except Exception:  # a callback bug must not stop the engine
                log.exception("port mapping event handler failed")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_deadline()
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._fire)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()


# ---------------------------------------------------------------------------- probing


@dataclasses.dataclass
class ProbeResult:
    """Which protocols the gateway answered. `notes` say why one is missing."""

    gateway: str | None
    pcp: bool = False
    natpmp: bool = False
    upnp: bool = False
    upnp_service: upnp.Service | None = None
    external_ip: str | None = None  # as NAT-PMP or UPnP reported it
    notes: list[str] = dataclasses.field(default_factory=list)
    duration: float = 0.0

    @property
    def available(self) -> list[str]:
        return [_NAMES[p] for p in ALL_PROTOCOLS if getattr(self, p)]

    def to_json(self) -> dict[str, object]:
        return {"gateway": self.gateway, "upnp": self.upnp, "natpmp": self.natpmp, "pcp": self.pcp,
                "available": bool(self.available), "protocols": self.available,
                "external_ip": self.external_ip, "notes": list(self.notes),
                "duration_s": round(self.duration, 3)}


async def _probe_5351(gateway: str, local_ip: str, res: ProbeResult, want: set[str]) -> None:
    """PCP ANNOUNCE and NAT-PMP external address request, retransmitted like the engine's."""
    got: dict[str, bool] = {}
    done = asyncio.Event()

    def on_datagram(data: bytes, src: Endpoint) -> None:
        if src != (gateway, PCP_PORT) or not data:
            return
        if data[0] == PCP_VERSION and "pcp" in want and "pcp" not in got:
            try:
                a = pcp.decode_response(data)
            except pcp.PcpError as e:
                res.notes.append(f"PCP: bad answer ({e})")
                return
            if a.opcode == PCP_OPCODE_ANNOUNCE:
                got["pcp"] = a.ok
                if not a.ok:
                    res.notes.append(f"PCP: {a.result_name}")
        elif data[0] == 0:  # NAT-PMP version 0: an answer to either request
            try:
                n = natpmp.decode_response(data)
            except natpmp.NatPmpError as e:
                res.notes.append(f"NAT-PMP: bad answer ({e})")
                return
            if n.result == 1:  # "unsupported version": a NAT-PMP-only gateway refusing our PCP request
                if "pcp" in want and "pcp" not in got:
                    got["pcp"] = False
                    res.notes.append("PCP: the gateway speaks only NAT-PMP")
            elif n.op == 0 and "natpmp" in want and "natpmp" not in got:
                got["natpmp"] = n.ok
                if n.ok:
                    res.external_ip = res.external_ip or n.external_ip
                else:
                    res.notes.append(f"NAT-PMP: {n.result_name}")
        if set(got) >= want:
            done.set()

    transport = await _udp(local_ip, on_datagram)
    try:
        reqs = []
        if "pcp" in want:
            reqs.append(pcp.announce_request(local_ip))
        if "natpmp" in want:
            reqs.append(natpmp.external_request())
        wait = PORTMAP_RTO
        for i in range(PORTMAP_MAX_TRANSMISSIONS):
            for r in reqs:
                _send(transport, r, (gateway, NATPMP_PORT))
            wait = PORTMAP_RTO * 2 ** i if i < PORTMAP_MAX_TRANSMISSIONS - 1 else PORTMAP_FINAL_WAIT
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), wait)
            if done.is_set():
                break
    finally:
        transport.close()
    res.pcp, res.natpmp = got.get("pcp", False), got.get("natpmp", False)
    for p in ("pcp", "natpmp"):
        if p in want and p not in got:
            res.notes.append(f"{_NAMES[p]}: no answer from {gateway}:{PCP_PORT}")


async def _http(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 80

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            await writer.drain()
            data = b""
            while len(data) <= UPNP_MAX_DESCRIPTION + 8192:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
            return data
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    data = await asyncio.wait_for(exchange(), UPNP_HTTP_TIMEOUT)
    return upnp.parse_http_response(data)


async def _soap(service: upnp.Service, action: str, args: list[tuple[str, str]]) -> dict[str, str]:
    status, _, body = await _http(service.control_url, upnp.soap_request(service.control_url, service.service_type, action, args))
    return upnp.parse_soap_response(status, body, action)


async def _probe_upnp(gateway: str, local_ip: str, res: ProbeResult) -> None:
    loop = asyncio.get_running_loop()
    found: asyncio.Future[upnp.SsdpAnswer] = loop.create_future()

    def on_datagram(data: bytes, src: Endpoint) -> None:
        if src[0] != gateway or found.done():
            return
        try:
            ans = upnp.parse_ssdp(data[:SSDP_MAX_SIZE + 1])
        except upnp.UpnpError as e:
            res.notes.append(f"UPnP: bad SSDP answer ({e})")
            return
        if urlsplit(ans.location).hostname != gateway:
            res.notes.append(f"UPnP: the gateway's description is on another host ({ans.location[:80]})")
            return
        found.set_result(ans)

    transport = await _udp(local_ip, on_datagram)
    try:
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 2)
        for st in upnp.IGD_DEVICES:
            _send(transport, upnp.msearch(st), (SSDP_ADDR, SSDP_PORT))
            _send(transport, upnp.msearch(st, gateway), (gateway, SSDP_PORT))
        try:
            ans = await asyncio.wait_for(found, PORTMAP_SSDP_WAIT)
        except asyncio.TimeoutError:
            res.notes.append(f"UPnP: no SSDP answer from {gateway}")
            return
    finally:
        transport.close()
    try:
        status, _, body = await _http(ans.location, upnp.get_request(ans.location))
        if status != 200:
            raise upnp.UpnpError(f"HTTP {status} for the device description")
        service = upnp.pick_service(upnp.parse_description(body, ans.location))
    except (OSError, asyncio.TimeoutError, upnp.UpnpError) as e:
        res.notes.append(f"UPnP: device description {ans.location[:80]}: {e or type(e).__name__}")
        return
    if service is None:
        res.notes.append("UPnP: the gateway has no WANIPConnection / WANPPPConnection service")
        return
    res.upnp, res.upnp_service = True, service


async def probe(gateway: str | None = None, *, local_ip: str | None = None,
                protocols: tuple[str, ...] = ALL_PROTOCOLS) -> ProbeResult:
    """Which of PCP, NAT-PMP and UPnP IGD the gateway offers (no mapping is made). Never raises
    for network trouble; at most about PORTMAP_START_TIMEOUT."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    gateway = gateway or default_gateway()
    res = ProbeResult(gateway)
    if gateway is None:
        res.notes.append("no default gateway")
        return res
    local_ip = local_ip or source_ip(gateway)
    if local_ip is None:
        res.notes.append(f"no route to the gateway {gateway}")
        return res
    jobs = []
    want = {p for p in protocols if p in ("pcp", "natpmp")}
    if want:
        jobs.append(_probe_5351(gateway, local_ip, res, want))
    if "upnp" in protocols:
        jobs.append(_probe_upnp(gateway, local_ip, res))
    try:
        results = await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), PORTMAP_START_TIMEOUT)
        for r in results:
            if isinstance(r, Exception):
                res.notes.append(f"probe failed: {type(r).__name__}: {r}")
    except asyncio.TimeoutError:
        res.notes.append("probe timed out")
    res.duration = loop.time() - t0
    return res


# ---------------------------------------------------------------------------- the mapper


class PortMapper:
    """One UDP port mapping for `local_port` (the daemon's data socket). See the module
    docstring. `await start()` -> external (ip, port) or None; `external`, `protocol`;
    `await close()`. `on_change(external | None)` runs on the event loop on every change."""

    def __init__(self, local_port: int, *, gateway: str | None = None, local_ip: str | None = None,
                 on_change: Callable[[Endpoint | None], None] | None = None, lifetime: int = PORTMAP_LIFETIME,
                 protocols: tuple[str, ...] = ALL_PROTOCOLS, description: str = "shoal") -> None:
        if not 0 < local_port < 65536 or lifetime < 1:
            raise ValueError("bad local port or lifetime")
        bad = set(protocols) - set(ALL_PROTOCOLS)
        if bad:
            raise ValueError(f"unknown protocols {sorted(bad)}")
        self.local_port = local_port
        self.gateway = gateway
        self.local_ip = local_ip
        self.on_change = on_change
        self.lifetime = lifetime
        self.protocols = tuple(protocols)
        self.description = description
        self.external: Endpoint | None = None
        self.protocol: str | None = None  # "pcp" | "natpmp" | "upnp" while mapped
        self.probe_result: ProbeResult | None = None
        self._upnp_renewals = 0
        self._glue: _EngineGlue | None = None
        self._upnp: upnp.Service | None = None
        self._upnp_lease = lifetime
        self._upnp_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def renewals(self) -> int:
        """Successful renewals of the current mapping so far."""
        if self._glue is not None:
            return self._glue.engine.stats["renewed"]
        return self._upnp_renewals

    @property
    def stats(self) -> dict[str, int]:
        """The PCP/NAT-PMP engine's counters (sent, answers, renewals, gateway-restarts, ...)."""
        return dict(self._glue.engine.stats) if self._glue is not None else {}

    def _set(self, external: Endpoint | None) -> None:
        if external == self.external:
            return
        log.info("port mapping (%s via %s): %s", _NAMES.get(self.protocol or "", "-"), self.gateway,
                 f"{external[0]}:{external[1]}" if external else "none")
        self.external = external
        if self.on_change is not None:
            try:
                self.on_change(external)
            except Exception:
                log.exception("port mapping on_change callback failed")

    async def start(self) -> Endpoint | None:
        """Find the gateway, probe it and map; None when no protocol works. Never raises for
        network trouble."""
        try:
            return await asyncio.wait_for(self._start(), PORTMAP_START_TIMEOUT)
        except asyncio.TimeoutError:
            log.info("port mapping: gave up after %.1f s", PORTMAP_START_TIMEOUT)
        except Exception:
            log.exception("port mapping failed")
        return None

    async def _start(self) -> Endpoint | None:
        self.gateway = self.gateway or default_gateway()
        if self.gateway is None:
            log.info("port mapping: no default gateway")
            return None
        self.local_ip = self.local_ip or source_ip(self.gateway)
        if self.local_ip is None:
            log.info("port mapping: no route to the gateway %s", self.gateway)
            return None
        # the probe of probe(), but PCP/NAT-PMP are used as soon as they answer, while the
        # slower UPnP discovery goes on beside them (and is cancelled if they map)
        self.probe_result = res = ProbeResult(self.gateway)
        upnp_probe = (asyncio.ensure_future(_probe_upnp(self.gateway, self.local_ip, res))
                      if "upnp" in self.protocols else None)
        try:
            want = {p for p in self.protocols if p in ("pcp", "natpmp")}
            if want:
                await _probe_5351(self.gateway, self.local_ip, res, want)
            for proto in ("pcp", "natpmp"):
                if getattr(res, proto) and not self._closed and await self._try_udp(proto):
                    return self.external
            if upnp_probe is not None:
                await upnp_probe
            log.info("port mapping: gateway %s offers %s%s", self.gateway, ", ".join(res.available) or "nothing",
                     f" ({'; '.join(res.notes)})" if res.notes else "")
            if res.upnp and res.upnp_service is not None and not self._closed:
                if await self._try_upnp(res.upnp_service):
                    return self.external
            return None
        finally:
            if upnp_probe is not None and not upnp_probe.done():
                upnp_probe.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await upnp_probe

    async def _try_udp(self, proto: str) -> bool:
        assert self.gateway and self.local_ip
        first: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

        def on_event(ev: Event) -> None:
            if not first.done():
                first.set_result(ev)
            if ev.kind in ("mapped", "changed"):
                if ev.kind == "changed" or self.protocol == proto:
                    self._set(ev.external)
            elif ev.kind == "lost":
                log.info("port mapping (%s): lost: %s", _NAMES[proto], ev.note)
                self._set(None)
            elif ev.kind == "failed":
                log.info("port mapping (%s): %s", _NAMES[proto], ev.note)

        engine = UdpPortMapping(proto, self.gateway, self.local_ip, self.local_port, lifetime=self.lifetime)
        glue = _EngineGlue(engine, on_event)
        try:
            await glue.open()
            ev = await first
        except BaseException:  # start() timed out or was cancelled: no socket or timer stays behind
            glue.close()
            raise
        if ev.kind != "mapped":
            glue.close()
            return False
        self._glue, self.protocol = glue, proto
        self._set(ev.external)
        return True

    async def _add_upnp(self, service: upnp.Service, ext_port: int) -> None:
        assert self.local_ip
        args = [("NewRemoteHost", ""), ("NewExternalPort", str(ext_port)), ("NewProtocol", "UDP"),
                ("NewInternalPort", str(self.local_port)), ("NewInternalClient", self.local_ip),
                ("NewEnabled", "1"), ("NewPortMappingDescription", self.description),
                ("NewLeaseDuration", str(self._upnp_lease))]
        try:
            await _soap(service, "AddPortMapping", args)
        except upnp.UpnpFault as f:
            if f.code != 725 or self._upnp_lease == 0:
                raise
            self._upnp_lease = 0  # OnlyPermanentLeasesSupported
            await _soap(service, "AddPortMapping", args[:-1] + [("NewLeaseDuration", "0")])

    async def _try_upnp(self, service: upnp.Service) -> bool:
        try:
            ip = upnp.parse_external_ip(await _soap(service, "GetExternalIPAddress", []))
            ports = [self.local_port] + [random.randint(1024, 65535) for _ in range(2)]
            for i, port in enumerate(ports):
                try:
                    await self._add_upnp(service, port)
                    break
                except upnp.UpnpFault as f:
                    if f.code != 718 or i == len(ports) - 1:  # 718: ConflictInMappingEntry
                        raise
        except (OSError, asyncio.TimeoutError, upnp.UpnpError) as e:
            log.info("port mapping (UPnP IGD): %s", e or type(e).__name__)
            return False
        self._upnp, self.protocol = service, "upnp"
        self._set((ip, port))
        if self._upnp_lease:
            self._upnp_task = asyncio.create_task(self._renew_upnp(service, port))
        return True

    async def _renew_upnp(self, service: upnp.Service, port: int) -> None:
        delay = max(self._upnp_lease, PORTMAP_MIN_LIFETIME) * PORTMAP_RENEW_FRACTION
        while not self._closed:
            await asyncio.sleep(delay)
            try:
                ip = upnp.parse_external_ip(await _soap(service, "GetExternalIPAddress", []))
                await self._add_upnp(service, port)
                self._upnp_renewals += 1
                self._set((ip, port))
                delay = max(self._upnp_lease, PORTMAP_MIN_LIFETIME) * PORTMAP_RENEW_FRACTION
                if not self._upnp_lease:
                    return
            except Exception as e:  # OSError, timeouts, UpnpError; anything else is logged the same way
                log.info("port mapping (UPnP IGD): renewal failed: %s", e or type(e).__name__)
                self._set(None)
                delay = min(PORTMAP_RETRY_INTERVAL, delay)

    async def close(self) -> None:
        """Delete the mapping (best effort, at most PORTMAP_CLOSE_TIMEOUT) and stop."""
        if self._closed:
            return
        self._closed = True
        if self._upnp_task is not None:
            self._upnp_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._upnp_task
        try:
            await asyncio.wait_for(self._delete(), PORTMAP_CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.info("port mapping: no answer to the delete within %.1f s", PORTMAP_CLOSE_TIMEOUT)
        except Exception as e:
            log.info("port mapping: delete failed: %s", e)
        finally:
            if self._glue is not None:
                self._glue.close()
                self._glue = None
            self._set(None)
            self.protocol = None

    async def _delete(self) -> None:
        if self._glue is not None:
            glue = self._glue
            gone = asyncio.get_running_loop().create_future()
            prev = glue.on_event

            def on_event(ev: Event) -> None:
                prev(ev)
                if ev.kind == "deleted" and not gone.done():
                    gone.set_result(ev)

            glue.on_event = on_event
            glue.engine.delete(asyncio.get_running_loop().time())
            glue._flush()
            ev = await gone
            log.info("port mapping (%s): %s", _NAMES[glue.engine.protocol], ev.note)
        elif self._upnp is not None and self.external is not None:
            await _soap(self._upnp, "DeletePortMapping", [("NewRemoteHost", ""), ("NewExternalPort", str(self.external[1])),
                                                          ("NewProtocol", "UDP")])
            log.info("port mapping (UPnP IGD): deleted %s:%s", *self.external)
