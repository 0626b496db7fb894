"""The node's view of its networks and peers, and the WireGuard peer set it implies (sans-IO).

Owns: the last view the server sent (version, self, networks, peers), the rules for applying
FullView / ViewUpdate (messages.py "View semantics"), and the translation of the view's peers
into `PeerConfig`s for the engine.

Rules of `View.apply(msg)`:

    message      condition                                   effect                  outcome
    -----------  ------------------------------------------  ----------------------  ---------
    FullView     always (also an older version: the server   replace everything      APPLIED
                 is the authority, e.g. after it restarted)
    ViewUpdate   no view yet                                 nothing                 RESYNC
    ViewUpdate   prev_version == version held                upserts, removals,      APPLIED
                                                             version := msg.version
    ViewUpdate   msg.version <= version held (a replay or    nothing                 STALE
                 one we already have)
    ViewUpdate   otherwise (we missed updates)               nothing                 RESYNC

A view in parts (messages.py "Large views") is staged first: every part but the last changes
nothing and gives STAGED; the last one applies the whole message by the rules above. A part
out of sequence drops what was staged and gives RESYNC (the view stays as it was); the rest
of that message's parts give STAGED and are ignored. So a half-received view never tears
down a peer that a later part would have kept.

So applying any message twice changes nothing, and applying a FullView followed by the updates
that lead from it to a later FullView gives exactly that later view (property-tested).

`PeerPlanner.configs(view)` gives one PeerConfig per peer: AllowedIPs = its ipv4/32,
ipv6/128 and the link-local /128 its LAN interface derives from its IPv4 (docs/lan.md), flagged
`shoal` (a Shoal node: LAN extension messages may be exchanged with it), endpoint = the first of its endpoints that is a strict endpoint of a usable address (`shoal.endpoint`). The endpoint is included only
when the peer is new or the server's endpoint list for it changed, so re-applying a view never
undoes an endpoint the engine learned by roaming. Peers with unusable data (bad key or address,
our own key) are skipped and counted in `skipped`, never raised (server data is network input).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from shoal import endpoint
from shoal.control.messages import FullView, NetworkInfo, PartsError, PeerInfo, SelfInfo, ViewParts, ViewUpdate
from shoal.lan.arp import link_local_for, mac_for_ipv4
from shoal.wireguard.keys import PublicKey
from shoal.wireguard.peer import Endpoint, PeerConfig


class Outcome(enum.Enum):
    APPLIED = "applied"
    STALE = "stale"
    RESYNC = "resync"
    STAGED = "staged"  # a part of a split view: nothing applied yet


@dataclass
class View:
    version: int | None = None
    node: SelfInfo | None = None
    networks: dict[str, NetworkInfo] = field(default_factory=dict)
    peers: dict[str, PeerInfo] = field(default_factory=dict)
    parts: ViewParts = field(default_factory=ViewParts, repr=False, compare=False)
    full_views: int = field(default=0, repr=False, compare=False)  # whole FullViews applied

    def apply(self, msg: FullView | ViewUpdate) -> Outcome:
        try:
            whole = self.parts.feed(msg)
        except PartsError:
            return Outcome.RESYNC
        if whole is None:
            return Outcome.STAGED
        msg = whole
        if isinstance(msg, FullView):
            self.full_views += 1
            self.version = msg.version
            self.node = msg.node
            self.networks = {n.network_id: n for n in msg.networks}
            self.peers = {p.node_id: p for p in msg.peers}
            return Outcome.APPLIED
        if self.version is None:
            return Outcome.RESYNC
        if msg.prev_version == self.version:
            if msg.node is not None:
                self.node = msg.node
            for nid in msg.networks_removed:
                self.networks.pop(nid, None)
            for net in msg.networks_upsert:
                self.networks[net.network_id] = net
            for pid in msg.peers_removed:
                self.peers.pop(pid, None)
            for peer in msg.peers_upsert:
                self.peers[peer.node_id] = peer
            self.version = msg.version
            return Outcome.APPLIED
        if msg.version <= self.version:
            return Outcome.STALE
        return Outcome.RESYNC

    def clear(self) -> None:
        self.version, self.node = None, None
        self.networks, self.peers = {}, {}
        self.parts.clear()

    def as_full_view(self) -> FullView | None:
        """The view as one FullView (what we persist), or None before the first one."""
        if self.version is None or self.node is None:
            return None
        return FullView(
            version=self.version,
            node=self.node,
            networks=sorted(self.networks.values(), key=lambda n: n.network_id),
            peers=sorted(self.peers.values(), key=lambda p: p.node_id),
        )

    # ---------------------------------------------------------------- lookups for the CLI

    def network_by_name(self, name: str) -> NetworkInfo | None:
        for net in self.networks.values():
            if net.name == name:
                return net
        return self.networks.get(name)  # a network id works too

    def peer_by(self, what: str) -> PeerInfo | None:
        """A peer by node id, nickname or overlay address."""
        if what in self.peers:
            return self.peers[what]
        for peer in self.peers.values():
            if what in (peer.nickname, peer.ipv4, peer.ipv6):
                return peer
        return None


def peer_allowed_ips(peer: PeerInfo) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The peer's /32, /128 and link-local /128; ValueError if an address is not of its family."""
    v4 = ipaddress.ip_address(peer.ipv4)
    v6 = ipaddress.ip_address(peer.ipv6)
    if v4.version != 4 or v6.version != 6:
        raise ValueError("ipv4/ipv6 of the wrong family")
    link_local = link_local_for(mac_for_ipv4(v4))  # type: ignore[arg-type]
    return [ipaddress.ip_network(f"{v4}/32"), ipaddress.ip_network(f"{v6}/128"), ipaddress.ip_network(f"{link_local}/128")]


def first_endpoint(endpoints: list[str]) -> Endpoint | None:
    """The first strict endpoint of a usable address (shoal.endpoint): the server
    gives addresses, never names to resolve; loopback, multicast and the like are skipped."""
    for text in endpoints:
        try:
            ip, port = endpoint.parse(text)
        except endpoint.EndpointError:
            continue
        if endpoint.usable(ip):
            return str(ip), port
    return None


class PeerPlanner:
    """Turns a view's peers into engine configs; remembers which endpoints it already gave."""

    def __init__(self, own_key: PublicKey) -> None:
        self.own_key = own_key
        self._given: dict[PublicKey, tuple[str, ...]] = {}
        self.skipped = 0

    def configs(self, view: View) -> list[PeerConfig]:
        out: list[PeerConfig] = []
        given: dict[PublicKey, tuple[str, ...]] = {}
        for peer in view.peers.values():
            try:
                key = PublicKey(peer.public_key)
                allowed = peer_allowed_ips(peer)
            except ValueError:
                self.skipped += 1
                continue
            if key == self.own_key or key in given:
                self.skipped += 1
                continue
            endpoints = tuple(peer.endpoints)
            fresh = self._given.get(key) != endpoints
            given[key] = endpoints
            out.append(PeerConfig(
                public_key=key,
                allowed_ips=allowed,
                endpoint=first_endpoint(peer.endpoints) if fresh else None,
                shoal=True,
            ))
        self._given = given
        return out

    def forget(self) -> None:
        self._given = {}
