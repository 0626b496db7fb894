"""An in-memory UDP internet for simulation tests: hosts, sockets, NAT routers, lossy links.

Owns: moving datagrams between fake sockets in simulated time. Nothing here touches a real
socket; time is the `Scheduler` of `shoal.testing.clock`; every random choice (loss,
jitter, reordering, duplication, NAT port allocation) comes from one `random.Random(seed)`,
so the same seed and the same inputs give the same run, event for event (`trace`).

Model
-----
- `Segment`: one L3 network. The `internet` segment (created with the network) reaches
  every address attached to it directly. A LAN segment has a subnet and a gateway (the
  inside address of a `NatRouter`); destinations outside the subnet go to the gateway.
- `Interface`: a node's attachment to a segment: an address plus a `LinkProfile` (the
  "cable": latency, jitter, loss, duplication, reordering, MTU, up/down). A datagram
  crossing a segment from interface A to interface B goes through A's cable and then
  B's: delays add up, either cable may lose it. Without reordering the datagrams from A
  to B arrive in the order sent (jitter then only bunches them up); with
  `reorder=p` each datagram escapes that FIFO rule with probability p. A cable that is
  down loses everything sent through it, including datagrams in flight toward it.
- `Host`: sockets bound to a port on one or all of the host's addresses (`socket()`),
  `sendto`, an inbox (`recvfrom`) and/or an `on_datagram` callback run at delivery time, so
  sans-IO engines can answer at once. A host may change address (`set_address`) or roam
  to another segment (`move`, e.g. from behind one NAT to behind another).
- `NatRouter`: inside interface (gateway of its LAN), outside interface (upstream segment,
  the internet or another router's LAN, so NATs nest: CGNAT). Behaviour per RFC 4787:

    mapping   (REQ-1)  which outbound flows share one external port:
        ENDPOINT_INDEPENDENT        all flows of one internal ip:port
        ADDRESS_DEPENDENT           one per destination address
        ADDRESS_AND_PORT_DEPENDENT  one per destination ip:port ("symmetric")
    filtering (REQ-8)  which inbound datagrams a mapping lets in:
        ENDPOINT_INDEPENDENT        anyone
        ADDRESS_DEPENDENT           addresses the mapping has sent to
        ADDRESS_AND_PORT_DEPENDENT  ip:ports the mapping has sent to
    hairpinning (REQ-9)  an inside host may reach another inside host through the
        router's external address; the datagram arrives from the sender's external
        mapping. Off: such datagrams are dropped.
    mapping timeout (REQ-5)  a mapping unused by outbound traffic for `mapping_timeout`
        seconds is forgotten (inbound traffic refreshes it only if `inbound_refreshes`).
    port preservation  the external port equals the internal one when free; otherwise
        (or with preservation off) a seeded random free port in `port_range`.

  The classic names: full cone = EI mapping + EI filtering; restricted cone = EI + AD;
  port-restricted cone = EI + APD (Linux MASQUERADE, "easy NAT"); symmetric = APD + APD
  ("hard NAT"). `NatBehavior.preset(name)` builds them. Static port forwards
  (`forward_port`) model DNAT.

Accounting: `stats` counts events ("sent", "delivered", "lost", "dropped:<reason>"); with
`trace=True`, `trace` records every event as a tuple of plain values for determinism tests.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import ipaddress
import random
from collections.abc import Callable
from typing import Any

from shoal.endpoint import Endpoint
from shoal.testing.clock import Scheduler

__all__ = [
    "Endpoint",
    "Datagram",
    "LinkProfile",
    "Segment",
    "Interface",
    "Node",
    "Host",
    "FakeSocket",
    "Dependence",
    "NatBehavior",
    "NatRouter",
    "FakeNetwork",
    "IP_UDP_OVERHEAD",
]

IP_UDP_OVERHEAD = 28  # IPv4 + UDP headers, counted against a cable's MTU
EPHEMERAL_PORTS = (32768, 60999)  # Linux default ip_local_port_range


@dataclasses.dataclass(frozen=True, slots=True)
class Datagram:
    src: Endpoint
    dst: Endpoint
    payload: bytes


@dataclasses.dataclass(slots=True)
class LinkProfile:
    """Impairments of one cable (an interface's attachment); change them at any time."""

    latency: float = 0.0  # seconds, one way through this cable
    jitter: float = 0.0  # extra delay, uniform in [0, jitter]
    loss: float = 0.0  # probability a datagram is lost in this cable
    duplicate: float = 0.0  # probability a datagram is delivered twice
    reorder: float = 0.0  # probability a datagram may overtake earlier ones
    mtu: int | None = None  # bytes including IP+UDP headers; larger datagrams are dropped
    up: bool = True

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p!r}")
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must be >= 0")


