"""Test harness around `shoal.server.core.Core`: named nodes, mirrors of what each was sent."""

from __future__ import annotations

import copy
import ipaddress
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.control import messages as m
from shoal.server.core import Close, Core, Effects, MemberRec, NetworkRec, NodeRec, PasswordJob, Send
from shoal.server.passwords import PasswordHasher
from shoal.testing.viewmirror import ViewMirror
from shoal.wireguard.keys import PrivateKey, PublicKey

ULA = ipaddress.IPv6Network("fd12:3456:789a::/48")
FAST_HASHER = PasswordHasher(log2_n=4)
PW = "pw-correct-horse"  # long enough for PASSWORD_MIN_LENGTH


def run_jobs(core: Core, fx: Effects, now: float) -> Effects:
    """Run the PasswordJobs of `fx` at once (as the glue's pool would) until none is left;
    everything `fx` and the completions produced, in order."""
    out = Effects(out=list(fx.out), persist=list(fx.persist))
    todo = list(fx.jobs)
    while todo:
        job = todo.pop(0)
        more = core.password_done(job.job_id, job.run(), now)
        out.out += more.out
        out.persist += more.persist
        todo += more.jobs
    return out


def key_of(name: str) -> PublicKey:
    return PrivateKey.from_seed(name.encode()).public_key()


@dataclass
class Client:
    name: str
    key: PublicKey
    session: int | None = None
    node_id: str | None = None
    mirror: ViewMirror = field(default_factory=ViewMirror)
    inbox: list[m.ServerMessage] = field(default_factory=list)
    closed: list[tuple[int, str]] = field(default_factory=list)


class Harness:
    def __init__(self, core: Core | None = None, now: float = 1000.0, seed: int = 7) -> None:
        self.now = now
        self.rng = random.Random(seed)
        self.core = core or Core(ULA, now=now, rng=self.rng.randbytes, hasher=FAST_HASHER)
        self.clients: dict[str, Client] = {}
        self._sid = itertools.count(1)
        self._by_session: dict[int, Client] = {}
        self.persisted: list[object] = []
        self.last: Effects = Effects()
        self._req = itertools.count(1)
        self.run_jobs = True  # False: PasswordJobs wait in `self.jobs` for the test to finish them
        self.jobs: list[PasswordJob] = []

    # ------------------------------------------------------------ plumbing
    def _apply(self, fx: Effects) -> Effects:
        if self.run_jobs:
            fx = run_jobs(self.core, fx, self.now)
        else:
            self.jobs += fx.jobs
        self.last = fx
        self.persisted += fx.persist
        for o in fx.out:
            c = self._by_session.get(o.session)
            if c is None:
                continue
            if isinstance(o, Send):
                assert o.node_key == c.key
                c.inbox.append(o.message)
                if isinstance(o.message, (m.FullView, m.ViewUpdate)):
                    assert c.mirror.apply(o.message), f"{c.name}: version gap {o.message}"
            elif isinstance(o, Close):
                c.closed.append((o.code, o.reason))
                if c.session == o.session:
                    c.session = None
        return fx

    def client(self, name: str) -> Client:
        if name not in self.clients:
            self.clients[name] = Client(name, key_of(name))
        return self.clients[name]

    def connect(self, name: str, remote_ip: str | None = None) -> Client:
        c = self.client(name)
        c.session = next(self._sid)
        self._by_session[c.session] = c
        self._apply(self.core.connect(c.session, c.key, self.now, remote_ip))
        return c

    def login(self, name: str, remote_ip: str | None = None, **kw: object) -> str:
        c = self.connect(name, remote_ip)
        self.send(name, m.Login(**kw))  # type: ignore[arg-type]
        node_id = self.core.session_node(c.session)  # type: ignore[arg-type]
        assert node_id is not None
        c.node_id = node_id
        return node_id

    def send(self, name: str, msg: m.ClientMessage) -> Effects:
        c = self.clients[name]
        assert c.session is not None, f"{name} has no session"
        return self._apply(self.core.receive(c.session, msg, self.now))

    def req(self, who: str, cls: type, /, **kw: object) -> m.Result:
        fx = self.send(who, cls(req_id=next(self._req), **kw))
        results = [o.message for o in fx.sends() if isinstance(o.message, m.Result)]
        assert len(results) == 1
        return results[0]

    def drop(self, name: str) -> Effects:
        c = self.clients[name]
        sid, c.session = c.session, None
        assert sid is not None
        return self._apply(self.core.disconnect(sid, self.now))

    def advance(self, dt: float) -> Effects:
        self.now += dt
        fx = Effects()
        d = self.core.next_deadline()
        if d is not None and d <= self.now:
            fx = self._apply(self.core.handle_timer(self.now))
        return fx

    # ------------------------------------------------------------ checks
    def nid(self, name: str) -> str:
        node_id = self.clients[name].node_id
        assert node_id is not None
        return node_id

    def finish(self, job: PasswordJob, value: str | bool | None = None) -> Effects:
        """Hand one waiting job's result back (its real one unless `value` is given)."""
        self.jobs.remove(job)
        return self._apply(self.core.password_done(job.job_id, job.run() if value is None else value, self.now))

    def create(self, owner: str, name: str, password: str = PW, approval: str = "auto") -> str:
        r = self.req(owner, m.CreateNetwork, name=name, password=password, approval=approval)  # noqa
        assert r.ok, r
        assert r.network_id is not None
        return r.network_id

    def join(self, who: str, net: str, password: str = PW) -> m.Result:
        return self.req(who, m.JoinNetwork, name=net, password=password)

    def peers(self, name: str) -> set[str]:
        """Node ids this client currently holds as peers (from what it was sent)."""
        return set(self.clients[name].mirror.peers)

    def names_of(self, node_ids: set[str]) -> set[str]:
        back = {c.node_id: n for n, c in self.clients.items()}
        return {back[x] for x in node_ids}

    def assert_consistent(self) -> None:
        """Every logged-in client's mirror equals the view the core would send now."""
        for c in self.clients.values():
            if c.session is None or c.node_id is None:
                continue
            fv = self.core.full_view(c.node_id)
            assert c.mirror.version == fv.version, c.name
            want = (fv.node, sorted(fv.networks, key=lambda n: n.network_id), sorted(fv.peers, key=lambda p: p.node_id))
            assert c.mirror.as_full_view() == want, c.name

    def state(self) -> tuple[object, ...]:
        """A deep copy of the stored state, to check that a refusal changed nothing."""
        core = self.core
        return copy.deepcopy((core.nodes, core.networks, core.members, core.bans))


