"""View -> data plane: the daemon's one writer of the engine's peers, addresses and LAN view.

Owns: `Reconciler.reconcile` (make the engine match the view; idempotent, untouched peers keep
their sessions), the interface addresses (`self_addresses`: our IPv4/10 and IPv6/48), the LAN
plane's view (networks, online members, peers' addresses, l2 TAPs) and the "view changed"
condition API handlers wait on (`wait`). Also `host_endpoints`, the host's own addresses the
daemon advertises.

Rules: a WireGuard peer exists exactly for each peer of the view (`shoal.daemon.view`); a node
that shares no online network with us is removed, so its handshakes and packets are refused by
the engine (the receiving side enforces isolation). With traversal the view's endpoints are
candidates only: configs go in without an endpoint and traversal is given the view's peers.
A peer that leaves the engine loses its RTT record.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from shoal import endpoint
from shoal.control import messages as M
from shoal.dataplane.config import IPInterface
from shoal.lan.plane import lan_view

# `Daemon` below is shoal.daemon.daemon.Daemon (not imported: it imports this module)
Daemon = Any

log = logging.getLogger("shoal.daemon")

OVERLAY_V4 = ipaddress.ip_network("100.64.0.0/10")
V4_PREFIX, V6_PREFIX = 10, 48


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


class Reconciler:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._changed: asyncio.Condition | None = None  # made in the loop (Daemon.run)

    def bind_loop(self) -> None:
        self._changed = asyncio.Condition()

    async def set_self(self, node: M.SelfInfo) -> None:
        if self.d.plane is not None:
            await self.d.plane.set_addresses(self_addresses(node))

    async def reconcile(self) -> None:
        """Make the engine match the view (idempotent; untouched peers keep their sessions)."""
        d = self.d
        if d.plane is not None:
            before = set(d.plane.device.peers)
            configs = d.planner.configs(d.view)
            if d.traversal is not None:
                for c in configs:
                    c.endpoint = None  # traversal chooses endpoints
            d.plane.set_peers(configs)
            after = set(d.plane.device.peers)
            if d.traversal is not None:
                d.traversal.set_peers(list(d.view.peers.values()))
            for key in before - after:
                d.rtt.pop(key, None)
            if before != after:
                log.info("peers: +%d -%d = %d", len(after - before), len(before - after), len(after))
            if d.view.node is not None:
                await self.set_self(d.view.node)
            if d.lan is not None:  # LAN hook
                await d.lan.set_view(lan_view(d.view))
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def forget(self) -> None:
        """After logout: no view, no peers, no addresses, no LAN view."""
        d = self.d
        d.view.clear()
        d.planner.forget()
        if d.plane is not None:
            d.plane.set_peers([])
            await d.plane.set_addresses([])
        if d.lan is not None:  # LAN hook
            await d.lan.set_view(None)
        d.rtt.clear()

    async def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Until the view satisfies `predicate` (checked after each reconcile) or `timeout`."""
        assert self._changed is not None
        with contextlib.suppress(asyncio.TimeoutError):
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
        return predicate()
