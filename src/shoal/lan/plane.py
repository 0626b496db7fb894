"""The LAN plane of a node: the stage between its TAP `shoal0`, its layer-2 TAPs and the engine.

Owns: the `LanSwitch` (the sans-IO LAN engine, shoal.lan.switch), which layer-2 networks get a
TAP (one per layer-2 network the node is an online member of), the node-id <-> WireGuard key
map for extensions, and the host changes of docs/lan.md section 7. All LAN decisions are the
switch's; this module turns the switch's outputs into `LanOutput`s (per peer key, per TAP)
and never touches an fd or the engine: the interface runtime reads and writes the TAPs and
seals extensions (`shoal.dataplane.lanio`), and the host changes go through the runtime's
host seam (`port.host`, shoal.tun.host). Stock WireGuard peers are never involved:
extensions go only to peers of the view (flagged `shoal` by the daemon's planner).

Hooks called by the interface runtime (`shoal.dataplane.api.LanHooks`; `shoal wg` never uses them):
    prepare(port, name)       the TAP exists, still down: IPv6 address generation off (we add
                              the link-local derived from our MAC ourselves)
    start()                   the TAP is up: routes for limited broadcast and multicast, MAC
                              and link-local if the view is known
    from_interface(frames, now) -> LanOutput: unicast IP packets for `Device.send`, ARP/ND
                              replies for the TAP, broadcast/multicast sealed per peer key
    deliver(packets)          -> the switch's header function: unicast IP the engine
                              decrypted is written behind it as frames (coalesced)
    from_peers(items, now)    `Device.take_extensions()` output -> frames for the TAPs
    from_l2(network, frames, now) frames read from a layer-2 TAP -> extensions per peer key
    close()                   layer-2 TAPs given up (the kernel removes them and their routes)
Called by the daemon: `await set_view(LanView)` on every reconcile (`lan_view(view)` builds
it from the daemon's view), `status()` for `shoal status --json`.

Host changes (undone: every route and address lives on a non-persistent TAP, which the kernel
deletes with its routes when the daemon exits or crashes):
    shoal0           MAC mac_for(own IPv4), addr_gen_mode none + fe80::EUI-64(MAC)/64,
                     IPv4 address with broadcast 100.127.255.255 (the runner adds it)
    routes (main)    255.255.255.255/32 dev shoal0 proto 83 mtu 1398, and 224.0.0.0/4 dev
                     shoal0 proto 83 mtu 1398 unless the main table already has 224.0.0.0/4
    layer-2 TAPs     l2_iface_name(network id), MTU LAN_L2_MTU, up, no address

Bad input (extensions from peers, frames from the TAPs) is the switch's to drop and count;
this module counts what it cannot map (unknown peers, no view yet) in `stats`. Counters worth
a human's attention (`LOGGED`: storm drops, MAC moves, refused or malformed extensions) are
logged as increments at most every LAN_LOG_INTERVAL seconds, when they grew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from shoal import constants as C
from shoal.dataplane.api import LanOutput, LanPort
from shoal.lan.arp import link_local_for, mac_for_ipv4
from shoal.lan.broadcast import NetworkState
from shoal.lan.switch import LanSwitch, PeerAddresses
from shoal.wireguard.keys import PublicKey

log = logging.getLogger("shoal.lan")

OVERLAY_V4 = ipaddress.IPv4Network("100.64.0.0/10")
ROUTE_PROTO = 83  # marks our routes: `ip route show proto 83` lists exactly them (docs/lan.md §7)
LIMITED_BROADCAST = "255.255.255.255/32"
MULTICAST_V4 = "224.0.0.0/4"
L2_PREFIX = "shoal-"
RT_SCOPE_LINK = 253
_IFNAME_MAX = 15  # IFNAMSIZ - 1
_ETH_IPV4 = C.ETHERTYPE_IPV4.to_bytes(2, "big")
LOGGED = ("egress-storm-dropped", "rx-storm-dropped", "rx-l2-mac-moved", "rx-l2-mac-claimed", "rx-bad-origin", "rx-ext-malformed",
          "rx-unknown-peer", "rx-refused-", "l2-open-failed")


def l2_iface_name(network_id: str) -> str:
    """The TAP of layer-2 network `network_id`: `shoal-<id>` when it fits IFNAMSIZ (ids of up to
    9 characters), else `shoal-` + 9 hex digits of BLAKE2s(id) (still unique in practice)."""
    name = L2_PREFIX + network_id
    if len(name) <= _IFNAME_MAX:
        return name
    digest = hashlib.blake2s(network_id.encode(), digest_size=8, person=b"shoall2").hexdigest()
    return L2_PREFIX + digest[: _IFNAME_MAX - len(L2_PREFIX)]


@dataclasses.dataclass(frozen=True)
class LanView:
    """What the LAN plane needs of the daemon's view."""

    node_id: str
    own: PeerAddresses
    networks: tuple[NetworkState, ...]
    peers: dict[str, PeerAddresses]
    keys: dict[str, PublicKey]


