"""Traversal glue: candidate translation, and two daemons' traversal over an in-memory
network (direct path found, WireGuard endpoint set; relay through a real RelayEngine when the
direct path is cut; garbage on the data socket counted, never raised)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from shoal.control import messages as M
from shoal.daemon.traversal import Traversal, candidates_of
from shoal.nat.disco import CandidateKind
from shoal.relay.engine import RelayEngine, UdpBinding
from shoal.wireguard.keys import PrivateKey, PublicKey


def peer(key: PublicKey, endpoints: list[str], cands: list[M.Candidate] = (), hard: bool = False) -> M.PeerInfo:
    return M.PeerInfo(node_id="n" + key.to_base64()[:4].lower().replace("+", "a").replace("/", "b"), nickname="x",
                      public_key=bytes(key), ipv4="100.64.0.2", ipv6="fd00::2", endpoints=endpoints,
                      candidates=list(cands), nat_hard=hard)


def test_candidates_of_kinds_and_dedup() -> None:
    k = PrivateKey.generate().public_key()
    p = peer(k, ["192.168.1.5:4000", "203.0.113.7:4000", "bogus", "10.0.0.1:0"],
             [M.Candidate("mapped", "198.51.100.3:5000"), M.Candidate("reflexive", "203.0.113.7:4000"),
              M.Candidate("local", "[fd12::5]:4000")])
    got = candidates_of(p)
    assert got == [
        (CandidateKind.MAPPED, ("198.51.100.3", 5000)),
        (CandidateKind.REFLEXIVE, ("203.0.113.7", 4000)),  # documentation range = the internet
        (CandidateKind.LOCAL, ("fd12::5", 4000)),
        (CandidateKind.LOCAL, ("192.168.1.5", 4000)),
    ]


class FakeDevice:
    def __init__(self) -> None:
        self.endpoints: dict[PublicKey, tuple[str, int]] = {}


class FakePlane:
    """The part of WgInterface traversal uses; datagrams go through `net`."""

    def __init__(self, addr: tuple[str, int], net: "Net") -> None:
        self.addr, self.net = addr, net
        self.side_channel = None
        self.relay_out = None
        self.virtual_endpoints: set[tuple[str, int]] = set()
        self.endpoints: dict[PublicKey, tuple[str, int]] = {}
        self.injected: list[tuple[bytes, tuple[str, int]]] = []
        self.roams: PublicKey | None = None  # the peer a relayed packet comes from (roaming model)
        net.planes[addr] = self

    def send_raw(self, datagrams):  # noqa: ANN001
        for data, dst in datagrams:
            self.net.deliver(data, self.addr, dst)

    def set_endpoint(self, key, ep, now):  # noqa: ANN001
        self.endpoints[key] = ep

    def inject(self, datagrams, now):  # noqa: ANN001
        self.injected += datagrams
        for _, ep in datagrams:  # WireGuard roams the sender onto where its packet came from
            if self.roams is not None:
                self.endpoints[self.roams] = ep


class Net:
    def __init__(self) -> None:
        self.planes: dict[tuple[str, int], FakePlane] = {}
        self.cut: set[frozenset[tuple[str, int]]] = set()
        self.relay: RelayEngine | None = None
        self.relay_addr = ("192.0.2.1", 3480)

    def deliver(self, data: bytes, src, dst) -> None:  # noqa: ANN001
        if frozenset((src, dst)) in self.cut:
            return
        loop = asyncio.get_running_loop()
        if dst == self.relay_addr and self.relay is not None:
            self.relay.receive(data, UdpBinding(*src), loop.time())
            for frame, b in self.relay.take_outbox():
                loop.call_soon(self.deliver, frame, self.relay_addr, (b.ip, b.port))
            return
        plane = self.planes.get(dst)
        if plane is not None and plane.side_channel is not None:
            loop.call_soon(plane.side_channel, [(data, src)], loop.time())


async def wait_for(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.sim
async def test_two_nodes_find_the_direct_path_and_fall_back_to_the_relay() -> None:
    net = Net()
    ka, kb, ks = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    a_addr, b_addr = ("203.0.113.1", 1000), ("203.0.113.2", 2000)
    pa, pb = FakePlane(a_addr, net), FakePlane(b_addr, net)
    net.relay = RelayEngine(ks, lambda s, d: True)
    reported: list[tuple[list[M.Candidate], bool]] = []
    ta = Traversal(ka, pa, on_candidates=lambda c, h: reported.append((c, h)), portmap=False)
    tb = Traversal(kb, pb, on_candidates=lambda c, h: None, portmap=False)
    try:
        ta.start(["203.0.113.1:1000"])
        tb.start(["203.0.113.2:2000"])
        for t in (ta, tb):
            t.set_server("192.0.2.1", ks.public_key(), stun_port=0, relay_port=3480)
        await wait_for(lambda: ta.relay is not None and ta.relay.ready and tb.relay is not None and tb.relay.ready)
        ta.set_peers([peer(kb.public_key(), ["203.0.113.2:2000"])])
        tb.set_peers([peer(ka.public_key(), ["203.0.113.1:1000"])])
        await wait_for(lambda: pa.endpoints.get(kb.public_key()) == b_addr and pb.endpoints.get(ka.public_key()) == a_addr)
        row = ta.path_of(kb.public_key())
        assert row is not None and row["path"] == "direct" and row["endpoint"] == "203.0.113.2:2000"
        # a late packet through the relay (b still thought "relay") must not move a off the direct path
        pa.roams = kb.public_key()
        pb.relay_out([(b"\x02\x00\x00\x00late handshake answer", tb._vep_of(ka.public_key()))])
        await wait_for(lambda: any(d.startswith(b"\x02\x00\x00\x00late") for d, _ in pa.injected))
        assert pa.endpoints[kb.public_key()] == b_addr
        pa.roams = None
        # cut the direct path: both sides fall back to the relay (virtual endpoints)
        net.cut.add(frozenset((a_addr, b_addr)))
        await wait_for(lambda: ta.path_of(kb.public_key())["path"] == "relay", timeout=6.0)
        vep = pa.endpoints[kb.public_key()]
        assert vep in pa.virtual_endpoints and vep[0].startswith("100::")
        # WireGuard packets to the virtual endpoint cross the relay and are injected at b
        await wait_for(lambda: tb.relay is not None and tb.relay.ready)
        pa.relay_out([(b"\x04\x00\x00\x00wireguard ciphertext", vep)])
        await wait_for(lambda: any(d.startswith(b"\x04\x00\x00\x00wireguard") for d, _ in pb.injected))
        # garbage on the data socket is counted and dropped
        pa.side_channel([(b"\x99garbage", ("198.51.100.66", 9)), (b"SHL\xf0\x9f\x90" + bytes(100), ("198.51.100.66", 9))], 0.0)
        assert ta.stats["unknown"] == 1 and ta.codec.stats["unknown-peer"] + ta.codec.stats["forged"] >= 1
        cands, hard = ta.report()
        assert [c.addr for c in cands] == ["203.0.113.1:1000"] and not hard
        ta.set_mapped(("198.51.100.7", 7000))  # a port mapping appears: reported at once
        assert reported[-1][0][-1] == M.Candidate("mapped", "198.51.100.7:7000")
    finally:
        await ta.close()
        await tb.close()


def test_candidates_of_drops_names_non_ascii_ports_and_unusable_addresses() -> None:
    k = PrivateKey.generate().public_key()
    p = peer(k, ["localhost:4000", "1.2.3.4:²", "127.0.0.1:4000", "[::1]:4000", "224.0.0.1:4000",
                 "169.254.1.1:4000", "100.64.0.7:4000", "[100::1]:4000", "203.0.113.7:4000"],
             [M.Candidate("reflexive", "example.com:80"), M.Candidate("local", "198.18.1.2:4000")])
    assert candidates_of(p) == [(CandidateKind.LOCAL, ("198.18.1.2", 4000)),
                                (CandidateKind.REFLEXIVE, ("203.0.113.7", 4000))]


async def test_engines_get_the_observed_ip_and_share_one_spray_limit() -> None:
    net = Net()
    ka, kb, kc = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    ta = Traversal(ka, FakePlane(("203.0.113.1", 1000), net), on_candidates=lambda c, h: None, portmap=False)
    try:
        pb = peer(kb.public_key(), ["203.0.113.2:2000"], hard=True)
        pc = peer(kc.public_key(), ["203.0.113.3:2000"], hard=True)
        ta.set_peers([msgspec.structs.replace(pb, observed_ip="203.0.113.2"), pc])
        eb, ec = ta.engines[kb.public_key()], ta.engines[kc.public_key()]
        assert eb.observed == "203.0.113.2" and ec.observed == ""
        assert eb._limit is ec._limit is ta.spray_limit
        ta.set_peers([msgspec.structs.replace(pb, observed_ip="203.0.113.9")])
        assert eb.observed == "203.0.113.9"  # a new observation alone reaches the engine
    finally:
        await ta.close()


@pytest.mark.sim
async def test_websocket_relay_refusal_is_retried_with_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18: a relay WebSocket that refuses our AUTH (here: not a member yet, as when the
    standalone relay has not read the login) used to leave the node unbound for good; it now
    sends HELLO again, the waits doubling, and is accepted once the relay agrees."""
    from shoal.relay import link as tr
    from shoal.relay.service import RelayService

    monkeypatch.setattr(tr, "RELAY_AUTH_RETRY", 0.2)
    loop = asyncio.get_running_loop()
    asked: list[float] = []

    def may_bind(_key: bytes) -> bool:
        asked.append(loop.time())
        return len(asked) > 3  # refuse three times

    ks, ka = PrivateKey.generate(), PrivateKey.generate()
    service = RelayService(RelayEngine(ks, lambda s, d: True, may_bind=may_bind), "127.0.0.1", 0, udp=False)
    await service.start()
    pa = FakePlane(("203.0.113.1", 1000), Net())
    ta = Traversal(ka, pa, on_candidates=lambda c, h: None, portmap=False)
    try:
        ta.start(["203.0.113.1:1000"])
        ta.set_server("127.0.0.1", ks.public_key(), stun_port=0, relay_port=0,
                      relay_ws_url=f"ws://127.0.0.1:{service.ws_port}/relay")
        await wait_for(lambda: ta.relay is not None and ta.relay.ready, timeout=8.0)
        assert ta.relay_mode == "ws" and service.engine.stats["drop_auth_not_member"] == 3
        assert ta.stats["relay_auth_retry"] == 3
        gaps = [b - a for a, b in zip(asked, asked[1:])]
        assert gaps[0] >= 0.18 and gaps[1] >= 1.8 * gaps[0] * 0.9 and gaps[2] >= 1.8 * gaps[1] * 0.9, gaps
        # accepted: the wait is back to the first one
        assert ta.link._auth_wait == 0.2
    finally:
        await ta.close()
        await service.close()


