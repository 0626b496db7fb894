"""The interface runtime: the asyncio glue of one userspace WireGuard interface, TUN (or TAP) +
UDP socket + `Device` + UAPI, used by `shoal wg` and by the node daemon alike. Its users see
it as `shoal.dataplane.api.DataPlane`; only this module (with its helpers `lanio` and
`uapiserver`) touches its fds and the engine.

Seams (injected, production defaults; `shoal.testing.channel` has in-memory ones, so two
interfaces run back to back in one process without root): `host` (`shoal.tun.host.Host`:
creates the TUN/TAP and configures its link; default `KernelHost`), `bind`
(`shoal.udp.bind.BindFactory`, the data socket, also on a UAPI listen_port change; default
`open_udp`), `sched` (`shoal.clock.Scheduler`: time and timers; default the running loop),
`uapi_dir` (None: no UAPI listener).

Owns the event loop callbacks; all protocol decisions are the engine's. Per wake-up it moves a
whole batch: read up to a batch of packets/datagrams, hand them to the engine in one call,
then send everything the engine produced in one batched (GSO) send and write what is for the
interface in one batched (coalescing) write. One timer handle follows the engine's deadline.

Lifecycle of `run()`: PreUp hooks -> TUN created -> MTU/addresses/up/routes -> UDP socket ->
peers configured -> UAPI socket listening (= ready) -> PostUp hooks -> ... stop ... ->
PreDown hooks -> everything closed, the link removed -> PostDown hooks. If any step fails,
what was made is undone before the error propagates: no half-configured interface stays.

Run-time changes (the node daemon's use; `shoal wg` changes peers through UAPI instead):
`set_peers(configs)` makes the engine's peer set exactly `configs` (removed peers lose their
sessions at once, kept ones keep them; like `wg syncconf`, routes are not touched: the
daemon's interface prefixes cover its peers) and `await set_addresses(cidrs)` makes the
link's addresses exactly `cidrs`. Both may be called before `run()` (they then shape the
initial configuration) or once `ready` is set, from the loop's thread. `on_event(event, now)` is
called for every engine event (handshakes, endpoint changes) after it is logged.

Sharing the data socket (the node daemon's NAT traversal, `shoal.daemon.traversal`):
`side_channel(datagrams, now)`, when set, receives every datagram that is not a WireGuard
message (disco, STUN, relay frames: WireGuard messages start with a type byte 1..4 and three
zero bytes); `send_raw(datagrams)` sends on the data socket. Relayed peers get a *virtual
endpoint* (an address in the discard-only prefix 100::/64, RFC 6666, which never leaves the
host): what the engine sends to one of `virtual_endpoints` goes to `relay_out(datagrams)`
instead of the socket, and `inject(datagrams, now)` hands the engine what a relay delivered,
as if it had arrived from that virtual endpoint.

LAN mode (the node daemon's default; `shoal wg` never sets it): with `lan` (`LanHooks`, in
the daemon a `shoal.lan.plane.LanPlane`) set before `run()`, the interface is a TAP; frames
read from it go through `lan.from_interface` (the IP packets it returns go to the engine),
what the engine decrypts is written behind the header `lan.deliver` gives (coalesced) and its
extension messages go through `lan.from_peers`. The plane only decides: what its steps
return (`LanOutput`) is carried out by `shoal.dataplane.lanio.LanIO`, which also owns the
layer-2 TAPs. The hook points are marked "LAN hook".

Latency keeper (`warm`, on by default): while data flows, a quiet interface wakes every
millisecond to poll and to keep its packet path in the CPU caches (`shoal.dataplane.warm` says why
and what it costs); it stops WARM_HOLD after the last data packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from shoal.clock import Cancellable, Scheduler, running
from shoal.constants import DEFAULT_TIMERS, Timers
from shoal.dataplane import uapi
from shoal.dataplane.api import Datagram, LanHooks
from shoal.dataplane.config import IPInterface, WgConfig
from shoal.dataplane.lanio import LanIO
from shoal.dataplane.setup import SetupError, routes_for, run_hooks, timers_from_env
from shoal.dataplane.uapiserver import AlreadyUp, UapiServer
from shoal.dataplane.warm import Rehearsal, Tick, WarmSchedule
from shoal.endpoint import Endpoint
from shoal.tun.host import Host, KernelHost, Tun
from shoal.udp.bind import Bind, BindFactory, open_udp
from shoal.wireguard.device import Device, DeviceEvent
from shoal.wireguard.keys import PublicKey
from shoal.wireguard.peer import PeerConfig

__all__ = ["WgInterface", "SetupError", "timers_from_env", "DEFAULT_UAPI_DIR", "BATCH"]

log = logging.getLogger("shoal.dataplane")

DEFAULT_UAPI_DIR = Path("/var/run/wireguard")
BATCH = 128
MAX_BATCHES_PER_WAKEUP = 4  # bound the work per callback so the other direction gets its turn


class WgInterface:
    """One running interface. Build it, then `await run(stop_event)`."""

    def __init__(
        self,
        config: WgConfig,
        *,
        timers: Timers = DEFAULT_TIMERS,
        uapi_dir: Path | None = DEFAULT_UAPI_DIR,
        offload: bool = True,
        on_event: Callable[[DeviceEvent, float], None] | None = None,
        lan: LanHooks | None = None,
        warm: bool = True,
        host: Host | None = None,
        bind: BindFactory = open_udp,
        sched: Scheduler | None = None,
    ) -> None:
        self.config = config
        self.timers = timers
        self.uapi_path = uapi_dir / f"{config.name}.sock" if uapi_dir is not None else None
        self.offload = offload
        self.on_event = on_event
        self.lan = lan
        self.host: Host = host if host is not None else KernelHost()
        self.bind = bind
        self.sched = sched  # None: the running loop, from run() on
        # wall clock = now + offset; `now` is the scheduler's (the default loop's is monotonic)
        self.device = Device(
            config.interface.private_key,
            mtu=config.interface.mtu,
            timers=timers,
            wall_offset=time.time() - (sched.time() if sched is not None else time.monotonic()),
        )
        self.tun: Tun | None = None
        self.udp: Bind | None = None
        self._sched: Scheduler | None = None
        self._lanio: LanIO | None = None
        self._timer: Cancellable | None = None
        self._timer_at: float | None = None
        self._uapi: UapiServer | None = None
        self.ready = asyncio.Event()
        self.side_channel: Callable[[list[Datagram], float], None] | None = None
        self.relay_out: Callable[[list[Datagram]], None] | None = None
        self.virtual_endpoints: set[Endpoint] = set()
        self.warm = warm  # may be changed until run()
        self._warm: WarmSchedule | None = None
        self._rehearsal: Rehearsal | None = None
        self._warm_timer: Cancellable | None = None

    # ------------------------------------------------------------ hot path

    def flush(self) -> None:
        """Move everything the engine produced: datagrams out (relayed ones to `relay_out`),
        packets to the interface (or the LAN plane), events to `on_event`; re-arm the timer."""
        device = self.device
        if device.outbox:
            out = device.take_outbox()
            if self.virtual_endpoints:
                virtual = self.virtual_endpoints
                relayed = [d for d in out if d[1] in virtual]
                if relayed:
                    out = [d for d in out if d[1] not in virtual]
                    if self.relay_out is not None:
                        self.relay_out(relayed)
            if out:
                self.udp.send_batch(out)  # type: ignore[union-attr]
        if device.to_tun:
            if self.lan is None:
                self.tun.write_batch(device.take_to_tun())  # type: ignore[union-attr]
            else:  # LAN hook: unicast IP as Ethernet frames
                packets = device.take_to_tun()
                header_for = self.lan.deliver(packets)
                if header_for is not None:
                    self.tun.write_ip_frames(packets, header_for)  # type: ignore[union-attr]
        if device.to_ext:  # LAN hook: broadcast/multicast/layer-2 from peers (dropped in TUN mode)
            extensions = device.take_extensions()
            if self.lan is not None:
                now = self._sched.time()  # type: ignore[union-attr]
                self._lanio.apply(self.lan.from_peers(extensions, now), now)  # type: ignore[union-attr]
        if device.events:
            now = self._sched.time()  # type: ignore[union-attr]
            for event in device.take_events():
                log.info("%s: peer %s %s", self.config.name, event.peer.short(), event.kind)
                if self.on_event is not None:
                    try:
                        self.on_event(event, now)
                    except Exception:  # noqa: BLE001 - an observer's bug must not stop the data plane
                        log.exception("%s: event callback failed", self.config.name)
        self._reschedule()

    def _drain_tun(self, now: float) -> None:
        tun, device, lan = self.tun, self.device, self.lan
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            packets = tun.read_batch(BATCH)  # type: ignore[union-attr]
            if not packets:
                break
            n = len(packets)
            if lan is not None:  # LAN hook: frames -> unicast IP (ARP, broadcast handled)
                out = lan.from_interface(packets, now)
                if out.to_peers or out.to_interface:
                    self._lanio.apply(out, now)  # type: ignore[union-attr]
                packets = out.to_engine
            device.send(packets, now)
            if n < BATCH:
                break
        if device.outbox and self._warm is not None:  # sealed for a peer (the host's own
            self._data_moved(now)  # IPv6 chatter with no route to a peer does not count)

    def _on_tun(self) -> None:
        now = self._sched.time()  # type: ignore[union-attr]
        self._drain_tun(now)
        self.flush()

    def _on_udp(self) -> None:
        now = self._sched.time()  # type: ignore[union-attr]
        udp, device = self.udp, self.device
        for _ in range(MAX_BATCHES_PER_WAKEUP):
            datagrams = udp.recv_batch(BATCH)  # type: ignore[union-attr]
            if not datagrams:
                break
            n = len(datagrams)
            if self.side_channel is not None:
                other = [d for d in datagrams if d[0][1:4] != b"\0\0\0" or not 0 < d[0][0] < 5]
                if other:
                    datagrams = [d for d in datagrams if d[0][1:4] == b"\0\0\0" and 0 < d[0][0] < 5]
                    try:
                        self.side_channel(other, now)
                    except Exception:  # noqa: BLE001 - a side channel's bug must not stop the data plane
                        log.exception("%s: side channel failed", self.config.name)
            device.receive(datagrams, now)
            if n < BATCH:
                break
        self._after_receive(now)

    def inject(self, datagrams: list[Datagram], now: float) -> None:
        """Datagrams that arrived another way (a relay), as if read from the socket."""
        if self.udp is None:
            return
        self.device.receive(datagrams, now)
        self._after_receive(now)

    def send_raw(self, datagrams: list[Datagram]) -> None:
        """Send non-WireGuard datagrams (disco, STUN, relay frames) from the data socket."""
        if self.udp is not None and datagrams:
            self.udp.send_batch(datagrams)

    def _after_receive(self, now: float) -> None:
        device = self.device
        wrote = bool(device.to_tun)
        if (wrote or device.to_ext) and self._warm is not None:
            self._data_moved(now)
        self.flush()
        if wrote:
            # What we just wrote often has an answer already: the kernel makes ICMP replies
            # and TCP ACKs synchronously inside the write. Take it now, not a wake-up later.
            self._drain_tun(now)
            self.flush()

    def _data_moved(self, now: float) -> None:
        warm = self._warm
        warm.data(now)  # type: ignore[union-attr]
        if not warm.armed:  # type: ignore[union-attr]
            self._warm_timer = self._sched.call_at(warm.start(now), self._on_warm)  # type: ignore[union-attr]

    def _on_warm(self) -> None:
        self._warm_timer = None
        warm = self._warm
        if warm is None or self.udp is None:
            return
        tick = warm.tick(self._sched.time())  # type: ignore[union-attr]
        if tick is Tick.STOP:
            return
        # re-armed first: a failing callback below must not leave the keeper armed but dead
        self._warm_timer = self._sched.call_at(warm.next_at, self._on_warm)  # type: ignore[union-attr, arg-type]
        if tick is Tick.WARM:
            self._on_tun()  # a packet already waiting is handled now, not at its own wake-up
            self._on_udp()
            self._rehearsal.run()  # type: ignore[union-attr]

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.device.tick(self._sched.time())  # type: ignore[union-attr]
        self.flush()

    def _reschedule(self) -> None:
        """Keep one loop timer at or before the engine's next deadline.

        A timer that would fire *earlier* than needed is kept (it just finds nothing due and
        re-arms), so the common per-packet case costs no cancel/re-arm."""
        deadline = self.device.next_deadline()
        if self._timer_at is not None and (deadline is None or deadline >= self._timer_at):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._sched.call_at(deadline, self._on_timer)  # type: ignore[union-attr]

    # ------------------------------------------------------------ run-time changes

    @property
    def running(self) -> bool:
        return self.udp is not None  # set once the socket is bound, cleared on close

    @property
    def listen_port(self) -> int | None:
        """The UDP port actually bound (known once `ready` is set)."""
        return self.udp.port if self.udp is not None else None

    def set_peers(self, peers: list[PeerConfig]) -> None:
        """Make the peer set exactly `peers` (reconcile: remove, add, update in place).

        A kept peer keeps its sessions; its endpoint changes only when the config names one.
        Raises ValueError for an invalid peer (nothing is changed then)."""
        keys = [p.public_key for p in peers]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate peer public key")
        own = self.device.public_key
        for p in peers:
            if p.public_key == own:
                raise ValueError("a peer cannot have the interface's own public key")
        self.config.peers = list(peers)
        if not self.running:
            return
        now = self._sched.time()  # type: ignore[union-attr]
        wanted = set(keys)
        for key in [k for k in self.device.peers if k not in wanted]:
            self.device.remove_peer(key)
        for p in peers:
            self.device.add_peer(p, now)
        self.flush()

    def set_endpoint(self, public_key: PublicKey, endpoint: Endpoint, now: float) -> None:
        """Point a peer at an endpoint chosen by NAT traversal (see `Device.set_endpoint`)."""
        if self.running:
            self.device.set_endpoint(public_key, endpoint, now)
            self.flush()

    async def set_addresses(self, addresses: list[IPInterface]) -> None:
        """Make the link's addresses exactly `addresses` (added with NODAD for IPv6)."""
        old = list(self.config.interface.addresses)
        self.config.interface.addresses = list(addresses)
        if not self.running:
            return
        try:
            async with self.host.link(self.config.name, broadcast=self.lan is not None) as link:
                for a in old:
                    if a not in addresses:
                        await link.del_address(str(a))
                for a in addresses:
                    if a not in old:
                        await link.add_address(str(a))
        except Exception as e:  # noqa: BLE001 - one line naming netlink's reason
            raise SetupError(f"cannot set addresses of {self.config.name}: {e}") from None

    # ------------------------------------------------------------ UAPI

    def _handle_uapi(self, text: str) -> str:
        response, applied = uapi.handle(self.device, text, self.udp.port, self._sched.time())  # type: ignore[union-attr]
        if applied is not None and applied.listen_port is not None and applied.listen_port != self.udp.port:  # type: ignore[union-attr]
            self._rebind(applied.listen_port)
        self.flush()
        return response

    def _rebind(self, port: int) -> None:
        new = self.bind(port)
        old = self.udp
        old.close()  # type: ignore[union-attr]
        self.udp = new
        new.set_reader(self._on_udp)

    # ------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        iface = cfg.interface
        self._sched = running(self.sched)
        routes = routes_for(cfg)
        if self.uapi_path is not None:
            self._uapi = UapiServer(self.uapi_path, self._handle_uapi)
            try:
                await self._uapi.check_free()
            except AlreadyUp:
                self._uapi = None
                raise SetupError(f"interface {cfg.name} is already up (UAPI socket {self.uapi_path} answers)") from None
        run_hooks(iface.pre_up, cfg.name, "PreUp")
        try:
            try:
                self.tun = self.host.open(cfg.name, tap=self.lan is not None, offload=self.offload)
            except OSError as e:
                raise SetupError(f"cannot create interface {cfg.name}: {e}") from None
            if self.lan is not None:  # LAN hook: before the link is up
                self._lanio = LanIO(self.lan, self.host, self.device, self.tun, self._sched, self.flush)
                await self.lan.prepare(self._lanio, cfg.name)
            try:
                async with self.host.link(cfg.name, broadcast=self.lan is not None) as link:
                    await link.configure(
                        mtu=iface.mtu,
                        addresses=[str(a) for a in iface.addresses],
                        routes=[str(r) for r in routes] if iface.table else [],
                    )
                if self.lan is not None:  # LAN hook: routes, MAC, layer-2 TAPs
                    await self.lan.start()
            except Exception as e:  # noqa: BLE001 - report netlink's reason in one line
                raise SetupError(f"cannot configure interface {cfg.name}: {e}") from None
            try:
                self.udp = self.bind(iface.listen_port)
            except OSError as e:
                raise SetupError(f"cannot listen on UDP port {iface.listen_port}: {e.strerror}") from None
            now = self._sched.time()
            for peer in cfg.peers:
                try:
                    self.device.add_peer(peer, now)
                except ValueError as e:
                    raise SetupError(f"peer {peer.public_key.to_base64()}: {e}") from None
            if self._uapi is not None:
                await self._uapi.start()
            if self.warm:
                self._warm, self._rehearsal = WarmSchedule(), Rehearsal()
            self.tun.set_reader(self._on_tun)
            self.udp.set_reader(self._on_udp)
            self.flush()
            run_hooks(iface.post_up, cfg.name, "PostUp")
            log.info("%s: up, listening on UDP port %d, %d peers", cfg.name, self.udp.port, len(cfg.peers))
            self.ready.set()
            await stop.wait()
            with contextlib.suppress(SetupError):
                run_hooks(iface.pre_down, cfg.name, "PreDown")
        finally:
            self._close()
        run_hooks(iface.post_down, cfg.name, "PostDown")

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._warm_timer is not None:
            self._warm_timer.cancel()
            self._warm_timer = None
        if self._uapi is not None:
            self._uapi.close()
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self.lan is not None:  # LAN hook
            self.lan.close()
        if self._lanio is not None:
            self._lanio.close()
        if self.tun is not None:
            self.tun.close()  # a non-persistent TUN disappears with its last fd