class Segment:
    """An L3 network: addresses on it reach each other directly; others go to the gateway."""

    def __init__(self, net: FakeNetwork, name: str, subnet: str | None, gateway: str | None = None) -> None:
        self.net = net
        self.name = name
        self.subnet = None if subnet is None else ipaddress.ip_network(subnet)
        self.gateway = gateway
        self.members: dict[str, Interface] = {}
        self._contains: dict[str, bool] = {}
        self._fifo: dict[tuple[int, int], float] = {}

    def contains(self, ip: str) -> bool:
        if self.subnet is None:
            return True
        hit = self._contains.get(ip)
        if hit is None:
            try:
                hit = ipaddress.ip_address(ip) in self.subnet
            except ValueError:
                hit = False
            if len(self._contains) < 65536:
                self._contains[ip] = hit
        return hit

    def _register(self, iface: Interface) -> None:
        if self.subnet is not None and not self.contains(iface.address):
            raise ValueError(f"{iface.address} is not in {self.name}'s subnet {self.subnet}")
        other = self.members.get(iface.address)
        if other is not None and other is not iface:
            raise ValueError(f"{iface.address} is already used on {self.name} by {other.node.name}")
        self.members[iface.address] = iface

    def _unregister(self, iface: Interface) -> None:
        if self.members.get(iface.address) is iface:
            del self.members[iface.address]

    def transmit(self, src: Interface, next_hop: str, dgram: Datagram) -> None:
        """Carry `dgram` from interface `src` to whoever owns `next_hop` on this segment."""
        net = self.net
        dst = self.members.get(next_hop)
        if dst is None:
            net._event("dropped:no-host", src.node.name, dgram)
            return
        a, b = src.link, dst.link
        if not a.up or not b.up:
            net._event("lost", src.node.name, dgram)
            return
        size = len(dgram.payload) + IP_UDP_OVERHEAD
        if (a.mtu is not None and size > a.mtu) or (b.mtu is not None and size > b.mtu):
            net._event("dropped:mtu", src.node.name, dgram)
            return
        rng = net.rng
        if (a.loss and rng.random() < a.loss) or (b.loss and rng.random() < b.loss):
            net._event("lost", src.node.name, dgram)
            return
        copies = 2 if (a.duplicate or b.duplicate) and rng.random() < max(a.duplicate, b.duplicate) else 1
        now = net.scheduler.clock.now()
        key = (id(src), id(dst))
        for _ in range(copies):
            delay = a.latency + b.latency
            if a.jitter:
                delay += rng.uniform(0.0, a.jitter)
            if b.jitter:
                delay += rng.uniform(0.0, b.jitter)
            at = now + delay
            reorder = max(a.reorder, b.reorder)
            if not (reorder and rng.random() < reorder):
                last = self._fifo.get(key, 0.0)
                if at < last:
                    at = last
                self._fifo[key] = at
            net.scheduler.call_at(at, self._arrive, dst, next_hop, dgram)

    def _arrive(self, dst: Interface, next_hop: str, dgram: Datagram) -> None:
        if self.members.get(next_hop) is not dst:  # moved away while in flight
            self.net._event("dropped:no-host", self.name, dgram)
            return
        if not dst.link.up:
            self.net._event("lost", dst.node.name, dgram)
            return
        dst.node._receive(dst, dgram)

    def __repr__(self) -> str:
        return f"Segment({self.name!r}, {self.subnet})"


class Interface:
    """A node's attachment to a segment: one address and one cable."""

    def __init__(self, node: Node, segment: Segment, address: str, link: LinkProfile | None) -> None:
        self.node = node
        self.segment = segment
        self.address = address
        self.link = link if link is not None else LinkProfile()

    def __repr__(self) -> str:
        return f"Interface({self.node.name}, {self.segment.name}, {self.address})"


