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
    password_done(job_id, value, now)                 a PasswordJob finished (value = job.run())
    password_failed(job_id, code, message, now)       a PasswordJob could not run ("busy")

Outputs: `Effects.out`, an ordered list of `Send(session, node_key, message)` and
`Close(session, code, reason)`; `Effects.persist`, an ordered list of write intents
(`PutNode`, `DeleteNode`, `PutNetwork`, `DeleteNetwork`, `PutMember`, `DeleteMember`, `PutBan`) that the
store applies in one transaction before the glue sends `out` (write-through: what a node
was told survives a restart); `Effects.jobs`, scrypt work (`PasswordJob`) the glue runs off
the event loop. `Core.from_state` rebuilds the core from stored records.

Password work (issue 18 F3). The core never runs scrypt itself. A request that needs a hash
(create, set_password) or a verification (join, unless the fast path below answers) is
checked as far as it can be, changes nothing, and leaves a PasswordJob in `Effects.jobs`
instead of a Result; when the glue hands the job's value back (`password_done`), the request
is carried out from the start with every rule checked again (the state may have changed
meanwhile: a name taken, the password changed, the node evicted) and its Result is sent
then. So Results of password requests may overtake earlier requests' (clients match by
req_id). Each job takes a token of the node's work bucket (PASSWORD_WORK, kept across its
sessions); when it is empty the request is refused `rate_limited` without any work. A job the
glue has no room for is answered by `password_failed` (code "busy").

Identity. A node is its Noise static key. First Login registers it: node id = the first 6
base32 characters (a-z, 2-7) of BLAKE2s(key) (longer on a collision), nickname "node-<id>",
an IPv4 in 100.64.0.0/10 picked by hashing the key (probing on collision) and an IPv6 =
the server's ULA /48 prefix with the IPv4's 32 bits as the interface id (unique because the
IPv4 is). Never allocated: 100.64.0.0/24 (kept for services the server may offer later)
and any address whose last octet is 0 or 255 (some stacks treat those as special).

Registration limits (issue 18 F6). A node's *source prefix* is the /NODE_SOURCE_PREFIX_V4
(24) or /NODE_SOURCE_PREFIX_V6 (48) around the address its session comes from
(`NodeRec.last_prefix`, updated at every Login); loopback and unknown sources have none.
A first Login from a source with a prefix needs a token from that prefix's bucket
(REGISTRATION_BURST_PER_PREFIX, then REGISTRATION_RATE_PER_PREFIX per second) and from the
server's (REGISTRATION_BURST, REGISTRATION_RATE); a refusal by a limit spends nothing, the
address search spends one of each (found or not, so a full pool is no free CPU sink). The IPv4 search is bounded: IPV4_PROBE_MAX hashed probes, then IPV4_SCAN_MAX
consecutive addresses from the last probe (wrapping inside the pool). A first Login over a
limit or without a free address is refused: Error(code "registration_limited" |
"address_pool_full") then Close(CLOSE_REFUSED, 4004); nothing is stored. Known keys always
log in.

Expiry (F6). A node *expires* when it has been away (no session, not present) for
NODE_EXPIRY seconds of wall time since `NodeRec.last_seen` (written whenever it becomes or
stops being present), is in no network except as a pending request, and no network bans it
(a banned node is kept, so that its key stays banned). An expired node is deleted (its
pending requests first: `DeleteMember`s, then `DeleteNode`); its addresses return to the pool
and its key would register as a new node. Owners and members never expire. `handle_timer`
expires nodes when due (one heap entry per away node; see `next_deadline`).

Bans by source prefix (issue 18 F5). A ban records the banned node's last source prefix
(`BanRec.prefix`). A join by another key whose source prefix equals the prefix of a ban in
that network is not let in directly: it is recorded as a pending request with
`MemberRec.note` = "banned_prefix" (members see it in MemberInfo.note), so the owner decides
with approve / reject (reject --ban bans that key too); approving clears the note. Other
networks and other prefixes are not affected; loopback has no prefix (nothing is recorded).