def lan_view(view: Any) -> LanView | None:
    """From a `shoal.daemon.view.View` (node, networks, peers); None before the first login.

    Server data is network input: peers or addresses that do not parse are skipped."""
    node = view.node
    if node is None:
        return None
    try:
        own = PeerAddresses(ipaddress.IPv4Address(node.ipv4), ipaddress.IPv6Address(node.ipv6))
    except ValueError:
        return None
    networks = tuple(
        NetworkState(
            network_id=n.network_id,
            kind=n.kind,
            broadcast=bool(getattr(n, "broadcast", True)),
            online=frozenset(m.node_id for m in n.members if m.online and not m.pending),
        )
        for n in view.networks.values()
    )
    peers: dict[str, PeerAddresses] = {}
    keys: dict[str, PublicKey] = {}
    for p in view.peers.values():
        try:
            addrs = PeerAddresses(ipaddress.IPv4Address(p.ipv4), ipaddress.IPv6Address(p.ipv6))
            key = PublicKey(p.public_key)
        except ValueError:
            continue
        peers[p.node_id] = addrs
        keys[p.node_id] = key
    return LanView(node.node_id, own, networks, peers, keys)


class LanPlane:
    def __init__(self, *, overlay: ipaddress.IPv4Network = OVERLAY_V4, multicast_route: bool = True,
                 storm_rate: float = C.LAN_STORM_RATE, storm_burst: float = C.LAN_STORM_BURST) -> None:
        self.overlay = overlay
        self.multicast_route = multicast_route
        self.storm = (storm_rate, storm_burst)
        self.port: LanPort | None = None
        self.name: str | None = None
        self.switch: LanSwitch | None = None
        self.view: LanView | None = None
        self.keys: dict[str, PublicKey] = {}
        self.nodes: dict[PublicKey, str] = {}
        self.l2: dict[str, str] = {}  # layer-2 network id -> its TAP's name (open in the runtime)
        self.routes: list[str] = []
        self.mac_set: bytes | None = None
        self.link_local: ipaddress.IPv6Address | None = None
        self.stats: Counter[str] = Counter()
        self.started = False
        self._logged: dict[str, int] = {}
        self._next_log = 0.0

    # ------------------------------------------------------------ runner hooks

    async def prepare(self, port: LanPort, name: str) -> None:
        self.port, self.name = port, name
        try:
            port.host.disable_ipv6_addr_gen(name)
        except OSError as e:  # IPv6 disabled on the host: nothing to generate anyway
            log.info("%s: cannot set addr_gen_mode (%s)", name, e)

    async def start(self) -> None:
        assert self.port is not None and self.name is not None
        async with self.port.host.link(self.name) as link:
            wanted = [LIMITED_BROADCAST]
            if self.multicast_route:
                if await link.main_table_has(MULTICAST_V4):
                    log.info("%s: the main table already routes %s; leaving it", self.name, MULTICAST_V4)
                else:
                    wanted.append(MULTICAST_V4)
            for cidr in wanted:
                await link.add_route(cidr, proto=ROUTE_PROTO, scope=RT_SCOPE_LINK, mtu=C.LAN_BCAST_ROUTE_MTU)
                self.routes.append(cidr)
        log.info("%s: LAN mode (TAP), routes %s dev %s proto %d mtu %d", self.name, ", ".join(self.routes),
                 self.name, ROUTE_PROTO, C.LAN_BCAST_ROUTE_MTU)
        self.started = True
        if self.view is not None:
            await self.set_view(self.view)

    def from_interface(self, frames: list[bytes], now: float) -> LanOutput:
        sw = self.switch
        if sw is None:
            self.stats["iface-no-view"] += len(frames)
            return LanOutput([], [], [], [])
        handle = sw.from_ip_interface
        engine = sw.to_engine
        bcast = sw.broadcast4
        for frame in frames:
            # the hot path, inline: unicast IPv4 (the switch's own first test, without the call)
            if frame[12:14] == _ETH_IPV4 and len(frame) >= 34 and frame[30] < 224 and frame[30:34] != bcast:
                engine.append(frame[14:])
            else:
                handle(frame, now)
        engine, peers, to_iface, _ = sw.take()
        if now >= self._next_log:
            self.log_counters(now)
        return LanOutput(engine, self._per_key(peers) if peers else [], to_iface, [])

    def deliver(self, packets: list[bytes]) -> Callable[[bytes], bytes] | None:
        sw = self.switch
        if sw is None:
            self.stats["engine-no-view"] += len(packets)
            return None
        return sw.header_for

    def from_peers(self, items: Iterable[tuple[PublicKey, bytes]], now: float) -> LanOutput:
        sw = self.switch
        if sw is None:
            return LanOutput([], [], [], [])
        nodes = self.nodes
        for key, plaintext in items:
            node = nodes.get(key)
            if node is None:
                self.stats["rx-unknown-peer"] += 1
                continue
            sw.from_peer(node, plaintext, now)
        _, _, to_iface, to_l2 = sw.take()
        if now >= self._next_log:
            self.log_counters(now)
        return LanOutput([], [], to_iface, self._per_network(to_l2) if to_l2 else [])

    def from_l2(self, network_id: str, frames: list[bytes], now: float) -> LanOutput:
        sw = self.switch
        if sw is None or network_id not in self.l2:
            return LanOutput([], [], [], [])
        for frame in frames:
            sw.from_l2_interface(network_id, frame, now)
        _, peers, _, _ = sw.take()
        if now >= self._next_log:
            self.log_counters(now)
        return LanOutput([], self._per_key(peers) if peers else [], [], [])

    def log_counters(self, now: float) -> dict[str, int]:
        """Log (and return) how much each LOGGED counter grew since the last log line."""
        self._next_log = now + C.LAN_LOG_INTERVAL
        counters = Counter(self.stats)
        if self.switch is not None:
            counters.update(self.switch.stats)
        grew = {}
        for name, value in counters.items():
            if name.startswith(LOGGED) and value > self._logged.get(name, 0):
                grew[name] = value - self._logged.get(name, 0)
                self._logged[name] = value
        if grew:
            log.warning("LAN: %s", ", ".join(f"{k} +{v}" for k, v in sorted(grew.items())))
        return grew

    def close(self) -> None:
        for network_id in list(self.l2):
            self._close_l2(network_id)

    # ------------------------------------------------------------ internals

    def _per_key(self, copies: list[tuple[str, bytes]]) -> list[tuple[PublicKey, list[bytes]]]:
        per_peer: dict[str, list[bytes]] = {}
        for node, plaintext in copies:
            per_peer.setdefault(node, []).append(plaintext)
        out = []
        for node, plaintexts in per_peer.items():
            key = self.keys.get(node)
            if key is None:
                self.stats["tx-unknown-peer"] += len(plaintexts)
                continue
            out.append((key, plaintexts))
        return out

    def _per_network(self, frames: list[tuple[str, bytes]]) -> list[tuple[str, list[bytes]]]:
        per_net: dict[str, list[bytes]] = {}
        for network_id, frame in frames:
            per_net.setdefault(network_id, []).append(frame)
        out = []
        for network_id, batch in per_net.items():
            if network_id not in self.l2:
                self.stats["l2-no-interface"] += len(batch)
                continue
            out.append((network_id, batch))
        return out

    def _close_l2(self, network_id: str) -> None:
        name = self.l2.pop(network_id, None)
        if name is None:
            return
        if self.port is not None:
            self.port.close_l2(network_id)
        log.info("layer-2 network %s: interface %s removed", network_id, name)

    async def _open_l2(self, network_id: str) -> None:
        assert self.port is not None
        name = l2_iface_name(network_id)
        try:
            await self.port.open_l2(network_id, name, C.LAN_L2_MTU)
        except (OSError, ValueError) as e:
            log.warning("layer-2 network %s: cannot create %s: %s", network_id, name, e)
            self.stats["l2-open-failed"] += 1
            return
        except Exception as e:  # noqa: BLE001 - one line naming netlink's reason
            log.warning("layer-2 network %s: cannot configure %s: %s", network_id, name, e)
            self.stats["l2-open-failed"] += 1
            return
        self.l2[network_id] = name
        log.info("layer-2 network %s: interface %s (mtu %d)", network_id, name, C.LAN_L2_MTU)

    async def _set_link_identity(self, own: PeerAddresses) -> None:
        """MAC mac_for(own IPv4) and the link-local EUI-64 of it (the TAP allows live changes)."""
        assert self.port is not None and self.name is not None
        mac = bytes(mac_for_ipv4(own.ipv4))
        link_local = link_local_for(mac)
        if mac == self.mac_set and link_local == self.link_local:
            return
        async with self.port.host.link(self.name) as link:
            await link.set_mac(mac)
            if self.link_local is not None and self.link_local != link_local:
                with contextlib.suppress(Exception):
                    await link.del_address(f"{self.link_local}/64")
            await link.replace_address(f"{link_local}/64")  # NODAD
        self.mac_set, self.link_local = mac, link_local
        log.info("%s: MAC %s, link-local %s", self.name, mac.hex(":"), link_local)

    # ------------------------------------------------------------ the daemon's side

    async def set_view(self, view: LanView | None) -> None:
        """Feed the switch; create/remove layer-2 TAPs; set the MAC when our address changes.

        None (logged out, or no view yet): no switch, no layer-2 TAPs; everything is dropped."""
        if view is None:
            self.view = self.switch = None
            self.keys, self.nodes = {}, {}
            self.close()
            return
        self.view = view
        if self.switch is None or self.switch.node_id != view.node_id or self.switch.own != view.own:
            rate, burst = self.storm
            self.switch = LanSwitch(view.node_id, view.own, self.overlay, storm_rate=rate, storm_burst=burst)
        self.switch.set_view(view.networks, view.peers)
        self.keys = dict(view.keys)
        self.nodes = {k: n for n, k in view.keys.items()}
        if not self.started:
            return  # start() applies the view
        try:
            await self._set_link_identity(view.own)
        except Exception as e:  # noqa: BLE001 - logged; unicast still works without it
            log.warning("%s: cannot set MAC/link-local: %s", self.name, e)
        wanted = {n.network_id for n in view.networks if n.kind == "l2" and view.node_id in n.online}
        for network_id in [n for n in self.l2 if n not in wanted]:
            self._close_l2(network_id)
        for network_id in sorted(wanted - set(self.l2)):
            await self._open_l2(network_id)

    def interface_for(self, network_id: str, kind: str) -> str | None:
        if kind == "l2":
            return self.l2.get(network_id)
        return self.name

    def status(self) -> dict[str, Any]:
        sw = self.switch
        counters = Counter(self.stats)
        if sw is not None:
            counters.update(sw.stats)
        return {
            "mode": "tap",
            "mac": self.mac_set.hex(":") if self.mac_set else None,
            "link_local": str(self.link_local) if self.link_local else None,
            "routes": list(self.routes),
            "l2_interfaces": dict(sorted(self.l2.items())),
            "mac_moves": dict(sw.macs.moves) if sw is not None else {},
            "stats": dict(sorted(counters.items())),
        }


__all__ = ["LanPlane", "LanView", "lan_view", "l2_iface_name", "ROUTE_PROTO"]
