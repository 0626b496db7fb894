"""Presence and expiry (see "Presence", "Peer checks" and "Expiry" in the package docstring):
present/away with the grace, detaching a session, CheckPeer/PeerReport, removing a
membership, node expiry with its heap, and `next_deadline` (the one timer of the core).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging

from shoal.control import messages as m
from shoal.server.core.effects import DeleteMember, DeleteNode, Effects, PutNode, Send
from shoal.server.core.state import Session
from shoal.server.core.views import Views

__all__ = ["Presence"]

log = logging.getLogger("shoal.server")


class Presence(Views):
    """Presence, grace, peer checks and expiry over the shared state."""

    def next_deadline(self) -> float | None:
        heap = self._grace_heap
        grace: float | None = None
        while heap:
            t, nid = heap[0]
            rt = self._rt.get(nid)
            if rt is not None and rt.grace_until == t and rt.session is None:
                grace = t
                break
            heapq.heappop(heap)
        expiry = self._expiry_top()
        return grace if expiry is None else expiry if grace is None else min(grace, expiry)

    def _set_present(self, node_id: str, present: bool, now: float, fx: Effects) -> None:
        if (node_id in self._present) == present:
            return
        if present:
            self._present.add(node_id)
        else:
            self._present.discard(node_id)
        rec = dataclasses.replace(self.nodes[node_id], present=present, last_seen=self._wall(now))
        self.nodes[node_id] = rec
        fx.persist.append(PutNode(rec))
        self._touch_presence(node_id)
        if not present:
            self._expiry_push(node_id)

    def _detach(self, s: Session, now: float, *, clean: bool, fx: Effects) -> None:
        """The session stops being the node's session: grace (dropped) or offline (clean)."""
        s.dead = True
        if s.node_id is None:
            return
        rt = self._rt_of(s.node_id)
        if rt.session != s.session:
            return
        rt.session = None
        rt.sent_self, rt.sent_networks, rt.sent_peers = None, {}, {}
        if clean:
            rt.grace_until = None
            self._set_present(s.node_id, False, now, fx)
        else:
            rt.grace_until = now + self.grace
            heapq.heappush(self._grace_heap, (rt.grace_until, s.node_id))
            self._tell_peers_check(s.node_id, True, fx)

    def _checking_session(self, node_id: str) -> Session | None:
        rt = self._rt.get(node_id)
        s = self._sessions.get(rt.session) if rt is not None and rt.session is not None else None
        return s if s is not None and not s.dead and s.check_peer else None

    def _in_grace(self, node_id: str) -> bool:
        rt = self._rt.get(node_id)
        return rt is not None and rt.session is None and rt.grace_until is not None and node_id in self._present

    def _tell_peers_check(self, node_id: str, active: bool, fx: Effects) -> None:
        """CheckPeer(node_id, active) to each of its peers that is connected and understands it."""
        for p in sorted(self.peers_of(node_id)):
            s = self._checking_session(p)
            if s is not None:
                fx.out.append(Send(s.session, s.key, m.CheckPeer(node_id=node_id, active=active)))

    def _peer_report(self, s: Session, msg: m.PeerReport, now: float) -> None:
        assert s.node_id is not None
        target = msg.node_id
        if not msg.reachable or not self._in_grace(target) or not self.is_peer(s.node_id, target):
            return
        rt = self._rt[target]
        until = now + self.grace
        if rt.grace_until is not None and until > rt.grace_until:
            rt.grace_until = until
            heapq.heappush(self._grace_heap, (until, target))

    def _remove_member(self, node_id: str, network_id: str, fx: Effects) -> None:
        co = list(self.members[network_id])
        del self.members[network_id][node_id]
        self._node_nets[node_id].discard(network_id)
        fx.persist.append(DeleteMember(network_id, node_id))
        self._touch_member(node_id, network_id, co)
        self._expiry_push(node_id)  # its last network gone: an away node may expire now

    def _wall(self, now: float) -> float:
        return now + self._wall_offset

    def _expirable(self, node_id: str) -> bool:
        """Away (no session, not present), in no network but pending ones, banned from none."""
        if node_id not in self.nodes or node_id in self._present or self._banned_count[node_id]:
            return False
        rt = self._rt.get(node_id)
        if rt is not None and rt.session is not None:
            return False
        return all(self.members[nid][node_id].pending for nid in self._node_nets.get(node_id, ()))

    def _expiry_at(self, node_id: str) -> float:
        """When the node expires, in `now` time (from its stored wall-clock last_seen)."""
        return self.nodes[node_id].last_seen - self._wall_offset + self.node_expiry

    def _expiry_push(self, node_id: str) -> None:
        """Arm the node's expiry if it may expire and has no entry yet (one entry per node)."""
        if node_id in self._expiry_due or not self._expirable(node_id):
            return
        due = self._expiry_at(node_id)
        self._expiry_due[node_id] = due
        heapq.heappush(self._expiry_heap, (due, node_id))

    def _expiry_top(self) -> float | None:
        """The earliest live expiry; drops entries of nodes that came back or joined a network
        (they are armed again when they next go away) and moves late ones to their real time."""
        heap = self._expiry_heap
        while heap:
            t, nid = heap[0]
            if self._expiry_due.get(nid) != t:
                heapq.heappop(heap)
                continue
            if not self._expirable(nid):
                heapq.heappop(heap)
                del self._expiry_due[nid]
                continue
            due = self._expiry_at(nid)
            if due > t:  # seen again since the entry was made
                heapq.heapreplace(heap, (due, nid))
                self._expiry_due[nid] = due
                continue
            return t
        return None

    def _expire_due(self, now: float, fx: Effects) -> None:
        while (t := self._expiry_top()) is not None and t <= now:
            _, nid = heapq.heappop(self._expiry_heap)
            del self._expiry_due[nid]
            self._expire(nid, now, fx)

    def _expire(self, node_id: str, now: float, fx: Effects) -> None:
        """Delete an expired node: its pending requests, its record; its addresses are free again."""
        rec = self.nodes[node_id]
        for nid in sorted(self._node_nets.get(node_id, ())):
            self._remove_member(node_id, nid, fx)
        del self.nodes[node_id], self._by_key[rec.public_key]
        self._ipv4_used.discard(rec.ipv4)
        self._node_nets.pop(node_id, None)
        self._rt.pop(node_id, None)
        self._expiry_due.pop(node_id, None)
        fx.persist.append(DeleteNode(node_id))
        self.stats["nodes_expired"] += 1
        log.info("node %s (%s) expired: unseen since %.0f; %s is free again", node_id,
                 rec.public_key.fingerprint(), rec.last_seen, rec.ipv4)