Networks. Name unique (case-insensitive), password stored as a salted scrypt hash
(`shoal.server.passwords`), owner = creator. Every network created or re-keyed needs a
password of at least PASSWORD_MIN_LENGTH characters (`weak_password`); there are no open
networks (a network anyone may ask to join is one with approval "manual" and a password
its owner shares). A network stored with a shorter password (from before that rule) still
admits that password, until its owner sets a new one. Rules, checked in this order; a
refused request returns Result(ok=False, code) and changes nothing:

    create   invalid (bad name / too many networks) | name_taken | unsupported (l2)
             | weak_password | (hash job) | rate_limited (work budget) | busy
    join     (already member: ok) | (pending: pending_approval) | rate_limited (a wrong-
             password budget is empty) | (verify job) | rate_limited (work budget) | busy
             | wrong_password | banned | locked | unsupported | invalid (full / too many
             networks) | approval manual, or from a banned node's source prefix (note
             "banned_prefix") -> membership recorded as pending, Result code pending_approval
    leave    no_such_network | not_member | owner_cannot_leave (the owner deletes instead)
    delete   no_such_network | not_owner
    set_online / set_password / set_access / approve / reject / evict:
             no_such_network | not_member / not_owner | invalid (bad target or argument)
    reject   target must be pending (not_member otherwise); ban=True also bans
    evict    target must be a member other than the owner; ban=True also bans (an already
             evicted node may be banned later: evict ban=True on a non-member who is banned
             or bannable is ok)

    set_password adds weak_password | (hash job) | rate_limited | busy after not_owner

