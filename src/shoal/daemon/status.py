"""What `GET /v1/status` reports: the daemon's state as `shoal.daemon.apitypes.Status`.

Owns: building the status (`build_status`), a peer's row (`peer_row`) and how we reach a peer
(`path_of`). Read-only: nothing here changes the daemon.

RTT shown per peer: the last overlay ping (`shoal ping`, ICMP echo through the tunnel), or
else the last handshake we initiated (time from sending the initiation to the completed
handshake: one UDP round trip plus the peer's handshake work), or else the path's disco RTT.
Ages (`for_s`, `next_try_in_s`, `last_seen_s_ago`) are on the daemon's Scheduler clock;
`since` and `last_handshake_s_ago` are wall-clock.
"""

from __future__ import annotations

import time
from typing import Any

from shoal import endpoint
from shoal.control import messages as M
from shoal.daemon.apitypes import (
    ConnectionInfo, InterfaceInfo, MemberRow, NetworkRow, PathInfo, PeerRow, ServerInfo, Status,
)
from shoal.wireguard.keys import PublicKey

# `Daemon` below is shoal.daemon.daemon.Daemon (not imported: it imports this module)
Daemon = Any


def path_of(d: Daemon, key: PublicKey) -> PathInfo:
    """How we reach a peer: traversal's path, or (no traversal) the engine's endpoint."""
    path = d.traversal.path_of(key) if d.traversal is not None else None
    if path is not None:
        return PathInfo(**path)
    ep = d.plane.device.peers.get(key) if d.plane is not None else None
    shown = endpoint.text(ep.endpoint) if ep is not None and ep.endpoint is not None else None
    return PathInfo(path="direct" if shown else None, endpoint=shown, rtt_ms=None, lan=False)


def peer_row(d: Daemon, p: M.PeerInfo) -> PeerRow:
    key = PublicKey(p.public_key)
    ep = d.plane.device.peers.get(key) if d.plane is not None else None
    path = path_of(d, key)
    rtt = d.rtt.get(key)
    if rtt is None and path.rtt_ms is not None:
        rtt = (path.rtt_ms / 1000, "disco")
    last_hs = ep.stats.last_handshake_wall if ep is not None else 0.0
    live = d.liveness.peers.get(key)
    seen = d.liveness.last_seen_ago(key, d.sched.time())
    shared = [n.name for n in d.view.networks.values() if any(m.node_id == p.node_id for m in n.members)]
    return PeerRow(
        node_id=p.node_id, nickname=p.nickname, ipv4=p.ipv4, ipv6=p.ipv6,
        public_key=key.to_base64(), state="online", path=path.path, endpoint=path.endpoint, lan=path.lan,
        rtt_ms=round(rtt[0] * 1000, 3) if rtt else None, rtt_source=rtt[1] if rtt else None,
        last_handshake_s_ago=round(time.time() - last_hs, 1) if last_hs else None,
        rx_bytes=ep.stats.rx_bytes if ep is not None else 0,
        tx_bytes=ep.stats.tx_bytes if ep is not None else 0,
        in_engine=ep is not None, networks=sorted(shared),
        liveness=live.state if live is not None else None,
        last_seen_s_ago=None if seen is None else round(seen, 1),
        checked=live is not None and live.check_since is not None,
        server_asked_check=live is not None and live.requested,
    )


def _network_row(d: Daemon, net: M.NetworkInfo, me: str | None, rows: dict[str, PeerRow]) -> NetworkRow:
    mine = next((m for m in net.members if m.node_id == me), None)
    members = []
    for m in net.members:
        row = rows.get(m.node_id)
        members.append(MemberRow(node_id=m.node_id, nickname=m.nickname, role=m.role, online=m.online,
                                 pending=m.pending, note=m.note, is_self=m.node_id == me,
                                 tunnel=None if row is None else row.tunnel()))
    if d.lan is not None:
        iface = d.lan.interface_for(net.network_id, net.kind)
    else:
        iface = d.opts.iface if net.kind == "ip" else None
    return NetworkRow(network_id=net.network_id, name=net.name, owner_id=net.owner_id, locked=net.locked,
                      kind=net.kind, broadcast=net.broadcast, interface=iface, approval=net.approval,
                      role=mine.role if mine else None, online=bool(mine and mine.online),
                      pending=bool(mine and mine.pending), members=members)


def build_status(d: Daemon) -> Status:
    now = d.sched.time()
    me = d.view.node.node_id if d.view.node else None
    rows = {p.node_id: peer_row(d, p) for p in d.view.peers.values()}
    networks = [_network_row(d, net, me, rows) for net in sorted(d.view.networks.values(), key=lambda n: n.name)]
    server = None if d.pin is None else ServerInfo(url=d.pin.url, public_key=d.pin.public_key.to_base64(),
                                                   fingerprint=d.pin.fingerprint)
    connection = ConnectionInfo(
        state=d.state, for_s=round(now - d.state_since, 1), since=round(d.state_since_wall, 3),
        next_try_in_s=None if d.next_try_at is None else round(max(0.0, d.next_try_at - now), 1),
        last_error=d.last_error, connects=d.connects, checking_tunnels=d.liveness.active)
    interface = InterfaceInfo(name=d.opts.iface, mode="tap" if d.lan is not None else "tun",
                              listen_port=d.plane.listen_port if d.plane is not None else None,
                              endpoints=d.endpoints)
    return Status(
        node=d.view.node, public_key=d.public_key.to_base64(), server=server, connection=connection,
        lan=d.lan.status() if d.lan is not None else None, interface=interface,
        traversal=d.traversal.info() if d.traversal is not None else None,
        view_version=d.view.version, networks=networks, peers=sorted(rows.values(), key=lambda r: r.nickname),
    )
