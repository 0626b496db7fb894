"""Endpoints: the one socket-address type, one strict parser of endpoint text from the network,
one formatter and one address classification.

`Endpoint` = (host text, port), as sockets give and take it; `text(ep)` its "ip:port" /
"[v6]:port" form (the one formatter: logs, UAPI, status).

Owns the rules for every "ip:port" a node or the server sends (Login.endpoints,
Candidate.addr, PeerInfo.endpoints; issue 18 F15) and for which addresses may be probed at
all, and which may be sprayed (birthday probing, F10). Used by the server core, the daemon's
view and NAT traversal, and the path engine; nothing else parses endpoints from the network.

Wire format (the text form in `shoal.control.messages`):

    a.b.c.d:port        IPv4, dotted decimal, no leading zeros (as `ipaddress` reads it)
    [v6]:port           IPv6 in brackets; no zone ("%eth0"); an IPv4-mapped address
                        ("[::ffff:a.b.c.d]:port") is read as the IPv4 address
    port                1..65535, ASCII decimal digits only, no sign, no leading zero

Anything else (a host name, "²" or other non-ASCII digits, spaces, an empty or zero port) is
refused with `EndpointError` (a ValueError); `parse` never raises anything else. `format`
writes the canonical text, so parse(format(ip, port)) == (ip, port).

Scopes (`classify`), from fixed tables here, not from the Python version's `is_private`:

    UNSPECIFIED   0.0.0.0/8, ::
    LOOPBACK      127.0.0.0/8, ::1
    LINK_LOCAL    169.254.0.0/16, fe80::/10
    MULTICAST     224.0.0.0/4, ff00::/8
    RESERVED      240.0.0.0/4 (incl. 255.255.255.255), 100::/64 (discard-only; Shoal's
                  virtual endpoints), fec0::/10, ::/8 other than the above
    OVERLAY       100.64.0.0/10 (shared address space: Shoal's overlay addresses)
    PRIVATE       10/8, 172.16/12, 192.168/16, 192.0.0.0/24, 198.18.0.0/15, fc00::/7 (ULA)
    PUBLIC        everything else

Decisions. The documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and
2001:db8::/32 are PUBLIC: they stand for the internet in examples and are the lab's
simulated internet (shoal.lab.topology). 198.18.0.0/15 (benchmarking, RFC 2544) is PRIVATE:
in the lab it is the home LANs behind the NAT routers, the same role RFC 1918 plays outside,
so LAN peers still ping each other there directly (it is never anyone's reflexive address).

Listen addresses (`parse_listen`, local input: `--listen` of `shoal server` and `shoal relay`):
"HOST:PORT", "[v6]:PORT" or ":PORT" (every IPv4 address), HOST an IP address (no names),
PORT 0..65535 in ASCII digits (0: any free port).

Uses: `usable(ip)` (PUBLIC or PRIVATE) is what may be a candidate or endpoint at all (plain
disco pings, a WireGuard endpoint); `sprayable(ip)` (PUBLIC only) is what birthday probing
may ever aim at (the path engine further requires that the peer showed it owns the address).
"""

from __future__ import annotations

import enum
import ipaddress

__all__ = ["EndpointError", "Scope", "parse", "parse_ip", "format", "classify", "usable", "sprayable", "same_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_TEXT = 64  # messages.Address's limit; longer text is refused before any parsing


class EndpointError(ValueError):
    """Endpoint text that is not a strict "ip:port" / "[v6]:port"."""


class Scope(enum.Enum):
    UNSPECIFIED = "unspecified"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link-local"
    MULTICAST = "multicast"
    RESERVED = "reserved"
    OVERLAY = "overlay"
    PRIVATE = "private"
    PUBLIC = "public"


def _nets(scope: Scope, *texts: str) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Scope]]:
    return [(ipaddress.ip_network(t), scope) for t in texts]


