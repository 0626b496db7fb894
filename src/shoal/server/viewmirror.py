"""A node-side mirror of the view the server sends (pure; for the server's tests, the
presence simulation and the control-plane benchmark).

Owns: applying FullView / ViewUpdate per the view semantics of `shoal.control.messages`:
a FullView replaces everything; a ViewUpdate applies only if its prev_version equals the
held version, otherwise `apply` returns False and the caller sends a ResyncRequest. Applying
the same message twice changes nothing. A view in parts ("Large views") is staged and applied
whole with its last part (`apply` gives True meanwhile, `staged` says parts are waiting); a
part out of sequence drops them and gives False (the rest of that message is ignored). (The
daemon has its own reconciler that also drives WireGuard peers; this one only keeps the data.)
"""

from __future__ import annotations

from shoal.control import messages as m

__all__ = ["ViewMirror"]


class ViewMirror:
    def __init__(self) -> None:
        self.version: int | None = None
        self.node: m.SelfInfo | None = None
        self.networks: dict[str, m.NetworkInfo] = {}
        self.peers: dict[str, m.PeerInfo] = {}
        self.resyncs_needed = 0
        self.full_views = 0  # whole FullViews applied (a split one counts once, at its last part)
        self._parts = m.ViewParts()

    @property
    def staged(self) -> bool:
        """Parts of a split view are waiting for the rest."""
        return self._parts.staged

    def apply(self, msg: m.FullView | m.ViewUpdate) -> bool:
        """Apply a view message; False means "out of order: ask for a resync"."""
        try:
            whole = self._parts.feed(msg)
        except m.PartsError:
            self.resyncs_needed += 1
            return False
        if whole is None:
            return True
        msg = whole
        if isinstance(msg, m.FullView):
            self.full_views += 1
            self.version = msg.version
            self.node = msg.node
            self.networks = {n.network_id: n for n in msg.networks}
            self.peers = {p.node_id: p for p in msg.peers}
            return True
        if self.version is not None and msg.version <= self.version and msg.prev_version < self.version:
            return True  # already applied (a duplicate): idempotent
        if msg.prev_version != self.version:
            self.resyncs_needed += 1
            return False
        self.version = msg.version
        if msg.node is not None:
            self.node = msg.node
        for nid in msg.networks_removed:
            self.networks.pop(nid, None)
        for n in msg.networks_upsert:
            self.networks[n.network_id] = n
        for p in msg.peers_removed:
            self.peers.pop(p, None)
        for pi in msg.peers_upsert:
            self.peers[pi.node_id] = pi
        return True

    def member_online(self, network_id: str, node_id: str) -> bool | None:
        """The member's online flag as this node sees it; None if not listed."""
        net = self.networks.get(network_id)
        if net is None:
            return None
        for mem in net.members:
            if mem.node_id == node_id:
                return mem.online
        return None

    def as_full_view(self) -> tuple[object, ...]:
        """Comparable form (sorted) for checking a mirror against the server's FullView."""
        return (
            self.node,
            sorted(self.networks.values(), key=lambda n: n.network_id),
            sorted(self.peers.values(), key=lambda p: p.node_id),
        )