class Node:
    """Something with interfaces that sends and receives datagrams."""

    def __init__(self, net: FakeNetwork, name: str) -> None:
        self.net = net
        self.name = name
        self.interfaces: list[Interface] = []

    def attach(self, segment: Segment, address: str, link: LinkProfile | None = None) -> Interface:
        iface = Interface(self, segment, str(ipaddress.ip_address(address)), link)
        segment._register(iface)
        self.interfaces.append(iface)
        return iface

    @property
    def address(self) -> str:
        """The first interface's address."""
        return self.interfaces[0].address

    @property
    def link(self) -> LinkProfile:
        """The first interface's cable."""
        return self.interfaces[0].link

    def addresses(self) -> set[str]:
        return {i.address for i in self.interfaces}

    def set_address(self, address: str, iface: Interface | None = None) -> None:
        """Move an interface (default: the first) to a new address on the same segment."""
        iface = iface if iface is not None else self.interfaces[0]
        old = iface.address
        iface.segment._unregister(iface)
        iface.address = str(ipaddress.ip_address(address))
        try:
            iface.segment._register(iface)
        except ValueError:
            iface.address = old
            iface.segment._register(iface)
            raise
        self.net._event("address-change", self.name, (old, iface.address))

    def move(self, segment: Segment, address: str, iface: Interface | None = None) -> None:
        """Re-attach an interface (default: the first) to another segment and address."""
        iface = iface if iface is not None else self.interfaces[0]
        old_seg, old_addr = iface.segment, iface.address
        old_seg._unregister(iface)
        iface.segment, iface.address = segment, str(ipaddress.ip_address(address))
        try:
            segment._register(iface)
        except ValueError:
            iface.segment, iface.address = old_seg, old_addr
            old_seg._register(iface)
            raise
        self.net._event("move", self.name, (old_seg.name, old_addr, segment.name, iface.address))

    def set_link(self, up: bool, iface: Interface | None = None) -> None:
        """Plug (True) or unplug (False) a cable (default: the first interface's)."""
        (iface if iface is not None else self.interfaces[0]).link.up = up
        self.net._event("link-up" if up else "link-down", self.name, None)

    def route(self, dst_ip: str) -> tuple[Interface, str] | None:
        """(egress interface, next hop) for `dst_ip`: on-link first, else a default gateway."""
        fallback: tuple[Interface, str] | None = None
        for iface in self.interfaces:
            seg = iface.segment
            if seg.subnet is not None and seg.contains(dst_ip):
                return iface, dst_ip
            if fallback is None:
                if seg.subnet is None:
                    fallback = (iface, dst_ip)
                elif seg.gateway is not None and seg.gateway != iface.address:
                    fallback = (iface, seg.gateway)
        return fallback

    def _send(self, dgram: Datagram, via: Interface | None = None) -> None:
        if via is None:
            r = self.route(dgram.dst[0])
            if r is None:
                self.net._event("dropped:no-route", self.name, dgram)
                return
            via, hop = r
        else:
            hop = dgram.dst[0] if via.segment.contains(dgram.dst[0]) else (via.segment.gateway or dgram.dst[0])
        via.segment.transmit(via, hop, dgram)

    def _receive(self, iface: Interface, dgram: Datagram) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {[i.address for i in self.interfaces]})"


class FakeSocket:
    """A UDP socket bound to `port` on one address of its host, or on all (address None)."""

    def __init__(self, host: Host, port: int, address: str | None) -> None:
        self.host = host
        self.port = port
        self.bound_address = address
        self.inbox: collections.deque[tuple[bytes, Endpoint]] = collections.deque()
        # Called at delivery time instead of queueing into `inbox`, if set.
        self.on_datagram: Callable[[bytes, Endpoint], None] | None = None
        self.closed = False
        self.sent = 0
        self.received = 0

    @property
    def local_address(self) -> Endpoint:
        return (self.bound_address or self.host.address, self.port)

    def sendto(self, data: bytes | bytearray | memoryview, addr: Endpoint) -> None:
        """Send one datagram; like UDP, failures downstream are silent (see `net.stats`)."""
        if self.closed:
            raise OSError("socket is closed")
        ip, port = addr
        if not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        ip = str(ipaddress.ip_address(ip))
        host = self.host
        iface: Interface | None = None
        if self.bound_address is not None:
            iface = next((i for i in host.interfaces if i.address == self.bound_address), None)
        else:
            r = host.route(ip)
            iface = None if r is None else r[0]
        src_ip = self.bound_address or (iface.address if iface is not None else "0.0.0.0")
        dgram = Datagram((src_ip, self.port), (ip, port), bytes(data))
        if iface is None:
            host.net._event("dropped:no-route", host.name, dgram)
            return
        self.sent += 1
        host.net._event("sent", host.name, dgram)
        host._send(dgram, iface)

    def recvfrom(self) -> tuple[bytes, Endpoint] | None:
        """The oldest queued datagram and its source, or None if the inbox is empty."""
        return self.inbox.popleft() if self.inbox else None

    def drain(self) -> list[tuple[bytes, Endpoint]]:
        out = list(self.inbox)
        self.inbox.clear()
        return out

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.host._sockets.pop((self.bound_address, self.port), None)

    def _deliver(self, dgram: Datagram) -> None:
        self.received += 1
        if self.on_datagram is not None:
            self.on_datagram(dgram.payload, dgram.src)
        else:
            self.inbox.append((dgram.payload, dgram.src))

    def __repr__(self) -> str:
        return f"FakeSocket({self.host.name} {self.bound_address or '*'}:{self.port})"