@pytest.mark.sim
async def test_back_to_udp_only_after_a_proven_udp_handshake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18 F12: on the WebSocket, a frame from the UDP relay's address used to switch the
    node back to UDP whatever it was (anyone can spoof that address: a flapping node); now only
    the re-test's own proven AUTH_OK over UDP does."""
    from shoal.relay import frames as f
    from shoal.relay import link as tr
    from shoal.relay.service import RelayService

    monkeypatch.setattr(tr, "RELAY_UDP_WAIT", 0.2)
    monkeypatch.setattr(tr, "RELAY_UDP_RETEST", 0.3)
    ks, ka = PrivateKey.generate(), PrivateKey.generate()
    net = Net()
    net.relay = RelayEngine(ks, lambda s, d: True)  # the relay's UDP side
    service = RelayService(RelayEngine(ks, lambda s, d: True), "127.0.0.1", 0, udp=False)  # its WebSocket
    await service.start()
    a_addr = ("203.0.113.1", 1000)
    pa = FakePlane(a_addr, net)
    net.cut.add(frozenset((a_addr, net.relay_addr)))  # UDP to the relay is blocked
    ta = Traversal(ka, pa, on_candidates=lambda c, h: None, portmap=False)
    try:
        ta.start(["203.0.113.1:1000"])
        ta.set_server(net.relay_addr[0], ks.public_key(), stun_port=0, relay_port=net.relay_addr[1],
                      relay_ws_url=f"ws://127.0.0.1:{service.ws_port}/relay")
        await wait_for(lambda: ta.relay_mode == "ws" and ta.relay is not None and ta.relay.ready)
        await asyncio.sleep(0.4)  # a re-test HELLO went out over UDP (and was lost)
        spoofed = [f.Challenge(bytes(24)).encode(), f.Pong(1, bytes(16)).encode(),
                   f.AuthOk(bytes(8), 60, bytes(16)).encode(), f.Error(f.ERR_UNAUTHENTICATED, bytes(32)).encode()]
        pa.side_channel([(d, net.relay_addr) for d in spoofed], asyncio.get_running_loop().time())
        await asyncio.sleep(0.1)
        assert ta.relay_mode == "ws" and ta.relay.ready
        net.cut.clear()  # UDP works again: the next re-test's handshake completes
        await wait_for(lambda: ta.relay_mode == "udp" and ta.relay is not None and ta.relay.ready)
        assert net.relay.binding_of(ka.public_key()) == UdpBinding(*a_addr)
    finally:
        await ta.close()
        await service.close()


