"""`MemoryPlane`: a `shoal.dataplane.api.DataPlane` over a real sans-IO `Device` with no I/O,
for tests of the code above the data plane (the daemon's reconcile, its local API).

Everything the engine would send is kept in `sent` (datagrams) and `to_interface` (packets),
`send_raw` datagrams in `raw`; `inject` hands datagrams to the engine as the runtime does.
Time is the caller's (`now` arguments) or the loop's clock for `set_peers`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from shoal.dataplane.api import Datagram, LanHooks
from shoal.dataplane.config import IPInterface, WgConfig
from shoal.endpoint import Endpoint
from shoal.wireguard.device import Device, DeviceEvent
from shoal.wireguard.keys import PublicKey
from shoal.wireguard.peer import PeerConfig

__all__ = ["MemoryPlane"]


class MemoryPlane:
    """See the module docstring. Signature of a daemon `PlaneFactory`."""

    def __init__(self, config: WgConfig, uapi_dir: Path | None = None,
                 on_event: Callable[[DeviceEvent, float], None] | None = None, *, port: int = 41641) -> None:
        self.config = config
        self.on_event = on_event
        self.device = Device(config.interface.private_key)
        self.ready = asyncio.Event()
        self.warm = False
        self.lan: LanHooks | None = None
        self.side_channel: Callable[[list[Datagram], float], None] | None = None
        self.relay_out: Callable[[list[Datagram]], None] | None = None
        self.virtual_endpoints: set[Endpoint] = set()
        self.addresses: list[IPInterface] = list(config.interface.addresses)
        self.set_peers_calls = 0
        self.sent: list[Datagram] = []
        self.raw: list[Datagram] = []
        self.to_interface: list[bytes] = []
        self._port = port
        self._running = False
        self._last_now = 0.0
        for p in config.peers:
            self.device.add_peer(p)

    @property
    def listen_port(self) -> int | None:
        return self._port

    @property
    def running(self) -> bool:
        return self._running

    def set_peers(self, peers: list[PeerConfig]) -> None:
        self.set_peers_calls += 1
        wanted = {p.public_key for p in peers}
        for key in [k for k in self.device.peers if k not in wanted]:
            self.device.remove_peer(key)
        for p in peers:
            self.device.add_peer(p)
        self.flush()

    def set_endpoint(self, public_key: PublicKey, endpoint: Endpoint, now: float) -> None:
        self._last_now = now
        self.device.set_endpoint(public_key, endpoint, now)
        self.flush()

    async def set_addresses(self, addresses: list[IPInterface]) -> None:
        self.addresses = list(addresses)

    def send_raw(self, datagrams: list[Datagram]) -> None:
        self.raw += datagrams

    def inject(self, datagrams: list[Datagram], now: float) -> None:
        self._last_now = now
        self.device.receive(datagrams, now)
        self.flush()

    def flush(self) -> None:
        d = self.device
        if d.outbox:
            out = d.take_outbox()
            relayed = [x for x in out if x[1] in self.virtual_endpoints]
            if relayed and self.relay_out is not None:
                self.relay_out(relayed)
            self.sent += [x for x in out if x[1] not in self.virtual_endpoints]
        if d.to_tun:
            self.to_interface += d.take_to_tun()
        if d.to_ext:
            d.take_extensions()
        if d.events:
            for event in d.take_events():
                if self.on_event is not None:
                    self.on_event(event, self._clock())

    def _clock(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # used outside a loop: the last time a caller gave
            return self._last_now

    async def run(self, stop: asyncio.Event) -> None:
        self._running = True
        self.ready.set()
        try:
            await stop.wait()
        finally:
            self._running = False