class Host(Node):
    """An end host: sockets, no forwarding."""

    def __init__(self, net: FakeNetwork, name: str) -> None:
        super().__init__(net, name)
        self._sockets: dict[tuple[str | None, int], FakeSocket] = {}
        self._next_ephemeral = EPHEMERAL_PORTS[0]

    def _port_free(self, port: int, address: str | None) -> bool:
        if address is None:
            return not any(p == port for _, p in self._sockets)
        return (None, port) not in self._sockets and (address, port) not in self._sockets

    def socket(self, port: int = 0, *, address: str | None = None) -> FakeSocket:
        """A socket bound to `port` (0: the next free ephemeral port) on `address`
        (None: all of the host's addresses; replies then leave from the routed interface)."""
        if address is not None:
            address = str(ipaddress.ip_address(address))
            if address not in self.addresses():
                raise OSError(f"{self.name} has no address {address}")
        if port == 0:
            lo, hi = EPHEMERAL_PORTS
            for _ in range(hi - lo + 1):
                p = self._next_ephemeral
                self._next_ephemeral = lo if p >= hi else p + 1
                if self._port_free(p, address):
                    port = p
                    break
            else:
                raise OSError("no free ephemeral port")
        elif not 0 < port < 65536:
            raise ValueError(f"bad port {port!r}")
        elif not self._port_free(port, address):
            raise OSError(f"{self.name}: port {port} already in use")
        sock = FakeSocket(self, port, address)
        self._sockets[(address, port)] = sock
        return sock

    def _receive(self, iface: Interface, dgram: Datagram) -> None:
        ip, port = dgram.dst
        if ip not in self.addresses():
            self.net._event("dropped:not-mine", self.name, dgram)
            return
        sock = self._sockets.get((ip, port)) or self._sockets.get((None, port))
        if sock is None:
            self.net._event("dropped:port-unreachable", self.name, dgram)
            return
        self.net._event("delivered", self.name, dgram)
        sock._deliver(dgram)


