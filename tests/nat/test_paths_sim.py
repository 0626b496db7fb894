"""Connectivity matrix in simulation: disco hole punching between every pair of NAT types.

Two nodes, each behind one of the NAT types below, run `shoal.nat.paths.PathEngine` over the
fake network (`shoal.testing.fakenet`, RFC 4787 routers). A simulated server answers a
minimal STUN-like probe on the data socket (so the reflexive address is the data socket's
own NAT mapping), hands each side the other's candidates (LOCAL = its interface address,
REFLEXIVE = what the server saw) and one start time; a simulated relay (an in-memory channel
with 20 ms latency standing for the node's TCP/WebSocket relay connection, so it works when
UDP is blocked) carries relayed disco messages. Every cable has 5 ms latency.

Side types:
  public           host on the internet, no NAT
  full-cone        EI mapping, EI filtering
  port-restricted  EI mapping, APD filtering (Linux MASQUERADE, "easy NAT")
  symmetric        APD mapping, APD filtering, random port per new mapping ("hard NAT")
  double-nat       port-restricted home router behind a port-restricted carrier NAT
  udp-blocked      the router's uplink drops all UDP (only the relay connection works)
  same-LAN         both nodes behind one port-restricted router, with or without hairpinning

EXPECTED TABLE (justification):
  - udp-blocked on either side -> relay: no UDP datagram ever leaves or enters that side.
  - symmetric x symmetric -> relay: each side's mapping toward the other is a fresh random
    port; a probe must hit the one port the other NAT opened toward exactly the prober's own
    unknown random port: no bounded spray finds that.
  - symmetric x (port-restricted | double-nat) -> direct, by birthday probing: the easy
    side's filter only admits hard-side ports it has sent to, and the hard side's mapping
    toward it is a random port of 64 512 (the fake NAT allocates at random). The hard side
    opens 256 mappings toward the easy side from birthday sockets, the easy side sprays 1024
    random ports: a hit is ~98% likely per attempt (the test's seeds hit; the attempt repeats
    every PATH_SPRAY_BACKOFF s otherwise). The path then runs over the hard side's birthday
    socket that was hit.
  - symmetric x (public | full-cone) -> direct: the hard side's ping reaches the other side
    unfiltered; that side learns the hard side's real port from the ping and answers there.
  - every other pair -> direct: EI mappings make the reflexive addresses valid for the peer;
    simultaneous pings open both filters.
  - same-LAN (with or without hairpin) -> direct over the LAN addresses (LOCAL candidates,
    preferred on RTT ties; with hairpin the reflexive path also works but the LAN wins).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from shoal.endpoint import Endpoint
from shoal.nat.disco import CandidateKind, DiscoCodec, is_disco
from shoal.nat.paths import PathEngine, PathKind, Transmit
from shoal.testing.fakenet import FakeNetwork, Host, LinkProfile, NatBehavior, NatRouter
from shoal.wireguard.keys import PrivateKey

pytestmark = pytest.mark.sim

SERVER = ("203.0.113.1", 3478)
PORT = 41641
RELAY_LATENCY = 0.020
LINK = 0.005
START = 1.0
TYPES = ["public", "full-cone", "port-restricted", "symmetric", "double-nat", "udp-blocked"]
HARD = {"symmetric"}


def expected(a: str, b: str) -> str:
    if a.startswith("same-lan") or b.startswith("same-lan"):
        return "direct"
    if "udp-blocked" in (a, b):
        return "relay"
    if a in HARD and b in HARD:
        return "relay"
    return "direct"


def link() -> LinkProfile:
    return LinkProfile(latency=LINK)


class Node:
    def __init__(self, world: World, name: str, host: Host, hard: bool) -> None:
        self.world, self.name, self.host, self.hard = world, name, host, hard
        rng = random.Random(name)
        self.key = PrivateKey.from_seed(name.encode())
        self.codec = DiscoCodec(self.key, random_bytes=rng.randbytes)
        self.sock = host.socket(PORT)
        self.sock.on_datagram = self.recv
        self.bsocks: dict[int, object] = {}  # birthday sockets, opened on demand
        self.reflexive: Endpoint | None = None
        self.engine: PathEngine | None = None
        self.peer: Node | None = None

    def now(self) -> float:
        return self.world.net.clock.now()

    def stun(self) -> None:
        self.sock.sendto(b"STUN?", SERVER)

    def bsock(self, k: int):  # noqa: ANN201
        s = self.bsocks.get(k)
        if s is None:
            s = self.bsocks[k] = self.host.socket(0)
            s.on_datagram = lambda data, src: self.recv(data, src, k)
        return s

    def recv(self, data: bytes, src: Endpoint, sock: int = 0) -> None:
        if src == SERVER and data.startswith(b"STUN!"):
            ip, port = data[5:].decode().rsplit(":", 1)
            self.reflexive = (ip, int(port))
            return
        if not is_disco(data) or self.engine is None:
            return
        opened = self.codec.open(data, self.now())
        if opened is not None:
            self.emit(self.engine.handle_message(opened[1], src, self.now(), sock=sock))

    def recv_relay(self, data: bytes) -> None:
        opened = self.codec.open(data, self.now())
        if opened is not None and self.engine is not None:
            self.emit(self.engine.handle_message(opened[1], ("0.0.0.0", 1), self.now(), via_relay=True))

    def emit(self, out: list[Transmit]) -> None:
        for t in out:
            if t.via_relay:
                assert self.peer is not None
                self.world.relayed += 1
                self.world.net.scheduler.call_later(RELAY_LATENCY, self.peer.recv_relay, t.data)
            else:
                assert t.dst is not None
                (self.bsock(t.sock) if t.sock else self.sock).sendto(t.data, t.dst)

    def observed(self) -> str:
        """What the server would hand out as PeerInfo.observed_ip: its control connection
        leaves through the same NAT as the data socket, so it comes from the reflexive IP."""
        return self.reflexive[0] if self.reflexive is not None else ""

    def candidates(self) -> list[tuple[CandidateKind, Endpoint]]:
        local = (self.host.address, PORT)
        out = [(CandidateKind.LOCAL, local)]
        if self.reflexive is not None and self.reflexive != local:
            out.append((CandidateKind.REFLEXIVE, self.reflexive))
        return out


class World:
    def __init__(self, seed: int = 7) -> None:
        self.net = FakeNetwork(seed=seed)
        self.relayed = 0
        server = self.net.host("server", SERVER[0], link=link())
        sock = server.socket(SERVER[1])
        sock.on_datagram = lambda d, src: sock.sendto(b"STUN!" + f"{src[0]}:{src[1]}".encode(), src)
        self.routers: dict[str, NatRouter] = {}

    def side(self, kind: str, idx: int) -> Node:
        net, name = self.net, f"n{idx}"
        if kind == "public":
            return Node(self, name, net.host(name, f"192.0.2.{10 + idx}", link=link()), False)
        if kind == "double-nat":
            carrier = net.router(f"cgnat{idx}", public=f"203.0.113.{30 + idx}", lan=f"198.19.{idx}.0/24", link=link())
            home = net.router(
                f"r{idx}", public=f"198.19.{idx}.2", lan=f"198.18.{idx}.0/24", upstream=carrier.lan, link=link()
            )
            self.routers[name] = home
            return Node(self, name, net.host(name, f"198.18.{idx}.10", segment=home.lan, link=link()), False)
        behavior = {"udp-blocked": "port-restricted-cone", "port-restricted": "port-restricted-cone"}.get(kind, kind)
        r = net.router(f"r{idx}", public=f"203.0.113.{20 + idx}", lan=f"198.18.{idx}.0/24", behavior=behavior, link=link())
        self.routers[name] = r
        if kind == "udp-blocked":
            r.outside.link.up = False
        return Node(self, name, net.host(name, f"198.18.{idx}.10", segment=r.lan, link=link()), kind in HARD)

    def same_lan(self, hairpin: bool) -> tuple[Node, Node]:
        r = self.net.router(
            "r0",
            public="203.0.113.20",
            lan="198.18.0.0/24",
            behavior=NatBehavior.preset("port-restricted-cone", hairpinning=hairpin),
            link=link(),
        )
        a = Node(self, "n0", self.net.host("n0", "198.18.0.10", segment=r.lan, link=link()), False)
        b = Node(self, "n1", self.net.host("n1", "198.18.0.11", segment=r.lan, link=link()), False)
        return a, b

    def connect(self, a: Node, b: Node) -> None:
        """STUN, then the server hands out candidates and the start moment START."""
        a.peer, b.peer = b, a
        a.codec.add_peer(bytes(b.codec.public_key))
        b.codec.add_peer(bytes(a.codec.public_key))
        a.stun()
        b.stun()
        self.net.run_until_idle(max_time=0.5)
        for me, other in ((a, b), (b, a)):
            me.engine = PathEngine(me.codec, other.codec.public_key, local_hard=me.hard, peer_hard=other.hard,
                                   rng=random.Random(me.name + "spray"))
            me.engine.set_remote_candidates(other.candidates(), self.net.clock.now(), relay=True,
                                            observed=other.observed())
            me.engine.set_local_candidates(me.candidates(), self.net.clock.now())
            me.engine.start(START)
            self.net.scheduler.add_engine(me.engine, on_output=me.emit, name=me.name)

    def first_time(self, nodes: tuple[Node, Node], pred: Callable[[Node], bool], timeout: float) -> float | None:
        ok = self.net.scheduler.run_until_true(lambda: all(pred(n) for n in nodes), timeout=timeout)
        return self.net.clock.now() if ok else None


def kind_of(n: Node) -> str | None:
    assert n.engine is not None
    p = n.engine.path
    return None if p is None else p.kind.value


PAIRS = [(a, b) for i, a in enumerate(TYPES) for b in TYPES[i:]] + [("same-lan-hairpin", ""), ("same-lan-no-hairpin", "")]


def run_pair(a_kind: str, b_kind: str) -> tuple[str, float, str]:
    w = World()
    if a_kind.startswith("same-lan"):
        a, b = w.same_lan(hairpin=a_kind == "same-lan-hairpin")
    else:
        a, b = w.side(a_kind, 0), w.side(b_kind, 1)
    w.connect(a, b)
    want = expected(a_kind, b_kind)
    t = w.first_time((a, b), lambda n: kind_of(n) == want, timeout=20.0)
    w.net.run_for(10.0)  # settled: the path stays
    ka, kb = kind_of(a), kind_of(b)
    assert a.engine is not None and b.engine is not None
    detail = ""
    if ka == "direct" and a.engine.path is not None and b.engine.path is not None:
        detail = f"{a.engine.path.addr[0]} / {b.engine.path.addr[0]}"  # type: ignore[index]
    assert t is not None, (a_kind, b_kind, want, ka, kb)
    assert ka == kb == want, (a_kind, b_kind, want, ka, kb)
    return want, t - START, detail


RESULTS: dict[tuple[str, str], tuple[str, float, str]] = {}


@pytest.mark.parametrize(("a_kind", "b_kind"), PAIRS)
def test_connectivity_matrix(a_kind: str, b_kind: str) -> None:
    RESULTS[(a_kind, b_kind)] = run_pair(a_kind, b_kind)


def test_print_matrix_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [(a, b, *run_pair(a, b)) for a, b in PAIRS]
    with capsys.disabled():
        print("\n| side A | side B | path | time to first path | endpoints (A's view / B's view) |")
        print("|---|---|---|---|---|")
        for a, b, kind, t, detail in rows:
            print(f"| {a} | {b or a} | {kind} | {t * 1000:.0f} ms | {detail} |")
    assert all(r[2] in ("direct", "relay") for r in rows)


def test_relayed_pair_upgrades_when_udp_opens() -> None:
    w = World()
    a, b = w.side("udp-blocked", 0), w.side("port-restricted", 1)
    w.connect(a, b)
    w.net.run_until_idle(max_time=20.0)
    assert kind_of(a) == kind_of(b) == "relay"
    w.routers["n0"].outside.link.up = True  # the firewall lets UDP out again
    opened = w.net.clock.now()
    a.stun()  # a's next STUN round finds its reflexive address; the server hands it to b
    w.net.scheduler.run_until_true(lambda: a.reflexive is not None, timeout=1.0)
    assert b.engine is not None
    b.emit(b.engine.set_remote_candidates(a.candidates(), w.net.clock.now(), relay=True, observed=a.observed()))
    t = w.first_time((a, b), lambda n: kind_of(n) == "direct", timeout=10.0)
    assert t is not None and t - opened <= 10.0
    print(f"\nrelay -> direct {t - opened:.2f} s after UDP opened")


def test_both_hard_stays_relayed_without_spraying() -> None:
    w = World()
    a, b = w.side("symmetric", 0), w.side("symmetric", 1)
    w.connect(a, b)
    w.net.run_until_idle(max_time=20.0)
    assert kind_of(a) == kind_of(b) == "relay"
    for n in (a, b):  # both hard: nobody sprays, nobody opens birthday sockets
        assert n.engine is not None and "spray-out" not in n.engine.stats and "birthday-started" not in n.engine.stats


def test_birthday_probing_goes_direct_over_a_birthday_socket() -> None:
    w = World()
    a, b = w.side("port-restricted", 0), w.side("symmetric", 1)
    w.connect(a, b)
    t = w.first_time((a, b), lambda n: kind_of(n) == "direct", timeout=10.0)
    assert t is not None
    assert a.engine is not None and b.engine is not None
    assert a.engine.path is not None and a.engine.path.sock == 0  # the easy side uses its data socket
    assert b.engine.path is not None and b.engine.path.sock > 0  # the hard side: the birthday socket hit
    assert b.engine.stats.get("birthday-started") == 1 and 0 < a.engine.stats.get("spray-out", 0) <= 1024
    print(f"\nsymmetric x port-restricted: direct {t - START:.2f} s after the start, "
          f"{a.engine.stats['spray-out']} spray probes, hard side on birthday socket {b.engine.path.sock}")


def test_direct_path_dies_falls_back_to_relay_then_recovers() -> None:
    w = World()
    a, b = w.side("port-restricted", 0), w.side("port-restricted", 1)
    w.connect(a, b)
    assert w.first_time((a, b), lambda n: kind_of(n) == "direct", timeout=10.0) is not None
    w.net.run_for(5.0)
    w.routers["n0"].outside.link.up = False
    cut = w.net.clock.now()
    t = w.first_time((a, b), lambda n: kind_of(n) == "relay", timeout=5.0)
    assert t is not None and t - cut <= 2 * 1.0 + 0.5
    assert a.engine is not None and any(e.kind == "lost" for e in a.engine.events)
    w.routers["n0"].outside.link.up = True
    back = w.net.clock.now()
    t2 = w.first_time((a, b), lambda n: kind_of(n) == "direct", timeout=10.0)
    assert t2 is not None and t2 - back <= 10.0
    print(f"\nfallback to relay {t - cut:.2f} s after the cut; direct again {t2 - back:.2f} s after repair")


def test_roaming_restores_path_within_3s() -> None:
    w = World()
    a, b = w.side("port-restricted", 0), w.side("public", 1)
    w.connect(a, b)
    assert w.first_time((a, b), lambda n: kind_of(n) == "direct", timeout=10.0) is not None
    w.net.run_for(3.3)
    w.routers["n0"].set_public_address("203.0.113.99")  # the ISP renumbers a's router
    moved = w.net.clock.now()

    def restored(n: Node) -> bool:
        assert n.engine is not None
        p = n.engine.path
        if p is None or p.kind is not PathKind.DIRECT:
            return False
        return n is a or p.addr[0] == "203.0.113.99"  # type: ignore[index]

    t = w.first_time((a, b), restored, timeout=3.0)
    assert t is not None, (a.engine and a.engine.path, b.engine and b.engine.path)
    print(f"\nroaming: path restored {t - moved:.2f} s after the address change")
