"""The node daemon: one asyncio process owning the interface, the control connection and the local API.

Tasks and what each one owns (everything runs on one event loop; nothing is thread-safe):

    data plane   `WgInterface.run` (shoal.dataplane.runtime): the interface `shoal0` (a TAP driven by
                 `shoal.lan.plane.LanPlane`, or a TUN with Options.lan=False), the UDP
                 socket, the engine. Only `_reconcile` changes its peers, addresses and the
                 LAN plane's view (networks, online members, peers' addresses, l2 TAPs).
    control      `_control_loop`: connect (Noise IK, pinned server key), Login, then read
                 messages until the connection drops; reconnect with backoff + jitter. It
                 alone mutates `view`, `conn`, `state`, `last_error`, `next_try_at`. While
                 connected it pings every KEEPALIVE_INTERVAL and treats SILENCE_TIMEOUT
                 without a frame as a lost server (a blackholed path is noticed in 15 s).
                 While disconnected nothing is torn down: the engine keeps every tunnel as
                 it is. On reconnect Login carries `have_version`; the server answers with
                 updates or a FullView, and reconciliation only touches peers that changed
                 (healthy tunnels keep their sessions).
    liveness     `_liveness_loop` (every LIVENESS_TICK): feeds `liveness`
                 (`shoal.daemon.liveness`) with the engine's rx counters and handshakes;
                 while the server is lost (every peer) or asked for it with CheckPeer (that
                 peer) it probes quiet tunnels with an ICMP echo through the tunnel every
                 PROBE_INTERVAL, marks a tunnel down after DOWN_AFTER s without an
                 authenticated packet and keeps probing it. It logs every state change with
                 its reason and answers the server's CheckPeer with PeerReport (at once,
                 then every REPORT_INTERVAL while the peer answers). It owns `_reported`.
    traversal    `shoal.daemon.traversal.Traversal` (when the plane is a real `WgInterface`): disco,
                 path engines, reflexive probe and relay on the data socket. It alone sets
                 peers' endpoints in the engine (the view's endpoints are candidates, not
                 endpoints); the daemon feeds it the view's peers after every reconcile and the
                 server's STUN/relay after every login, and sends its Candidates to the server.
    local API    `ApiServer` handlers (`routes`): requests to the server are correlated by
                 req_id (`pending`), answered with the server's Result.

View -> engine (`_reconcile`): a WireGuard peer exists exactly for each peer of the view
(`shoal.daemon.view`); a node that shares no online network with us is removed, so its
handshakes and packets are refused by the engine (the receiving side enforces isolation).
The interface carries our IPv4/10 and IPv6/48.

Restarts: the stored view (`view.bin`, sealed with a key derived from the node key, see
`shoal.daemon.identity`) configures the engine before the server answers; an edited or
foreign file is refused (logged) and the daemon starts with no peers.

Stopping the daemon (SIGTERM) closes the control connection without Logout: the server keeps
the node online for its grace period, so a daemon restart (upgrade) flaps no tunnel of its
peers; `shoal logout` / `shoal go-offline` take a node offline at once.

RTT shown per peer: the last overlay ping (`shoal ping`, ICMP echo through the tunnel), or
else the last handshake we initiated: time from sending the initiation to the completed
handshake (one UDP round trip plus the peer's handshake work, well under a millisecond).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from shoal import __version__
from shoal import endpoint
from shoal.endpoint import Endpoint
from shoal.control import messages as M
from shoal.daemon import identity
from shoal.daemon.backoff import Backoff
from shoal.daemon.icmp import Pinger
from shoal.daemon.identity import ServerPin, ViewRefused
from shoal.daemon.liveness import LIVENESS_TICK, PROBE_INTERVAL, Liveness
from shoal.daemon.localapi import ApiServer, Handler, HttpError
from shoal.daemon.traversal import Traversal, relay_ws_url
from shoal.daemon.view import Outcome, PeerPlanner, View
from shoal.lan.plane import LanPlane, lan_view
from shoal.dataplane.config import IPInterface, InterfaceConfig, WgConfig
from shoal.dataplane.api import DataPlane
from shoal.dataplane.runtime import DEFAULT_UAPI_DIR, WgInterface, timers_from_env
from shoal.constants import DEFAULT_MTU
from shoal.wireguard.device import Device, DeviceEvent
from shoal.wireguard.keys import PrivateKey, PublicKey
from shoal.wireguard.peer import PeerConfig

log = logging.getLogger("shoal.daemon")

DEFAULT_RUN_DIR = Path("/run/shoal")
RUN_DIR = Path(os.environ.get("SHOAL_RUN_DIR", str(DEFAULT_RUN_DIR)))
STATE_DIR = Path(os.environ.get("SHOAL_STATE_DIR", "/var/lib/shoal"))
IFACE = "shoal0"
SOCKET_NAME = "shoald.sock"
REQUEST_TIMEOUT = 10.0
REPORT_INTERVAL = 10.0  # while the server asks us to check a peer that answers: PeerReport this often
LOGIN_TIMEOUT = 15.0
VIEW_WAIT = 3.0  # how long a mutating command waits for the view to show its effect
OVERLAY_V4 = ipaddress.ip_network("100.64.0.0/10")
V4_PREFIX, V6_PREFIX = 10, 48


def default_socket() -> Path:
    return Path(os.environ.get("SHOAL_SOCKET", str(RUN_DIR / SOCKET_NAME)))


@dataclass
class Options:
    state_dir: Path = STATE_DIR
    run_dir: Path = RUN_DIR
    socket_path: Path | None = None  # default RUN_DIR/shoald.sock
    iface: str = IFACE
    port: int = 0
    mtu: int = DEFAULT_MTU
    socket_group: int | None = None
    endpoints: list[str] = field(default_factory=list)  # advertised; empty = the host's addresses
    nickname: str | None = None  # for the first login only
    uapi_dir: Path | None = None  # default: /var/run/wireguard, or RUN_DIR/wireguard if RUN_DIR is not the default
    lan: bool = True  # shoal0 is a TAP with broadcast/multicast and layer-2 networks (docs/lan.md); False: TUN
    multicast_route: bool = True  # LAN mode: route 224.0.0.0/4 to shoal0 when the host has no multicast route
    warm: bool = True  # keep the packet path warm while data flows (shoal.dataplane.warm)
    traversal: bool = True  # NAT traversal and relaying on the data socket; False: peers only at
    #                         the endpoints the view gives (tests with an in-memory plane)


PlaneFactory = Callable[[WgConfig, Path, Callable[[DeviceEvent, float], None]], DataPlane]
Connector = Callable[..., Awaitable[Any]]


def _wg_plane(config: WgConfig, uapi_dir: Path, on_event: Callable[[DeviceEvent, float], None]) -> DataPlane:
    timers = timers_from_env()  # SHOAL_WG_TEST_TIMERS: shortened engine timers, tests only
    if timers is not None:
        log.warning("SHOAL_WG_TEST_TIMERS is set: engine timers %s (tests only)", timers)
        return WgInterface(config, uapi_dir=uapi_dir, on_event=on_event, timers=timers)
    return WgInterface(config, uapi_dir=uapi_dir, on_event=on_event)


class LoginFailed(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _need(body: dict[str, Any], name: str, kind: type = str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is str and not value):
        raise HttpError(400, f"missing or invalid '{name}'", "invalid")
    return value


def _struct_error(e: Exception) -> HttpError:
    return HttpError(400, f"invalid input: {e}", "invalid")


def self_addresses(node: M.SelfInfo | None) -> list[IPInterface]:
    out: list[IPInterface] = []
    if node is None:
        return out
    for text, prefix, version in ((node.ipv4, V4_PREFIX, 4), (node.ipv6, V6_PREFIX, 6)):
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            continue
        if addr.version == version:
            out.append(ipaddress.ip_interface(f"{addr}/{prefix}"))
    return out


async def host_endpoints(port: int, exclude_iface: str) -> list[str]:
    """'ip:port' for every global address of this host except those of the overlay interface
    and of layer-2 network TAPs (an address a member got there by DHCP is no way to reach us)."""
    from pyroute2 import AsyncIPRoute

    from shoal.lan.plane import L2_PREFIX

    found: list[str] = []
    async with AsyncIPRoute() as ipr:
        skip: set[int] = set()
        async for link in await ipr.link("dump"):
            name = link.get("IFLA_IFNAME") or ""
            if name in (exclude_iface, "lo") or name.startswith(L2_PREFIX):
                skip.add(link.get("index"))
        async for msg in await ipr.addr("dump"):
            if msg.get("index") in skip or msg.get("scope") != 0:
                continue
            text = msg.get("IFA_ADDRESS")
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr.is_loopback or addr.is_link_local or (addr.version == 4 and addr in OVERLAY_V4):
                continue
            found.append(endpoint.format(addr, port))
    found.sort(key=lambda e: e.startswith("["))  # IPv4 first: the lab internet is IPv4
    return found[: M.MAX_ENDPOINTS]


class Daemon:
    def __init__(
        self,
        options: Options,
        *,
        connect: Connector | None = None,
        fetch_server_key: Callable[[str], Awaitable[PublicKey]] | None = None,
        plane_factory: PlaneFactory = _wg_plane,
        pinger: Any = None,
    ) -> None:
        from shoal.control import transport

        self.opts = options
        self.socket_path = options.socket_path or options.run_dir / SOCKET_NAME
        # stock `wg show` / `shoal wg show` find the default daemon's interface; daemons with
        # their own run dir (several on one machine) keep their UAPI socket there
        self.uapi_dir = options.uapi_dir or (
            DEFAULT_UAPI_DIR if options.run_dir == DEFAULT_RUN_DIR else options.run_dir / "wireguard")
        self._connect = connect or transport.connect
        self._fetch_key = fetch_server_key or transport.fetch_server_key
        self._transport = transport
        self._plane_factory = plane_factory
        self.pinger = pinger if pinger is not None else Pinger()
        self.key, created = identity.load_or_create_node_key(options.state_dir)
        if created:
            log.info("made a new node key in %s", options.state_dir / identity.NODE_KEY)
        self.public_key: PublicKey = self.key.public_key()
        self.pin: ServerPin | None = identity.load_pin(options.state_dir)
        self.view = View()
        self.planner = PeerPlanner(self.public_key)
        frame = None
        if self.pin is not None:
            try:
                frame = identity.load_view(options.state_dir, self.key)
            except ViewRefused as e:
                log.warning("REFUSING the stored view: %s; starting without peers until the server answers", e)
        if frame:
            try:
                msg = M.decode_stored_view(frame)
                if isinstance(msg, M.FullView):
                    self.view.apply(msg)
                    log.info("restored the stored view (version %d, %d peers)", msg.version, len(msg.peers))
            except M.ProtocolError as e:
                log.warning("ignoring the stored view: %s", e)
        self.plane: DataPlane | None = None
        self.api: ApiServer | None = None
        self.conn: Any = None
        self.state = "logged-out" if self.pin is None else "connecting"
        self.state_since = time.monotonic()
        self.state_since_wall = time.time()
        self.next_try_at: float | None = None  # monotonic time of the next connection attempt
        self.last_error = ""
        self.liveness = Liveness()
        self.server_checks = False  # the server speaks check_peer (LoginOk.features)
        self.server_lan = False  # the server knows layer-2 networks and the broadcast switch (LoginOk.features)
        self._reported: dict[PublicKey, tuple[bool, float]] = {}  # last PeerReport per peer, and when
        self._probes: set[asyncio.Task[None]] = set()
        self.connects = 0
        self.endpoints: list[str] = []
        self.pending: dict[int, asyncio.Future[M.Result]] = {}
        self._next_req = 1
        self.rtt: dict[PublicKey, tuple[float, str]] = {}  # seconds, "ping" | "handshake"
        self._control_task: asyncio.Task[None] | None = None
        self._login_waiter: asyncio.Future[M.SelfInfo] | None = None
        self._view_changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.traversal: Traversal | None = None
        self.server_disco = False  # the server takes Candidates (LoginOk.features)
        self.lan: LanPlane | None = LanPlane(multicast_route=options.multicast_route) if options.lan else None

    # ------------------------------------------------------------------ life cycle

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._view_changed = asyncio.Condition()
        cfg = WgConfig(
            self.opts.iface,
            InterfaceConfig(private_key=self.key, listen_port=self.opts.port, mtu=self.opts.mtu,
                            addresses=self_addresses(self.view.node), table=False),
            self.planner.configs(self.view),
        )
        self.plane = self._plane_factory(cfg, self.uapi_dir, self._on_event)
        self.plane.warm = self.opts.warm
        if self.lan is not None:  # LAN mode: shoal0 is a TAP, the LAN plane hooks into the runtime
            self.plane.lan = self.lan
            await self.lan.set_view(lan_view(self.view))
        plane_stop = asyncio.Event()
        plane_task = asyncio.create_task(self.plane.run(plane_stop), name="data-plane")
        ready = asyncio.create_task(self.plane.ready.wait())
        await asyncio.wait({plane_task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if plane_task.done():
            ready.cancel()
            plane_task.result()  # raises the SetupError
            raise RuntimeError("the data plane stopped during start")
        try:
            self.endpoints = list(self.opts.endpoints) or await host_endpoints(self.plane.listen_port or 0, self.opts.iface)
            if self.opts.traversal:
                port, iface = self.plane.listen_port or 0, self.opts.iface
                self.traversal = Traversal(
                    self.key, self.plane, on_candidates=self._on_candidates, server_up=lambda: self.conn is not None,
                    host_endpoints=None if self.opts.endpoints else (lambda: host_endpoints(port, iface)))
                self.traversal.start(self.endpoints)
                self.traversal.set_peers(list(self.view.peers.values()))
            self.api = ApiServer(self.socket_path, self.routes(), group=self.opts.socket_group)
            await self.api.start()
            log.info("node %s (key %s) on %s, UDP port %s, endpoints %s; local API on %s",
                     self.view.node.node_id if self.view.node else "(not logged in)", self.public_key.fingerprint(),
                     self.opts.iface, self.plane.listen_port, ", ".join(self.endpoints) or "-", self.socket_path)
            self._start_control()
            live_task = asyncio.create_task(self._liveness_loop(), name="liveness")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({plane_task, stopper, live_task}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if live_task.done():
                live_task.result()  # a bug in the liveness loop: stop loudly
            live_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live_task
        finally:
            await self._stop_control()
            if self.traversal is not None:
                await self.traversal.close()
            for t in list(self._probes):
                t.cancel()
            if self.api is not None:
                await self.api.close()
            self.pinger.close()
            plane_stop.set()
            with contextlib.suppress(Exception):
                await plane_task
        if plane_task.done() and not stop.is_set():
            plane_task.result()

    def _start_control(self) -> None:
        self._control_task = asyncio.create_task(self._control_loop(), name="control")

    async def _stop_control(self) -> None:
        task, self._control_task = self._control_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _restart_control(self) -> None:
        await self._stop_control()
        self._start_control()

    # ------------------------------------------------------------------ control connection

    def _set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            why = f" ({error})" if error else ""
            level = logging.WARNING if state == "reconnecting" and self.state == "connected" else logging.INFO
            log.log(level, "server connection: %s -> %s%s", self.state, state, why)
            self.state = state
            self.state_since = time.monotonic()
            self.state_since_wall = time.time()
        if error is not None:
            self.last_error = error

    async def _control_loop(self) -> None:
        backoff = Backoff()
        while True:
            pin = self.pin
            if pin is None:
                self._set_state("logged-out")
                await asyncio.Event().wait()  # until login restarts this task
            conn = None
            try:
                self.next_try_at = None
                if self.state != "reconnecting":
                    self._set_state("connecting")
                try:
                    conn = await self._connect(identity.control_url(pin.url), self.key, pin.public_key)
                except self._transport.ServerKeyMismatch as e:
                    log.error("REFUSING the server: %s", e)
                    raise LoginFailed(str(e), "server_key_mismatch") from None
                except (self._transport.TransportError, OSError) as e:
                    raise LoginFailed(str(e), "unreachable") from None
                await self._session(conn, pin, backoff)
            except LoginFailed as e:
                self._set_state("reconnecting", e.args[0])
                self._fail_login(e)
            except asyncio.TimeoutError:  # before OSError: TimeoutError is one
                self._set_state("reconnecting", f"the server was silent for {M.SILENCE_TIMEOUT:g} s (path lost?)")
                self._fail_login(LoginFailed("the server does not answer", "unreachable"))
            except (self._transport.TransportError, OSError) as e:
                self._set_state("reconnecting", f"control connection lost: {e}")
                self._fail_login(LoginFailed(str(e), "unreachable"))
            finally:
                self.conn = None
                self._fail_pending()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 3)
            delay = backoff.next_delay()
            self.next_try_at = time.monotonic() + delay
            log.info("reconnecting in %.1f s (tunnels kept; checking them actively)", delay)
            await asyncio.sleep(delay)

    def _fail_login(self, e: LoginFailed) -> None:
        w, self._login_waiter = self._login_waiter, None
        if w is not None and not w.done():
            w.set_exception(e)

    def _fail_pending(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(HttpError(503, "the control connection dropped before the server answered", "not_connected"))
        self.pending.clear()

    async def _session(self, conn: Any, pin: ServerPin, backoff: Backoff) -> None:
        port = self.plane.listen_port if self.plane is not None else 0
        # --nickname names a new node; afterwards the server's (set-nick) is kept across reconnects
        nickname = self.opts.nickname if self.view.node is None else None
        await conn.send(M.Login(nickname=nickname, listen_port=port or 0, endpoints=self.endpoints,
                                have_version=self.view.version, software=f"shoal {__version__}",
                                features=[M.FEATURE_CHECK_PEER, M.FEATURE_LAN]))
        first = await asyncio.wait_for(conn.recv(), LOGIN_TIMEOUT)
        if isinstance(first, M.Error):
            raise LoginFailed(f"the server refused the login: {first.message or first.code}", first.code or "refused")
        if not isinstance(first, M.LoginOk):
            raise LoginFailed(f"the server answered the login with {type(first).__name__}", "protocol")
        self.conn = conn
        self.connects += 1
        backoff.reset()
        self.server_checks = M.FEATURE_CHECK_PEER in first.features
        self.server_disco = M.FEATURE_DISCO in first.features
        if self.traversal is not None and self.server_disco:
            await self._traversal_server(pin, first)
        self.server_lan = M.FEATURE_LAN in first.features
        now = self._now()
        for key in list(self.liveness.peers):  # the server re-sends CheckPeer for peers still away
            self.liveness.set_requested(key, False, now)
        self._reported.clear()
        self._set_state("connected", "")
        log.info("logged in to %s as %s (%s), %s", pin.url, first.node.node_id, first.node.nickname, first.node.ipv4)
        await self._set_self(first.node)
        w, self._login_waiter = self._login_waiter, None
        if w is not None and not w.done():
            w.set_result(first.node)
        pinger = asyncio.create_task(self._keepalive(conn), name="control-keepalive")
        try:
            await self._read_session(conn)
        finally:
            pinger.cancel()

    async def _traversal_server(self, pin: ServerPin, ok: M.LoginOk) -> None:
        """Tell traversal where the server's STUN and relay are, and report our candidates."""
        assert self.traversal is not None
        url = identity.control_url(pin.url)
        host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=2)  # SOCK_DGRAM
            server_ip = infos[0][4][0]
        except (OSError, IndexError) as e:
            log.warning("cannot resolve the server %s for STUN/relay: %s", host, e)
            return
        relay = M.FEATURE_RELAY in ok.features
        self.traversal.set_server(server_ip, pin.public_key, relay_port=ok.relay_port if relay else 0,
                                  relay_ws_url=relay_ws_url(url) if relay else None)
        cands, hard = self.traversal.report()
        self._on_candidates(cands, hard)

    def _on_candidates(self, cands: list[M.Candidate], hard: bool) -> None:
        conn = self.conn
        if conn is None or not self.server_disco:
            return  # sent after the next login
        task = asyncio.create_task(self._send_quiet(conn, M.Candidates(candidates=cands, nat_hard=hard)))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _keepalive(self, conn: Any) -> None:
        """Ping every KEEPALIVE_INTERVAL: the server (and we) notice a dead path by silence."""
        nonce = 0
        with contextlib.suppress(self._transport.TransportError, OSError):
            while True:
                await asyncio.sleep(M.KEEPALIVE_INTERVAL)
                nonce += 1
                await conn.send(M.Ping(nonce=nonce))

    async def _read_session(self, conn: Any) -> None:
        while True:
            msg = await asyncio.wait_for(conn.recv(), M.SILENCE_TIMEOUT)
            if isinstance(msg, M.CheckPeer):
                self._on_check_peer(msg)
            elif isinstance(msg, (M.FullView, M.ViewUpdate)):
                await self._on_view(conn, msg)
            elif isinstance(msg, M.Result):
                fut = self.pending.pop(msg.req_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            elif isinstance(msg, M.Error):
                raise LoginFailed(f"the server closed the session: {msg.message or msg.code}", msg.code or "error")
            # Pong and anything else: nothing to do

    async def _on_view(self, conn: Any, msg: M.FullView | M.ViewUpdate) -> None:
        outcome = self.view.apply(msg)
        if outcome is Outcome.RESYNC:
            log.info("view version gap or view part out of sequence (have %s, update %s->%s): asking for a resync",
                     self.view.version, getattr(msg, "prev_version", None), msg.version)
            await conn.send(M.ResyncRequest(have_version=self.view.version or 0))
            return
        if outcome in (Outcome.STALE, Outcome.STAGED):  # STAGED: more parts of a split view to come
            return
        await self._reconcile()
        full = self.view.as_full_view()
        if full is not None:
            with contextlib.suppress(OSError):
                identity.save_view(self.opts.state_dir, self.key, M.encode(full))

    async def _set_self(self, node: M.SelfInfo) -> None:
        if self.plane is not None:
            await self.plane.set_addresses(self_addresses(node))

    async def _reconcile(self) -> None:
        """Make the engine match the view (idempotent; untouched peers keep their sessions)."""
        if self.plane is not None:
            before = set(self.plane.device.peers)
            configs = self.planner.configs(self.view)
            if self.traversal is not None:
                for c in configs:
                    c.endpoint = None  # traversal chooses endpoints
            self.plane.set_peers(configs)
            after = set(self.plane.device.peers)
            if self.traversal is not None:
                self.traversal.set_peers(list(self.view.peers.values()))
            for key in before - after:
                self.rtt.pop(key, None)
            if before != after:
                log.info("peers: +%d -%d = %d", len(after - before), len(before - after), len(after))
            if self.view.node is not None:
                await self._set_self(self.view.node)
            if self.lan is not None:  # LAN hook
                await self.lan.set_view(lan_view(self.view))
        assert self._view_changed is not None
        async with self._view_changed:
            self._view_changed.notify_all()

    # ------------------------------------------------------------------ tunnel liveness

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    def _key_of(self, node_id: str) -> PublicKey | None:
        p = self.view.peers.get(node_id)
        try:
            return PublicKey(p.public_key) if p is not None else None
        except ValueError:
            return None

    def _sync_liveness(self, now: float) -> None:
        if self.plane is not None:
            self.liveness.set_peers({k: p.stats.rx_bytes for k, p in self.plane.device.peers.items()}, now)

    def _on_check_peer(self, msg: M.CheckPeer) -> None:
        key = self._key_of(msg.node_id)
        now = self._now()
        self._sync_liveness(now)  # the peer may have arrived in the view just before
        if key is None or not self.liveness.set_requested(key, msg.active, now):
            log.info("the server asked to %s checking %s, which is not a peer here", "start" if msg.active else "stop",
                     msg.node_id)
            return
        nick = self.view.peers[msg.node_id].nickname
        if msg.active:
            log.info("the server lost %s (%s): checking its tunnel", nick, msg.node_id)
        else:
            log.info("the server has %s (%s) back: check over", nick, msg.node_id)
            self._reported.pop(key, None)

    def _liveness_tick(self, now: float) -> list[tuple[PublicKey, str]]:
        """Feed the tracker; log changes; send reports. Returns the probes to send (key, ipv4)."""
        if self.plane is None:
            return []
        lv = self.liveness
        self._sync_liveness(now)
        lv.set_active(self.pin is not None and self.conn is None, now)
        by_key = {}
        for p in self.view.peers.values():
            with contextlib.suppress(ValueError):
                by_key[PublicKey(p.public_key)] = p
        for ch in lv.update(now):
            p = by_key.get(ch.key)
            who = f"{p.nickname} ({p.node_id})" if p is not None else ch.key.fingerprint()
            level = logging.WARNING if ch.new == "down" else logging.INFO
            log.log(level, "tunnel to %s: %s -> %s: %s", who, ch.old, ch.new, ch.reason)
        conn = self.conn
        if conn is not None and self.server_checks:
            for key, pl in lv.checking():
                p = by_key.get(key)
                if not pl.requested or p is None or pl.state not in ("up", "down"):
                    continue
                alive = pl.state == "up"
                last = self._reported.get(key)
                if last is None or last[0] != alive or (alive and now - last[1] >= REPORT_INTERVAL):
                    self._reported[key] = (alive, now)
                    task = asyncio.create_task(self._send_quiet(conn, M.PeerReport(node_id=p.node_id, reachable=alive)))
                    self._probes.add(task)
                    task.add_done_callback(self._probes.discard)
        out = []
        for key in lv.due_probes(now):
            p = by_key.get(key)
            if p is not None:
                out.append((key, p.ipv4))
        return out

    async def _send_quiet(self, conn: Any, msg: M._Msg) -> None:
        with contextlib.suppress(self._transport.TransportError, OSError):
            await conn.send(msg)

    async def _probe(self, key: PublicKey, ipv4: str) -> None:
        rtt = await self.pinger.ping(ipv4, PROBE_INTERVAL)
        if rtt is not None:
            self.liveness.seen(key, self._now(), probe=True)

    async def _liveness_loop(self) -> None:
        while True:
            for key, ipv4 in self._liveness_tick(self._now()):
                task = asyncio.create_task(self._probe(key, ipv4))
                self._probes.add(task)
                task.add_done_callback(self._probes.discard)
            await asyncio.sleep(LIVENESS_TICK)

    def _on_event(self, event: DeviceEvent, now: float) -> None:
        if event.kind == "handshake-complete":
            self.liveness.seen(event.peer, now)
        if event.kind != "handshake-complete" or self.plane is None:
            return
        peer = self.plane.device.peers.get(event.peer)
        if peer is not None and 0 <= now - peer.last_initiation_sent < self.plane.device.timers.rekey_timeout:
            if self.rtt.get(event.peer, (0, ""))[1] != "ping":
                self.rtt[event.peer] = (now - peer.last_initiation_sent, "handshake")

    # ------------------------------------------------------------------ requests to the server

    async def request(self, build: Callable[[int], M._Msg]) -> M.Result:
        conn = self.conn
        if conn is None:
            why = f" ({self.last_error})" if self.last_error else ""
            if self.pin is None:
                raise HttpError(409, "not logged in: run `shoal login SERVER_URL` first", "not_logged_in")
            raise HttpError(503, f"not connected to the server {self.pin.url}{why}", "not_connected")
        req_id = self._next_req
        self._next_req += 1
        try:
            msg = build(req_id)
        except (msgspec.ValidationError, TypeError, ValueError) as e:
            raise _struct_error(e) from None
        fut: asyncio.Future[M.Result] = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        try:
            await conn.send(msg)
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            raise HttpError(504, f"the server did not answer within {REQUEST_TIMEOUT:.0f} s", "timeout") from None
        except (self._transport.TransportError, OSError) as e:
            raise HttpError(503, f"the control connection failed: {e}", "not_connected") from None
        finally:
            self.pending.pop(req_id, None)

    async def _ok(self, build: Callable[[int], M._Msg]) -> M.Result:
        result = await self.request(build)
        if not result.ok:
            raise HttpError(409, result.message or result.code or "refused by the server", result.code or "refused")
        return result

    async def _wait_view(self, predicate: Callable[[], bool], timeout: float = VIEW_WAIT) -> bool:
        assert self._view_changed is not None
        with contextlib.suppress(asyncio.TimeoutError):
            async with self._view_changed:
                await asyncio.wait_for(self._view_changed.wait_for(predicate), timeout)
        return predicate()

    # ------------------------------------------------------------------ lookups

    def _network(self, name: str) -> M.NetworkInfo:
        net = self.view.network_by_name(name)
        if net is None:
            raise HttpError(404, f"you are not a member of a network named '{name}' (see `shoal list`)", "no_such_network")
        return net

    def _member(self, net: M.NetworkInfo, who: str) -> M.MemberInfo:
        for m in net.members:
            if who in (m.node_id, m.nickname):
                return m
        raise HttpError(404, f"'{who}' is not a member of {net.name}", "not_member")

    def _me(self) -> str | None:
        return self.view.node.node_id if self.view.node else None

    # ------------------------------------------------------------------ API handlers

    def routes(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/v1/status"): self.api_status,
            ("POST", "/v1/login"): self.api_login,
            ("POST", "/v1/logout"): self.api_logout,
            ("POST", "/v1/networks/create"): self.api_create,
            ("POST", "/v1/networks/delete"): self.api_delete,
            ("POST", "/v1/networks/join"): self.api_join,
            ("POST", "/v1/networks/leave"): self.api_leave,
            ("POST", "/v1/networks/online"): self.api_online,
            ("POST", "/v1/networks/password"): self.api_set_password,
            ("POST", "/v1/networks/access"): self.api_set_access,
            ("POST", "/v1/networks/approve"): self.api_approve,
            ("POST", "/v1/networks/reject"): self.api_reject,
            ("POST", "/v1/networks/evict"): self.api_evict,
            ("POST", "/v1/nickname"): self.api_set_nick,
            ("POST", "/v1/ping"): self.api_ping,
            ("POST", "/v1/netcheck"): self.api_netcheck,  # shoal.daemon.netcheck
        }

    async def api_login(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            url = identity.normalize_server_url(_need(body, "server"))
        except ValueError as e:
            raise HttpError(400, str(e), "invalid") from None
        key_text = body.get("server_key")
        tofu = not key_text
        if key_text:
            try:
                key = PublicKey.from_base64(str(key_text))
            except ValueError as e:
                raise HttpError(400, f"--server-key: {e}", "invalid") from None
        else:
            try:
                key = await asyncio.wait_for(self._fetch_key(url), LOGIN_TIMEOUT)
            except asyncio.TimeoutError:
                raise HttpError(502, f"{url} did not send its key within {LOGIN_TIMEOUT:.0f} s", "unreachable") from None
            except Exception as e:  # noqa: BLE001 - one line for the user
                raise HttpError(502, f"cannot fetch the server key from {url}: {e}", "unreachable") from None
        old = self.pin
        if old is not None and old.url != url:
            raise HttpError(409, f"already logged in to {old.url}; run `shoal logout` first", "logged_in")
        if old is not None and old.public_key != key:
            raise HttpError(
                409,
                f"REFUSED: {url} now presents key {key.fingerprint()} but this node pinned {old.fingerprint}; "
                "possible man-in-the-middle. If the server key changed on purpose: `shoal logout`, then "
                "`shoal login URL --server-key NEWKEY`",
                "server_key_mismatch",
            )
        self.pin = ServerPin(url, key)
        waiter: asyncio.Future[M.SelfInfo] = asyncio.get_running_loop().create_future()
        self._login_waiter = waiter
        await self._restart_control()
        try:
            node = await asyncio.wait_for(waiter, LOGIN_TIMEOUT)
        except (LoginFailed, asyncio.TimeoutError) as e:
            self._login_waiter = None
            if old is None:  # a failed first login pins nothing
                self.pin = None
                await self._restart_control()
            code = e.code if isinstance(e, LoginFailed) else "timeout"
            msg = str(e) if isinstance(e, LoginFailed) else f"no answer from {url} within {LOGIN_TIMEOUT:.0f} s"
            raise HttpError(409 if code == "server_key_mismatch" else 502, msg, code) from None
        identity.save_pin(self.opts.state_dir, self.pin)
        await self._wait_view(lambda: self.view.version is not None, 2.0)
        return {"server": url, "public_key": key.to_base64(), "fingerprint": key.fingerprint(),
                "trusted_on_first_use": tofu, "node": msgspec.to_builtins(node)}

    async def api_logout(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.pin is None:
            raise HttpError(409, "not logged in", "not_logged_in")
        url = self.pin.url
        if self.conn is not None:
            with contextlib.suppress(HttpError):
                await self.request(lambda r: M.Logout(req_id=r))
        self.pin = None
        await self._stop_control()
        identity.clear_pin(self.opts.state_dir)
        self.view.clear()
        self.planner.forget()
        if self.plane is not None:
            self.plane.set_peers([])
            await self.plane.set_addresses([])
        if self.lan is not None:  # LAN hook
            await self.lan.set_view(None)
        self.rtt.clear()
        self._start_control()
        return {"server": url}

    async def api_create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _need(body, "name")
        approval = body.get("approval") or "auto"
        kind = body.get("kind") or "ip"
        if kind not in ("ip", "l2"):
            raise HttpError(400, "kind must be ip or l2", "invalid")
        if kind != "ip":
            self._need_lan_server("layer-2 networks")
        password = _need(body, "password")  # never "" (issue 18 F4); the server judges its strength
        result = await self._ok(lambda r: M.CreateNetwork(req_id=r, name=name, password=password,
                                                          approval=approval, kind=kind))
        await self._wait_view(lambda: result.network_id in self.view.networks)
        return {"network_id": result.network_id, "name": name}

    async def api_join(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _need(body, "name")
        password = _need(body, "password")
        result = await self.request(lambda r: M.JoinNetwork(req_id=r, name=name, password=password))
        if not result.ok and result.code != "pending_approval":  # a pending join is recorded, not refused
            raise HttpError(409, result.message or result.code or "refused by the server", result.code or "refused")
        if result.network_id is not None:
            await self._wait_view(lambda: result.network_id in self.view.networks)
        pending = result.code == "pending_approval" or any(
            m.pending for n in self.view.networks.values() if n.network_id == result.network_id
            for m in n.members if m.node_id == self._me())
        return {"network_id": result.network_id, "name": name, "pending": pending, "message": result.message}

    async def api_leave(self, body: dict[str, Any]) -> dict[str, Any]:
        net = self._network(_need(body, "network"))
        await self._ok(lambda r: M.LeaveNetwork(req_id=r, network_id=net.network_id))
        await self._wait_view(lambda: net.network_id not in self.view.networks)
        return {"network_id": net.network_id, "name": net.name}

    async def api_delete(self, body: dict[str, Any]) -> dict[str, Any]:
        net = self._network(_need(body, "network"))
        await self._ok(lambda r: M.DeleteNetwork(req_id=r, network_id=net.network_id))
        await self._wait_view(lambda: net.network_id not in self.view.networks)
        return {"network_id": net.network_id, "name": net.name}

    async def api_online(self, body: dict[str, Any]) -> dict[str, Any]:
        online = _need(body, "online", bool)
        name = body.get("network")
        nets = [self._network(name)] if name else list(self.view.networks.values())
        if not nets:
            raise HttpError(409, "you are not a member of any network", "no_such_network")
        me = self._me()
        done = []
        for net in nets:
            await self._ok(lambda r, n=net: M.SetOnline(req_id=r, network_id=n.network_id, online=online))
            done.append(net.name)

        def applied() -> bool:
            return all(m.online == online for n in nets if n.network_id in self.view.networks
                       for m in self.view.networks[n.network_id].members if m.node_id == me)

        await self._wait_view(applied)
        return {"networks": done, "online": online}

    async def api_set_password(self, body: dict[str, Any]) -> dict[str, Any]:
        net = self._network(_need(body, "network"))
        password = _need(body, "password")
        await self._ok(lambda r: M.SetPassword(req_id=r, network_id=net.network_id, password=password))
        return {"network_id": net.network_id, "name": net.name}

    async def api_set_access(self, body: dict[str, Any]) -> dict[str, Any]:
        net = self._network(_need(body, "network"))
        locked, approval, broadcast = body.get("locked"), body.get("approval"), body.get("broadcast")
        if locked is None and approval is None and broadcast is None:
            raise HttpError(400, "nothing to change: give --lock/--unlock, --approval and/or --broadcast", "invalid")
        if broadcast is not None:
            if not isinstance(broadcast, bool):
                raise HttpError(400, "broadcast must be true or false", "invalid")
            self._need_lan_server("the broadcast switch")
        await self._ok(lambda r: M.SetAccess(req_id=r, network_id=net.network_id, locked=locked, approval=approval,
                                             broadcast=broadcast))
        await self._wait_view(lambda: (n := self.view.networks.get(net.network_id)) is not None
                              and (locked is None or n.locked == locked) and (approval is None or n.approval == approval)
                              and (broadcast is None or n.broadcast == broadcast))
        return {"network_id": net.network_id, "name": net.name, "locked": locked, "approval": approval,
                "broadcast": broadcast}

    def _need_lan_server(self, what: str) -> None:
        if self.conn is not None and not self.server_lan:
            raise HttpError(409, f"the server does not support {what} (it is older than this node): upgrade it",
                            "unsupported")

    async def _member_op(self, body: dict[str, Any], make: Callable[[int, str, str], M._Msg]) -> dict[str, Any]:
        net = self._network(_need(body, "network"))
        member = self._member(net, _need(body, "member"))
        await self._ok(lambda r: make(r, net.network_id, member.node_id))
        return {"network_id": net.network_id, "name": net.name, "node_id": member.node_id, "nickname": member.nickname}

    async def api_approve(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._member_op(body, lambda r, n, m: M.Approve(req_id=r, network_id=n, node_id=m))

    async def api_reject(self, body: dict[str, Any]) -> dict[str, Any]:
        ban = bool(body.get("ban", False))
        return await self._member_op(body, lambda r, n, m: M.Reject(req_id=r, network_id=n, node_id=m, ban=ban))

    async def api_evict(self, body: dict[str, Any]) -> dict[str, Any]:
        ban = bool(body.get("ban", False))
        out = await self._member_op(body, lambda r, n, m: M.Evict(req_id=r, network_id=n, node_id=m, ban=ban))
        def gone() -> bool:
            net = self.view.networks.get(out["network_id"])
            return net is None or all(m.node_id != out["node_id"] for m in net.members)

        await self._wait_view(gone)
        return out

    async def api_set_nick(self, body: dict[str, Any]) -> dict[str, Any]:
        nick = _need(body, "nickname")
        await self._ok(lambda r: M.SetNickname(req_id=r, nickname=nick))
        await self._wait_view(lambda: self.view.node is not None and self.view.node.nickname == nick)
        return {"nickname": nick}

    async def api_ping(self, body: dict[str, Any]) -> dict[str, Any]:
        who = _need(body, "peer")
        count = body.get("count", 3)
        if not isinstance(count, int) or not 1 <= count <= 100:
            raise HttpError(400, "count must be 1..100", "invalid")
        timeout = body.get("timeout", 1.0)
        if not isinstance(timeout, (int, float)) or not 0.05 <= timeout <= 10:
            raise HttpError(400, "timeout must be 0.05..10 s", "invalid")
        peer = self.view.peer_by(who)
        if peer is None:
            for net in self.view.networks.values():
                for m in net.members:
                    if who in (m.node_id, m.nickname) and m.node_id != self._me():
                        raise HttpError(409, f"{m.nickname} ({m.node_id}) shares no network with you where you are both online",
                                        "not_peer")
            raise HttpError(404, f"no peer '{who}' (give a nickname, node id or overlay address; see `shoal list`)", "no_such_peer")
        key = PublicKey(peer.public_key)
        rtts: list[float | None] = []
        for i in range(count):
            if i:
                await asyncio.sleep(0.2)
            rtts.append(await self.pinger.ping(peer.ipv4, float(timeout)))
        got = [r for r in rtts if r is not None]
        if got:
            self.rtt[key] = (got[-1], "ping")
        path = self._path(key)
        return {
            "peer": {"node_id": peer.node_id, "nickname": peer.nickname, "ipv4": peer.ipv4},
            "path": path["path"], "endpoint": path["endpoint"],
            "sent": count, "received": len(got),
            "rtt_ms": [round(r * 1000, 3) if r is not None else None for r in rtts],
        }

    async def api_netcheck(self, body: dict[str, Any]) -> dict[str, Any]:
        from shoal.daemon.netcheck import api_netcheck

        return await api_netcheck(self, body)

    async def api_status(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.status()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        me = self._me()
        node = None
        if self.view.node is not None:
            node = {**msgspec.to_builtins(self.view.node)}
        peers_by_id = self.view.peers
        peer_rows: dict[str, dict[str, Any]] = {}
        for p in peers_by_id.values():
            peer_rows[p.node_id] = self._peer_row(p)
        networks = []
        for net in sorted(self.view.networks.values(), key=lambda n: n.name):
            mine = next((m for m in net.members if m.node_id == me), None)
            members = []
            for m in net.members:
                row = peer_rows.get(m.node_id)
                members.append({
                    "node_id": m.node_id, "nickname": m.nickname, "role": m.role, "online": m.online,
                    "pending": m.pending, "note": m.note, "self": m.node_id == me,
                    "tunnel": None if row is None else {k: row[k] for k in ("path", "endpoint", "rtt_ms", "ipv4", "lan")},
                })
            networks.append({
                "network_id": net.network_id, "name": net.name, "owner_id": net.owner_id, "locked": net.locked,
                "kind": net.kind, "broadcast": net.broadcast,
                "interface": self.lan.interface_for(net.network_id, net.kind) if self.lan is not None
                else (self.opts.iface if net.kind == "ip" else None),
                "approval": net.approval, "role": mine.role if mine else None,
                "online": bool(mine and mine.online), "pending": bool(mine and mine.pending), "members": members,
            })
        return {
            "node": node,
            "public_key": self.public_key.to_base64(),
            "server": None if self.pin is None else {**self.pin.to_json(), "fingerprint": self.pin.fingerprint},
            "connection": {"state": self.state, "for_s": round(now - self.state_since, 1),
                           "since": round(self.state_since_wall, 3),
                           "next_try_in_s": None if self.next_try_at is None else round(max(0.0, self.next_try_at - now), 1),
                           "last_error": self.last_error, "connects": self.connects,
                           "checking_tunnels": self.liveness.active},
            "lan": self.lan.status() if self.lan is not None else None,
            "interface": {"name": self.opts.iface, "mode": "tap" if self.lan is not None else "tun",
                          "listen_port": self.plane.listen_port if self.plane is not None else None,
                          "endpoints": self.endpoints},
            "traversal": self.traversal.info() if self.traversal is not None else None,
            "view_version": self.view.version,
            "networks": networks,
            "peers": sorted(peer_rows.values(), key=lambda r: r["nickname"]),
        }

    def _path(self, key: PublicKey) -> dict[str, Any]:
        """How we reach a peer: traversal's path, or (no traversal) the engine's endpoint."""
        path = self.traversal.path_of(key) if self.traversal is not None else None
        if path is not None:
            return path
        ep = self.plane.device.peers.get(key) if self.plane is not None else None
        shown = _fmt_endpoint(ep.endpoint if ep is not None else None)
        return {"path": "direct" if shown else None, "endpoint": shown, "rtt_ms": None, "lan": False}

    def _peer_row(self, p: M.PeerInfo) -> dict[str, Any]:
        key = PublicKey(p.public_key)
        ep = self.plane.device.peers.get(key) if self.plane is not None else None
        path = self._path(key)
        rtt = self.rtt.get(key)
        if rtt is None and path["rtt_ms"] is not None:
            rtt = (path["rtt_ms"] / 1000, "disco")
        last_hs = ep.stats.last_handshake_wall if ep is not None else 0.0
        live = self.liveness.peers.get(key)
        seen = self.liveness.last_seen_ago(key, self._now())
        shared = [n.name for n in self.view.networks.values()
                  if any(m.node_id == p.node_id for m in n.members)]
        return {
            "node_id": p.node_id, "nickname": p.nickname, "ipv4": p.ipv4, "ipv6": p.ipv6,
            "public_key": key.to_base64(), "state": "online", "path": path["path"],
            "endpoint": path["endpoint"], "lan": path["lan"],
            "rtt_ms": round(rtt[0] * 1000, 3) if rtt else None, "rtt_source": rtt[1] if rtt else None,
            "last_handshake_s_ago": round(time.time() - last_hs, 1) if last_hs else None,
            "rx_bytes": ep.stats.rx_bytes if ep is not None else 0,
            "tx_bytes": ep.stats.tx_bytes if ep is not None else 0,
            "in_engine": ep is not None, "networks": sorted(shared),
            "liveness": live.state if live is not None else None,
            "last_seen_s_ago": None if seen is None else round(seen, 1),
            "checked": live is not None and live.check_since is not None,
            "server_asked_check": live is not None and live.requested,
        }


def _fmt_endpoint(ep: Endpoint | None) -> str | None:
    return None if ep is None else endpoint.text(ep)
