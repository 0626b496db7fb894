"""The one surface of a running interface, as its users see it (typing only, no behaviour).

Owns: `DataPlane`, what the node daemon and its NAT traversal (`shoal.daemon.traversal`) may
use of the interface runtime (`shoal.dataplane.runtime.WgInterface`); `LanHooks`, what the
runtime calls on a LAN plane in LAN mode (`shoal.lan.plane.LanPlane`), with `LanOutput`, what
each LAN step asks the runtime to do; and `LanPort`, what the runtime offers the LAN plane.
Nothing else of the runtime is anyone's business: no private names, no `hasattr` probing.
Datagrams are `(bytes, (host, port))`.

The LAN plane is a stage: it is handed frames and returns what to write and send; only the
runtime touches fds and the engine. Per hook:
    prepare(port, name)        the TAP exists, still down; `port` is how the plane reaches
                               the host (`port.host`) and the layer-2 TAPs (`open_l2`, `close_l2`)
    start()                    the TAP is up (the plane's own host changes: routes, MAC)
    from_interface(frames, now) -> LanOutput: to_engine (unicast IP for `Device.send`),
                               to_peers, to_interface
    deliver(packets)           -> the Ethernet header function for unicast IP the engine
                               decrypted (the runtime writes them coalesced), None: dropped
    from_peers(items, now)     `Device.take_extensions()` output -> LanOutput: to_interface, to_l2
    from_l2(network, frames, now) frames read from a layer-2 TAP -> LanOutput: to_peers
    close()                    the runtime is closing: the plane gives up its layer-2 TAPs
The runtime carries a LanOutput out in the order to_peers (sealed per peer key with
`Device.send_extension`), to_interface (the interface's own TAP), to_l2 (per layer-2
network's TAP), then hands to_engine to `Device.send`.

Attribute owners: the runtime sets `device` and `ready`; its users set `side_channel`,
`relay_out`, `virtual_endpoints`, `warm` and `lan` (the last two before `run()`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from shoal.dataplane.config import IPInterface
from shoal.endpoint import Endpoint
from shoal.tun.host import Host
from shoal.wireguard.device import Device
from shoal.wireguard.keys import PublicKey
from shoal.wireguard.peer import PeerConfig

__all__ = ["Datagram", "DataPlane", "LanHooks", "LanOutput", "LanPort"]

Datagram = tuple[bytes, Endpoint]


class LanOutput(NamedTuple):
    """What one LAN step asks the runtime to do (module docstring says in which order)."""

    to_engine: list[bytes]  # unicast IP packets for Device.send
    to_peers: list[tuple[PublicKey, list[bytes]]]  # extension plaintexts to seal for that peer
    to_interface: list[bytes]  # whole frames for the interface's own TAP
    to_l2: list[tuple[str, list[bytes]]]  # whole frames for the TAP of that layer-2 network


class LanPort(Protocol):
    """What the runtime offers its LAN plane (handed to `LanHooks.prepare`)."""

    host: Host

    async def open_l2(self, network_id: str, name: str, mtu: int) -> None:
        """Create the layer-2 TAP `name` (MTU `mtu`, up) and read it into `LanHooks.from_l2`.
        Raises OSError/ValueError when it cannot be created, LinkError when not configured."""
        ...

    def close_l2(self, network_id: str) -> None: ...


class LanHooks(Protocol):
    """What the runtime calls on its LAN plane (LAN mode; `shoal wg` never sets one)."""

    async def prepare(self, port: LanPort, name: str) -> None: ...
    async def start(self) -> None: ...
    def from_interface(self, frames: list[bytes], now: float) -> LanOutput: ...
    def deliver(self, packets: list[bytes]) -> Callable[[bytes], bytes] | None: ...
    def from_peers(self, items: Iterable[tuple[PublicKey, bytes]], now: float) -> LanOutput: ...
    def from_l2(self, network_id: str, frames: list[bytes], now: float) -> LanOutput: ...
    def close(self) -> None: ...


class DataPlane(Protocol):
    """A running interface: the engine, its socket and its packet side (module docstring)."""

    device: Device
    ready: asyncio.Event
    warm: bool
    lan: LanHooks | None
    side_channel: Callable[[list[Datagram], float], None] | None
    relay_out: Callable[[list[Datagram]], None] | None
    virtual_endpoints: set[Endpoint]

    @property
    def listen_port(self) -> int | None: ...
    @property
    def running(self) -> bool: ...
    def set_peers(self, peers: list[PeerConfig]) -> None: ...
    def set_endpoint(self, public_key: PublicKey, endpoint: Endpoint, now: float) -> None: ...
    async def set_addresses(self, addresses: list[IPInterface]) -> None: ...
    def send_raw(self, datagrams: list[Datagram]) -> None: ...
    def inject(self, datagrams: list[Datagram], now: float) -> None: ...
    async def run(self, stop: asyncio.Event) -> None: ...