# ---------------------------------------------------------------------- seams (no OS at all)


class StepSched:
    """A Scheduler whose clock moves only when told; due timers fire on `advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[list] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb, *args):  # noqa: ANN001, ANN201
        entry = [when, cb, args]
        self.timers.append(entry)

        class Handle:
            def cancel(_self) -> None:  # noqa: N805
                if entry in self.timers:
                    self.timers.remove(entry)

        return Handle()

    def advance(self, dt: float) -> None:
        self.now += dt
        while True:
            due = sorted((t for t in self.timers if t[0] <= self.now), key=lambda t: t[0])
            if not due:
                return
            self.timers.remove(due[0])
            due[0][1](*due[0][2])


class FakeBind:
    """An in-memory `shoal.udp.bind.Bind`: what is sent is recorded, `arrive` queues datagrams."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.waiting: list[tuple[bytes, tuple[str, int]]] = []
        self.reader = None
        self.closed = False

    def set_reader(self, callback) -> None:  # noqa: ANN001
        self.reader = callback

    def recv_batch(self, max_datagrams: int = 128):  # noqa: ANN201
        out, self.waiting = self.waiting[:max_datagrams], self.waiting[max_datagrams:]
        return out

    def send_batch(self, datagrams) -> None:  # noqa: ANN001
        self.sent += datagrams

    def close(self) -> None:
        self.closed, self.reader = True, None

    def arrive(self, data: bytes, src: tuple[str, int]) -> None:
        self.waiting.append((data, src))
        assert self.reader is not None
        self.reader()


