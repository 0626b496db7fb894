"""The interface-side seams: what the glue may do with a TUN/TAP (`Tun`) and with the host's
links (`Host`, `LinkSettings`), and the real ones (`KernelHost`, `LoopTun`).

Owns: the protocols the interface runtime (`shoal.dataplane.runtime`) and the LAN plane
(`shoal.lan.plane`, through the runtime) use instead of `/dev/net/tun`, `loop.add_reader` and
pyroute2; `KernelHost`, the production implementation (`shoal.tun.device.Tun` read through
the loop's readiness callbacks, `shoal.tun.link.AsyncLink` for netlink, /proc for the one
sysctl). The in-memory one, for tests and the simulation tier, is `shoal.testing.channel`.

Contract of a `Tun` (pull style, like `shoal.udp.bind.Bind`, so the hot path is the same
batched loop for real and in-memory interfaces):
    name                       the interface name the kernel gave
    set_reader(callback)       `callback()` runs on the loop whenever packets may be waiting
                               (level-triggered); None stops it. At most one reader.
    read_batch(n)              up to about n waiting IP packets (TUN) or frames (TAP), [] when none
    write_batch(packets)       write IP packets (TUN) or whole frames (TAP); errors counted
    write_ip_frames(p, hdr)    TAP: write IP packets behind the 14-byte header `hdr(packet)`
    close()                    stops the reader, releases the fd (a non-persistent interface
                               disappears with it); idempotent

A `Host` creates interfaces (`open`, OSError when it cannot; ValueError for a bad name) and
hands out a `LinkSettings` per interface (`link(name)`, an async context manager; its
operations raise `shoal.tun.link.LinkError` naming the step). Addresses and routes are CIDR
strings; IPv6 addresses get NODAD.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from shoal.tun.device import Tun as TunDevice
from shoal.tun.link import AsyncLink

__all__ = ["Tun", "LinkSettings", "Host", "LoopTun", "KernelHost", "IN6_ADDR_GEN_MODE_NONE"]

IN6_ADDR_GEN_MODE_NONE = 1


class Tun(Protocol):
    """A TUN or TAP as the runtime uses it (module docstring)."""

    name: str

    def set_reader(self, callback: Callable[[], None] | None) -> None: ...
    def read_batch(self, max_packets: int = 128) -> list[bytes]: ...
    def write_batch(self, packets: list[bytes]) -> None: ...
    def write_ip_frames(self, packets: list[bytes], header_for: Callable[[bytes], bytes]) -> None: ...
    def close(self) -> None: ...


class LinkSettings(Protocol):
    """One interface's link settings (`shoal.tun.link.AsyncLink` is the real one)."""

    async def __aenter__(self) -> LinkSettings: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def configure(self, *, mtu: int | None = None, addresses: list[str] = [],  # noqa: B006
                        routes: list[str] = []) -> None: ...  # noqa: B006
    async def set_mtu(self, mtu: int) -> None: ...
    async def set_up(self, up: bool = True) -> None: ...
    async def add_address(self, cidr: str) -> None: ...
    async def del_address(self, cidr: str) -> None: ...
    async def replace_address(self, cidr: str) -> None: ...
    async def set_mac(self, mac: bytes) -> None: ...
    async def add_route(self, cidr: str, *, proto: int | None = None, scope: int | None = None,
                        mtu: int | None = None) -> None: ...
    async def main_table_has(self, cidr: str) -> bool: ...


class Host(Protocol):
    """Creating interfaces and configuring the host's links (module docstring)."""

    def open(self, name: str, *, tap: bool = False, offload: bool = True) -> Tun: ...
    def link(self, name: str, *, broadcast: bool = False) -> LinkSettings: ...
    def disable_ipv6_addr_gen(self, name: str) -> None: ...


class LoopTun:
    """A `shoal.tun.device.Tun` read through the running loop's readiness callbacks.

    The batch methods are the device's own bound methods (no extra call on the hot path);
    `device` is the fd object itself (stats, mtu)."""

    def __init__(self, device: TunDevice, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.device = device
        self.name = device.name
        self.read_batch = device.read_batch
        self.write_batch = device.write_batch
        self.write_ip_frames = device.write_ip_frames
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._reading = False

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        if self._reading:
            with contextlib.suppress(Exception):  # the fd may be gone already
                self._loop.remove_reader(self.device.fileno())
            self._reading = False
        if callback is not None and self.device.fileno() >= 0:
            self._loop.add_reader(self.device.fileno(), callback)
            self._reading = True

    def close(self) -> None:
        self.set_reader(None)
        self.device.close()


class KernelHost:
    """The production `Host`: real TUN/TAP devices, netlink through pyroute2, /proc."""

    def open(self, name: str, *, tap: bool = False, offload: bool = True) -> LoopTun:
        return LoopTun(TunDevice.open(name, tap=tap, offload=offload))

    def link(self, name: str, *, broadcast: bool = False) -> AsyncLink:
        return AsyncLink(name, broadcast=broadcast)

    def disable_ipv6_addr_gen(self, name: str) -> None:
        """addr_gen_mode none: the kernel generates no IPv6 link-local (OSError without IPv6)."""
        Path(f"/proc/sys/net/ipv6/conf/{name}/addr_gen_mode").write_text(f"{IN6_ADDR_GEN_MODE_NONE}\n")
