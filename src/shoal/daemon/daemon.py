"""The node daemon: one asyncio process owning the interface, the control connection and the local API.

Owns: the daemon's life cycle (`Daemon.run`: start the data plane, traversal, the local API,
the control and liveness tasks; stop them in reverse) and the wiring between its parts. Each
part is its own module; the daemon holds the state they share (one event loop, nothing is
thread-safe; who mutates what is written at each):

    data plane   `WgInterface.run` (shoal.dataplane.runtime), made by `env.make_plane`: the
                 interface `shoal0` (a TAP driven by `shoal.lan.plane.LanPlane`, or a TUN with
                 Options.lan=False), the UDP socket, the engine. Only `shoal.daemon.reconcile`
                 changes its peers, addresses and the LAN plane's view.
    control      `shoal.daemon.session.ControlSession`: connect, Login, read loop, keepalive,
                 reconnect with backoff; it alone mutates `conn`, `state`, `last_error`,
                 `next_try_at`, `connects` and applies the server's views to `view`. While
                 disconnected nothing is torn down: the engine keeps every tunnel as it is. On
                 reconnect Login carries `have_version`; reconciliation only touches peers
                 that changed (healthy tunnels keep their sessions).
    liveness     `shoal.daemon.livecheck.LiveCheck` around the sans-IO `liveness` tracker:
                 probes quiet tunnels while the server is lost or asks (CheckPeer), answers
                 with PeerReport.
    traversal    `shoal.daemon.traversal.Traversal` (with Options.traversal; made in
                 `_make_traversal`): disco, path engines, reflexive probe and relay on the data
                 socket. It alone sets peers' endpoints in the engine; it is fed the view's
                 peers after every reconcile and the server's STUN/relay after every login,
                 and its Candidates go to the server.
    local API    `shoal.daemon.api.ApiHandlers` (`routes`) on `ApiServer`, replies typed in
                 `shoal.daemon.apitypes`, the status built by `shoal.daemon.status`.
    outside      everything real (clock, data plane, dialer, ICMP, DNS, the API socket) comes
                 through `env` (`shoal.daemon.env.DaemonEnv`, production defaults).

Restarts: the stored view (`view.bin`, sealed with a key derived from the node key, see
`shoal.daemon.identity`) configures the engine before the server answers; an edited or
foreign file is refused (logged) and the daemon starts with no peers.

Stopping the daemon (SIGTERM) closes the control connection without Logout: the server keeps
the node online for its grace period, so a daemon restart (upgrade) flaps no tunnel of its
peers; `shoal logout` / `shoal go-offline` take a node offline at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.clock import running
from shoal.constants import DEFAULT_MTU
from shoal.control import messages as M
from shoal.daemon import identity
from shoal.daemon.api import VIEW_WAIT, ApiHandlers
from shoal.daemon.apitypes import Status
from shoal.daemon.env import Connector, DaemonEnv, PlaneFactory
from shoal.daemon.identity import ServerPin, ViewRefused
from shoal.daemon.livecheck import REPORT_INTERVAL, LiveCheck
from shoal.daemon.liveness import Liveness
from shoal.daemon.localapi import ApiServer, Handler
from shoal.daemon.reconcile import OVERLAY_V4, V4_PREFIX, V6_PREFIX, Reconciler, host_endpoints, self_addresses
from shoal.daemon.session import LOGIN_TIMEOUT, REQUEST_TIMEOUT, ControlSession, LoginFailed
from shoal.daemon.traversal import Traversal
from shoal.daemon.view import PeerPlanner, View
from shoal.dataplane.api import DataPlane
from shoal.dataplane.config import InterfaceConfig, WgConfig
from shoal.dataplane.runtime import DEFAULT_UAPI_DIR
from shoal.lan.plane import LanPlane, lan_view
from shoal.wireguard.keys import PublicKey

__all__ = [
    "DEFAULT_RUN_DIR", "IFACE", "LOGIN_TIMEOUT", "OVERLAY_V4", "REPORT_INTERVAL", "REQUEST_TIMEOUT", "RUN_DIR",
    "SOCKET_NAME", "STATE_DIR", "V4_PREFIX", "V6_PREFIX", "VIEW_WAIT", "Connector", "Daemon", "DaemonEnv",
    "LoginFailed", "Options", "PlaneFactory", "default_socket", "host_endpoints", "self_addresses",
]

log = logging.getLogger("shoal.daemon")

DEFAULT_RUN_DIR = Path("/run/shoal")
RUN_DIR = Path(os.environ.get("SHOAL_RUN_DIR", str(DEFAULT_RUN_DIR)))
STATE_DIR = Path(os.environ.get("SHOAL_STATE_DIR", "/var/lib/shoal"))
IFACE = "shoal0"
SOCKET_NAME = "shoald.sock"


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


class Daemon:
    """Make it inside the event loop it runs on (or give `env.sched`)."""

    def __init__(self, options: Options, env: DaemonEnv | None = None) -> None:
        self.opts = options
        self.env = env if env is not None else DaemonEnv()
        self.sched = running(self.env.sched)
        self.socket_path = options.socket_path or options.run_dir / SOCKET_NAME
        # stock `wg show` / `shoal wg show` find the default daemon's interface; daemons with
        # their own run dir (several on one machine) keep their UAPI socket there
        self.uapi_dir = options.uapi_dir or (
            DEFAULT_UAPI_DIR if options.run_dir == DEFAULT_RUN_DIR else options.run_dir / "wireguard")
        self.key, created = identity.load_or_create_node_key(options.state_dir)
        if created:
            log.info("made a new node key in %s", options.state_dir / identity.NODE_KEY)
        self.public_key: PublicKey = self.key.public_key()
        self.pin: ServerPin | None = identity.load_pin(options.state_dir)
        self.view = View()
        self.planner = PeerPlanner(self.public_key)
        self._restore_view()
        self.plane: DataPlane | None = None
        self.api: ApiServer | None = None
        # owned by the control session (shoal.daemon.session)
        self.conn: Any = None
        self.state = "logged-out" if self.pin is None else "connecting"
        self.state_since = self.sched.time()
        self.state_since_wall = time.time()
        self.next_try_at: float | None = None  # sched time of the next connection attempt
        self.last_error = ""
        self.connects = 0
        self.server_checks = False  # the server speaks check_peer (LoginOk.features)
        self.server_disco = False  # the server takes Candidates (LoginOk.features)
        self.server_lan = False  # the server knows layer-2 networks and the broadcast switch (LoginOk.features)
        # shared
        self.liveness = Liveness()
        self.endpoints: list[str] = []
        self.rtt: dict[PublicKey, tuple[float, str]] = {}  # seconds, "ping" | "handshake"
        self.traversal: Traversal | None = None
        self.lan: LanPlane | None = LanPlane(multicast_route=options.multicast_route) if options.lan else None
        self._tasks: set[asyncio.Task[None]] = set()  # probes and fire-and-forget sends
        # the parts
        self.session = ControlSession(self)
        self.reconciler = Reconciler(self)
        self.livecheck = LiveCheck(self)
        self.handlers = ApiHandlers(self)

    def _restore_view(self) -> None:
        frame = None
        if self.pin is not None:
            try:
                frame = identity.load_view(self.opts.state_dir, self.key)
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

    @property
    def pinger(self) -> Any:
        return self.env.pinger

    @property
    def pending(self) -> dict[int, asyncio.Future[M.Result]]:
        return self.session.requests.pending

    def mark_state(self, state: str) -> None:
        self.state = state
        self.state_since = self.sched.time()
        self.state_since_wall = time.time()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a probe or a send in the background; cancelled when the daemon stops."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def request(self, build: Callable[[int], M._Msg]) -> M.Result:
        """One request to the server, answered by its Result (HttpError when not connected)."""
        return await self.session.request(build)

    def routes(self) -> dict[tuple[str, str], Handler]:
        return self.handlers.routes()

    def status(self) -> Status:
        from shoal.daemon.status import build_status

        return build_status(self)

    # ------------------------------------------------------------------ life cycle

    def _make_traversal(self) -> Traversal:
        assert self.plane is not None
        port, iface = self.plane.listen_port or 0, self.opts.iface
        return Traversal(
            self.key, self.plane, on_candidates=self.session.on_candidates, server_up=lambda: self.conn is not None,
            host_endpoints=None if self.opts.endpoints else (lambda: host_endpoints(port, iface)),
            sched=self.sched, bind_factory=self.env.birthday_bind, ws_connect=self.env.relay_ws_connect)

    async def run(self, stop: asyncio.Event) -> None:
        self.reconciler.bind_loop()
        cfg = WgConfig(
            self.opts.iface,
            InterfaceConfig(private_key=self.key, listen_port=self.opts.port, mtu=self.opts.mtu,
                            addresses=self_addresses(self.view.node), table=False),
            self.planner.configs(self.view),
        )
        self.plane = self.env.make_plane(cfg, self.uapi_dir, self.livecheck.on_event)
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
                self.traversal = self._make_traversal()
                self.traversal.start(self.endpoints)
                self.traversal.set_peers(list(self.view.peers.values()))
            if self.env.local_api:
                self.api = ApiServer(self.socket_path, self.routes(), group=self.opts.socket_group)
                await self.api.start()
            log.info("node %s (key %s) on %s, UDP port %s, endpoints %s; local API on %s",
                     self.view.node.node_id if self.view.node else "(not logged in)", self.public_key.fingerprint(),
                     self.opts.iface, self.plane.listen_port, ", ".join(self.endpoints) or "-",
                     self.socket_path if self.api is not None else "(none)")
            self.session.start()
            live_task = asyncio.create_task(self.livecheck.run(), name="liveness")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({plane_task, stopper, live_task}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if live_task.done():
                live_task.result()  # a bug in the liveness loop: stop loudly
            live_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await live_task
        finally:
            await self.session.stop()
            if self.traversal is not None:
                await self.traversal.close()
            for t in list(self._tasks):
                t.cancel()
            if self.api is not None:
                await self.api.close()
            self.pinger.close()
            plane_stop.set()
            with contextlib.suppress(Exception):
                await plane_task
        if plane_task.done() and not stop.is_set():
            plane_task.result()