Repeating a request that already took effect succeeds and changes nothing (idempotent).
No existence oracle (F4): a join to a network that does not exist, that bans the node or
that is locked is answered exactly as a wrong password ("wrong_password", the same message
naming what was typed) unless the password is right: for a name that does not exist the
core verifies against a dummy hash with the same parameters (the same job, the same work).
Only a node that gave the right password learns banned/locked. Wrong passwords spend three
budgets (token buckets, `shoal.control.limits`): the node's (PASSWORD_FAIL_NODE), its
source prefix's (PASSWORD_FAIL_PREFIX; the node's source prefix as below, loopback
included, from `connect(remote_ip=...)`) and the typed name's (PASSWORD_FAIL_NETWORK, for existing
and missing names alike); while any is empty a join is refused `rate_limited` before any
check. A password already verified once for a network is remembered in memory only as an
HMAC under a per-process secret (fast path for the next joiner: no job); changing the
password forgets it.

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
gets a FullView at the current version. Login.have_version is informational only. A view
message over VIEW_PART_BYTES goes out as consecutive parts (`messages.split_view`, "Large
views" in messages.py): one version step however many parts, each a Send of its own.

Endpoints and candidates (Login.endpoints, Candidates) are kept only in the strict form of
`shoal.endpoint` and only for usable addresses (public or private; never loopback,
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
import itertools
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Union

from shoal import constants as C
from shoal import endpoint
from shoal.control import messages as m
from shoal.control.limits import BucketTable, TokenBucket, source_prefix
from shoal.control.transport import CLOSE_REFUSED
from shoal.relay import authz
from shoal.server.passwords import PasswordHasher
from shoal.wireguard.keys import PublicKey

__all__ = [
    "Core", "Effects", "Send", "Close", "PasswordJob", "NodeRec", "NetworkRec", "MemberRec", "BanRec",
    "PutNode", "DeleteNode", "PutNetwork", "DeleteNetwork", "PutMember", "DeleteMember", "PutBan", "Persist",
    "PRESENCE_GRACE", "IPV4_POOL", "IPV4_RESERVED", "make_ula_prefix",
]

log = logging.getLogger("shoal.server")

PRESENCE_GRACE = 30.0  # seconds a dropped (not logged out) node stays online for its peers
IPV4_POOL = ipaddress.IPv4Network("100.64.0.0/10")
IPV4_RESERVED = ipaddress.IPv4Network("100.64.0.0/24")
NODE_ID_LEN = 6
NETWORK_ID_LEN = 8
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_REPLACED = 4000
REFUSAL_LOG_INTERVAL = 10.0  # refused first Logins are logged as a count at most this often
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
    last_seen: float = 0.0  # unix time it last became present or stopped being present (expiry)
    last_prefix: str | None = None  # source prefix of its last Login (None: loopback / unknown)


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
    note: str = ""  # why a pending request waits (MemberInfo.note): "" | "banned_prefix"


@dataclass(frozen=True, slots=True)
class BanRec:
    network_id: str
    node_id: str
    created_at: float = 0.0
    prefix: str | None = None  # the banned node's last source prefix (joins from it need approval)


@dataclass(frozen=True, slots=True)
class PutNode:
    node: NodeRec


@dataclass(frozen=True, slots=True)
class DeleteNode:
    node_id: str  # an expired node; its (pending) memberships are deleted before it


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


Persist = Union[PutNode, DeleteNode, PutNetwork, DeleteNetwork, PutMember, DeleteMember, PutBan]


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


@dataclass(frozen=True, slots=True)
class PasswordJob:
    """scrypt work for the glue to run off the event loop, then hand back with
    `Core.password_done(job_id, run(), now)` (or `Core.password_failed`). Exactly one of
    `salt` (hash: `run()` returns the stored form) and `stored` (verify: returns a bool)."""

    job_id: int
    hasher: PasswordHasher = field(repr=False)
    password: str = field(repr=False)
    salt: bytes | None = field(default=None, repr=False)
    stored: str | None = field(default=None, repr=False)

    def run(self) -> str | bool:
        """The work itself (pure; about 50 ms of CPU with the default parameters)."""
        if self.salt is not None:
            return self.hasher.hash(self.password, self.salt)
        assert self.stored is not None
        return self.hasher.verify(self.password, self.stored)


@dataclass(slots=True)
class Effects:
    out: list[Send | Close] = field(default_factory=list)
    persist: list[Persist] = field(default_factory=list)
    jobs: list[PasswordJob] = field(default_factory=list)  # scrypt to run off the loop (see PasswordJob)

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
    pw_failures: TokenBucket | None = None  # wrong join passwords (PASSWORD_FAIL_NODE)
    pw_work: TokenBucket | None = None  # scrypt jobs (PASSWORD_WORK)
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


class _NeedWork(Exception):
    """A request needs scrypt first: raised before it changed anything, like _Refused."""

    def __init__(self, password: str, *, salt: bytes | None = None, stored: str | None = None) -> None:
        super().__init__("password work")
        self.password, self.salt, self.stored = password, salt, stored


@dataclass(frozen=True, slots=True)
class _Done:
    """What a finished job gives the re-run request: the input it worked on and its result."""

    stored: str | None  # verify: the stored form checked against; hash: None
    value: str | bool


@dataclass(slots=True)
class _Waiting:
    session: SessionId
    msg: m.ClientMessage
    stored: str | None


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
    "ip:port" of a usable address (shoal.endpoint; never raises)."""
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
        ipv4_pool: ipaddress.IPv4Network = IPV4_POOL,
        node_expiry: float = C.NODE_EXPIRY,
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
        self.ipv4_pool = ipv4_pool  # where new nodes' IPv4s come from (IPV4_POOL; tests use a small one)
        self.node_expiry = node_expiry
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
        self._banned_count: collections.Counter[str] = collections.Counter()  # node -> networks banning it
        self._expiry_heap: list[tuple[float, str]] = []  # (due, node): at most one entry per node...
        self._expiry_due: dict[str, float] = {}  # ...this one
        self._reg_prefix = BucketTable(C.REGISTRATION_BURST_PER_PREFIX, C.REGISTRATION_RATE_PER_PREFIX,
                                       C.REGISTRATION_MAX_ENTRIES)
        self._reg_all = TokenBucket(C.REGISTRATION_BURST, C.REGISTRATION_RATE, now)
        self._refusal_logged, self._refusals = float("-inf"), 0  # refused logins: last logged, count since
        self.stats = {"registrations_refused": 0, "logins_refused_pool_full": 0, "nodes_expired": 0,
                      "joins_held_banned_prefix": 0}
        # password work (F3) and wrong-password budgets (F4); see the module docstring
        self._jobs: dict[int, _Waiting] = {}
        self._job_ids = itertools.count(1)
        self._done: _Done | None = None  # the finished job a re-run request is given
        self._req_session: _Session | None = None  # the session whose request is being carried out
        self._fail_prefix = BucketTable(*C.PASSWORD_FAIL_PREFIX, C.PASSWORD_FAIL_TABLE_MAX)
        self._fail_name = BucketTable(*C.PASSWORD_FAIL_NETWORK, C.PASSWORD_FAIL_TABLE_MAX)
        h = self._hasher
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        # what a join to a network that does not exist is checked against: same work, never matches
        self._dummy_stored = f"scrypt${h.log2_n}${h.r}${h.p}${b64(rng(16))}${b64(rng(32))}"

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
                core._banned_count[b.node_id] += 1
        for n in core.nodes.values():
            core._expiry_push(n.node_id)
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

    def online_networks(self, node_id: str) -> frozenset[str]:
        """The networks where the node is an approved member that set itself online."""
        members = self.members
        return frozenset(nid for nid in self._node_nets.get(node_id, ())
                         if (mem := members[nid][node_id]).online and not mem.pending)

    def is_peer(self, a: str, b: str) -> bool:
        """Peers share a network where both are online: the relay rule (`shoal.relay.authz`)."""
        return authz.may_relay(a, b, self._present.__contains__, self.online_networks)

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
        """The relay's membership oracle (`shoal.relay.authz.may_relay`, over node ids)."""
        try:
            a = self._by_key.get(PublicKey(bytes(src_key)))
            b = self._by_key.get(PublicKey(bytes(dst_key)))
        except (TypeError, ValueError):
            return False
        return a is not None and b is not None and self.is_peer(a, b)

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
            self._send_view(node_id, m.ViewUpdate(
                prev_version=prev, version=rt.version, node=new_self,
                networks_upsert=up_nets, networks_removed=rm_nets,
                peers_upsert=up_peers, peers_removed=rm_peers,
            ), fx)

    # ---------------------------------------------------------------- presence

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
            self._set_present(s.node_id, False, now, fx)
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

    # ---------------------------------------------------------------- node expiry (F6)

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
        for job_id in [j for j, w in self._jobs.items() if w.session == session]:
            del self._jobs[job_id]  # its result will find nobody to answer
        s = self._sessions.pop(session, None)
        if s is None or s.dead:
            return fx
        self._detach(s, now, clean=False, fx=fx)
        self._flush(fx)
        return fx

    def password_done(self, job_id: int, value: str | bool, now: float) -> Effects:
        """A PasswordJob finished with `value` (its `run()`): the request it belongs to is
        carried out now, with every rule checked again (state may have changed meanwhile).
        A job whose session is gone, or an unknown id, changes nothing."""
        fx = Effects()
        w = self._jobs.pop(job_id, None)
        s = self._sessions.get(w.session) if w is not None else None
        if w is None or s is None or s.dead or s.node_id is None:
            return fx
        self._request(s, w.msg, now, fx, _Done(w.stored, value))
        self._flush(fx)
        return fx

    def password_failed(self, job_id: int, code: str, message: str, now: float) -> Effects:
        """A PasswordJob could not run (the glue's pool is full: code "busy"): the request is
        answered Result(ok=False, code, message) and changes nothing."""
        fx = Effects()
        w = self._jobs.pop(job_id, None)
        s = self._sessions.get(w.session) if w is not None else None
        if w is not None and s is not None and not s.dead:
            fx.out.append(Send(s.session, s.key, m.Result(req_id=w.msg.req_id, ok=False, code=code,  # type: ignore[attr-defined]
                                                          message=message)))
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
            self._set_present(nid, False, now, fx)
        self._expire_due(now, fx)
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
            if type(msg) not in self._handlers:  # a ClientMessage type this core does not know: fail loudly
                self._protocol_error(s, f"unexpected {type(msg).__name__}", now, fx)
            else:
                self._request(s, msg, now, fx, None)
        self._flush(fx)
        return fx

    def _request(self, s: _Session, msg: m.ClientMessage, now: float, fx: Effects, done: _Done | None) -> None:
        """Carry out one request (first time: done=None; after its PasswordJob: its result)."""
        assert s.node_id is not None
        handler = self._handlers[type(msg)]
        self._done, self._req_session = done, s
        try:
            result = handler(self, s.node_id, msg, now, fx)
        except _Refused as r:
            result = m.Result(req_id=msg.req_id, ok=False, code=r.code, message=r.message)  # type: ignore[attr-defined]
            assert not fx.persist and not self._dirty, "a refused request must change nothing"
        except _NeedWork as w:
            assert not fx.persist and not self._dirty, "a request waiting for scrypt must change nothing yet"
            self._start_job(s, msg, w, now, fx)
            return
        finally:
            self._done, self._req_session = None, None
        fx.out.append(Send(s.session, s.key, result))

    def _start_job(self, s: _Session, msg: m.ClientMessage, w: _NeedWork, now: float, fx: Effects) -> None:
        """Queue the scrypt a request needs, if the node's work budget allows (PASSWORD_WORK)."""
        assert s.node_id is not None
        rt = self._rt_of(s.node_id)
        if rt.pw_work is None:
            rt.pw_work = TokenBucket(*C.PASSWORD_WORK, now)
        if not rt.pw_work.take(now):
            burst, rate = C.PASSWORD_WORK
            wait = rt.pw_work.when_ready(now) - now
            fx.out.append(Send(s.session, s.key, m.Result(
                req_id=msg.req_id, ok=False, code="rate_limited",  # type: ignore[attr-defined]
                message=f"too many password operations (at most {burst:g} at once and {rate:g} per second); "
                        f"try again in {max(wait, 0.1):.1f} s")))
            return
        job = PasswordJob(next(self._job_ids), self._hasher, w.password, salt=w.salt, stored=w.stored)
        self._jobs[job.job_id] = _Waiting(s.session, msg, w.stored)
        fx.jobs.append(job)

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

    def _new_node_id(self, key: PublicKey) -> str | None:
        text = _b32(hashlib.blake2s(bytes(key), digest_size=16).digest())
        for n in range(NODE_ID_LEN, 17):
            cand = text[:n]
            if cand not in self.nodes:
                return cand
        return None  # 16 base32 chars = 80 bits: unreachable; refused like a full pool

    def _new_ipv4(self, key: PublicKey) -> str | None:
        """A free IPv4 for a new key: IPV4_PROBE_MAX hashed probes, then IPV4_SCAN_MAX addresses
        from the last one (wrapping inside the pool); None when neither finds one."""
        pool = self.ipv4_pool
        base, size = int(pool.network_address), pool.num_addresses

        def free(offset: int) -> str | None:
            addr = ipaddress.IPv4Address(base + offset % size)
            if int(addr) & 0xFF in (0, 255) or addr in IPV4_RESERVED:
                return None
            text = str(addr)
            return None if text in self._ipv4_used else text

        h = 0
        for i in range(C.IPV4_PROBE_MAX):
            h = int.from_bytes(hashlib.blake2s(bytes(key) + i.to_bytes(4, "big"), digest_size=8).digest(), "big")
            if (got := free(h)) is not None:
                return got
        for j in range(1, min(size, C.IPV4_SCAN_MAX) + 1):
            if (got := free(h + j)) is not None:
                return got
        return None

    def _source_prefix(self, remote_ip: str | None) -> str | None:
        """The node's source prefix (/NODE_SOURCE_PREFIX_V4, /NODE_SOURCE_PREFIX_V6); None for an
        unknown source or loopback (the server host's own processes), which are never limited."""
        if remote_ip is None:
            return None
        try:
            ip = ipaddress.ip_address(remote_ip)
        except ValueError:
            return remote_ip  # not an address: its own group
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_loopback:
            return None
        return source_prefix(str(ip), C.NODE_SOURCE_PREFIX_V4, C.NODE_SOURCE_PREFIX_V6)

    def _refuse_login(self, s: _Session, code: str, text: str, now: float, fx: Effects) -> None:
        """A first Login the server will not register: Error, then close CLOSE_REFUSED. Refusals
        come in floods: logged once, then as a count at most every REFUSAL_LOG_INTERVAL."""
        self._refusals += 1
        if now - self._refusal_logged >= REFUSAL_LOG_INTERVAL:
            more = f" ({self._refusals - 1} more since the last report)" if self._refusals > 1 else ""
            log.warning("session %s (%s) from %s: login refused: %s%s", s.session, s.key.fingerprint(),
                        s.remote_ip, text, more)
            self._refusal_logged, self._refusals = now, 0
        s.dead = True
        fx.out.append(Send(s.session, s.key, m.Error(code=code, message=text[:512])))
        fx.out.append(Close(s.session, CLOSE_REFUSED, text[:120]))

    def _register(self, s: _Session, prefix: str | None, nickname: str | None, endpoints: list[str],
                  now: float, fx: Effects) -> NodeRec | None:
        """First Login of a key (F6): within the registration limits and with a free address,
        a new node; otherwise the session is refused (None). A refusal by a limit spends no
        budget; an address search does (whether it finds one or not: a full pool costs too)."""
        buckets: list[tuple[TokenBucket, str]] = []
        if prefix is not None:
            buckets = [(self._reg_prefix.get(prefix, now), prefix), (self._reg_all, "all sources")]
        for bucket, who in buckets:
            if not bucket.ready(now):
                self.stats["registrations_refused"] += 1
                self._refuse_login(s, "registration_limited", f"too many new nodes from {who}; retry in "
                                   f"{max(1.0, bucket.when_ready(now) - now):.0f} s", now, fx)
                return None
        for bucket, _ in buckets:  # the address search below is work: it spends budget, found or not
            bucket.take(now)
        node_id = self._new_node_id(s.key)
        ipv4 = self._new_ipv4(s.key)
        if node_id is None or ipv4 is None:
            self.stats["logins_refused_pool_full"] += 1
            self._refuse_login(s, "address_pool_full", "no free overlay address for a new node on this server",
                               now, fx)
            return None
        rec = NodeRec(
            node_id=node_id, public_key=s.key, nickname=nickname or f"node-{node_id}",
            ipv4=ipv4, ipv6=self._ipv6_for(ipv4), endpoints=tuple(endpoints), present=False,
            created_at=self._wall(now), last_seen=self._wall(now), last_prefix=prefix,
        )
        self._add_node(rec)
        fx.persist.append(PutNode(rec))
        log.info("registered node %s (%s) %s from %s", node_id, s.key.fingerprint(), ipv4, prefix or "here")
        return rec

    def _ipv6_for(self, ipv4: str) -> str:
        return str(ipaddress.IPv6Address(int(self.ula_prefix.network_address) | int(ipaddress.IPv4Address(ipv4))))

    def _login(self, s: _Session, msg: m.Login, now: float, fx: Effects) -> None:
        endpoints: list[str] = []
        for e in msg.endpoints:
            clean = _clean_endpoint(e)
            if clean is not None and clean not in endpoints:
                endpoints.append(clean)
        if s.remote_ip is not None and msg.listen_port:
            obs = _clean_endpoint(endpoint.text((s.remote_ip, msg.listen_port)))
            if obs is not None and obs not in endpoints:
                endpoints.append(obs)
        endpoints = endpoints[: m.MAX_ENDPOINTS]
        nickname = None
        if msg.nickname is not None:
            try:
                nickname = _clean_label(msg.nickname, "nickname")
            except _Refused:
                nickname = None  # keep the stored one; not worth closing the session
        prefix = self._source_prefix(s.remote_ip)
        rec = self.node_by_key(s.key)
        if rec is None:
            rec = self._register(s, prefix, nickname, endpoints, now, fx)
            if rec is None:
                return
        else:
            new = dataclasses.replace(rec, nickname=nickname or rec.nickname, endpoints=tuple(endpoints),
                                      last_prefix=rec.last_prefix if prefix is None else prefix)
            if new != rec:
                shown = (new.nickname, new.endpoints) != (rec.nickname, rec.endpoints)
                self.nodes[rec.node_id] = rec = new
                fx.persist.append(PutNode(rec))
                if shown:
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
        self._set_present(node_id, True, now, fx)
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

    def _new_password_hash(self, password: str) -> str:
        """The stored form of a new network password: refused if weak, else a hash job first
        (_NeedWork); the request's re-run gets the job's result."""
        if len(password) < C.PASSWORD_MIN_LENGTH:
            raise _Refused("weak_password", f"a network password needs at least {C.PASSWORD_MIN_LENGTH} characters")
        done = self._done
        if done is not None and done.stored is None and isinstance(done.value, str):
            return done.value
        raise _NeedWork(password, salt=self._rng(16))

    def _fail_budgets(self, node_id: str, name_key: str, now: float) -> list[TokenBucket]:
        """The wrong-password budgets a join spends: its node's, its source prefix's, its name's."""
        rt = self._rt_of(node_id)
        if rt.pw_failures is None:
            rt.pw_failures = TokenBucket(*C.PASSWORD_FAIL_NODE, now)
        out = [rt.pw_failures, self._fail_name.get(name_key, now)]
        s = self._req_session
        if s is not None and s.remote_ip is not None:
            prefix = source_prefix(s.remote_ip, v4=C.NODE_SOURCE_PREFIX_V4, v6=C.NODE_SOURCE_PREFIX_V6)
            out.append(self._fail_prefix.get(prefix, now))
        return out

    def _password_matches(self, net: NetworkRec | None, password: str) -> bool:
        """Whether `password` opens `net`; for a network that does not exist, the same work
        against a dummy hash and False. Raises _NeedWork unless the fast path or the finished
        job (for this very stored hash) answers."""
        stored = net.password_hash if net is not None else self._dummy_stored
        done = self._done
        if done is not None and done.stored == stored and isinstance(done.value, bool):
            ok = done.value
        else:
            tag = self._fast_tag(password)  # computed for a missing network too: the same path
            known = self._fast_pw.get(net.network_id) if net is not None else None
            if hmac.compare_digest(known or bytes(len(tag)), tag) and known is not None:
                return True
            raise _NeedWork(password, stored=stored)
        if net is None:
            return False
        if ok:
            self._fast_pw[net.network_id] = self._fast_tag(password)
        return ok

    def _create(self, me: str, msg: m.CreateNetwork, now: float, fx: Effects) -> m.Result:
        name = _clean_label(msg.name, "network name")
        self._check_room(me, None)
        if name.casefold() in self._by_name:
            raise _Refused("name_taken", f"a network named {name!r} exists already")
        if msg.kind == "l2" and not self._rt_of(me).lan:
            raise _Refused("unsupported", "this node's software does not support layer-2 networks; update it")
        password_hash = self._new_password_hash(msg.password)
        nid = _b32(self._rng(5))
        while nid in self.networks:
            nid = _b32(self._rng(5))
        net = NetworkRec(
            network_id=nid, name=name, owner_id=me,
            password_hash=password_hash,
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
        typed = msg.name.strip()
        nid = self._by_name.get(typed.casefold())
        net = self.networks[nid] if nid is not None else None
        mem = self.members[nid].get(me) if nid is not None else None
        if net is not None and mem is not None:  # tells a node only about itself
            if mem.pending:
                raise _Refused("pending_approval", f"your request to join {net.name!r} waits for the owner")
            return m.Result(req_id=msg.req_id, ok=True, network_id=nid, message="already a member")
        budgets = self._fail_budgets(me, typed.casefold(), now)
        empty = [b for b in budgets if not b.ready(now)]
        if empty:  # before the fast path: no oracle past the limit
            wait = max(b.when_ready(now) for b in empty) - now
            raise _Refused("rate_limited", f"too many wrong passwords; try again in {max(wait, 1):.0f} s")
        if not self._password_matches(net, msg.password):  # existing or not, banned or not: the same
            for b in budgets:
                b.take(now)
            raise _Refused("wrong_password", f"wrong password for network {typed!r}, or no such network")
        assert net is not None and nid is not None
        if me in self.bans.get(nid, {}):
            raise _Refused("banned", f"you are banned from {net.name!r}")
        if net.locked:
            raise _Refused("locked", f"{net.name!r} is locked: it accepts no new members")
        if net.kind != "ip" and not self._rt_of(me).lan:
            raise _Refused("unsupported", f"{net.name!r} is a layer-2 network; this node's software does not "
                                          "support them: update it")
        self._check_room(me, nid)
        pending = net.approval == "manual"
        # F5 (bans by source prefix): a new key from where a banned node came from waits for the owner
        note = "banned_prefix" if self._from_banned_prefix(me, nid) else ""
        pending = pending or bool(note)
        mem = MemberRec(nid, me, "member", pending=pending, online=True, joined_at=now + self._wall_offset,
                        note=note)
        self._put_member(mem)
        fx.persist.append(PutMember(mem))
        self._touch_member(me, nid)
        if note:
            self.stats["joins_held_banned_prefix"] += 1
            log.info("node %s: join of %s held for the owner: from the source prefix of a banned node", me, nid)
            return m.Result(req_id=msg.req_id, ok=False, code="pending_approval", network_id=nid,
                            message=f"join request for {net.name!r} recorded; you connect from the address "
                                    "range of a node banned from it, so the owner must approve it")
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
        self._expiry_push(node_id)  # its last network gone: an away node may expire now

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
        for banned in self.bans.pop(nid, {}):
            self._banned_count[banned] -= 1
        for x in former:
            self._expiry_push(x)
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
        net = dataclasses.replace(net, password_hash=self._new_password_hash(msg.password))
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
            mem = dataclasses.replace(mem, pending=False, note="")
            self._put_member(mem)
            fx.persist.append(PutMember(mem))
            self._touch_member(msg.node_id, msg.network_id)
        return m.Result(req_id=msg.req_id, ok=True, network_id=msg.network_id)

    def _ban(self, network_id: str, node_id: str, now: float, fx: Effects) -> None:
        if node_id not in self.bans.setdefault(network_id, {}):
            b = BanRec(network_id, node_id, created_at=now + self._wall_offset,
                       prefix=self.nodes[node_id].last_prefix)
            self.bans[network_id][node_id] = b
            self._banned_count[node_id] += 1
            fx.persist.append(PutBan(b))

    def _from_banned_prefix(self, node_id: str, network_id: str) -> bool:
        """F5: the node's last source prefix is one a node banned from this network came from."""
        prefix = self.nodes[node_id].last_prefix
        return prefix is not None and any(b.prefix == prefix for b in self.bans.get(network_id, {}).values())

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
