"""Link settings of our interface through pyroute2: up/down, MTU, addresses, routes, delete.

Two front ends with the same operations: ``Link`` (sync ``IPRoute``, for code outside an
event loop: CLI, tests, the bench) and ``AsyncLink`` (``AsyncIPRoute``, for code inside
asyncio, where the sync class must not be used). Both run in the network namespace of the
calling process. Addresses and routes are CIDR strings ("100.64.0.1/32", "fd7a::1/128");
IPv6 addresses are added with NODAD so they are usable at once. Every failure is raised as
``LinkError`` naming the interface and the step.

``AsyncLink`` also has what the LAN plane's host changes need (docs/lan.md section 7): routes
with a protocol, scope and MTU metric, ``replace_address`` (idempotent), ``set_mac`` and
``main_table_has`` (is a prefix routed in the main table, on any interface).
"""

from __future__ import annotations

import ipaddress
from types import TracebackType

from pyroute2 import AsyncIPRoute, IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFA_F_NODAD = 0x02


class LinkError(RuntimeError):
    """A link operation failed; the message says on which interface and what was tried."""


def _addr_args(cidr: str, broadcast: bool = False) -> dict[str, object]:
    iface = ipaddress.ip_interface(cidr)
    args: dict[str, object] = {"address": str(iface.ip), "prefixlen": iface.network.prefixlen}
    if iface.version == 6:
        args["flags"] = IFA_F_NODAD
    elif broadcast and iface.network.prefixlen < 31:
        args["broadcast"] = str(iface.network.broadcast_address)
    return args


def _route_args(cidr: str, proto: int | None = None, scope: int | None = None, mtu: int | None = None) -> dict[str, object]:
    net = ipaddress.ip_network(cidr, strict=False)
    args: dict[str, object] = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                               "family": 10 if net.version == 6 else 2}
    if proto is not None:
        args["proto"] = proto
    if scope is not None:
        args["scope"] = scope
    if mtu is not None:
        args["metrics"] = {"mtu": mtu}
    return args


