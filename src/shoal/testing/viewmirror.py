"""`ViewMirror`: the view a node holds, kept with the daemon's own applier (`shoal.daemon.view.View`),
for the server's tests, the presence simulation and the control-plane benchmark.

Owns nothing of the view rules: `apply` hands every FullView / ViewUpdate to `View.apply`
(messages.py "View semantics" and "Large views": a FullView replaces everything, a ViewUpdate
applies only on the held version, parts are staged and applied whole) and answers what a
test client needs: True unless the daemon would ask for a resync (STALE and STAGED are
True: nothing to do), and counts of resyncs and whole FullViews. So the server is tested
against exactly what a node does with its messages.
"""

from __future__ import annotations

from shoal.control import messages as m
from shoal.daemon.view import Outcome, View

__all__ = ["ViewMirror"]


class ViewMirror:
    def __init__(self) -> None:
        self.view = View()
        self.resyncs_needed = 0

    @property
    def version(self) -> int | None:
        return self.view.version

    @property
    def node(self) -> m.SelfInfo | None:
        return self.view.node

    @property
    def networks(self) -> dict[str, m.NetworkInfo]:
        return self.view.networks

    @property
    def peers(self) -> dict[str, m.PeerInfo]:
        return self.view.peers

    @property
    def full_views(self) -> int:
        """Whole FullViews applied (a split one counts once, at its last part)."""
        return self.view.full_views

    @property
    def staged(self) -> bool:
        """Parts of a split view are waiting for the rest."""
        return self.view.parts.staged

    def apply(self, msg: m.FullView | m.ViewUpdate) -> bool:
        """Apply a view message; False means "out of order: ask for a resync"."""
        if self.view.apply(msg) is Outcome.RESYNC:
            self.resyncs_needed += 1
            return False
        return True

    def member_online(self, network_id: str, node_id: str) -> bool | None:
        """The member's online flag as this node sees it; None if not listed."""
        net = self.view.networks.get(network_id)
        if net is None:
            return None
        for mem in net.members:
            if mem.node_id == node_id:
                return mem.online
        return None

    def as_full_view(self) -> tuple[object, ...]:
        """Comparable form (sorted) for checking a mirror against the server's FullView."""
        return (
            self.view.node,
            sorted(self.view.networks.values(), key=lambda n: n.network_id),
            sorted(self.view.peers.values(), key=lambda p: p.node_id),
        )
