"""Lab topology: what the user asks for (HostSpec, Topology) and the address plan.

Pure data and validation, no I/O except reading a TOML file. `Topology.plan()` turns the
request into a `Plan`: which namespaces exist, which links join them and which addresses and
NAT rules they carry. The builder in `shoal.lab.lab` only executes a plan.

Address plan (all from RFC 5737 / RFC 2544 test ranges; nothing routes off the machine):

    internet segment (one bridge, flat L2, all three prefixes on-link):
        192.0.2.1, 192.0.2.2      the server (addr1, addr2; two addresses for RFC 5780)
        203.0.113.10 + k          k-th internet attachment (public client or NAT router WAN)
        198.51.100.10 + n         n-th address handed out by a roaming fault
    home LAN of NAT router j (j = 1, 2, ...):  198.18.j.0/24, router .1, clients .2, .3, ...
    carrier segment of a double NAT j:         198.19.j.0/24, carrier NAT .1, home router .2

TOML topology file (for the CLI; every key optional except the clients' name):

    [[client]]
    name = "a"                  # [a-z][a-z0-9-]{0,15}, unique, not "server"
    nat = "port-restricted"     # one of NAT_TYPES, default "public"
    router = "home"             # optional: clients with the same router share one NAT
    hairpin = true              # only with a shared router; default false
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAT_TYPES: tuple[str, ...] = (
    "public",           # no NAT, directly on the internet
    "full-cone",        # EIM + endpoint-independent filtering (static SNAT + DNAT "DMZ")
    "port-restricted",  # Linux MASQUERADE: EIM + address-and-port-dependent filtering
    "symmetric",        # MASQUERADE random,fully-random: address-and-port-dependent mapping
    "double-nat",       # carrier MASQUERADE in front of a home MASQUERADE
    "udp-blocked",      # home MASQUERADE whose firewall lets out only TCP 80/443
)

SERVER_ADDRS: tuple[str, str] = ("192.0.2.1", "192.0.2.2")
INTERNET_PREFIXES: tuple[str, ...] = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
PUBLIC_BASE = ipaddress.IPv4Address("203.0.113.10")
ROAM_BASE = ipaddress.IPv4Address("198.51.100.10")
MAX_CLIENTS = 64
MAX_ROUTERS = 64
MAX_CLIENTS_PER_ROUTER = 16
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
RESERVED_NAMES = frozenset({"server", "inet", "internet"})


class LabConfigError(ValueError):
    """The topology asked for cannot be built (bad input). The message is one line."""


@dataclass(frozen=True)
class HostSpec:
    """One client host. `router` groups clients behind one shared NAT (LAN peers)."""

    name: str
    nat: str = "public"
    router: str | None = None
    hairpin: bool = False


@dataclass(frozen=True)
class LinkPlan:
    """A veth pair: `a_if` in namespace role `a`, `b_if` in role `b` (roles, not netns names)."""

    a: str
    a_if: str
    b: str
    b_if: str


@dataclass
class RouterPlan:
    """A NAT router namespace (`role`), its LAN and its optional carrier NAT in front."""

    name: str
    role: str
    nat: str
    index: int
    hairpin: bool
    lan_prefix: str
    lan_addr: str                 # router's own LAN address
    wan_addr: str                 # router's WAN address (internet, or carrier segment)
    clients: list[str] = field(default_factory=list)
    carrier_role: str | None = None
    carrier_wan_addr: str | None = None   # carrier NAT's internet address (double NAT)
    carrier_in_addr: str | None = None    # carrier NAT's inside address
    attach_index: int = 0                 # index k of the internet attachment (port p<k>)


@dataclass
class HostPlan:
    """A client host namespace: its address, gateway (None when public) and router."""

    name: str
    role: str
    nat: str
    addr: str
    prefix_len: int
    gateway: str | None
    router: str | None
    attach_index: int | None = None       # only for public hosts


@dataclass
class Plan:
    """Everything the builder needs, in terms of roles (mapped to netns names at build)."""

    hosts: dict[str, HostPlan]
    routers: dict[str, RouterPlan]
    links: list[LinkPlan]
    server_addrs: tuple[str, str] = SERVER_ADDRS

    def roles(self) -> list[str]:
        out = ["inet", "server"]
        for r in self.routers.values():
            if r.carrier_role:
                out.append(r.carrier_role)
            out.append(r.role)
        out.extend(h.role for h in self.hosts.values())
        return out


@dataclass(frozen=True)
class Topology:
    """The lab requested: one server with two addresses and N client hosts."""

    clients: list[HostSpec] = field(default_factory=list)

    # --- construction from data -------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> Topology:
        if not isinstance(data, dict):
            raise LabConfigError("topology must be a table with a [[client]] array")
        unknown = set(data) - {"client"}
        if unknown:
            raise LabConfigError(f"unknown top-level key(s) in topology: {', '.join(sorted(unknown))}")
        raw = data.get("client", [])
        if not isinstance(raw, list):
            raise LabConfigError("'client' must be an array of tables ([[client]])")
        specs: list[HostSpec] = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                raise LabConfigError(f"client #{i + 1} must be a table")
            bad = set(item) - {"name", "nat", "router", "hairpin"}
            if bad:
                raise LabConfigError(f"client #{i + 1}: unknown key(s) {', '.join(sorted(bad))}")
            if "name" not in item:
                raise LabConfigError(f"client #{i + 1}: missing 'name'")
            name, nat = item["name"], item.get("nat", "public")
            router, hairpin = item.get("router"), item.get("hairpin", False)
            if not isinstance(name, str):
                raise LabConfigError(f"client #{i + 1}: 'name' must be a string")
            if not isinstance(nat, str):
                raise LabConfigError(f"client {name!r}: 'nat' must be a string")
            if router is not None and not isinstance(router, str):
                raise LabConfigError(f"client {name!r}: 'router' must be a string")
            if not isinstance(hairpin, bool):
                raise LabConfigError(f"client {name!r}: 'hairpin' must be true or false")
            specs.append(HostSpec(name=name, nat=nat, router=router, hairpin=hairpin))
        topo = cls(clients=specs)
        topo.validate()
        return topo

    @classmethod
    def from_toml(cls, path: str | Path) -> Topology:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise LabConfigError(f"cannot read topology file {path}: {e.strerror or e}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise LabConfigError(f"malformed topology file {path}: {e}") from None
        return cls.from_dict(data)

    @classmethod
    def parse_args(cls, items: list[str]) -> Topology:
        """Parse CLI shorthand `name=nat[@router][+hairpin]`, e.g. `a=public b=symmetric`."""
        specs: list[HostSpec] = []
        for item in items:
            m = re.fullmatch(r"([^=@+]+)=([^=@+]+)(?:@([^=@+]+))?(\+hairpin)?", item)
            if not m:
                raise LabConfigError(f"malformed host {item!r}: expected name=nat[@router][+hairpin]")
            specs.append(HostSpec(m[1], m[2], m[3], bool(m[4])))
        topo = cls(clients=specs)
        topo.validate()
        return topo

    # --- validation ---------------------------------------------------------------------
    def validate(self) -> None:
        if not isinstance(self.clients, (list, tuple)):
            raise LabConfigError("Topology.clients must be a list of HostSpec")
        if len(self.clients) > MAX_CLIENTS:
            raise LabConfigError(f"too many hosts: {len(self.clients)} > {MAX_CLIENTS}")
        seen: set[str] = set()
        groups: dict[str, list[HostSpec]] = {}
        for spec in self.clients:
            if not isinstance(spec, HostSpec):
                raise LabConfigError(f"not a HostSpec: {spec!r}")
            if not isinstance(spec.name, str) or not NAME_RE.match(spec.name):
                raise LabConfigError(f"bad host name {spec.name!r}: use [a-z][a-z0-9-]{{0,15}}")
            if spec.name in RESERVED_NAMES:
                raise LabConfigError(f"host name {spec.name!r} is reserved")
            if spec.name in seen:
                raise LabConfigError(f"duplicate host name {spec.name!r}")
            seen.add(spec.name)
            if spec.nat not in NAT_TYPES:
                raise LabConfigError(
                    f"unknown NAT type {spec.nat!r} for host {spec.name!r}; "
                    f"choose one of: {', '.join(NAT_TYPES)}")
            if spec.router is not None:
                if not isinstance(spec.router, str) or not NAME_RE.match(spec.router):
                    raise LabConfigError(f"bad router name {spec.router!r} for host {spec.name!r}")
                if spec.nat == "public":
                    raise LabConfigError(f"host {spec.name!r} is public but names router {spec.router!r}")
                groups.setdefault(spec.router, []).append(spec)
            elif spec.hairpin:
                raise LabConfigError(f"host {spec.name!r}: hairpin needs a shared 'router'")
        for rname, members in groups.items():
            if rname in seen:
                raise LabConfigError(f"router name {rname!r} is also a host name")
            if len({m.nat for m in members}) > 1:
                raise LabConfigError(f"hosts behind router {rname!r} disagree on the NAT type")
            if len({m.hairpin for m in members}) > 1:
                raise LabConfigError(f"hosts behind router {rname!r} disagree on hairpin")
            if len(members) > MAX_CLIENTS_PER_ROUTER:
                raise LabConfigError(f"too many hosts behind router {rname!r}: {len(members)}")
            if members[0].hairpin and members[0].nat not in ("port-restricted", "full-cone", "symmetric"):
                raise LabConfigError(f"hairpin is not supported with NAT type {members[0].nat!r}")

    # --- planning -----------------------------------------------------------------------
    def plan(self) -> Plan:
        self.validate()
        hosts: dict[str, HostPlan] = {}
        routers: dict[str, RouterPlan] = {}
        links: list[LinkPlan] = [LinkPlan("server", "eth0", "inet", "p0")]
        attach = 1
        for spec in self.clients:
            if spec.nat == "public":
                addr = str(PUBLIC_BASE + attach)
                hosts[spec.name] = HostPlan(spec.name, f"h-{spec.name}", "public", addr, 24,
                                            None, None, attach_index=attach)
                links.append(LinkPlan(f"h-{spec.name}", "eth0", "inet", f"p{attach}"))
                attach += 1
                continue
            rname = spec.router or spec.name
            r = routers.get(rname)
            if r is None:
                if len(routers) >= MAX_ROUTERS:
                    raise LabConfigError(f"too many NAT routers: more than {MAX_ROUTERS}")
                j = len(routers) + 1
                r = RouterPlan(name=rname, role=f"r-{rname}", nat=spec.nat, index=j,
                               hairpin=spec.hairpin, lan_prefix=f"198.18.{j}.0/24",
                               lan_addr=f"198.18.{j}.1", wan_addr="", attach_index=attach)
                if spec.nat == "double-nat":
                    r.carrier_role = f"c-{rname}"
                    r.carrier_wan_addr = str(PUBLIC_BASE + attach)
                    r.carrier_in_addr = f"198.19.{j}.1"
                    r.wan_addr = f"198.19.{j}.2"
                    links.append(LinkPlan(r.carrier_role, "wan0", "inet", f"p{attach}"))
                    links.append(LinkPlan(r.role, "wan0", r.carrier_role, "cin0"))
                else:
                    r.wan_addr = str(PUBLIC_BASE + attach)
                    links.append(LinkPlan(r.role, "wan0", "inet", f"p{attach}"))
                attach += 1
                routers[rname] = r
            n = len(r.clients)
            r.clients.append(spec.name)
            hosts[spec.name] = HostPlan(spec.name, f"h-{spec.name}", spec.nat,
                                        f"198.18.{r.index}.{n + 2}", 24, r.lan_addr, rname)
            links.append(LinkPlan(f"h-{spec.name}", "eth0", r.role, f"lp{n}"))
        return Plan(hosts=hosts, routers=routers, links=links)