class Link:
    """Sync link settings for interface ``name`` (use as a context manager or call close())."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def index(self) -> int:
        found = self._ipr.link_lookup(ifname=self.name)
        if not found:
            raise LinkError(f"{self.name}: no such interface")
        return int(found[0])

    def _do(self, what: str, fn, *args: object, **kwargs: object) -> None:  # type: ignore[no-untyped-def]
        try:
            fn(*args, **kwargs)
        except NetlinkError as e:
            raise LinkError(f"{self.name}: {what} failed: {e.args[1] if len(e.args) > 1 else e} (errno {e.code})") from None

    def set_up(self, up: bool = True) -> None:
        self._do("set " + ("up" if up else "down"), self._ipr.link, "set", index=self.index(), state="up" if up else "down")

    def set_mtu(self, mtu: int) -> None:
        self._do(f"set mtu {mtu}", self._ipr.link, "set", index=self.index(), mtu=mtu)

    def add_address(self, cidr: str) -> None:
        self._do(f"add address {cidr}", self._ipr.addr, "add", index=self.index(), **_addr_args(cidr))

    def del_address(self, cidr: str) -> None:
        self._do(f"delete address {cidr}", self._ipr.addr, "del", index=self.index(), **_addr_args(cidr))

    def add_route(self, cidr: str) -> None:
        self._do(f"add route {cidr}", self._ipr.route, "replace", oif=self.index(), **_route_args(cidr))

    def del_route(self, cidr: str) -> None:
        self._do(f"delete route {cidr}", self._ipr.route, "del", oif=self.index(), **_route_args(cidr))

    def delete(self) -> None:
        self._do("delete link", self._ipr.link, "del", index=self.index())

    def configure(self, *, mtu: int | None = None, addresses: list[str] = [], routes: list[str] = []) -> None:  # noqa: B006
        """MTU, addresses, up, then routes (routes need the link up)."""
        if mtu is not None:
            self.set_mtu(mtu)
        for a in addresses:
            self.add_address(a)
        self.set_up()
        for r in routes:
            self.add_route(r)


class AsyncLink:
    """The same operations for code running inside an asyncio event loop. With
    ``broadcast=True`` IPv4 addresses get the subnet's broadcast address (``brd``)."""

    def __init__(self, name: str, *, broadcast: bool = False) -> None:
        self.name = name
        self.broadcast = broadcast
        self._ipr: AsyncIPRoute | None = None

    async def __aenter__(self) -> "AsyncLink":
        self._ipr = AsyncIPRoute()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _r(self) -> AsyncIPRoute:
        if self._ipr is None:
            raise LinkError(f"{self.name}: AsyncLink used outside 'async with'")
        return self._ipr

    async def index(self) -> int:
        found = await self._r().link_lookup(ifname=self.name)
        if not found:
            raise LinkError(f"{self.name}: no such interface")
        return int(found[0])

    async def _do(self, what: str, coro) -> None:  # type: ignore[no-untyped-def]
        try:
            await coro
        except NetlinkError as e:
            raise LinkError(f"{self.name}: {what} failed: {e.args[1] if len(e.args) > 1 else e} (errno {e.code})") from None

    async def set_up(self, up: bool = True) -> None:
        state = "up" if up else "down"
        await self._do("set " + state, self._r().link("set", index=await self.index(), state=state))

    async def set_mtu(self, mtu: int) -> None:
        await self._do(f"set mtu {mtu}", self._r().link("set", index=await self.index(), mtu=mtu))

    async def add_address(self, cidr: str) -> None:
        await self._do(f"add address {cidr}",
                       self._r().addr("add", index=await self.index(), **_addr_args(cidr, self.broadcast)))

    async def del_address(self, cidr: str) -> None:
        await self._do(f"delete address {cidr}", self._r().addr("del", index=await self.index(), **_addr_args(cidr)))

    async def replace_address(self, cidr: str) -> None:
        """Add ``cidr`` or leave it as it is (``ip addr replace``)."""
        await self._do(f"replace address {cidr}",
                       self._r().addr("replace", index=await self.index(), **_addr_args(cidr, self.broadcast)))

    async def set_mac(self, mac: bytes) -> None:
        await self._do(f"set address {mac.hex(':')}", self._r().link("set", index=await self.index(), address=mac.hex(":")))

    async def add_route(self, cidr: str, *, proto: int | None = None, scope: int | None = None,
                        mtu: int | None = None) -> None:
        """Route ``cidr`` to this link (``ip route replace``), optionally with a protocol, a
        scope and an MTU metric."""
        await self._do(f"add route {cidr}",
                       self._r().route("replace", oif=await self.index(), **_route_args(cidr, proto, scope, mtu)))

    async def main_table_has(self, cidr: str) -> bool:
        """Whether the main table (254) routes exactly ``cidr`` (IPv4), on any interface."""
        net = ipaddress.IPv4Network(cidr)
        try:
            routes = [r async for r in await self._r().route("dump", family=2)]
        except NetlinkError as e:
            raise LinkError(f"{self.name}: route dump failed: {e}") from None
        return any(r.get("table") == 254 and r.get("dst_len") == net.prefixlen and r.get("RTA_DST") == str(net.network_address)
                   for r in routes)

    async def del_route(self, cidr: str) -> None:
        await self._do(f"delete route {cidr}", self._r().route("del", oif=await self.index(), **_route_args(cidr)))

    async def delete(self) -> None:
        await self._do("delete link", self._r().link("del", index=await self.index()))

    async def configure(self, *, mtu: int | None = None, addresses: list[str] = [], routes: list[str] = []) -> None:  # noqa: B006
        if mtu is not None:
            await self.set_mtu(mtu)
        for a in addresses:
            await self.add_address(a)
        await self.set_up()
        for r in routes:
            await self.add_route(r)


__all__ = ["Link", "AsyncLink", "LinkError"]
