"""The daemon's outside world, in one injectable object (`DaemonEnv`) with production defaults.

Owns: every seam through which `shoal.daemon.daemon.Daemon` touches something real, so that a
simulation tier can run the real daemon glue in one process on a virtual-time loop:

    sched             time and timers (`shoal.clock.Scheduler`; default: the running loop);
                      protocol timing reads `sched.time()`, wall time for display stays time.time()
    make_plane        builds the data plane from a WgConfig (default `wg_plane`: a real
                      `WgInterface`, TUN/TAP + UDP socket + UAPI socket)
    connect           the control dialer (default `shoal.control.transport.connect`)
    fetch_server_key  fetches the server's key for trust on first use (default
                      `shoal.control.transport.fetch_server_key`)
    pinger            overlay ICMP echo (`ping(addr, timeout)`, `close()`; default
                      `shoal.daemon.icmp.Pinger`, a raw socket opened on first use)
    resolve           host name -> one IP address for the server's STUN/relay (default
                      `resolve_udp`: the loop's getaddrinfo)
    local_api         whether to serve the local API on its unix socket (default True)
    birthday_bind     how NAT traversal opens its birthday sockets (`shoal.udp.bind.BindFactory`;
                      default `open_udp`, a real UDP socket read through the loop)
    relay_ws_connect  the relay WebSocket dialer of NAT traversal (default `websockets.connect`)

`sleep(sched, delay)` is the one way the daemon's loops wait: a timer on `sched`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.clock import Scheduler
from shoal.dataplane.api import DataPlane
from shoal.dataplane.config import WgConfig
from shoal.udp.bind import BindFactory, open_udp
from shoal.wireguard.device import DeviceEvent
from shoal.wireguard.keys import PublicKey

log = logging.getLogger("shoal.daemon")

PlaneFactory = Callable[[WgConfig, Path, Callable[[DeviceEvent, float], None]], DataPlane]
Connector = Callable[..., Awaitable[Any]]
KeyFetcher = Callable[[str], Awaitable[PublicKey]]
Resolver = Callable[[str], Awaitable[str]]


def wg_plane(config: WgConfig, uapi_dir: Path, on_event: Callable[[DeviceEvent, float], None]) -> DataPlane:
    """The production data plane: a `WgInterface` (shortened timers with SHOAL_WG_TEST_TIMERS)."""
    from shoal.dataplane.runtime import WgInterface, timers_from_env

    timers = timers_from_env()  # SHOAL_WG_TEST_TIMERS: shortened engine timers, tests only
    if timers is not None:
        log.warning("SHOAL_WG_TEST_TIMERS is set: engine timers %s (tests only)", timers)
        return WgInterface(config, uapi_dir=uapi_dir, on_event=on_event, timers=timers)
    return WgInterface(config, uapi_dir=uapi_dir, on_event=on_event)


async def resolve_udp(host: str) -> str:
    """The first address getaddrinfo gives for `host` (raises OSError or IndexError)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    return infos[0][4][0]


def _connect() -> Connector:
    from shoal.control import transport

    return transport.connect


def _fetch_key() -> KeyFetcher:
    from shoal.control import transport

    return transport.fetch_server_key


def _ws_connect() -> Callable[..., Any]:
    import websockets

    return websockets.connect


def _pinger() -> Any:
    from shoal.daemon.icmp import Pinger

    return Pinger()


@dataclass
class DaemonEnv:
    sched: Scheduler | None = None  # None: the running loop (resolved when the Daemon is made)
    make_plane: PlaneFactory = wg_plane
    connect: Connector = field(default_factory=_connect)
    fetch_server_key: KeyFetcher = field(default_factory=_fetch_key)
    pinger: Any = field(default_factory=_pinger)
    resolve: Resolver = resolve_udp
    local_api: bool = True
    birthday_bind: BindFactory = open_udp
    relay_ws_connect: Callable[..., Any] = field(default_factory=_ws_connect)


async def sleep(sched: Scheduler, delay: float) -> None:
    """Wait `delay` seconds of `sched` time (cancellable)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    handle = sched.call_at(sched.time() + delay, lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        handle.cancel()
