"""The core's one shared state (`State`): the stored records (NodeRec, NetworkRec, MemberRec,
BanRec), their in-memory indexes, the runtime state (sessions, presence, view versions,
password jobs, budgets) and the read-only queries over them (presence, online, peers, the
relay oracle). Every other module of `shoal.server.core` is rules over this state.
"""

from __future__ import annotations

import base64
import collections
import ipaddress
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal import constants as C
from shoal.control import messages as m
from shoal.control.limits import BucketTable, TokenBucket
from shoal.relay import authz
from shoal.server.core.addressing import IPV4_POOL
from shoal.server.passwords import PasswordHasher
from shoal.wireguard.keys import PublicKey

__all__ = [
    "State", "Session", "Runtime", "Dirty", "Done", "Waiting", "SessionId", "PRESENCE_GRACE", "NodeRec",
    "NetworkRec", "MemberRec", "BanRec",
]


# ------------------------------------------------------------------ stored records

PRESENCE_GRACE = 30.0  # seconds a dropped (not logged out) node stays online for its peers
SessionId = int


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


# ------------------------------------------------------------------ runtime state

@dataclass(slots=True)
class Session:
    session: SessionId
    key: PublicKey
    remote_ip: str | None
    node_id: str | None = None  # set by Login
    check_peer: bool = False  # Login listed "check_peer": may get CheckPeer
    dead: bool = False  # closed by the core (logout, protocol error, replaced)


@dataclass(slots=True)
class Runtime:
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
class Dirty:
    nets: set[str] = field(default_factory=set)
    peers: set[str] = field(default_factory=set)
    self_: bool = False


@dataclass(frozen=True, slots=True)
class Done:
    """What a finished job gives the re-run request: the input it worked on and its result."""

    stored: str | None  # verify: the stored form checked against; hash: None
    value: str | bool


@dataclass(slots=True)
class Waiting:
    session: SessionId
    msg: m.ClientMessage
    stored: str | None


class State:
    """The one shared state of the core: stored records and their indexes, runtime state
    (sessions, presence, versions, job table, budgets) and the queries over them. The
    modules of this package add the rules as classes over it; `Core` is all of them."""

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
        self._sessions: dict[SessionId, Session] = {}
        self._rt: dict[str, Runtime] = {}
        self._present: set[str] = set()
        self._grace_heap: list[tuple[float, str]] = []
        self._fast_pw: dict[str, bytes] = {}
        self._dirty: dict[str, Dirty] = {}
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
        self._jobs: dict[int, Waiting] = {}
        self._job_ids = itertools.count(1)
        self._done: Done | None = None  # the finished job a re-run request is given
        self._req_session: Session | None = None  # the session whose request is being carried out
        self._fail_prefix = BucketTable(*C.PASSWORD_FAIL_PREFIX, C.PASSWORD_FAIL_TABLE_MAX)
        self._fail_name = BucketTable(*C.PASSWORD_FAIL_NETWORK, C.PASSWORD_FAIL_TABLE_MAX)
        h = self._hasher
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        # what a join to a network that does not exist is checked against: same work, never matches
        self._dummy_stored = f"scrypt${h.log2_n}${h.r}${h.p}${b64(rng(16))}${b64(rng(32))}"

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

    def _rt_of(self, node_id: str) -> Runtime:
        rt = self._rt.get(node_id)
        if rt is None:
            rt = self._rt[node_id] = Runtime()
        return rt

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

    def may_relay(self, src_key: bytes, dst_key: bytes) -> bool:
        """The relay's membership oracle (`shoal.relay.authz.may_relay`, over node ids)."""
        try:
            a = self._by_key.get(PublicKey(bytes(src_key)))
            b = self._by_key.get(PublicKey(bytes(dst_key)))
        except (TypeError, ValueError):
            return False
        return a is not None and b is not None and self.is_peer(a, b)
