"""The coordination core: who is who, which networks exist, who sees whom (sans-IO).

Owns: the coordination state (nodes, networks, memberships, bans) and every rule about it,
the per-node views with their versions, and presence. No sockets, no asyncio, no clock:
the glue (`shoal.server.app`) feeds it events with `now` (monotonic seconds) and carries out
what it returns. The message contract is `shoal.control.messages`.

Inputs (each returns `Effects`):

    connect(session, node_key, now, remote_ip=None)   a Noise session was authenticated
    receive(session, message, now)                    a decoded ClientMessage on it
    disconnect(session, now)                          the connection ended (any reason)
    handle_timer(now)                                 at or after next_deadline()

Outputs: `Effects.out`, an ordered list of `Send(session, node_key, message)` and
`Close(session, code, reason)`; `Effects.persist`, an ordered list of write intents
(`PutNode`, `PutNetwork`, `DeleteNetwork`, `PutMember`, `DeleteMember`, `PutBan`) that the
store applies in one transaction before the glue sends `out` (write-through: what a node
was told survives a restart). `Core.from_state` rebuilds the core from stored records.

Identity. A node is its Noise static key. First Login registers it: node id = the first 6
base32 characters (a-z, 2-7) of BLAKE2s(key) (longer on a collision), nickname "node-<id>",
an IPv4 in 100.64.0.0/10 picked by hashing the key (probing on collision) and an IPv6 =
the server's ULA /48 prefix with the IPv4's 32 bits as the interface id (unique because the
IPv4 is). Never allocated: 100.64.0.0/24 (kept for services the server may offer later)
and any address whose last octet is 0 or 255 (some stacks treat those as special).
Addresses are kept forever, also after the node leaves every network.

Networks. Name unique (case-insensitive), password stored as a salted scrypt hash
(`shoal.server.passwords`), owner = creator. Rules, checked in this order; a refused request
returns Result(ok=False, code) and changes nothing:

    create   invalid (bad name / too many networks) | name_taken
    join     no_such_network | banned | (already member: ok) | (pending: pending_approval)
             | locked | rate_limited | wrong_password | invalid (full / too many networks)
             | approval manual -> membership recorded as pending, Result code pending_approval
    leave    no_such_network | not_member | owner_cannot_leave (the owner deletes instead)
    delete   no_such_network | not_owner
    set_online / set_password / set_access / approve / reject / evict:
             no_such_network | not_member / not_owner | invalid (bad target or argument)
    reject   target must be pending (not_member otherwise); ban=True also bans
    evict    target must be a member other than the owner; ban=True also bans (an already
             evicted node may be banned later: evict ban=True on a non-member who is banned
             or bannable is ok)

Repeating a request that already took effect succeeds and changes nothing (idempotent).
Wrong passwords: at most PASSWORD_FAILURES_MAX per PASSWORD_FAILURE_WINDOW seconds per node,
beyond that `rate_limited` without checking. A password already verified once for a network
is remembered in memory only as an HMAC under a per-process secret (fast path for the next
joiner); changing the password forgets it.

Presence. A member is *online* in a network when it is an approved member, has set itself
online there (the default on create/join/approve), and its node is *present*. A node is
present while it has a logged-in session; when that session drops without Logout it stays
present for PRESENCE_GRACE seconds (a reconnect inside the grace changes nothing for its
peers); when the server starts, every node that was present when it stopped (`NodeRec.present`
is written through) is present for PRESENCE_GRACE from the start, so a server restart tears
no tunnel down. Logout, SetOnline(false), leave, evict and delete take effect at once.

Peer checks (for sessions whose Login lists "check_peer"; see messages.py). When a node's
session drops without Logout, its peers get CheckPeer(node, active=True): they probe the
tunnel and answer PeerReport. A PeerReport(reachable=True) from a current peer of a node in
grace (no session) moves that node's grace end to now + PRESENCE_GRACE: a node that lost only
its path to the server stays online as long as a peer still reaches it, and goes offline one
grace period after the last peer did. When the node logs in again its peers get
CheckPeer(active=False); a node that logs in gets CheckPeer(active=True) for each of its peers
that is in grace (e.g. after a server restart, or a peer that is still away).

Views. A node's view is its networks (pending ones included: a pending member sees only the
owner and itself), their members, and its peers (nodes sharing a network where both are
online). After Login the node gets LoginOk and a FullView; every later change is a
ViewUpdate computed by diffing against what that session was last sent (so a no-op change
sends nothing, and a node never gets a delta it cannot apply). Versions are per node, grow by
one per ViewUpdate and never go back while the server runs; a ResyncRequest (or a new Login)
gets a FullView at the current version. Login.have_version is informational only.

Endpoints and candidates (Login.endpoints, Candidates) are kept only in the strict form of
`shoal.control.endpoint` and only for usable addresses (public or private; never loopback,
unspecified, multicast, link-local, reserved or overlay); any other entry is dropped, the
rest of the message still applies (never an exception, never a closed session). Login adds
the address the connection came from with the Login's listen_port. That address, when it is
public, is also the node's PeerInfo.observed_ip (issue 18 F10: the only IP its peers spray
before a pong proves another): set at each Login, kept through the grace like candidates.

Protocol errors the core detects (anything before Login, a second Login): Error
(code "protocol_error") then Close(4002) for that session only; the node gets the grace as
for a dropped connection. Attribute owners: all state here is mutated only by the Core
methods above, called from one task (the glue serializes them).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import heapq
import hmac
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Union

from shoal.control import endpoint
from shoal.control import messages as m
from shoal.server.passwords import PasswordHasher
from shoal.wireguard.keys import PublicKey

__all__ = [
    "Core", "Effects", "Send", "Close", "NodeRec", "NetworkRec", "MemberRec", "BanRec",
    "PutNode", "PutNetwork", "DeleteNetwork", "PutMember", "DeleteMember", "PutBan", "Persist",
    "PRESENCE_GRACE", "IPV4_POOL", "IPV4_RESERVED", "make_ula_prefix",
]

log = logging.getLogger("shoal.server")

PRESENCE_GRACE = 30.0  # seconds a dropped (not logged out) node stays online for its peers
PASSWORD_FAILURES_MAX = 10
PASSWORD_FAILURE_WINDOW = 60.0
IPV4_POOL = ipaddress.IPv4Network("100.64.0.0/10")
IPV4_RESERVED = ipaddress.IPv4Network("100.64.0.0/24")
NODE_ID_LEN = 6
NETWORK_ID_LEN = 8
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_REPLACED = 4000
CLOSE_NORMAL = 1000

SessionId = int


def make_ula_prefix(rng: Callable[[int], bytes] = os.urandom) -> ipaddress.IPv6Network:
    """A random RFC 4193 ULA /48: fd00::/8 + 40 random bits."""
    raw = b"\xfd" + rng(5) + bytes(10)
    return ipaddress.IPv6Network((raw, 48))


# ------------------------------------------------------------------ stored records


@dataclass(frozen=True, slots=True)
class NodeRec:
    node_id: str
    public_key: PublicKey
    nickname: str
    ipv4: str
    ipv6: str
    endpoints: tuple[str, ...] = ()
    present: bool = False  # present when last written (gets the start grace after a restart)
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class NetworkRec:
    network_id: str
    name: str
    owner_id: str
    password_hash: str
    locked: bool = False
    approval: str = "auto"
    kind: str = "ip"
    created_at: float = 0.0
    broadcast: bool = True  # the per-network LAN switch (docs/lan.md)


@dataclass(frozen=True, slots=True)
class MemberRec:
    network_id: str
    node_id: str
    role: str  # "owner" | "member"
    pending: bool = False
    online: bool = True  # the member's own wish (SetOnline)
    joined_at: float = 0.0


@dataclass(frozen=True, slots=True)
class BanRec:
    network_id: str
    node_id: str
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class PutNode:
    node: NodeRec


@dataclass(frozen=True, slots=True)
class PutNetwork:
    network: NetworkRec


@dataclass(frozen=True, slots=True)
class DeleteNetwork:
    network_id: str  # its memberships and bans go with it


@dataclass(frozen=True, slots=True)
class PutMember:
    member: MemberRec


@dataclass(frozen=True, slots=True)
class DeleteMember:
    network_id: str
    node_id: str


@dataclass(frozen=True, slots=True)
class PutBan:
    ban: BanRec


Persist = Union[PutNode, PutNetwork, DeleteNetwork, PutMember, DeleteMember, PutBan]


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class Send:
    session: SessionId
    node_key: PublicKey
    message: m.ServerMessage


@dataclass(frozen=True, slots=True)
class Close:
    session: SessionId
    code: int
    reason: str


@dataclass(slots=True)
class Effects:
    out: list[Send | Close] = field(default_factory=list)
    persist: list[Persist] = field(default_factory=list)

    def sends(self) -> list[Send]:
        return [o for o in self.out if isinstance(o, Send)]


# ------------------------------------------------------------------ runtime state


@dataclass(slots=True)
class _Session:
    session: SessionId
    key: PublicKey
    remote_ip: str | None
    node_id: str | None = None  # set by Login
    check_peer: bool = False  # Login listed "check_peer": may get CheckPeer
    dead: bool = False  # closed by the core (logout, protocol error, replaced)


@dataclass(slots=True)
class _Runtime:
    session: SessionId | None = None  # the logged-in session
    grace_until: float | None = None
    version: int = 0
    sent_self: m.SelfInfo | None = None
    sent_networks: dict[str, m.NetworkInfo] = field(default_factory=dict)
    sent_peers: dict[str, m.PeerInfo] = field(default_factory=dict)
    pw_failures: collections.deque[float] = field(default_factory=collections.deque)
    candidates: tuple[m.Candidate, ...] = ()  # NAT-traversal candidates (runtime only, kept through grace)
    nat_hard: bool = False
    observed_ip: str = ""  # PeerInfo.observed_ip: the last Login's public source IP (runtime only)
    lan: bool = False  # the logged-in session listed FEATURE_LAN


@dataclass(slots=True)
class _Dirty:
    nets: set[str] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)
    self_: bool = False


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").lower().rstrip("=")


def _clean_label(text: str, what: str) -> str:
    """Strip; refuse empty text and control characters (names and nicknames)."""
    t = text.strip()
    if not t:
        raise _Refused("invalid", f"{what} must not be empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in t):
        raise _Refused("invalid", f"{what} must not contain control characters")
    return t


def _clean_endpoint(text: str) -> str | None:
    """A node's endpoint or candidate text in canonical form, or None when it is not a strict
    "ip:port" of a usable address (shoal.control.endpoint; never raises)."""
    try:
        ip, port = endpoint.parse(text)
    except endpoint.EndpointError:
        return None
    return endpoint.format(ip, port) if endpoint.usable(ip) else None


class Core:
    """The coordination state machine; see the module docstring for every rule."""

    def __init__(
        self,
        ula_prefix: ipaddress.IPv6Network,
        *,
        now: float,
        rng: Callable[[int], bytes] = os.urandom,
        hasher: PasswordHasher | None = None,
        wall_offset: float = 0.0,
        grace: float = PRESENCE_GRACE,
        relay: bool = False,
        relay_port: int = 0,
    ) -> None:
        if ula_prefix.prefixlen != 48 or not ula_prefix.subnet_of(ipaddress.IPv6Network("fc00::/7")):
            raise ValueError(f"{ula_prefix} is not a ULA /48")
        self.ula_prefix = ula_prefix
        self._rng = rng
        self._hasher = hasher or PasswordHasher()
        self._wall_offset = wall_offset  # unix time = now + wall_offset (for LoginOk.server_time)
        self.grace = grace
        self.relay = relay  # the server process relays (FEATURE_RELAY)
        self.relay_port = relay_port  # its UDP relay port (0: WebSocket only)
        self._fast_secret = rng(32)
        self.started_at = now
        # stored state
        self.nodes: dict[str, NodeRec] = {}
        self._by_key: dict[PublicKey, str] = {}
        self._ipv4_used: set[str] = set()
        self.networks: dict[str, NetworkRec] = {}
        self._by_name: dict[str, str] = {}
        self.members: dict[str, dict[str, MemberRec]] = {}
        self._node_nets: dict[str, set[str]] = {}
        self.bans: dict[str, dict[str, BanRec]] = {}
        # runtime state
        self._sessions: dict[SessionId, _Session] = {}
        self._rt: dict[str, _Runtime] = {}
        self._present: set[str] = set()
        self._grace_heap: list[tuple[float, str]] = []
        self._fast_pw: dict[str, bytes] = {}
        self._dirty: dict[str, _Dirty] = {}

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_state(
        cls,
        ula_prefix: ipaddress.IPv6Network,
        nodes: Iterable[NodeRec],
        networks: Iterable[NetworkRec],
        members: Iterable[MemberRec],
        bans: Iterable[BanRec],
        *,
        now: float,
        **kw: object,
    ) -> Core:
        """Rebuild from stored records; nodes stored as present get the grace from `now`."""
        core = cls(ula_prefix, now=now, **kw)  # type: ignore[arg-type]
        for n in nodes:
            core._add_node(n)
            if n.present:
                core._present.add(n.node_id)
                core._rt_of(n.node_id).grace_until = now + core.grace
                heapq.heappush(core._grace_heap, (now + core.grace, n.node_id))
        for net in networks:
            core._add_network(net)
        for mem in members:
            if mem.network_id in core.networks and mem.node_id in core.nodes:
                core._put_member(mem)
        for b in bans:
            if b.network_id in core.networks:
                core.bans.setdefault(b.network_id, {})[b.node_id] = b
        return core

    def _add_node(self, n: NodeRec) -> None:
        self.nodes[n.node_id] = n
        self._by_key[n.public_key] = n.node_id
        self._ipv4_used.add(n.ipv4)
        self._node_nets.setdefault(n.node_id, set())

    def _add_network(self, net: NetworkRec) -> None:
        self.networks[net.network_id] = net
        self._by_name[net.name.casefold()] = net.network_id
        self.members.setdefault(net.network_id, {})

    def _put_member(self, mem: MemberRec) -> None:
        self.members[mem.network_id][mem.node_id] = mem
        self._node_nets.setdefault(mem.node_id, set()).add(mem.network_id)

    def _rt_of(self, node_id: str) -> _Runtime:
        rt = self._rt.get(node_id)
        if rt is None:
            rt = self._rt[node_id] = _Runtime()
        return rt

    # ---------------------------------------------------------------- queries

    def node_by_key(self, key: PublicKey) -> NodeRec | None:
        nid = self._by_key.get(key)
        return None if nid is None else self.nodes[nid]

    def is_present(self, node_id: str) -> bool:
        return node_id in self._present

    def is_online(self, node_id: str, network_id: str) -> bool:
        mem = self.members.get(network_id, {}).get(node_id)
        return mem is not None and mem.online and not mem.pending and node_id in self._present

    def is_peer(self, a: str, b: str) -> bool:
        if a == b or a not in self._present or b not in self._present:
            return False
        na, nb = self._node_nets.get(a, ()), self._node_nets.get(b, ())
        if len(nb) < len(na):
            na, nb = nb, na
        for nid in na:
            if nid in nb:
                mems = self.members[nid]
                ma, mb = mems[a], mems[b]
                if ma.online and mb.online and not ma.pending and not mb.pending:
                    return True
        return False

    def expects_pings(self, session: SessionId) -> bool:
        """The session's node listed "check_peer": it pings, so silence means a dead path."""
        s = self._sessions.get(session)
        return s is not None and not s.dead and s.check_peer

    def session_node(self, session: SessionId) -> str | None:
        s = self._sessions.get(session)
        return None if s is None or s.dead else s.node_id

    def version_of(self, node_id: str) -> int:
        return self._rt_of(node_id).version

    def next_deadline(self) -> float | None:
        heap = self._grace_heap
        while heap:
            t, nid = heap[0]
            rt = self._rt.get(nid)
            if rt is not None and rt.grace_until == t and rt.session is None:
                return t
            heapq.heappop(heap)
        return None

    # ---------------------------------------------------------------- views

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

    def may_relay(self, src_key: bytes, dst_key: bytes) -> bool:
        """The relay's membership oracle: both nodes present and peers (a shared online network)."""
        try:
            a = self._by_key.get(PublicKey(bytes(src_key)))
            b = self._by_key.get(PublicKey(bytes(dst_key)))
        except (TypeError, ValueError):
            return False
        return a is not None and b is not None and self.is_peer(a, b)

    def _member_info(self, mem: MemberRec) -> m.MemberInfo:
        return m.MemberInfo(
            node_id=mem.node_id, nickname=self.nodes[mem.node_id].nickname, role=mem.role,  # type: ignore[arg-type]
            online=self.is_online(mem.node_id, mem.network_id), pending=mem.pending,
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
        assert rt.session is not None
        fx.out.append(Send(rt.session, self.nodes[node_id].public_key, view))

    # ---------------------------------------------------------------- change tracking

    def _d(self, node_id: str) -> _Dirty:
        d = self._dirty.get(node_id)
        if d is None:
            d = self._dirty[node_id] = _Dirty()
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
            fx.out.append(Send(rt.session, self.nodes[node_id].public_key, m.ViewUpdate(
                prev_version=prev, version=rt.version, node=new_self,
                networks_upsert=up_nets, networks_removed=rm_nets,
                peers_upsert=up_peers, peers_removed=rm_peers,
            )))

    # ---------------------------------------------------------------- presence

    def _set_present(self, node_id: str, present: bool, fx: Effects) -> None:
        if (node_id in self._present) == present:
            return
        if present:
            self._present.add(node_id)
        else:
            self._present.discard(node_id)
        rec = dataclasses.replace(self.nodes[node_id], present=present)
        self.nodes[node_id] = rec
        fx.persist.append(PutNode(rec))
        self._touch_presence(node_id)

    def _detach(self, s: _Session, now: float, *, clean: bool, fx: Effects) -> None:
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
            self._set_present(s.node_id, False, fx)
        else:
            rt.grace_until = now + self.grace
            heapq.heappush(self._grace_heap, (rt.grace_until, s.node_id))
            self._tell_peers_check(s.node_id, True, fx)

    def _checking_session(self, node_id: str) -> _Session | None:
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

    def _peer_report(self, s: _Session, msg: m.PeerReport, now: float) -> None:
        assert s.node_id is not None
        target = msg.node_id
        if not msg.reachable or not self._in_grace(target) or not self.is_peer(s.node_id, target):
            return
        rt = self._rt[target]
        until = now + self.grace
        if rt.grace_until is not None and until > rt.grace_until:
            rt.grace_until = until
            heapq.heappush(self._grace_heap, (until, target))

    # ---------------------------------------------------------------- events

    def connect(self, session: SessionId, node_key: PublicKey, now: float, remote_ip: str | None = None) -> Effects:
        """An authenticated session exists; nothing happens until its Login."""
        if session in self._sessions:
            raise ValueError(f"session {session} already connected")
        if not isinstance(node_key, PublicKey):
            raise TypeError("node_key must be a PublicKey")
        self._sessions[session] = _Session(session, node_key, remote_ip)
        return Effects()

    def disconnect(self, session: SessionId, now: float) -> Effects:
        fx = Effects()
        s = self._sessions.pop(session, None)
        if s is None or s.dead:
            return fx
        self._detach(s, now, clean=False, fx=fx)
        self._flush(fx)
        return fx

    def handle_timer(self, now: float) -> Effects:
        fx = Effects()
        heap = self._grace_heap
        while heap and heap[0][0] <= now:
            t, nid = heapq.heappop(heap)
            rt = self._rt.get(nid)
            if rt is None or rt.grace_until != t or rt.session is not None:
                continue
            rt.grace_until = None
            log.info("node %s: grace over, offline", nid)
            self._set_present(nid, False, fx)
        self._flush(fx)
        return fx

    def receive(self, session: SessionId, msg: m.ClientMessage, now: float) -> Effects:
        fx = Effects()
        s = self._sessions.get(session)
        if s is None or s.dead:
            return fx  # late input on a session we already closed
        if isinstance(msg, m.Login):
            if s.node_id is not None:
                self._protocol_error(s, "a second Login on one session", now, fx)
            else:
                self._login(s, msg, now, fx)
        elif s.node_id is None:
            self._protocol_error(s, f"{type(msg).__name__} before Login", now, fx)
        elif isinstance(msg, m.Ping):
            fx.out.append(Send(session, s.key, m.Pong(nonce=msg.nonce)))
        elif isinstance(msg, m.ResyncRequest):
            self._send_full_view(s.node_id, fx)
        elif isinstance(msg, m.PeerReport):
            self._peer_report(s, msg, now)
        elif isinstance(msg, m.Candidates):
            self._candidates(s.node_id, msg)
        elif isinstance(msg, m.Logout):
            fx.out.append(Send(session, s.key, m.Result(req_id=msg.req_id, ok=True)))
            self._detach(s, now, clean=True, fx=fx)
            fx.out.append(Close(session, CLOSE_NORMAL, "logged out"))
        else:
            handler = self._handlers.get(type(msg))
            if handler is None:  # a ClientMessage type this core does not know: fail loudly, per session
                self._protocol_error(s, f"unexpected {type(msg).__name__}", now, fx)
            else:
                try:
                    result = handler(self, s.node_id, msg, now, fx)
                except _Refused as r:
                    result = m.Result(req_id=msg.req_id, ok=False, code=r.code, message=r.message)  # type: ignore[attr-defined]
                    assert not fx.persist and not self._dirty, "a refused request must change nothing"
                fx.out.append(Send(session, s.key, result))
        self._flush(fx)
        return fx

    def _features(self) -> list[str]:
        return [m.FEATURE_CHECK_PEER, m.FEATURE_DISCO, m.FEATURE_LAN] + ([m.FEATURE_RELAY] if self.relay else [])

    def _candidates(self, node_id: str, msg: m.Candidates) -> None:
        """A node's NAT-traversal candidates: kept while it is known, sent to its peers (bad
        or unusable addresses dropped)."""
        cands: list[m.Candidate] = []
        for c in msg.candidates:
            addr = _clean_endpoint(c.addr)
            if addr is None:
                continue
            c = m.Candidate(c.kind, addr)
            if c not in cands:
                cands.append(c)
        rt = self._rt_of(node_id)
        new = tuple(cands)
        if (new, msg.nat_hard) == (rt.candidates, rt.nat_hard):
            return
        rt.candidates, rt.nat_hard = new, msg.nat_hard
        for p in self.peers_of(node_id):
            self._d(p).peers.add(node_id)

    def _observe(self, node_id: str, remote_ip: str | None) -> None:
        """The node logged in from `remote_ip`: its observed_ip (public only) for its peers."""
        ip = ""
        if remote_ip is not None:
            try:
                addr = endpoint.parse_ip(remote_ip)
            except endpoint.EndpointError:
                addr = None
            if addr is not None and endpoint.sprayable(addr):
                ip = str(addr)
        rt = self._rt_of(node_id)
        if ip != rt.observed_ip:
            rt.observed_ip = ip
            for p in self.peers_of(node_id):
                self._d(p).peers.add(node_id)

    def _protocol_error(self, s: _Session, reason: str, now: float, fx: Effects) -> None:
        log.warning("session %s (%s): protocol error: %s", s.session, s.key.fingerprint(), reason)
        fx.out.append(Send(s.session, s.key, m.Error(code="protocol_error", message=reason[:512])))
        fx.out.append(Close(s.session, CLOSE_PROTOCOL_ERROR, reason[:120]))
        self._detach(s, now, clean=False, fx=fx)

    # ---------------------------------------------------------------- login

    def _new_node_id(self, key: PublicKey) -> str:
        text = _b32(hashlib.blake2s(bytes(key), digest_size=16).digest())
        for n in range(NODE_ID_LEN, 17):
            cand = text[:n]
            if cand not in self.nodes:
                return cand
        raise RuntimeError("node id space exhausted")  # 16 base32 chars = 80 bits: unreachable

    def _new_ipv4(self, key: PublicKey) -> str:
        base = int(IPV4_POOL.network_address)
        size = IPV4_POOL.num_addresses
        for i in range(1 << 16):
            h = int.from_bytes(hashlib.blake2s(bytes(key) + i.to_bytes(4, "big"), digest_size=8).digest(), "big")
            addr = ipaddress.IPv4Address(base + h % size)
            last = int(addr) & 0xFF
            if last in (0, 255) or addr in IPV4_RESERVED:
                continue
            s = str(addr)
            if s not in self._ipv4_used:
                return s
        raise RuntimeError("no free IPv4 address found")

    def _ipv6_for(self, ipv4: str) -> str:
        return str(ipaddress.IPv6Address(int(self.ula_prefix.network_address) | int(ipaddress.IPv4Address(ipv4))))

    def _login(self, s: _Session, msg: m.Login, now: float, fx: Effects) -> None:
        endpoints: list[str] = []
        for e in msg.endpoints:
            clean = _clean_endpoint(e)
            if clean is not None and clean not in endpoints:
                endpoints.append(clean)
        if s.remote_ip is not None and msg.listen_port:
            obs = _clean_endpoint(f"[{s.remote_ip}]:{msg.listen_port}" if ":" in s.remote_ip
                                  else f"{s.remote_ip}:{msg.listen_port}")
            if obs is not None and obs not in endpoints:
                endpoints.append(obs)
        endpoints = endpoints[: m.MAX_ENDPOINTS]
        nickname = None
        if msg.nickname is not None:
            try:
                nickname = _clean_label(msg.nickname, "nickname")
            except _Refused:
                nickname = None  # keep the stored one; not worth closing the session
        rec = self.node_by_key(s.key)
        if rec is None:
            node_id = self._new_node_id(s.key)
            ipv4 = self._new_ipv4(s.key)
            rec = NodeRec(
                node_id=node_id, public_key=s.key, nickname=nickname or f"node-{node_id}",
                ipv4=ipv4, ipv6=self._ipv6_for(ipv4), endpoints=tuple(endpoints), present=False,
                created_at=now + self._wall_offset,
            )
            self._add_node(rec)
            fx.persist.append(PutNode(rec))
            log.info("registered node %s (%s) %s", node_id, s.key.fingerprint(), ipv4)
        else:
            new = dataclasses.replace(rec, nickname=nickname or rec.nickname, endpoints=tuple(endpoints))
            if new != rec:
                self.nodes[rec.node_id] = rec = new
                fx.persist.append(PutNode(rec))
                self._touch_node_info(rec.node_id)
        node_id = rec.node_id
        rt = self._rt_of(node_id)
        if rt.session is not None:  # the node reconnected before we noticed the old one died
            old = self._sessions.get(rt.session)
            if old is not None:
                old.dead = True
                fx.out.append(Close(old.session, CLOSE_REPLACED, "replaced by a newer session of this node"))
        s.node_id = node_id
        s.check_peer = m.FEATURE_CHECK_PEER in msg.features
        rt.lan = m.FEATURE_LAN in msg.features
        was_away = rt.session is None and rt.grace_until is not None and node_id in self._present
        rt.session = s.session
        rt.grace_until = None
        self._observe(node_id, s.remote_ip)
        self._set_present(node_id, True, fx)
        fx.out.append(Send(s.session, s.key, m.LoginOk(node=self.self_info(node_id), server_time=now + self._wall_offset,
                                                      features=self._features(), relay_port=self.relay_port)))
        rt.version += 1
        self._send_full_view(node_id, fx)
        if was_away:
            self._tell_peers_check(node_id, False, fx)
        if s.check_peer:
            for p in sorted(self.peers_of(node_id)):
                if self._in_grace(p):
                    fx.out.append(Send(s.session, s.key, m.CheckPeer(node_id=p, active=True)))

    # ---------------------------------------------------------------- requests

    def _network(self, network_id: str) -> NetworkRec:
        net = self.networks.get(network_id)
        if net is None:
            raise _Refused("no_such_network", f"no network with id {network_id}")
        return net

    def _owned(self, node_id: str, network_id: str) -> NetworkRec:
        net = self._network(network_id)
        if net.owner_id != node_id:
            raise _Refused("not_owner", f"only the owner of {net.name!r} can do that")
        return net

    def _membership(self, node_id: str, network_id: str) -> MemberRec:
        net = self._network(network_id)
        mem = self.members[network_id].get(node_id)
        if mem is None:
            raise _Refused("not_member", f"you are not a member of {net.name!r}")
        return mem

    def _check_room(self, node_id: str, network_id: str | None) -> None:
        if len(self._node_nets.get(node_id, ())) >= m.MAX_NETWORKS:
            raise _Refused("invalid", f"a node can be in at most {m.MAX_NETWORKS} networks")
        if network_id is not None and len(self.members[network_id]) >= m.MAX_MEMBERS:
            raise _Refused("invalid", f"the network is full ({m.MAX_MEMBERS} members)")

    def _fast_tag(self, password: str) -> bytes:
        return hmac.new(self._fast_secret, password.encode("utf-8"), "sha256").digest()

    def _check_password(self, node_id: str, net: NetworkRec, password: str, now: float) -> None:
        fails = self._rt_of(node_id).pw_failures
        while fails and fails[0] <= now - PASSWORD_FAILURE_WINDOW:
            fails.popleft()
        if len(fails) >= PASSWORD_FAILURES_MAX:  # before the fast path: no oracle past the limit
            raise _Refused("rate_limited", "too many wrong passwords; try again in a minute")
        tag = self._fast_tag(password)
        known = self._fast_pw.get(net.network_id)
        if known is not None and hmac.compare_digest(known, tag):
            return
        if not self._hasher.verify(password, net.password_hash):
            fails.append(now)
            raise _Refused("wrong_password", f"wrong password for {net.name!r}")
        self._fast_pw[net.network_id] = tag

    def _create(self, me: str, msg: m.CreateNetwork, now: float, fx: Effects) -> m.Result:
        name = _clean_label(msg.name, "network name")
        self._check_room(me, None)
        if name.casefold() in self._by_name:
            raise _Refused("name_taken", f"a network named {name!r} exists already")
        if msg.kind == "l2" and not self._rt_of(me).lan:
            raise _Refused("unsupported", "this node's software does not support layer-2 networks; update it")
        nid = _b32(self._rng(5))
        while nid in self.networks:
            nid = _b32(self._rng(5))
        net = NetworkRec(
            network_id=nid, name=name, owner_id=me,
            password_hash=self._hasher.hash(msg.password, self._rng(16)),
            approval=msg.approval, created_at=now + self._wall_offset, kind=msg.kind,
        )
        self._add_network(net)
        self._fast_pw[nid] = self._fast_tag(msg.password)
        mem = MemberRec(nid, me, "owner", pending=False, online=True, joined_at=now + self._wall_offset)
        self._put_member(mem)
        fx.persist += [PutNetwork(net), PutMember(mem)]
        self._touch_member(me, nid)
        log.info("node %s created network %s (%s)", me, nid, name)
        return m.Result(req_id=msg.req_id, ok=True, network_id=nid)

    def _join(self, me: str, msg: m.JoinNetwork, now: float, fx: Effects) -> m.Result:
        nid = self._by_name.get(msg.name.strip().casefold())
        if nid is None:
            raise _Refused("no_such_network", f"no network named {msg.name.strip()!r}")
        net = self.networks[nid]
        if me in self.bans.get(nid, {}):
            raise _Refused("banned", f"you are banned from {net.name!r}")
        mem = self.members[nid].get(me)
        if mem is not None:
            if mem.pending:
                raise _Refused("pending_approval", f"your request to join {net.name!r} waits for the owner")
            return m.Result(req_id=msg.req_id, ok=True, network_id=nid, message="already a member")
        if net.locked:
            raise _Refused("locked", f"{net.name!r} is locked: it accepts no new members")
        if net.kind != "ip" and not self._rt_of(me).lan:
            raise _Refused("unsupported", f"{net.name!r} is a layer-2 network; this node's software does not "
                                          "support them: update it")
        self._check_password(me, net, msg.password, now)
        self._check_room(me, nid)
        pending = net.approval == "manual"
        mem = MemberRec(nid, me, "member", pending=pending, online=True, joined_at=now + self._wall_offset)
        self._put_member(mem)
        fx.persist.append(PutMember(mem))
        self._touch_member(me, nid)
        if pending:
            return m.Result(req_id=msg.req_id, ok=False, code="pending_approval", network_id=nid,
                            message=f"join request for {net.name!r} recorded; the owner must approve it")
        return m.Result(req_id=msg.req_id, ok=True, network_id=nid)

    def _remove_member(self, node_id: str, network_id: str, fx: Effects) -> None:
        co = list(self.members[network_id])
        del self.members[network_id][node_id]
        self._node_nets[node_id].discard(network_id)
        fx.persist.append(DeleteMember(network_id, node_id))
        self._touch_member(node_id, network_id, co)

    def _leave(self, me: str, msg: m.LeaveNetwork, now: float, fx: Effects) -> m.Result:
        mem = self._membership(me, msg.network_id)
        if mem.role == "owner":
            raise _Refused("owner_cannot_leave", "the owner cannot leave; delete the network instead")
        self._remove_member(me, msg.network_id, fx)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _delete(self, me: str, msg: m.DeleteNetwork, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        nid = net.network_id
        former = list(self.members[nid])
        for x in former:
            self._touch_member(x, nid, former)
        for x in former:
            self._node_nets[x].discard(nid)
        del self.members[nid], self.networks[nid], self._by_name[net.name.casefold()]
        self.bans.pop(nid, None)
        self._fast_pw.pop(nid, None)
        fx.persist.append(DeleteNetwork(nid))
        log.info("node %s deleted network %s (%s)", me, nid, net.name)
        return m.Result(req_id=msg.req_id, ok=True, network_id=nid)

    def _set_online(self, me: str, msg: m.SetOnline, now: float, fx: Effects) -> m.Result:
        mem = self._membership(me, msg.network_id)
        if mem.online != msg.online:
            mem = dataclasses.replace(mem, online=msg.online)
            self._put_member(mem)
            fx.persist.append(PutMember(mem))
            self._touch_member(me, msg.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _set_nickname(self, me: str, msg: m.SetNickname, now: float, fx: Effects) -> m.Result:
        nick = _clean_label(msg.nickname, "nickname")
        rec = self.nodes[me]
        if rec.nickname != nick:
            self.nodes[me] = rec = dataclasses.replace(rec, nickname=nick)
            fx.persist.append(PutNode(rec))
            self._touch_node_info(me)
        return m.Result(req_id=msg.req_id, ok=True)

    def _set_password(self, me: str, msg: m.SetPassword, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        net = dataclasses.replace(net, password_hash=self._hasher.hash(msg.password, self._rng(16)))
        self.networks[net.network_id] = net
        self._fast_pw[net.network_id] = self._fast_tag(msg.password)
        fx.persist.append(PutNetwork(net))
        return m.Result(req_id=msg.req_id, ok=True, network_id=net.network_id)

    def _set_access(self, me: str, msg: m.SetAccess, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        if msg.locked is None and msg.approval is None and msg.broadcast is None:
            raise _Refused("invalid", "nothing to change: give locked, approval and/or broadcast")
        new = dataclasses.replace(
            net,
            locked=net.locked if msg.locked is None else msg.locked,
            approval=net.approval if msg.approval is None else msg.approval,
            broadcast=net.broadcast if msg.broadcast is None else msg.broadcast,
        )
        if new != net:
            self.networks[net.network_id] = new
            fx.persist.append(PutNetwork(new))
            self._touch_net(net.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=net.network_id)

    def _target(self, msg: m.Approve | m.Reject | m.Evict) -> MemberRec | None:
        if msg.node_id not in self.nodes:
            raise _Refused("invalid", f"no node with id {msg.node_id}")
        return self.members[msg.network_id].get(msg.node_id)

    def _approve(self, me: str, msg: m.Approve, now: float, fx: Effects) -> m.Result:
        self._owned(me, msg.network_id)
        mem = self._target(msg)
        if mem is None:
            raise _Refused("not_member", f"{msg.node_id} has not asked to join")
        if mem.pending:
            mem = dataclasses.replace(mem, pending=False)
            self._put_member(mem)
            fx.persist.append(PutMember(mem))
            self._touch_member(msg.node_id, msg.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _ban(self, network_id: str, node_id: str, now: float, fx: Effects) -> None:
        if node_id not in self.bans.setdefault(network_id, {}):
            b = BanRec(network_id, node_id, created_at=now + self._wall_offset)
            self.bans[network_id][node_id] = b
            fx.persist.append(PutBan(b))

    def _reject(self, me: str, msg: m.Reject, now: float, fx: Effects) -> m.Result:
        self._owned(me, msg.network_id)
        mem = self._target(msg)
        if mem is None or not mem.pending:
            if mem is None and msg.ban and msg.node_id in self.bans.get(msg.network_id, {}):
                return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)  # repeated
            raise _Refused("not_member", f"{msg.node_id} has no pending request (use evict for members)")
        self._remove_member(msg.node_id, msg.network_id, fx)
        if msg.ban:
            self._ban(msg.network_id, msg.node_id, now, fx)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _evict(self, me: str, msg: m.Evict, now: float, fx: Effects) -> m.Result:
        net = self._owned(me, msg.network_id)
        if msg.node_id == net.owner_id:
            raise _Refused("invalid", "the owner cannot evict itself; delete the network instead")
        mem = self._target(msg)
        if mem is None:
            if not msg.ban:
                raise _Refused("not_member", f"{msg.node_id} is not a member")
            self._ban(msg.network_id, msg.node_id, now, fx)  # ban a former member (idempotent)
            return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)
        self._remove_member(msg.node_id, msg.network_id, fx)
        if msg.ban:
            self._ban(msg.network_id, msg.node_id, now, fx)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    _handlers: dict[type, Callable[..., m.Result]] = {
        m.CreateNetwork: _create,
        m.JoinNetwork: _join,
        m.LeaveNetwork: _leave,
        m.DeleteNetwork: _delete,
        m.SetOnline: _set_online,
        m.SetNickname: _set_nickname,
        m.SetPassword: _set_password,
        m.SetAccess: _set_access,
        m.Approve: _approve,
        m.Reject: _reject,
        m.Evict: _evict,
    }