async def test_birthday_sockets_come_from_the_bind_factory_and_close_after_the_hold() -> None:
    from shoal.constants import BIRTHDAY_HOLD

    sched, binds = StepSched(), []

    def factory(port: int = 0, *, host: str = "::") -> FakeBind:
        binds.append(FakeBind(40000 + len(binds)))
        return binds[-1]

    pa = FakePlane(("203.0.113.1", 1000), Net())
    kb = PrivateKey.generate().public_key()
    ta = Traversal(PrivateKey.generate(), pa, on_candidates=lambda c, h: None, portmap=False,
                   sched=sched, bind_factory=factory)
    try:
        ta._bsend(3, b"probe", ("198.51.100.9", 5000))
        ta._bsend(3, b"again", ("198.51.100.9", 5001))
        ta._bsend(3, b"v6", ("2001:db8::1", 5000))  # birthday sockets are IPv4 only
        assert len(binds) == 1 and binds[0].sent == [(b"probe", ("198.51.100.9", 5000)), (b"again", ("198.51.100.9", 5001))]
        # a path over socket 3: what arrives there from the peer is the engine's, from its virtual endpoint
        ta.set_peers([peer(kb, ["198.51.100.9:5000"])])
        vep = ta._routed_vep(kb, 3, ("198.51.100.9", 5000))
        binds[0].arrive(b"\x04\x00\x00\x00ciphertext", ("198.51.100.9", 5000))
        binds[0].arrive(b"\x04\x00\x00\x00stranger", ("198.51.100.66", 1))
        assert pa.injected == [(b"\x04\x00\x00\x00ciphertext", vep)] and ta.stats["birthday_unknown"] == 1
        pa.relay_out([(b"\x01out", vep)])  # the engine's packets to that endpoint leave from socket 3
        assert binds[0].sent[-1] == (b"\x01out", ("198.51.100.9", 5000))
        ta._bsend(4, b"other", ("198.51.100.9", 6000))
        assert len(binds) == 2
        sched.advance(BIRTHDAY_HOLD + 0.1)  # the unused socket 4 closes on the scheduler's timer
        assert binds[1].closed and not binds[0].closed
    finally:
        await ta.close()
    assert binds[0].closed


