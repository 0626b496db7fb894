"""The one surface of a running interface, as its users see it (typing only, no behaviour).

Owns: `DataPlane`, what the node daemon, its NAT traversal (`shoal.daemon.traversal`) and the
LAN plane (`shoal.lan.plane`) may use of the interface runtime
(`shoal.dataplane.runtime.WgInterface`), and `LanHooks`, what the runtime calls on a LAN
plane in LAN mode. Nothing else of the runtime is anyone's business: no private names, no
`hasattr` probing. Datagrams are `(bytes, (host, port))`.

Attribute owners: the runtime sets `device` and `ready`; its users set `side_channel`,
`relay_out`, `virtual_endpoints`, `warm` and `lan` (the last two before `run()`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from shoal.dataplane.config import IPInterface
from shoal.endpoint import Endpoint
from shoal.wireguard.device import Device
from shoal.wireguard.keys import PublicKey
from shoal.wireguard.peer import PeerConfig

__all__ = ["Datagram", "DataPlane", "LanHooks", "PacketWriter"]

Datagram = tuple[bytes, Endpoint]


class PacketWriter(Protocol):
    """The interface's packet side as the LAN plane writes to it (a TAP in LAN mode)."""

    def write_batch(self, packets: list[bytes]) -> None: ...
    def write_ip_frames(self, packets: list[bytes], header_for: Callable[[bytes], bytes]) -> None: ...


class LanHooks(Protocol):
    """What the runtime calls on its LAN plane (LAN mode; `shoal wg` never sets one)."""

    async def prepare(self, iface: DataPlane, name: str) -> None: ...
    async def start(self) -> None: ...
    def from_interface(self, frames: list[bytes], now: float) -> list[bytes]: ...
    def deliver(self, packets: list[bytes]) -> None: ...
    def from_peers(self, items: Iterable[tuple[PublicKey, bytes]], now: float) -> None: ...
    def close(self) -> None: ...


class DataPlane(Protocol):
    """A running interface: the engine, its socket and its packet side (module docstring)."""

    device: Device
    ready: asyncio.Event
    tun: PacketWriter | None
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
    def flush(self) -> None: ...
    async def run(self, stop: asyncio.Event) -> None: ...