# ------------------------------------------------------------------ a big network (issue 18 F9)

BIG_NET = "bignet01"


def big_network(n: int, now: float = 1000.0) -> tuple[list[NodeRec], NetworkRec, list[MemberRec]]:
    """Records of one network: "alice" (its owner, stored as away) and `n` members stored as
    present, each with the longest host endpoint list a Login may carry."""
    alice = NodeRec("alice0", key_of("alice"), "alice", "100.64.1.1", str(ULA[0x64400101]))
    nodes = [alice]
    for i in range(n):
        v4 = ipaddress.IPv4Address(int(ipaddress.IPv4Address("100.65.0.1")) + i)
        eps = tuple(f"[2001:db8:{i:x}:ffff:ffff:ffff:ffff:{j:x}]:65535" for j in range(m.MAX_ENDPOINTS))
        nodes.append(NodeRec(f"m{i:05d}", key_of(f"m{i}"), f"member-{i:05d}-with-a-long-nickname", str(v4),
                             str(ULA[int(v4)]), endpoints=eps, present=True, created_at=now))
    net = NetworkRec(BIG_NET, "big", alice.node_id, "unused-hash", created_at=now)
    members = [MemberRec(BIG_NET, alice.node_id, "owner")]
    members += [MemberRec(BIG_NET, x.node_id, "member") for x in nodes[1:]]
    return nodes, net, members


def give_full_candidates(core: Core, node_ids: Iterable[str]) -> None:
    """What a Candidates message with a full list from each node's session would leave in the
    core (its runtime state; the stored nodes have no sessions here)."""
    for nid in node_ids:
        rt = core._rt_of(nid)
        rt.candidates = tuple(m.Candidate("mapped", f"[2001:db8:ffff:{k:x}:ffff:ffff:ffff:ffff]:65535")
                              for k in range(m.MAX_CANDIDATES))
        rt.nat_hard = True