# first match wins (more specific ranges first where they overlap)
_TABLE = (
    _nets(Scope.UNSPECIFIED, "0.0.0.0/8", "::/128")
    + _nets(Scope.LOOPBACK, "127.0.0.0/8", "::1/128")
    + _nets(Scope.LINK_LOCAL, "169.254.0.0/16", "fe80::/10")
    + _nets(Scope.MULTICAST, "224.0.0.0/4", "ff00::/8")
    + _nets(Scope.RESERVED, "240.0.0.0/4", "100::/64", "fec0::/10", "::/8")
    + _nets(Scope.OVERLAY, "100.64.0.0/10")
    + _nets(Scope.PRIVATE, "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "192.0.0.0/24", "198.18.0.0/15",
            "fc00::/7")
)
_ASCII_DIGITS = frozenset("0123456789")


def parse_ip(text: str) -> IPAddress:
    """A bare address (no port) in the same strict form; IPv4-mapped IPv6 reads as IPv4."""
    if not isinstance(text, str) or not text or len(text) > MAX_TEXT or not text.isascii() or "%" in text:
        raise EndpointError(f"not an IP address: {text!r}"[:120])
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise EndpointError(f"not an IP address: {text!r}"[:120]) from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse(text: str) -> tuple[IPAddress, int]:
    """Strict "a.b.c.d:port" / "[v6]:port" -> (address, port); EndpointError otherwise."""
    if not isinstance(text, str) or len(text) > MAX_TEXT or not text.isascii():
        raise EndpointError(f"bad endpoint {text!r}"[:120])
    if text.startswith("["):
        host, sep, port_s = text[1:].partition("]:")
        if not sep or ":" not in host:
            raise EndpointError(f"bad endpoint {text!r} (expected [IPv6]:port)"[:120])
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep or ":" in host:
            raise EndpointError(f"bad endpoint {text!r} (expected a.b.c.d:port or [IPv6]:port)"[:120])
    if not port_s or len(port_s) > 5 or not set(port_s) <= _ASCII_DIGITS or port_s[0] == "0":
        raise EndpointError(f"bad endpoint port in {text!r} (1-65535)"[:120])
    port = int(port_s)
    if port > 65535:
        raise EndpointError(f"bad endpoint port in {text!r} (1-65535)"[:120])
    return parse_ip(host), port


Endpoint = tuple[str, int]  # (host text as the socket gives it, port)


def text(ep: Endpoint) -> str:
    """ "host:port", IPv6 in brackets; never raises (any host text is written as it is)."""
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format(ip: IPAddress | str, port: int) -> str:  # noqa: A001 - the module's name space
    """The canonical text of (ip, port) (IPv6 in brackets)."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def classify(ip: IPAddress | str) -> Scope:
    """The scope of an address (see the module docstring's table); a bad text is RESERVED."""
    if isinstance(ip, str):
        try:
            ip = parse_ip(ip)
        except EndpointError:
            return Scope.RESERVED
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for net, scope in _TABLE:
        if net.version == ip.version and ip in net:
            return scope
    return Scope.PUBLIC


def usable(ip: IPAddress | str) -> bool:
    """May be a candidate or endpoint at all (plain pings): PUBLIC or PRIVATE."""
    return classify(ip) in (Scope.PUBLIC, Scope.PRIVATE)


def sprayable(ip: IPAddress | str) -> bool:
    """May ever be a birthday-probing (spray) target: PUBLIC only."""
    return classify(ip) is Scope.PUBLIC


def same_ip(a: IPAddress | str | None, b: IPAddress | str | None) -> bool:
    """Both are addresses and the same one (IPv4-mapped IPv6 equals its IPv4)."""
    if a is None or b is None:
        return False
    try:
        x = parse_ip(a) if isinstance(a, str) else a
        y = parse_ip(b) if isinstance(b, str) else b
    except EndpointError:
        return False
    if isinstance(x, ipaddress.IPv6Address) and x.ipv4_mapped is not None:
        x = x.ipv4_mapped
    if isinstance(y, ipaddress.IPv6Address) and y.ipv4_mapped is not None:
        y = y.ipv4_mapped
    return x == y


def parse_listen(text: str) -> tuple[str, int]:
    """A listen address (module docstring) -> (host, port); EndpointError saying what is wanted."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or len(port) > 5 or int(port) > 65535:
        raise EndpointError(f"--listen wants HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise EndpointError(f"--listen wants an IP address, got {host!r} (in {text!r})") from None
    return host, int(port)
