"""`python -m shoal.bench.lanwg wg up --foreground CONF`: `shoal wg` in the node daemon's LAN mode.

For the benchmark only (`python -m shoal.bench --impl shoal-tap`): the interface of CONF is a
TAP driven by `shoal.lan.plane.LanPlane`, exactly as the daemon's `shoal0`, with a static LAN
view made from the config: one IP network whose online members are this interface and every
peer (node ids p0, p1, ...; each peer's IPv4 is the first /32 of its AllowedIPs, flagged as a
Shoal peer). Unicast then takes the path the daemon's TAP takes (Ethernet header stripped
before the engine, added back, coalesced, on delivery), so `make bench` can compare it with
the TUN of `shoal wg`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import signal
import sys

from shoal.lan.broadcast import NetworkState
from shoal.lan.plane import LanPlane, LanView
from shoal.lan.switch import PeerAddresses
from shoal.dataplane import config as wgconfig
from shoal.dataplane.runtime import WgInterface

SELF = "self"
NETWORK = "bench"


def lan_view_for(cfg: wgconfig.WgConfig) -> tuple[LanView, ipaddress.IPv4Network]:
    """The static view: one IP network of this interface and its peers (module docstring)."""
    own4 = next(a for a in cfg.interface.addresses if a.version == 4)
    own = PeerAddresses(own4.ip, ipaddress.IPv6Address("fd5a::1"))  # type: ignore[arg-type]
    peers, keys = {}, {}
    for i, p in enumerate(cfg.peers):
        v4 = next(n for n in p.allowed_ips if n.version == 4)
        node = f"p{i}"
        peers[node] = PeerAddresses(v4.network_address, ipaddress.IPv6Address(f"fd5a::{i + 2:x}"))  # type: ignore[arg-type]
        keys[node] = p.public_key
    nets = (NetworkState(NETWORK, "ip", True, frozenset([SELF, *peers])),)
    return LanView(SELF, own, nets, peers, keys), own4.network  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    if len(argv) != 4 or argv[:3] != ["wg", "up", "--foreground"]:
        print("usage: python -m shoal.bench.lanwg wg up --foreground CONF", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = wgconfig.load(argv[3])
    cfg.peers = [dataclasses.replace(p, shoal=True) for p in cfg.peers]
    view, overlay = lan_view_for(cfg)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        lan = LanPlane(overlay=overlay, multicast_route=False)
        await lan.set_view(view)
        await WgInterface(cfg, lan=lan).run(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
