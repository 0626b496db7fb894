"""NAT traversal in the node daemon: candidates, hole punching and the relay, on the data socket.

Owns (asyncio glue around sans-IO engines; one instance per daemon, on its event loop):
  - the disco codec (`shoal.nat.disco`) and one `PathEngine` (`shoal.nat.paths`) per peer:
    which path reaches that peer, direct (an address) or through the relay;
  - the reflexive probe (`shoal.nat.reflexive`) on the WireGuard data socket: our public
    address as the server's STUN sees it, and whether our NAT maps per destination;
  - the relay connection, whose state machine is `shoal.relay.link.RelayLink` (sans-IO; here:
    its actions carried out and the WebSocket task): UDP from the data socket to the server's
    relay port, or, when no answer comes within RELAY_UDP_WAIT (UDP blocked), a WebSocket to
    the server's HTTP port at RELAY_WS_PATH; a relay that answers (a WebSocket, or a proven
    refusal over UDP) but does not accept us gets a new HELLO after RELAY_AUTH_RETRY seconds,
    the wait doubling to RELAY_AUTH_RETRY_MAX (issue 18: it used to wait forever); while on
    the WebSocket, a whole handshake over UDP every RELAY_UDP_RETEST seconds, and back to UDP
    only on its proven AUTH_OK (issue 18 F12: the relay's UDP address can be spoofed);
  - the port mapping on our gateway (`shoal.nat.portmap.client.PortMapper`: PCP, NAT-PMP,
    UPnP IGD), for the data socket's port, started after the first login (the gateway is the
    next hop toward the server), renewed by the mapper, deleted on close;
  - our candidate set (host addresses, reflexive, port-mapped), reported to the server
    (`on_candidates`) and to relayed peers (CallMeMaybe);
  - the *endpoint* of every peer inside the WireGuard engine: the chosen direct address, or
    a virtual endpoint (an address in 100::/64, see `shoal.dataplane.runtime`) when the path is the
    relay or a birthday socket;
  - birthday sockets (hard NAT on our side, `shoal.nat.paths`): up to PATH_BIRTHDAY_SOCKETS
    extra UDP sockets, opened when an engine first sends from one and closed
    BIRTHDAY_HOLD seconds after the last such send unless a chosen path runs over them. A
    path over socket k gets its own virtual endpoint; the engine's packets to it leave from
    socket k, and what arrives on k is handed to the engine as coming from it.

Data socket demultiplexing (the runner hands over every non-WireGuard datagram): disco magic
-> codec -> that peer's path engine; relay magic from the relay's address -> relay client;
STUN -> reflexive probe; anything else is counted (`stats["unknown"]`) and dropped.

What a relay delivers: a disco message goes to the path engine (via_relay), anything else to
the WireGuard engine as if it came from the sender's virtual endpoint (the engine then checks
it like any datagram: only a peer's authenticated packets get through). A relay never sees
plaintext: it carries WireGuard ciphertext and sealed disco messages.

Timers: one timer at the earliest deadline of the engines, the probe and the relay
(keepalive, answer wait, silence). Everything runs on the loop; nothing here blocks.

Seams (production defaults; the simulation tier injects in-memory ones): `sched` (time and
timers, `shoal.clock.Scheduler`; default the running loop), `bind_factory` (the birthday
sockets, `shoal.udp.bind.BindFactory`; default `open_udp`), `ws_connect` (the relay WebSocket
dialer, `websockets.connect`'s call shape), `host_endpoints` (our addresses; None: not watched)
and `portmap` (False: no gateway is asked). The data socket is the plane's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import websockets

from shoal.constants import (
    BIRTHDAY_HOLD,
    DISCO_MAGIC,
    HOST_ADDRESS_CHECK,
    REFLEXIVE_REFRESH,
    REFLEXIVE_REFRESH_RELAYED,
    RELAY_MAGIC,
    RELAY_MAX_FRAME,
    RELAY_WS_PATH,
    STUN_PORT,
    VIRTUAL_ENDPOINT_PREFIX,
)
from shoal import endpoint
from shoal.clock import Cancellable, Scheduler, running
from shoal.endpoint import Endpoint
from shoal.control import messages as M
from shoal.daemon.env import sleep
from shoal.nat import stun
from shoal.nat.disco import CandidateKind, DiscoCodec
from shoal.nat.paths import Path, PathEngine, PathKind, SprayLimit, Transmit
from shoal.nat.portmap.client import PortMapper, find_gateway
from shoal.nat.reflexive import ReflexiveProbe
from shoal.relay.client import RelayClient
from shoal.relay.link import Changed, CloseWs, Delivered, OpenWs, RelayLink, SendUdp, SendWs
from shoal.udp.bind import Bind, BindFactory, open_udp
from shoal.wireguard.keys import PrivateKey, PublicKey

log = logging.getLogger("shoal.traversal")


__all__ = ["Traversal", "WsConnector", "candidates_of", "relay_ws_url"]

# The relay's WebSocket dialer: called as websockets.connect(url, max_size=..., compression=None,
# open_timeout=..., close_timeout=...); returns an async context manager whose value has async
# send(bytes), recv(), close() and async iteration over incoming messages.
WsConnector = Callable[..., Any]


def _parse(text: str) -> Endpoint | None:
    """A strict "ip:port" of a usable address (shoal.endpoint), else None: never a
    host name to resolve, never loopback, multicast, link-local, reserved or overlay."""
    try:
        ip, port = endpoint.parse(text)
    except endpoint.EndpointError:
        return None
    return (str(ip), port) if endpoint.usable(ip) else None


def _is_lan(host: str) -> bool:
    """A private (LAN) address (shoal.endpoint: RFC 1918, ULA, the lab's 198.18/15).
    Documentation ranges (RFC 5737/3849) count as public: they stand for the internet in
    examples and in the lab."""
    return endpoint.classify(host) is endpoint.Scope.PRIVATE


def candidates_of(peer: M.PeerInfo) -> list[tuple[CandidateKind, Endpoint]]:
    """A peer's candidates as the path engine takes them: what it reported (port-mapped,
    reflexive, its host addresses) and its endpoints from the login. A private address is a
    LAN candidate (LOCAL), any other one is reachable across the internet (REFLEXIVE).
    Entries that are not a strict endpoint of a usable address are dropped. Which of these
    the path engine may spray comes separately: PeerInfo.observed_ip (issue 18 F10)."""
    out: list[tuple[CandidateKind, Endpoint]] = []
    seen: set[Endpoint] = set()
    entries = [c.addr for c in peer.candidates if c.kind == "mapped"]
    mapped = set(entries)
    entries += [c.addr for c in peer.candidates if c.kind != "mapped"] + list(peer.endpoints)
    for text in entries:
        a = _parse(text)
        if a is None or a in seen or a[1] == 0:
            continue
        seen.add(a)
        kind = CandidateKind.MAPPED if text in mapped else CandidateKind.LOCAL if _is_lan(a[0]) else CandidateKind.REFLEXIVE
        out.append((kind, a))
    return out


class Traversal:
    """See the module docstring. `plane` is the daemon's `WgInterface` (already running)."""

    def __init__(
        self,
        key: PrivateKey,
        plane: Any,
        *,
        on_candidates: Callable[[list[M.Candidate], bool], None],
        host_endpoints: Callable[[], Awaitable[list[str]]] | None = None,
        clock: Callable[[], float] | None = None,
        portmap: bool = True,
        server_up: Callable[[], bool] = lambda: True,
        sched: Scheduler | None = None,
        bind_factory: BindFactory = open_udp,
        ws_connect: WsConnector | None = None,
    ) -> None:
        self.key = key
        self.public_key = key.public_key()
        self.plane = plane
        self.on_candidates = on_candidates
        self._host_endpoints = host_endpoints
        self._sched = running(sched)  # time and timers (default: the running loop)
        self._clock = clock or self._sched.time
        self._bind_factory = bind_factory  # opens the birthday sockets
        self._ws_connect: WsConnector = ws_connect if ws_connect is not None else websockets.connect
        self.codec = DiscoCodec(key)
        self.engines: dict[PublicKey, PathEngine] = {}
        self._cands: dict[PublicKey, list[tuple[CandidateKind, Endpoint]]] = {}
        self._vep: dict[PublicKey, Endpoint] = {}
        self._vep_key: dict[Endpoint, PublicKey] = {}
        self._vep_next = 1
        self._peer_hard: dict[PublicKey, bool] = {}
        self._observed: dict[PublicKey, str] = {}  # PeerInfo.observed_ip per peer
        self.spray_limit = SprayLimit()  # spray budgets per peer and per target IP, all engines together
        self._last_direct: dict[PublicKey, Endpoint] = {}  # the endpoint of the last direct path
        # birthday sockets: k -> socket; paths over them: virtual endpoint <-> (k, peer address)
        self._bsocks: dict[int, Bind] = {}
        self._bsock_until = 0.0  # unused birthday sockets close then
        self._route: dict[Endpoint, tuple[int, Endpoint]] = {}
        self._route_vep: dict[tuple[int, Endpoint], Endpoint] = {}
        self._route_owner: dict[Endpoint, PublicKey] = {}
        self.stats: Counter[str] = Counter()
        self.host: list[str] = []  # our host endpoints ("ip:port")
        self.mapped: Endpoint | None = None  # a port mapping on our gateway, if any
        self.probe: ReflexiveProbe | None = None
        self._reported: tuple[tuple[M.Candidate, ...], bool] | None = None
        # relay: the connection's state machine is the link's; the WebSocket task is ours
        self.link = RelayLink(key, stats=self.stats)
        self._ws_id = 0  # the link's number of the WebSocket our task runs
        self._ws_task: asyncio.Task[None] | None = None
        self._ws_queue: asyncio.Queue[bytes] | None = None
        self._timer: Cancellable | None = None
        self._timer_at: float | None = None
        self._host_task: asyncio.Task[None] | None = None
        self.portmap = portmap
        self._server_up = server_up  # the control connection is up (the server is reachable)
        self._mapper: PortMapper | None = None
        self._mapper_task: asyncio.Task[None] | None = None
        self._closed = False
        plane.side_channel = self._on_side
        plane.relay_out = self._relay_out

    # ------------------------------------------------------------------ inputs from the daemon

    def start(self, host: list[str]) -> None:
        self.host = list(host)
        if self._host_endpoints is not None:
            self._host_task = asyncio.create_task(self._watch_host(), name="host-addresses")

    def set_server(self, server_ip: str, server_key: PublicKey, *, stun_port: int = STUN_PORT,
                   relay_port: int = 0, relay_ws_url: str | None = None) -> None:
        """After each login: where STUN and the relay are. Restarts what changed."""
        now = self._clock()
        stun_addr = (server_ip, stun_port)
        if stun_port and (self.probe is None or self.probe.server != stun_addr):
            self.probe = ReflexiveProbe(stun_addr)
            self.probe.start(now)
        if self.portmap and self._mapper is None and ":" not in server_ip:
            self._mapper_task = asyncio.create_task(self._map_port(server_ip), name="port-mapping")
        self.link.set_server(server_key, (server_ip, relay_port) if relay_port else None, relay_ws_url, now)
        self._pump(now)
        self._after(now)

    def set_peers(self, peers: list[M.PeerInfo]) -> None:
        """The view's peers (exactly): engines are created, updated or dropped."""
        now = self._clock()
        wanted: dict[PublicKey, M.PeerInfo] = {}
        for p in peers:
            try:
                wanted[PublicKey(p.public_key)] = p
            except (TypeError, ValueError):
                continue
        for key in [k for k in self.engines if k not in wanted]:
            del self.engines[key]
            self._cands.pop(key, None)
            self._observed.pop(key, None)
            self._peer_hard.pop(key, None)
            self._last_direct.pop(key, None)
            self.codec.remove_peer(bytes(key))
            vep = self._vep.pop(key, None)
            if vep is not None:
                self._vep_key.pop(vep, None)
                self.plane.virtual_endpoints.discard(vep)
            for rvep, owner in list(self._route_owner.items()):
                if owner == key:
                    self._route_vep.pop(self._route.pop(rvep), None)
                    del self._route_owner[rvep]
                    self.plane.virtual_endpoints.discard(rvep)
        relay_ok = self.link.ready
        for key, p in wanted.items():
            cands = candidates_of(p)
            eng = self.engines.get(key)
            self._peer_hard[key] = p.nat_hard
            if eng is None:
                self.codec.add_peer(bytes(key))
                eng = self.engines[key] = PathEngine(self.codec, bytes(key), local_hard=self._hard(), peer_hard=p.nat_hard,
                                                     spray_limit=self.spray_limit)
                self._cands[key], self._observed[key] = cands, p.observed_ip
                self._emit(key, eng.set_remote_candidates(cands, now, relay=relay_ok, observed=p.observed_ip))
                eng.start(now)
                self._emit(key, eng.set_local_candidates(self._local_candidates(), now))
                self._emit(key, eng.handle_timer(now))
            else:
                eng.set_hardness(local_hard=self._hard(), peer_hard=p.nat_hard, now=now)
                if (cands, p.observed_ip) != (self._cands.get(key), self._observed.get(key)):
                    self._cands[key], self._observed[key] = cands, p.observed_ip
                    self._emit(key, eng.set_remote_candidates(cands, now, relay=relay_ok, observed=p.observed_ip))
        self._after(now)

    def set_mapped(self, addr: Endpoint | None) -> None:
        """A port mapping on our gateway appeared, changed or went away."""
        if addr != self.mapped:
            self.mapped = addr
            self._candidates_changed(self._clock())

    def path_of(self, key: PublicKey) -> dict[str, Any] | None:
        eng = self.engines.get(key)
        if eng is None:
            return None
        p: Path | None = eng.path
        if p is None:
            return {"path": None, "endpoint": None, "rtt_ms": None, "lan": False}
        return {
            "path": p.kind.value,
            "endpoint": endpoint.text(p.addr) if p.addr is not None else (
                f"relay {self.relay_mode} {endpoint.text(self.relay_udp) if self.relay_mode == 'udp' and self.relay_udp else self.relay_ws_url}"),
            "rtt_ms": round(p.rtt * 1000, 3) if p.rtt is not None else None,
            "lan": p.lan,
        }

    def info(self) -> dict[str, Any]:
        refl, hard = self.probe.result if self.probe is not None else (None, False)
        return {
            "host": self.host,
            "reflexive": endpoint.text(refl) if refl else None,
            "nat_hard": hard,
            "mapped": endpoint.text(self.mapped) if self.mapped else None,
            "mapped_via": self._mapper.protocol if self._mapper is not None and self.mapped else None,
            "relay": {"mode": self.relay_mode, "ready": bool(self.relay and self.relay.ready),
                      "rtt_ms": round(self.relay_rtt * 1000, 3) if self.relay_rtt is not None else None,
                      "udp": endpoint.text(self.relay_udp) if self.relay_udp else None, "ws": self.relay_ws_url,
                      "client": dict(self.relay.stats) if self.relay is not None else {}},
            "stats": dict(self.stats) | {f"disco_{k}": v for k, v in self.codec.stats.items()},
            "peers": {key.fingerprint(): dict(eng.stats) for key, eng in self.engines.items()},
        }

    async def _map_port(self, server_ip: str) -> None:
        port = getattr(self.plane, "listen_port", None)
        if not port:
            return
        self._mapper = PortMapper(port, gateway=find_gateway(server_ip), on_change=self.set_mapped)
        ext = await self._mapper.start()
        if ext is not None:
            log.info("port mapping: %s via %s", endpoint.text(ext), self._mapper.protocol)
            self.set_mapped(ext)
        else:
            log.info("port mapping: none on this gateway (PCP, NAT-PMP, UPnP IGD did not answer)")

    async def close(self) -> None:
        self._closed = True
        if self._mapper_task is not None:
            self._mapper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._mapper_task
        if self._mapper is not None:
            with contextlib.suppress(Exception):
                await self._mapper.close()
        if self._timer is not None:
            self._timer.cancel()
        for task in (self._ws_task, self._host_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self.plane.side_channel = None
        self.plane.relay_out = None
        for k in list(self._bsocks):
            self._close_bsock(k)

    # ------------------------------------------------------------------ candidates

    def _hard(self) -> bool:
        return self.probe.result[1] if self.probe is not None else False

    def _local_candidates(self) -> list[tuple[CandidateKind, Endpoint]]:
        out: list[tuple[CandidateKind, Endpoint]] = []
        for e in self.host:
            a = _parse(e)
            if a is not None:
                out.append((CandidateKind.LOCAL if _is_lan(a[0]) else CandidateKind.REFLEXIVE, a))
        refl = self.probe.result[0] if self.probe is not None else None
        if refl is not None and all(refl != a for _, a in out):
            out.append((CandidateKind.REFLEXIVE, refl))
        if self.mapped is not None and all(self.mapped != a for _, a in out):
            out.append((CandidateKind.MAPPED, self.mapped))
        return out[:M.MAX_CANDIDATES]

    def report(self) -> tuple[list[M.Candidate], bool]:
        """What the server should hand our peers (sent after every login and every change)."""
        refl = self.probe.result[0] if self.probe is not None else None
        cands = []
        for k, a in self._local_candidates():
            name = "mapped" if k is CandidateKind.MAPPED else "reflexive" if a == refl else "local"
            cands.append(M.Candidate(name, endpoint.text(a)))  # type: ignore[arg-type]
        return cands, self._hard()

    def _candidates_changed(self, now: float) -> None:
        local = self._local_candidates()
        hard = self._hard()
        for key, eng in self.engines.items():
            eng.set_hardness(local_hard=hard, peer_hard=self._peer_hard.get(key, False), now=now)
            self._emit(key, eng.set_local_candidates(local, now))
        cands, hard = self.report()
        if (tuple(cands), hard) != self._reported:
            self._reported = (tuple(cands), hard)
            try:
                self.on_candidates(cands, hard)
            except Exception:  # noqa: BLE001 - the daemon's bug must not stop traversal
                log.exception("candidate callback failed")
        self._after(now)

    async def _watch_host(self) -> None:
        """Roaming: our own addresses changed -> new candidates, a new STUN round."""
        assert self._host_endpoints is not None
        while True:
            await sleep(self._sched, HOST_ADDRESS_CHECK)
            try:
                host = await self._host_endpoints()
            except Exception as e:  # noqa: BLE001 - netlink trouble: try again later
                log.debug("cannot read host addresses: %s", e)
                continue
            if host != self.host:
                log.info("host addresses changed: %s -> %s", ", ".join(self.host) or "-", ", ".join(host) or "-")
                self.host = host
                now = self._clock()
                if self.probe is not None:
                    self.probe.restart(now)
                # the relay: a UDP binding moves by itself (the relay stops answering our
                # keepalives from the new address, we authenticate again); a WebSocket bound to a
                # vanished address drops and is redone at once

                self._candidates_changed(now)

    # ------------------------------------------------------------------ data socket

    def _on_side(self, datagrams: list[tuple[bytes, Endpoint]], now: float) -> None:
        for data, src in datagrams:
            if data[:len(DISCO_MAGIC)] == DISCO_MAGIC:
                self._on_disco(data, src, now, via_relay=False)
            elif data[:2] == RELAY_MAGIC and src == self.link.udp:
                self.link.udp_received(data, now)
                self._pump(now)
            elif stun.is_stun(data):
                if self.probe is None or not self.probe.receive(data, src, now):
                    self.stats["stun_unexpected"] += 1
            else:
                self.stats["unknown"] += 1
        self._after(now)

    def _on_disco(self, data: bytes, src: Endpoint, now: float, *, via_relay: bool, sock: int = 0) -> None:
        opened = self.codec.open(data, now)
        if opened is None:
            return  # counted by the codec (forged, replayed, unknown peer, malformed ...)
        sender, msg = opened
        key = PublicKey(sender)
        eng = self.engines.get(key)
        if eng is None:
            self.stats["disco_no_engine"] += 1
            return
        self._emit(key, eng.handle_message(msg, src, now, via_relay=via_relay, sock=sock))

    def _emit(self, key: PublicKey, out: list[Transmit]) -> None:
        direct = []
        for t in out:
            if t.via_relay:
                self._relay_send(bytes(key), t.data)
            elif t.dst is not None:
                if t.sock:
                    self._bsend(t.sock, t.data, t.dst)
                else:
                    direct.append((t.data, t.dst))
        if direct:
            self.plane.send_raw(direct)

    # ------------------------------------------------------------------ birthday sockets

    def _bsock(self, k: int) -> Bind | None:
        s = self._bsocks.get(k)
        if s is None:
            try:
                s = self._bind_factory(0)
            except OSError as e:
                self.stats["birthday_socket_error"] += 1
                log.debug("birthday socket %d: %s", k, e)
                return None
            self._bsocks[k] = s
            s.set_reader(lambda: self._on_bsock(k))
        return s

    def _close_bsock(self, k: int) -> None:
        s = self._bsocks.pop(k, None)
        if s is not None:
            with contextlib.suppress(Exception):
                s.close()

    def _bsend(self, k: int, data: bytes, dst: Endpoint) -> None:
        if ":" in dst[0]:
            return  # hard NATs are an IPv4 affair; birthday sockets are IPv4
        s = self._bsock(k)
        if s is None:
            return
        self._bsock_until = self._clock() + BIRTHDAY_HOLD
        try:
            s.send_batch([(data, dst)])
        except OSError:  # a Bind counts network errors itself; this is a broken one
            self.stats["birthday_send_error"] += 1

    def _on_bsock(self, k: int) -> None:
        s = self._bsocks.get(k)
        if s is None:
            return
        now = self._clock()
        wg: list[tuple[bytes, Endpoint]] = []
        try:
            batch = s.recv_batch(64)
        except OSError:
            self.stats["birthday_recv_error"] += 1
            batch = []
        for data, src in batch:
            if data[:len(DISCO_MAGIC)] == DISCO_MAGIC:
                self._on_disco(data, src, now, via_relay=False, sock=k)
            else:
                vep = self._route_vep.get((k, src))
                if vep is not None:
                    wg.append((data, vep))
                else:
                    self.stats["birthday_unknown"] += 1
        if wg:
            self.plane.inject(wg, now)
        self._after(now)

    def _expire_bsocks(self, now: float) -> None:
        if not self._bsocks or now < self._bsock_until:
            return
        used = {k for (k, _a) in self._route_vep}
        for k in [k for k in self._bsocks if k not in used]:
            self._close_bsock(k)

    def _vep_of(self, key: PublicKey) -> Endpoint:
        vep = self._vep.get(key)
        if vep is None:
            vep = (f"{VIRTUAL_ENDPOINT_PREFIX}{self._vep_next:x}", 1)
            self._vep_next += 1
            self._vep[key] = vep
            self._vep_key[vep] = key
            self.plane.virtual_endpoints.add(vep)
        return vep

    def _apply_paths(self, now: float) -> None:
        for key, eng in self.engines.items():
            events = eng.pop_events()
            if not events:
                continue
            path = eng.path
            for e in events:
                what = "none" if e.path is None else (
                    f"direct {endpoint.text(e.path.addr)}" if e.path.kind is PathKind.DIRECT and e.path.addr else "relay")
                rtt = f" (rtt {e.path.rtt * 1000:.2f} ms)" if e.path is not None and e.path.rtt is not None else ""
                log.info("path to %s: %s %s%s", key.short(), e.kind, what + (" (LAN)" if e.path and e.path.lan else ""), rtt)
            if path is None:
                # nothing answers: keep sending where it last worked directly rather than into
                # a relay that is not there (a busy machine can miss pongs; WireGuard decides)
                last = self._last_direct.get(key)
                if last is not None:
                    self.plane.set_endpoint(key, last, now)
                continue
            if path.kind is PathKind.DIRECT and path.addr is not None:
                ep = self._routed_vep(key, path.sock, path.addr) if path.sock else path.addr
                self._last_direct[key] = ep
            else:
                ep = self._vep_of(key)
            self.plane.set_endpoint(key, ep, now)

    def _routed_vep(self, key: PublicKey, k: int, addr: Endpoint) -> Endpoint:
        """The virtual endpoint of a path over birthday socket k (one per peer at a time)."""
        vep = self._route_vep.get((k, addr))
        if vep is None:
            for old_vep, route in list(self._route.items()):  # the peer's previous one goes
                if self._route_owner.get(old_vep) == key:
                    del self._route[old_vep]
                    self._route_vep.pop(route, None)
                    self._route_owner.pop(old_vep, None)
                    self.plane.virtual_endpoints.discard(old_vep)
            vep = (f"{VIRTUAL_ENDPOINT_PREFIX}{self._vep_next:x}", 2)
            self._vep_next += 1
            self._route[vep] = (k, addr)
            self._route_vep[(k, addr)] = vep
            self._route_owner[vep] = key
            self.plane.virtual_endpoints.add(vep)
        return vep

    # ------------------------------------------------------------------ relay (glue around RelayLink)

    @property
    def relay(self) -> RelayClient | None:
        return self.link.client

    @property
    def relay_mode(self) -> str | None:
        return self.link.mode

    @property
    def relay_key(self) -> PublicKey | None:
        return self.link.relay_key

    @property
    def relay_udp(self) -> Endpoint | None:
        return self.link.udp

    @property
    def relay_ws_url(self) -> str | None:
        return self.link.ws_url

    @property
    def relay_rtt(self) -> float | None:
        return self.link.rtt

    def _pump(self, now: float) -> None:
        """Carry out what the relay link asks, in order (nested calls pump their own)."""
        for a in self.link.take_actions():
            if isinstance(a, SendUdp):
                self.plane.send_raw([(a.frame, a.dst)])
            elif isinstance(a, SendWs):
                if a.ws == self._ws_id and self._ws_queue is not None:
                    try:
                        self._ws_queue.put_nowait(a.frame)
                    except asyncio.QueueFull:
                        self.stats["relay_ws_queue_full"] += 1
            elif isinstance(a, OpenWs):
                self._stop_ws()
                self._ws_id, self._ws_queue = a.ws, asyncio.Queue(4096)
                self._ws_task = asyncio.create_task(self._ws_run(a, self._ws_queue), name="relay-ws")
            elif isinstance(a, CloseWs):
                if a.ws == self._ws_id:
                    self._stop_ws()
            elif isinstance(a, Changed):
                self._relay_state_changed(now)
            elif isinstance(a, Delivered):
                self._delivered(a.items, now)

    def _stop_ws(self) -> None:
        if self._ws_task is not None:
            self._ws_task.cancel()
            self._ws_task = None
        self._ws_queue = None
        self._ws_id = 0

    async def _ws_run(self, req: OpenWs, queue: asyncio.Queue[bytes]) -> None:
        url, ws = req.url, req.ws
        try:
            async with self._ws_connect(url, max_size=RELAY_MAX_FRAME, compression=None,
                                        open_timeout=req.open_timeout, close_timeout=2) as conn:
                log.info("relay: WebSocket %s open", url)
                self.link.ws_opened(ws, self._clock())

                async def sender() -> None:
                    while True:
                        await conn.send(await queue.get())

                send_task = asyncio.create_task(sender())
                try:
                    async for msg in conn:
                        if isinstance(msg, bytes):
                            now = self._clock()
                            self.link.ws_received(ws, msg, now)
                            self._pump(now)
                            self._after(now)
                finally:
                    send_task.cancel()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure: retry later
            log.info("relay: WebSocket %s: %s", url, e or type(e).__name__)
        if not self._closed:
            now = self._clock()
            self.link.ws_closed(ws, now)
            self._pump(now)
            self._after(now)

    def _relay_send(self, dst: bytes, payload: bytes) -> None:
        now = self._clock()
        self.link.send(dst, payload, now)
        self._pump(now)

    def _relay_out(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        """WireGuard packets the engine sent to a virtual endpoint."""
        for data, ep in datagrams:
            route = self._route.get(ep)
            if route is not None:
                self._bsend(route[0], data, route[1])
                continue
            key = self._vep_key.get(ep)
            if key is not None:
                self._relay_send(bytes(key), data)

    def _delivered(self, inbox: list[tuple[bytes, bytes]], now: float) -> None:
        """What peers sent us through the relay: disco to the path engines, the rest to
        WireGuard from the sender's virtual endpoint."""
        wg: list[tuple[bytes, Endpoint]] = []
        for src, payload in inbox:
            try:
                key = PublicKey(src)
            except (TypeError, ValueError):
                continue
            if key not in self.engines:
                self.stats["relay_from_stranger"] += 1
                continue
            if payload[:len(DISCO_MAGIC)] == DISCO_MAGIC:
                self._on_disco(payload, self._vep_of(key), now, via_relay=True)
            else:
                wg.append((payload, self._vep_of(key)))
        if wg:
            self.plane.inject(wg, now)
            self._keep_direct({self._vep_key[v] for _, v in wg if v in self._vep_key}, now)

    def _keep_direct(self, keys: set[PublicKey], now: float) -> None:
        """A late packet through the relay (a handshake answer, say) made WireGuard roam the
        peer onto the relay although a direct path is chosen: point it back. Traversal owns
        endpoints; WireGuard's roaming is welcome between real addresses only."""
        for key in keys:
            eng = self.engines.get(key)
            path = eng.path if eng is not None else None
            if path is not None and path.kind is PathKind.DIRECT and path.addr is not None:
                ep = self._routed_vep(key, path.sock, path.addr) if path.sock else path.addr
                self.plane.set_endpoint(key, ep, now)

    def _relay_state_changed(self, now: float) -> None:
        ready = self.link.ready
        for key, eng in self.engines.items():
            if eng.relay != ready:
                self._emit(key, eng.set_remote_candidates(self._cands.get(key, []), now, relay=ready))

    def _relayed(self) -> bool:
        return any(e.path is not None and e.path.kind is PathKind.RELAY for e in self.engines.values())

    # ------------------------------------------------------------------ timers

    def _after(self, now: float) -> None:
        """After any input: probe output, path changes, candidate changes, the next timer."""
        if self._closed:
            return
        probe = self.probe
        if probe is not None:
            out = probe.take_outbox()
            if out:
                self.plane.send_raw(out)
            if probe.changed:
                probe.changed = False
                refl, hard = probe.result
                log.info("reflexive address %s, NAT mapping %s", endpoint.text(refl) if refl else "unknown",
                         "varies by destination (hard)" if hard else "endpoint-independent")
                self._candidates_changed(now)
        self._apply_paths(now)
        if probe is not None:
            want = REFLEXIVE_REFRESH_RELAYED if self._relayed() else REFLEXIVE_REFRESH
            if probe.refresh != want:
                probe.set_refresh(want, now)
        self._arm()

    def _arm(self) -> None:
        ds = [d for d in (eng.next_deadline() for eng in self.engines.values()) if d is not None]
        if self.probe is not None:
            d = self.probe.next_deadline()
            if d is not None:
                ds.append(d)
        self.link.active = self._relayed()
        d = self.link.next_deadline()
        if d is not None:
            ds.append(d)
        if self._bsocks and len(self._bsocks) > len({k for (k, _a) in self._route_vep}):
            ds.append(self._bsock_until)
        deadline = min(ds) if ds else None
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._sched.call_at(max(deadline, self._sched.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._clock()
        try:
            if self.probe is not None:
                d = self.probe.next_deadline()
                if d is not None and now >= d:
                    self.probe.handle_timer(now)
            for key, eng in list(self.engines.items()):
                d = eng.next_deadline()
                if d is not None and now >= d:
                    self._emit(key, eng.handle_timer(now))
            self.link.active = self._relayed()
            self.link.handle_timer(now, server_up=self._server_up())
            self._pump(now)
            self._expire_bsocks(now)
        except Exception:  # noqa: BLE001 - keep the loop alive; the bug is logged
            log.exception("traversal timer failed")
        self._after(now)


def relay_ws_url(control_url: str) -> str:
    """ws://h:p/control -> ws://h:p/relay (the server's relay WebSocket)."""
    base = control_url.rsplit("/", 1)[0]
    return base + RELAY_WS_PATH