class FakeWs:
    """The client connection `ws_connect` yields, joined to a RelayEngine in memory."""

    def __init__(self, engine: RelayEngine, sched: StepSched) -> None:
        from shoal.relay.engine import StreamBinding

        self.engine, self.sched, self.binding = engine, sched, StreamBinding(1)
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()

    async def send(self, data: bytes) -> None:
        self.engine.receive(data, self.binding, self.sched.time())
        for frame, _b in self.engine.take_outbox():
            self.incoming.put_nowait(frame)

    async def recv(self) -> bytes:
        return await self.incoming.get()

    async def close(self) -> None:
        pass

    def __aiter__(self):  # noqa: ANN204
        return self

    async def __anext__(self) -> bytes:
        return await self.recv()


async def test_the_relay_websocket_comes_from_ws_connect() -> None:
    import contextlib

    sched, ks = StepSched(), PrivateKey.generate()
    ws = FakeWs(RelayEngine(ks, lambda s, d: True), sched)
    calls: list[tuple[str, dict]] = []

    @contextlib.asynccontextmanager
    async def connect(url: str, **kw):  # noqa: ANN003, ANN202
        calls.append((url, kw))
        yield ws

    pa = FakePlane(("203.0.113.1", 1000), Net())
    ta = Traversal(PrivateKey.generate(), pa, on_candidates=lambda c, h: None, portmap=False,
                   sched=sched, ws_connect=connect)
    try:
        ta.set_server("192.0.2.1", ks.public_key(), stun_port=0, relay_port=0, relay_ws_url="ws://192.0.2.1:8080/relay")
        await wait_for(lambda: ta.relay is not None and ta.relay.ready)
        assert ta.relay_mode == "ws" and calls[0][0] == "ws://192.0.2.1:8080/relay"
        assert calls[0][1]["max_size"] == 65535 and calls[0][1]["compression"] is None
        assert ta.info()["relay"]["ready"] and sched.timers  # the keepalive timer is on the scheduler
    finally:
        await ta.close()
