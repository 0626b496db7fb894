"""In-memory interface and UDP seams: run real `WgInterface`s in one process, no root, no fds.

Owns: `ChannelHost` (a `shoal.tun.host.Host`: interfaces are `ChannelTun`s, link settings
are recorded in a `LinkState` per interface), `ChannelTun` (a `shoal.tun.host.Tun`) and
`ChannelWire` (a loopback UDP "wire": `wire.factory(ip)` is a `shoal.udp.bind.BindFactory`
whose `ChannelBind`s deliver to each other by (ip, port)). For whole meshes over NATs and
lossy links use the fake network's binds instead (`shoal.testing.simnet`).

ChannelTun: what the runtime writes lands in `inbox` (IP packets, or whole frames on a TAP);
`inject(packets)` queues packets as if the OS had sent them, and wakes the reader. With
`answer_pings` (the default) it answers like a kernel: an ICMP/ICMPv6 echo request written
to it whose destination is one of its link's addresses (`LinkState.addresses`) gets an echo
reply queued for reading (on a TAP, the frame's MAC addresses swapped).

Readers are level-triggered, as the seams say: while something is queued and a reader is
set, the reader is called (through `sched.call_at(sched.time(), ...)`, never inline).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import struct
from collections import deque
from collections.abc import Callable

from shoal.clock import Scheduler, running
from shoal.endpoint import Endpoint
from shoal.tun.checksum import finish, ip_header_checksum, pseudo_residue, residue
from shoal.tun.link import LinkError

__all__ = ["ChannelBind", "ChannelHost", "ChannelLink", "ChannelTun", "ChannelWire", "LinkState", "echo_reply"]

_ETH_IPV4, _ETH_IPV6 = b"\x08\x00", b"\x86\xdd"
ICMP, ICMPV6 = 1, 58


def echo_reply(packet: bytes) -> bytes | None:
    """The echo reply a host sends for `packet` (an IPv4 ICMP or IPv6 ICMPv6 echo request);
    None for anything else."""
    if len(packet) >= 28 and packet[0] >> 4 == 4 and packet[9] == ICMP:
        ihl = (packet[0] & 15) * 4
        if len(packet) < ihl + 8 or packet[ihl] != 8:
            return None
        header = bytearray(packet[:ihl])
        header[8] = 64
        header[10:12] = b"\0\0"
        header[12:16], header[16:20] = packet[16:20], packet[12:16]
        header[10:12] = struct.pack("!H", ip_header_checksum(header))
        icmp = bytearray(packet[ihl:])
        icmp[0], icmp[2:4] = 0, b"\0\0"
        icmp[2:4] = struct.pack("!H", finish(residue(icmp)))
        return bytes(header + icmp)
    if len(packet) >= 48 and packet[0] >> 4 == 6 and packet[6] == ICMPV6 and packet[40] == 128:
        src, dst = packet[24:40], packet[8:24]
        icmp = bytearray(packet[40:])
        icmp[0], icmp[2:4] = 129, b"\0\0"
        icmp[2:4] = struct.pack("!H", finish(pseudo_residue(src, dst, ICMPV6, len(icmp)) + residue(icmp)))
        return bytes(packet[:7]) + b"\x40" + src + dst + bytes(icmp)
    return None


class _Queue:
    """Queued items and a level-triggered reader (module docstring)."""

    def __init__(self, sched: Scheduler | None) -> None:
        self._sched = sched
        self.queue: deque = deque()
        self._reader: Callable[[], None] | None = None
        self._armed = False

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        self._reader = callback
        self._wake()

    def push(self, items: list) -> None:
        self.queue.extend(items)
        self._wake()

    def pop(self, n: int) -> list:
        q = self.queue
        return [q.popleft() for _ in range(min(n, len(q)))]

    def _wake(self) -> None:
        if self._reader is None or not self.queue or self._armed:
            return
        self._sched = running(self._sched)
        self._armed = True
        self._sched.call_at(self._sched.time(), self._fire)

    def _fire(self) -> None:
        self._armed = False
        if self._reader is not None and self.queue:
            self._reader()
            self._wake()


@dataclasses.dataclass
class LinkState:
    """What the runtime configured on one interface."""

    mtu: int | None = None
    up: bool = False
    addresses: list[str] = dataclasses.field(default_factory=list)
    routes: dict[str, dict[str, int | None]] = dataclasses.field(default_factory=dict)
    mac: bytes | None = None
    addr_gen: bool = True


class ChannelTun:
    """See the module docstring."""

    def __init__(self, name: str, link: LinkState, *, tap: bool = False, answer_pings: bool = True,
                 sched: Scheduler | None = None) -> None:
        self.name = name
        self.tap = tap
        self.link = link
        self.answer_pings = answer_pings
        self.inbox: list[bytes] = []
        self.closed = False
        self._in = _Queue(sched)

    def inject(self, packets: list[bytes]) -> None:
        if not self.closed:
            self._in.push(list(packets))

    def take(self) -> list[bytes]:
        """What the runtime wrote since the last take (and empties `inbox`)."""
        out, self.inbox = self.inbox, []
        return out

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        self._in.set_reader(None if self.closed else callback)

    def read_batch(self, max_packets: int = 128) -> list[bytes]:
        return self._in.pop(max_packets)

    def write_batch(self, packets: list[bytes]) -> None:
        if self.closed:
            return
        self.inbox += packets
        if self.answer_pings:
            replies = [r for r in map(self._answer, packets) if r is not None]
            if replies:
                self._in.push(replies)

    def write_ip_frames(self, packets: list[bytes], header_for: Callable[[bytes], bytes]) -> None:
        self.write_batch([header_for(p) + p for p in packets])

    def close(self) -> None:
        self.closed = True
        self._in.set_reader(None)

    def _answer(self, item: bytes) -> bytes | None:
        if self.tap:
            if item[12:14] not in (_ETH_IPV4, _ETH_IPV6):
                return None
            reply = self._answer_ip(item[14:])
            return item[6:12] + item[0:6] + item[12:14] + reply if reply is not None else None
        return self._answer_ip(item)

    def _answer_ip(self, packet: bytes) -> bytes | None:
        if len(packet) < 20:
            return None
        dst = packet[16:20] if packet[0] >> 4 == 4 else packet[24:40]
        own = {ipaddress.ip_interface(a).ip.packed for a in self.link.addresses}
        return echo_reply(packet) if dst in own else None


class ChannelLink:
    """`shoal.tun.host.LinkSettings` over a `LinkState`."""

    def __init__(self, host: ChannelHost, name: str) -> None:
        self.host, self.name = host, name

    async def __aenter__(self) -> ChannelLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _state(self) -> LinkState:
        tun = self.host.tuns.get(self.name)
        if tun is None or tun.closed:
            raise LinkError(f"{self.name}: no such interface")
        return tun.link

    async def configure(self, *, mtu: int | None = None, addresses: list[str] = [],  # noqa: B006
                        routes: list[str] = []) -> None:  # noqa: B006
        if mtu is not None:
            await self.set_mtu(mtu)
        for a in addresses:
            await self.add_address(a)
        await self.set_up()
        for r in routes:
            await self.add_route(r)

    async def set_mtu(self, mtu: int) -> None:
        self._state().mtu = mtu

    async def set_up(self, up: bool = True) -> None:
        self._state().up = up

    async def add_address(self, cidr: str) -> None:
        state = self._state()
        if cidr in state.addresses:
            raise LinkError(f"{self.name}: add address {cidr} failed: File exists (errno 17)")
        state.addresses.append(cidr)

    async def del_address(self, cidr: str) -> None:
        state = self._state()
        if cidr not in state.addresses:
            raise LinkError(f"{self.name}: delete address {cidr} failed: Cannot assign requested address (errno 99)")
        state.addresses.remove(cidr)

    async def replace_address(self, cidr: str) -> None:
        state = self._state()
        if cidr not in state.addresses:
            state.addresses.append(cidr)

    async def set_mac(self, mac: bytes) -> None:
        self._state().mac = bytes(mac)

    async def add_route(self, cidr: str, *, proto: int | None = None, scope: int | None = None,
                        mtu: int | None = None) -> None:
        self._state().routes[cidr] = {"proto": proto, "scope": scope, "mtu": mtu}

    async def main_table_has(self, cidr: str) -> bool:
        return cidr in self.host.main_routes


class ChannelHost:
    """A `shoal.tun.host.Host` whose interfaces are `ChannelTun`s (`tuns`, by name).
    `main_routes`: prefixes the "main table" routes elsewhere (for `main_table_has`)."""

    def __init__(self, *, answer_pings: bool = True, sched: Scheduler | None = None) -> None:
        self.answer_pings = answer_pings
        self.sched = sched
        self.tuns: dict[str, ChannelTun] = {}
        self.main_routes: set[str] = set()

    def open(self, name: str, *, tap: bool = False, offload: bool = True) -> ChannelTun:
        if not name or len(name.encode()) > 15:
            raise ValueError(f"interface name must be 1..15 bytes: {name!r}")
        old = self.tuns.get(name)
        if old is not None and not old.closed:
            raise OSError(errno.EBUSY, f"TUNSETIFF {name}: Device or resource busy")
        tun = self.tuns[name] = ChannelTun(name, LinkState(), tap=tap, answer_pings=self.answer_pings,
                                           sched=self.sched)
        return tun

    def link(self, name: str, *, broadcast: bool = False) -> ChannelLink:
        return ChannelLink(self, name)

    def disable_ipv6_addr_gen(self, name: str) -> None:
        tun = self.tuns.get(name)
        if tun is None or tun.closed:
            raise FileNotFoundError(errno.ENOENT, f"no interface {name}")
        tun.link.addr_gen = False


class ChannelBind:
    """A `shoal.udp.bind.Bind` on a `ChannelWire` at (ip, port)."""

    def __init__(self, wire: ChannelWire, ip: str, port: int) -> None:
        self.wire, self.ip, self.port = wire, ip, port
        self.closed = False
        self._in = _Queue(wire.sched)

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        self._in.set_reader(None if self.closed else callback)

    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[bytes, Endpoint]]:
        return self._in.pop(max_datagrams)

    def send_batch(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        if not self.closed:
            self.wire.carry(self, datagrams)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._in.set_reader(None)
            self.wire.binds.pop((self.ip, self.port), None)


class ChannelWire:
    """Loopback UDP between `ChannelBind`s: a datagram to (ip, port) reaches the bind there,
    from the sender's (ip, port); to nowhere it is counted in `dropped`."""

    def __init__(self, sched: Scheduler | None = None) -> None:
        self.sched = sched
        self.binds: dict[Endpoint, ChannelBind] = {}
        self.dropped = 0
        self._next_port = 40000

    def factory(self, ip: str) -> Callable[..., ChannelBind]:
        """A `BindFactory` for the host at `ip` (its `host` argument is ignored)."""

        def bind(port: int = 0, *, host: str = "::") -> ChannelBind:
            if port == 0:
                while (ip, self._next_port) in self.binds:
                    self._next_port += 1
                port = self._next_port
            if (ip, port) in self.binds:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            b = self.binds[(ip, port)] = ChannelBind(self, ip, port)
            return b

        return bind

    def carry(self, src: ChannelBind, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        for data, dst in datagrams:
            to = self.binds.get((dst[0], dst[1]))
            if to is None:
                self.dropped += 1
            else:
                to._in.push([(bytes(data), (src.ip, src.port))])