class Dependence(enum.Enum):
    """RFC 4787 terms for what a NAT mapping or filter depends on."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


EI = Dependence.ENDPOINT_INDEPENDENT
AD = Dependence.ADDRESS_DEPENDENT
APD = Dependence.ADDRESS_AND_PORT_DEPENDENT

_PRESETS: dict[str, tuple[Dependence, Dependence]] = {
    "full-cone": (EI, EI),
    "restricted-cone": (EI, AD),
    "port-restricted-cone": (EI, APD),
    "symmetric": (APD, APD),
}


@dataclasses.dataclass(frozen=True, slots=True)
class NatBehavior:
    """How a `NatRouter` maps and filters (see the module docstring)."""

    mapping: Dependence = EI
    filtering: Dependence = APD
    hairpinning: bool = False
    mapping_timeout: float = 120.0
    inbound_refreshes: bool = False
    port_preservation: bool = True
    port_range: tuple[int, int] = (1024, 65535)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NatBehavior:
        """One of "full-cone", "restricted-cone", "port-restricted-cone", "symmetric"."""
        try:
            mapping, filtering = _PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown NAT type {name!r}; known: {sorted(_PRESETS)}") from None
        return cls(mapping=mapping, filtering=filtering, **overrides)

    @staticmethod
    def preset_names() -> list[str]:
        return list(_PRESETS)


class _Binding:
    __slots__ = ("internal", "port", "key", "refreshed", "sent_to_ips", "sent_to_eps")

    def __init__(self, internal: Endpoint, port: int, key: tuple[Any, ...], now: float) -> None:
        self.internal = internal
        self.port = port
        self.key = key
        self.refreshed = now
        self.sent_to_ips: set[str] = set()
        self.sent_to_eps: set[Endpoint] = set()


class NatRouter(Node):
    """A NAT between a LAN segment (inside) and an upstream segment (outside)."""

    def __init__(self, net: FakeNetwork, name: str, behavior: NatBehavior) -> None:
        super().__init__(net, name)
        self.behavior = behavior
        self._out: dict[tuple[Any, ...], _Binding] = {}
        self._in: dict[int, _Binding] = {}
        self._forwards: dict[int, Endpoint] = {}
        self._next_sweep = 0.0
        self.inside: Interface
        self.outside: Interface
        self.lan: Segment

    @property
    def public_address(self) -> str:
        return self.outside.address

    def forward_port(self, external_port: int, internal: Endpoint) -> None:
        """Static DNAT: anything arriving at `external_port` goes to `internal`, unfiltered."""
        self._forwards[external_port] = (str(ipaddress.ip_address(internal[0])), internal[1])

    def flush(self) -> None:
        """Forget every dynamic mapping (a router reboot)."""
        self._out.clear()
        self._in.clear()

    def set_public_address(self, address: str) -> None:
        """The ISP renumbers us: new outside address, all mappings lost."""
        self.set_address(address, self.outside)
        self.flush()

    def mappings(self) -> list[tuple[Endpoint, int]]:
        """Live (internal endpoint, external port) pairs, for assertions and debugging."""
        now = self.net.scheduler.clock.now()
        return sorted((b.internal, b.port) for b in self._in.values() if not self._expired(b, now))

    # --- datagram path ------------------------------------------------------------------------

    def _receive(self, iface: Interface, dgram: Datagram) -> None:
        if iface is self.inside:
            dst_ip = dgram.dst[0]
            if dst_ip == self.outside.address:
                self._hairpin(dgram)
            elif dst_ip == self.inside.address:
                self.net._event("dropped:router-local", self.name, dgram)
            else:
                out = self._translate_out(dgram)
                if out is not None:
                    self._send(out, self.outside)
        elif dgram.dst[0] == self.outside.address:
            inbound = self._translate_in(dgram)
            if inbound is not None:
                self._send(inbound, self.inside)
        else:
            self.net._event("dropped:not-mine", self.name, dgram)

    def _expired(self, b: _Binding, now: float) -> bool:
        return now - b.refreshed > self.behavior.mapping_timeout

    def _drop_binding(self, b: _Binding) -> None:
        self._out.pop(b.key, None)
        if self._in.get(b.port) is b:
            del self._in[b.port]

    def _key(self, src: Endpoint, dst: Endpoint) -> tuple[Any, ...]:
        m = self.behavior.mapping
        if m is EI:
            return (src,)
        if m is AD:
            return (src, dst[0])
        return (src, dst)

    def _port_free(self, port: int, now: float) -> bool:
        if port in self._forwards:
            return False
        b = self._in.get(port)
        if b is not None and self._expired(b, now):
            self._drop_binding(b)
            return True
        return b is None

    def _allocate_port(self, wanted: int, now: float) -> int | None:
        lo, hi = self.behavior.port_range
        if self.behavior.port_preservation and lo <= wanted <= hi and self._port_free(wanted, now):
            return wanted
        rng = self.net.rng
        for _ in range(64):
            p = rng.randint(lo, hi)
            if self._port_free(p, now):
                return p
        for p in range(lo, hi + 1):  # nearly full: scan
            if self._port_free(p, now):
                return p
        return None

    def _binding_for(self, src: Endpoint, dst: Endpoint, now: float) -> _Binding | None:
        key = self._key(src, dst)
        b = self._out.get(key)
        if b is not None and self._expired(b, now):
            self._drop_binding(b)
            b = None
        if b is None:
            if now >= self._next_sweep:  # free the memory of expired mappings now and then
                for x in [x for x in self._in.values() if self._expired(x, now)]:
                    self._drop_binding(x)
                self._next_sweep = now + self.behavior.mapping_timeout
            port = self._allocate_port(src[1], now)
            if port is None:
                return None
            b = _Binding(src, port, key, now)
            self._out[key] = b
            self._in[port] = b
            self.net._event("nat-map", self.name, (src, port, dst))
        b.refreshed = now
        b.sent_to_ips.add(dst[0])
        b.sent_to_eps.add(dst)
        return b

    def _translate_out(self, dgram: Datagram) -> Datagram | None:
        now = self.net.scheduler.clock.now()
        b = self._binding_for(dgram.src, dgram.dst, now)
        if b is None:
            self.net._event("dropped:nat-ports-exhausted", self.name, dgram)
            return None
        return Datagram((self.outside.address, b.port), dgram.dst, dgram.payload)

    def _translate_in(self, dgram: Datagram) -> Datagram | None:
        port = dgram.dst[1]
        fwd = self._forwards.get(port)
        if fwd is not None:
            return Datagram(dgram.src, fwd, dgram.payload)
        now = self.net.scheduler.clock.now()
        b = self._in.get(port)
        if b is not None and self._expired(b, now):
            self._drop_binding(b)
            b = None
        if b is None:
            self.net._event("dropped:nat-no-mapping", self.name, dgram)
            return None
        f = self.behavior.filtering
        if (f is AD and dgram.src[0] not in b.sent_to_ips) or (f is APD and dgram.src not in b.sent_to_eps):
            self.net._event("dropped:nat-filtered", self.name, dgram)
            return None
        if self.behavior.inbound_refreshes:
            b.refreshed = now
        return Datagram(dgram.src, b.internal, dgram.payload)

    def _hairpin(self, dgram: Datagram) -> None:
        if not self.behavior.hairpinning:
            self.net._event("dropped:no-hairpin", self.name, dgram)
            return
        out = self._translate_out(dgram)  # the sender's external endpoint becomes the source
        if out is None:
            return
        inbound = self._translate_in(out)
        if inbound is not None:
            self.net._event("hairpin", self.name, inbound)
            self._send(inbound, self.inside)


class FakeNetwork:
    """The simulated world: segments, nodes, one seeded random source, stats and trace."""

    def __init__(self, scheduler: Scheduler | None = None, *, seed: int = 0, trace: bool = False) -> None:
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.clock = self.scheduler.clock
        self.rng = random.Random(seed)
        self.stats: collections.Counter[str] = collections.Counter()
        self.trace: list[tuple[Any, ...]] | None = [] if trace else None
        self.segments: dict[str, Segment] = {}
        self.nodes: dict[str, Node] = {}
        self.internet = self.segment("internet", None)

    # --- building -----------------------------------------------------------------------------

    def segment(self, name: str, subnet: str | None, gateway: str | None = None) -> Segment:
        if name in self.segments:
            raise ValueError(f"segment {name!r} exists")
        seg = Segment(self, name, subnet, gateway)
        self.segments[name] = seg
        return seg

    def _name(self, name: str) -> None:
        if name in self.nodes:
            raise ValueError(f"node {name!r} exists")

    def host(self, name: str, address: str, *, segment: Segment | None = None, link: LinkProfile | None = None) -> Host:
        """A host with one interface on `segment` (default: the internet)."""
        self._name(name)
        h = Host(self, name)
        h.attach(segment if segment is not None else self.internet, address, link)
        self.nodes[name] = h
        return h

    def router(
        self,
        name: str,
        *,
        public: str,
        lan: str,
        behavior: NatBehavior | str = "port-restricted-cone",
        inside: str | None = None,
        upstream: Segment | None = None,
        link: LinkProfile | None = None,
        lan_link: LinkProfile | None = None,
    ) -> NatRouter:
        """A NAT router with outside address `public` on `upstream` (default: the internet)
        and a new LAN segment `<name>-lan` with subnet `lan`, whose gateway is `inside`
        (default: the subnet's first host address)."""
        self._name(name)
        if isinstance(behavior, str):
            behavior = NatBehavior.preset(behavior)
        subnet = ipaddress.ip_network(lan)
        inside_ip = inside if inside is not None else str(next(subnet.hosts()))
        r = NatRouter(self, name, behavior)
        r.outside = r.attach(upstream if upstream is not None else self.internet, public, link)
        r.lan = self.segment(f"{name}-lan", lan, gateway=inside_ip)
        r.inside = r.attach(r.lan, inside_ip, lan_link)
        self.nodes[name] = r
        return r

    # --- running ------------------------------------------------------------------------------

    def run_for(self, dt: float) -> int:
        return self.scheduler.run_for(dt)

    def run_until_idle(self, **kw: Any) -> int:
        return self.scheduler.run_until_idle(**kw)

    def _event(self, kind: str, where: str, what: Any) -> None:
        self.stats[kind] += 1
        if self.trace is not None:
            if isinstance(what, Datagram):
                what = (what.src, what.dst, what.payload)
            self.trace.append((self.scheduler.clock.now(), kind, where, what))
