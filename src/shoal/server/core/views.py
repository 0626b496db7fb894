"""Views (see "Views" in the package docstring): building a node's full view (self, networks,
members, peers), per-node dirty tracking (`_touch_*`), and `_flush`, which diffs each dirty
node's view against what its session was last sent and sends the ViewUpdate (or nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from shoal.control import messages as m
from shoal.server.core.effects import Effects, Send
from shoal.server.core.state import Dirty, MemberRec, State

__all__ = ["Views"]

log = logging.getLogger("shoal.server")


class Views(State):
    """View building, change tracking and ViewUpdate diffing over the shared state."""

    def self_info(self, node_id: str) -> m.SelfInfo:
        n = self.nodes[node_id]
        return m.SelfInfo(node_id=n.node_id, nickname=n.nickname, ipv4=n.ipv4, ipv6=n.ipv6)

    def peer_info(self, node_id: str) -> m.PeerInfo:
        n = self.nodes[node_id]
        rt = self._rt.get(node_id)
        return m.PeerInfo(
            node_id=n.node_id, nickname=n.nickname, public_key=bytes(n.public_key),
            ipv4=n.ipv4, ipv6=n.ipv6, endpoints=list(n.endpoints),
            candidates=list(rt.candidates) if rt is not None else [],
            nat_hard=rt.nat_hard if rt is not None else False,
            observed_ip=rt.observed_ip if rt is not None else "",
        )

    def _member_info(self, mem: MemberRec) -> m.MemberInfo:
        return m.MemberInfo(
            node_id=mem.node_id, nickname=self.nodes[mem.node_id].nickname, role=mem.role,  # type: ignore[arg-type]
            online=self.is_online(mem.node_id, mem.network_id), pending=mem.pending, note=mem.note,
        )

    def network_info(self, network_id: str, viewer: str | None = None) -> m.NetworkInfo:
        """The network as `viewer` sees it (a pending viewer sees only the owner and itself)."""
        net = self.networks[network_id]
        mems = self.members[network_id]
        if viewer is not None and mems[viewer].pending:
            shown = [mems[net.owner_id], mems[viewer]]
        else:
            shown = sorted(mems.values(), key=lambda x: (x.role != "owner", x.node_id))
        return m.NetworkInfo(
            network_id=net.network_id, name=net.name, owner_id=net.owner_id, kind=net.kind,  # type: ignore[arg-type]
            locked=net.locked, approval=net.approval,  # type: ignore[arg-type]
            members=[self._member_info(x) for x in shown], broadcast=net.broadcast,
        )

    def peers_of(self, node_id: str) -> set[str]:
        out: set[str] = set()
        if node_id not in self._present:
            return out
        for nid in self._node_nets.get(node_id, ()):
            mems = self.members[nid]
            me = mems[node_id]
            if me.pending or not me.online:
                continue
            for other, om in mems.items():
                if other != node_id and om.online and not om.pending and other in self._present:
                    out.add(other)
        return out

    def full_view(self, node_id: str) -> m.FullView:
        """The node's whole view at its current version (no side effects)."""
        nets = sorted(self._node_nets.get(node_id, ()))
        return m.FullView(
            version=self._rt_of(node_id).version,
            node=self.self_info(node_id),
            networks=[self.network_info(nid, node_id) for nid in nets],
            peers=[self.peer_info(p) for p in sorted(self.peers_of(node_id))],
        )

    def _send_full_view(self, node_id: str, fx: Effects) -> None:
        rt = self._rt_of(node_id)
        view = self.full_view(node_id)
        rt.sent_self = view.node
        rt.sent_networks = {n.network_id: n for n in view.networks}
        rt.sent_peers = {p.node_id: p for p in view.peers}
        self._dirty.pop(node_id, None)
        self._send_view(node_id, view, fx)

    def _send_view(self, node_id: str, msg: m.FullView | m.ViewUpdate, fx: Effects) -> None:
        """Queue a view message for the node's session, in parts when it is large. A view with
        more peers or networks than a node accepts (MAX_PEERS, MAX_NETWORKS) is still sent, and
        logged: the node will refuse it and ask again (members per network get bounded later)."""
        session = self._rt_of(node_id).session
        assert session is not None
        key = self.nodes[node_id].public_key
        if isinstance(msg, m.FullView):
            n_nets, n_peers = len(msg.networks), len(msg.peers)
        else:
            n_nets, n_peers = len(msg.networks_upsert), len(msg.peers_upsert)
        if n_nets > m.MAX_NETWORKS or n_peers > m.MAX_PEERS:
            log.error("node %s: its view has %d networks and %d peers, over what a node accepts (%d, %d)",
                      node_id, n_nets, n_peers, m.MAX_NETWORKS, m.MAX_PEERS)
        fx.out.extend(Send(session, key, part) for part in m.split_view(msg))

    def _d(self, node_id: str) -> Dirty:
        d = self._dirty.get(node_id)
        if d is None:
            d = self._dirty[node_id] = Dirty()
        return d

    def _touch_net(self, network_id: str, extra: Iterable[str] = ()) -> None:
        for x in self.members.get(network_id, ()):
            self._d(x).nets.add(network_id)
        for x in extra:
            self._d(x).nets.add(network_id)

    def _touch_member(self, node_id: str, network_id: str, co_members: Iterable[str] | None = None) -> None:
        """The member's state in this network changed: the network record and its pairs."""
        self._touch_net(network_id, (node_id,))
        mine = self._d(node_id).peers
        for x in (self.members.get(network_id, ()) if co_members is None else co_members):
            if x != node_id:
                mine.add(x)
                self._d(x).peers.add(node_id)

    def _touch_presence(self, node_id: str) -> None:
        for nid in self._node_nets.get(node_id, ()):
            self._touch_member(node_id, nid)

    def _touch_node_info(self, node_id: str) -> None:
        """Nickname or endpoints changed: self info, member lists, peer records."""
        self._d(node_id).self_ = True
        self._touch_presence(node_id)

    def _flush(self, fx: Effects) -> None:
        dirty, self._dirty = self._dirty, {}
        net_cache: dict[str, m.NetworkInfo] = {}
        peer_cache: dict[str, m.PeerInfo] = {}
        for node_id, d in dirty.items():
            rt = self._rt.get(node_id)
            if rt is None or rt.session is None:
                continue
            up_nets: list[m.NetworkInfo] = []
            rm_nets: list[str] = []
            for nid in sorted(d.nets):
                mem = self.members.get(nid, {}).get(node_id)
                if mem is None:
                    if rt.sent_networks.pop(nid, None) is not None:
                        rm_nets.append(nid)
                    continue
                if mem.pending:
                    info = self.network_info(nid, node_id)
                else:
                    info = net_cache.get(nid)
                    if info is None:
                        info = net_cache[nid] = self.network_info(nid)
                if rt.sent_networks.get(nid) != info:
                    rt.sent_networks[nid] = info
                    up_nets.append(info)
            up_peers: list[m.PeerInfo] = []
            rm_peers: list[str] = []
            for p in sorted(d.peers):
                if self.is_peer(node_id, p):
                    pinfo = peer_cache.get(p)
                    if pinfo is None:
                        pinfo = peer_cache[p] = self.peer_info(p)
                    if rt.sent_peers.get(p) != pinfo:
                        rt.sent_peers[p] = pinfo
                        up_peers.append(pinfo)
                elif rt.sent_peers.pop(p, None) is not None:
                    rm_peers.append(p)
            new_self = None
            if d.self_:
                si = self.self_info(node_id)
                if si != rt.sent_self:
                    rt.sent_self = new_self = si
            if not (up_nets or rm_nets or up_peers or rm_peers or new_self):
                continue
            prev = rt.version
            rt.version += 1
            self._send_view(node_id, m.ViewUpdate(
                prev_version=prev, version=rt.version, node=new_self,
                networks_upsert=up_nets, networks_removed=rm_nets,
                peers_upsert=up_peers, peers_removed=rm_peers,
            ), fx)
