"""The real server on loopback: WebSockets + Noise, a few clients, restarts, bad input."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import websockets

from shoal.control import messages as m
from shoal.control.noise import ClientHandshake
from shoal.control.transport import ConnectError, ServerKeyMismatch, connect, control_url, fetch_server_key
from shoal.server import app as server_app
from shoal.server.app import Running, serve
from shoal.server.core import Close, PutMember, PutNetwork, PutNode
from shoal.server.passwords import PasswordHasher
from shoal.server.store import Store
from shoal.testing.controlclient import ControlClient
from shoal.testing.tls import self_signed
from shoal.wireguard.keys import PrivateKey

from .helpers import FAST_HASHER, big_network, give_full_candidates

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def running(data_dir: Path, grace: float = 30.0, tls: tuple[Path, Path] | None = None,
                  hasher: PasswordHasher = FAST_HASHER) -> AsyncIterator[Running]:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[Running] = loop.create_future()
    task = asyncio.create_task(serve(data_dir, "127.0.0.1", 0, ready=ready.set_result, grace=grace, hasher=hasher,
                                     tls=tls))
    done, _ = await asyncio.wait({task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # serve failed: raise its error
    r = ready.result()
    try:
        yield r
    finally:
        r.uvicorn.should_exit = True
        await asyncio.wait_for(task, 20)


def url(r: Running) -> str:
    return f"ws://127.0.0.1:{r.port}/control"


def key(name: str) -> PrivateKey:
    return PrivateKey.from_seed(name.encode())


async def login(r: Running, name: str, **kw: object) -> ControlClient:
    return await ControlClient.login(url(r), key(name), r.server_key.public_key(), **kw)


async def test_login_networks_and_presence_fan_out(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        assert await fetch_server_key(f"http://127.0.0.1:{r.port}") == r.server_key.public_key()
        alice, bob, carol = [await login(r, n, nickname=n) for n in ("alice", "bob", "carol")]
        assert alice.mirror.node is not None and alice.mirror.node.nickname == "alice"
        res = await alice.request(m.CreateNetwork, name="lan", password="pw-lan-123")
        assert res.ok and res.network_id
        net = res.network_id
        assert (await bob.request(m.JoinNetwork, name="lan", password="nope")).code == "wrong_password"
        assert (await bob.request(m.JoinNetwork, name="lan", password="pw-lan-123")).ok
        assert (await carol.request(m.JoinNetwork, name="lan", password="pw-lan-123")).ok
        for c in (alice, bob, carol):
            others = {x.node_id for x in (alice, bob, carol)} - {c.node_id}
            await c.wait_for(lambda c=c, o=others: set(c.mirror.peers) == o)
        # go offline: every member hears it; back online: peers again
        assert (await bob.request(m.SetOnline, network_id=net, online=False)).ok
        for c in (alice, carol):
            await c.wait_for(lambda c=c: bob.node_id not in c.mirror.peers
                             and c.mirror.member_online(net, bob.node_id) is False)
        assert (await bob.request(m.SetOnline, network_id=net, online=True)).ok
        await alice.wait_for(lambda: bob.node_id in alice.mirror.peers)
        # a refused request from the owner side: not owner
        assert (await bob.request(m.Evict, network_id=net, node_id=carol.node_id)).code == "not_owner"
        # logout takes effect at once for the others
        await carol.conn.send(m.Logout(req_id=99))
        await alice.wait_for(lambda: carol.node_id not in alice.mirror.peers)
        closed = await carol.wait_closed()
        assert closed is not None and getattr(closed, "code", None) == 1000
        for c in (alice, bob):
            await c.close()


async def test_tls_key_fetch_and_control_over_https_and_wss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, tkey = self_signed(tmp_path / "tls", "127.0.0.1")
    async with running(tmp_path / "data", tls=(cert, tkey)) as r:
        base = f"https://127.0.0.1:{r.port}"
        # a client that does not trust the certificate gets nothing (verification is on)
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "nothing.pem"))
        with pytest.raises(ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await fetch_server_key(base)
        # plain http at the TLS port: refused, nothing learnt
        with pytest.raises(ConnectError):
            await fetch_server_key(f"http://127.0.0.1:{r.port}")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert await fetch_server_key(base) == r.server_key.public_key()
        alice = await ControlClient.login(control_url(base), key("alice"), r.server_key.public_key(), nickname="alice")
        assert control_url(base).startswith("wss://")
        res = await alice.request(m.CreateNetwork, name="tls", password="pw-tls-net")
        assert res.ok, res
        await alice.close()


async def test_tls_pair_that_does_not_match_is_refused_before_listening(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path / "a", "127.0.0.1")
    _, other = self_signed(tmp_path / "b", "127.0.0.1")
    with pytest.raises(OSError, match="not a usable certificate and key"):
        await serve(tmp_path / "data", "127.0.0.1", 0, tls=(cert, other))
    with pytest.raises(OSError, match="no such file"):
        await serve(tmp_path / "data", "127.0.0.1", 0, tls=(tmp_path / "missing.crt", other))
    assert not (tmp_path / "data").exists()  # refused before the data dir was touched


async def test_wrong_server_key_is_refused_loudly(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        impostor = PrivateKey.from_seed(b"someone else").public_key()
        with pytest.raises(ServerKeyMismatch) as err:
            await connect(url(r), key("alice"), impostor, timeout=5)
        assert impostor.fingerprint() in str(err.value)
        assert r.server_key.public_key().fingerprint() in str(err.value)  # the server says who it is
        assert r.control.core.nodes == {}  # nothing registered


async def test_replayed_handshake_without_private_key_gets_nothing(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        alice = await login(r, "alice")
        await alice.request(m.CreateNetwork, name="lan", password="pw-lan-123")
        # The attacker has alice's public key and a copy of a message1 she sent, not her private key.
        m1 = ClientHandshake(key("alice"), r.server_key.public_key()).message1()
        async with websockets.connect(url(r)) as ws:
            await ws.send(m1)
            m2 = await ws.recv()
            assert isinstance(m2, bytes)  # message2 carries nothing it could read
            await ws.send(b"\x00" * 64)  # it cannot seal a frame under alice's session keys
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    extra = await ws.recv()
                    pytest.fail(f"the impostor got data: {extra!r}")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
        # alice's real session is untouched
        assert r.control.core.is_present(alice.node_id)
        assert await alice.ping(7) < 5
        assert r.control.stats["sessions"] == 1
        await alice.close()


async def test_bad_input_closes_only_that_session(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with running(tmp_path) as r:
        alice = await login(r, "alice")
        # a request before Login: Error, then 4002, with a logged reason
        early = await connect(url(r), key("mallory"), r.server_key.public_key())
        await early.send(m.CreateNetwork(req_id=1, name="x", password=""))
        err = await early.recv()
        assert isinstance(err, m.Error) and err.code == "protocol_error" and "before Login" in err.message
        with pytest.raises(Exception) as exc_info:
            await early.recv()
        assert getattr(exc_info.value, "code", None) == 4002
        # a frame that is not a sealed message on a logged-in session
        bob = await login(r, "bob")
        await bob.conn._ws.send(b"not a noise frame")
        closed = await bob.wait_closed()
        assert closed is not None and getattr(closed, "code", None) == 4002
        # an oversized frame
        carol = await login(r, "carol")
        await carol.conn._ws.send(b"\x00" * (server_app.WS_MAX_SIZE + 1))
        closed = await carol.wait_closed()
        assert closed is not None and getattr(closed, "code", None) in (1009, 4002)
        assert await alice.ping(1) < 5  # alice never noticed
        assert r.control.core.networks == {}
        assert "protocol error" in caplog.text and "before Login" in caplog.text
        await alice.close()


async def test_restart_keeps_state_and_presence(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        alice, bob = await login(r, "alice"), await login(r, "bob")
        net = (await alice.request(m.CreateNetwork, name="lan", password="pw-lan-123")).network_id
        assert (await bob.request(m.JoinNetwork, name="lan", password="pw-lan-123")).ok
        assert (await bob.request(m.SetNickname, nickname="Bob")).ok
        await alice.wait_for(lambda: bob.node_id in alice.mirror.peers)
        ids = (alice.node_id, bob.node_id)
        addrs = (alice.mirror.node, bob.mirror.node)
    # the server is gone; both clients see their sessions end
    await alice.wait_closed(), await bob.wait_closed()
    async with running(tmp_path) as r2:
        alice2 = await login(r2, "alice")
        assert (alice2.node_id, alice2.mirror.node) == (ids[0], addrs[0])
        # bob has not come back yet, but the start grace keeps him online: no tunnel torn down
        assert ids[1] in alice2.mirror.peers and alice2.mirror.peers[ids[1]].nickname == "Bob"
        assert alice2.mirror.member_online(net or "", ids[1]) is True
        bob2 = await login(r2, "bob")
        assert bob2.mirror.node == addrs[1] and set(bob2.mirror.peers) == {ids[0]}
        assert (await bob2.request(m.JoinNetwork, name="lan", password="wrong")).ok  # already a member
        await alice2.close(), await bob2.close()


async def test_node_that_does_not_read_is_disconnected(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bounded send queue: the glue closes a session whose queue is full (no endless buffer)."""
    monkeypatch.setattr(server_app, "SEND_QUEUE_LIMIT", 4)
    closes: list[tuple[int, str]] = []

    class StuckConn:
        async def send(self, msg: object) -> None:
            await asyncio.sleep(3600)

        async def close(self, code: int = 1000, reason: str = "") -> None:
            closes.append((code, reason))

    srv = server_app.ControlServer(core=None, store=None, server_key=key("srv"))  # type: ignore[arg-type]
    s = server_app._Session(1, StuckConn(), "test")  # type: ignore[arg-type]
    srv._sessions[1] = s
    s.sender = asyncio.create_task(srv._sender(s))
    from shoal.server.core import Send

    for i in range(10):
        srv._dispatch([Send(1, key("x").public_key(), m.Pong(nonce=i))])
    await asyncio.sleep(0.05)
    assert closes == [(server_app.CLOSE_TOO_SLOW, "too slow: outgoing queue full")]
    assert s.closing and s.sender.cancelled() and srv.stats["too_slow"] == 1
    srv._dispatch([Close(1, 1000, "later")])  # nothing more is queued for a closing session
    assert s.queue.qsize() == 4


async def test_silent_pinging_node_is_dropped_and_its_peers_told_to_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that promised pings (check_peer) and goes silent (blackholed path) loses its
    session after SILENCE_TIMEOUT; its peers get CheckPeer; a node that pings stays."""
    monkeypatch.setattr(m, "SILENCE_TIMEOUT", 0.6)
    feats = [m.FEATURE_CHECK_PEER]
    async with running(tmp_path) as r:
        alice = await login(r, "alice", features=feats)
        bob = await login(r, "bob", features=feats)
        net = (await alice.request(m.CreateNetwork, name="lan", password="pw-lan-123")).network_id
        assert (await bob.request(m.JoinNetwork, name="lan", password="pw-lan-123")).ok
        await alice.wait_for(lambda: bob.node_id in alice.mirror.peers)
        for i in range(8):  # alice pings every 0.2 s for 1.6 s; bob says nothing
            await alice.ping(i)
            await asyncio.sleep(0.2)
        await alice.wait_for(lambda: m.CheckPeer(node_id=bob.node_id, active=True) in alice.checks, timeout=3)
        assert alice.closed is None and await bob.wait_closed(3) is not None
        assert bob.node_id in alice.mirror.peers and net  # in grace: nobody tears down


# ------------------------------------------------------------------ issue 18 F7: before the handshake


async def test_unauthenticated_sessions_are_capped_per_address_and_refused_before_x25519(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.constants import CONTROL_PREAUTH_PER_ADDR
    from shoal.control import noise
    from shoal.control.transport import ServerBusy

    async with running(tmp_path) as r:
        idle = [await websockets.connect(url(r)) for _ in range(CONTROL_PREAUTH_PER_ADDR)]  # never send message1
        await asyncio.sleep(0.2)
        m1 = ClientHandshake(key("alice"), r.server_key.public_key()).message1()  # (client-side X25519)
        calls = []
        real_dh = noise.DH
        monkeypatch.setattr(noise, "DH", lambda *a: calls.append(1) or real_dh(*a))
        async with websockets.connect(url(r)) as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.send(m1)
                await asyncio.wait_for(ws.recv(), 2)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert calls == []  # refused before any X25519
        monkeypatch.setattr(noise, "DH", real_dh)
        with pytest.raises(ServerBusy):
            await connect(url(r), key("alice"), r.server_key.public_key(), timeout=5)
        for ws in idle:
            await ws.close()
        await asyncio.sleep(0.2)
        alice = await login(r, "alice")  # the slots came back
        assert await alice.ping(1) < 5
        assert r.control.stats["refused"] >= 2
        await alice.close()


async def test_idle_handshake_is_dropped_within_the_handshake_timeout(tmp_path: Path) -> None:
    from shoal.constants import CONTROL_HANDSHAKE_TIMEOUT

    async with running(tmp_path) as r:
        loop = asyncio.get_running_loop()
        async with websockets.connect(url(r)) as ws:
            t0 = loop.time()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), CONTROL_HANDSHAKE_TIMEOUT + 3)
            took = loop.time() - t0
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
        assert took < CONTROL_HANDSHAKE_TIMEOUT + 1 and CONTROL_HANDSHAKE_TIMEOUT <= 5


async def test_replayed_message1_is_refused_before_x25519(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal.control import noise

    async with running(tmp_path) as r:
        hs = ClientHandshake(key("alice"), r.server_key.public_key())
        m1 = hs.message1()
        async with websockets.connect(url(r)) as real:  # alice's real session, by hand
            await real.send(m1)
            session, _ = hs.read_message2(await real.recv())
            await real.send(session.encrypt(m.encode(m.Login())))
            first = m.decode_server(session.decrypt(await real.recv()))
            assert isinstance(first, m.LoginOk)
            calls = []
            real_dh = noise.DH
            monkeypatch.setattr(noise, "DH", lambda *a: calls.append(1) or real_dh(*a))
            async with websockets.connect(url(r)) as ws:  # the attacker replays her message1
                await ws.send(m1)
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    extra = await asyncio.wait_for(ws.recv(), 2)
                    pytest.fail(f"the replay got an answer: {extra!r}")
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4002
            assert "replayed" in closed.value.rcvd.reason
            assert calls == []  # no X25519 for a replay
            assert r.control.replays.replays == 1
            assert r.control.stats["sessions"] == 1


# ------------------------------------------------------------------ issue 18 F8: per-session limits


async def _flood_setup(r: Running) -> tuple[ControlClient, ControlClient, ControlClient, str]:
    alice, bob, mallory = [await login(r, n, nickname=n) for n in ("alice", "bob", "mallory")]
    net = (await alice.request(m.CreateNetwork, name="lan", password="pw-lan-123")).network_id
    for c in (bob, mallory):
        assert (await c.request(m.JoinNetwork, name="lan", password="pw-lan-123")).ok
    for c in (alice, bob):
        await c.wait_for(lambda c=c: mallory.node_id in c.mirror.peers)
    return alice, bob, mallory, net


async def test_candidates_flood_is_coalesced_and_the_flooder_closed_not_its_peers(tmp_path: Path) -> None:
    async with running(tmp_path) as r:
        alice, bob, mallory, _net = await _flood_setup(r)
        updates = []
        bob.on_view = lambda c, now: updates.append(now)
        for i in range(3000):
            try:
                await mallory.conn.send(m.Candidates(candidates=[m.Candidate(kind="reflexive",
                                                                             addr=f"198.51.100.9:{1024 + i}")]))
            except Exception:  # noqa: BLE001 - closed by the server for flooding
                break
        closed = await mallory.wait_closed(10)
        assert closed is not None  # 4029 after the Error (or the socket torn down mid-flood)
        assert any(e.code == "rate_limited" for e in mallory.errors)
        assert r.control.stats["rate_limited"] == 1
        assert await bob.ping(1) < 1 and await alice.ping(2) < 1
        assert bob.closed is None and alice.closed is None
        assert len(updates) <= 10, f"bob got {len(updates)} view updates from one flooder"
        await bob.close()
        await alice.close()


async def test_candidates_burst_latest_wins_and_requests_over_the_limit_are_refused(tmp_path: Path) -> None:
    from shoal.constants import CONTROL_RATE_FANOUT

    async with running(tmp_path) as r:
        alice, bob, mallory, _net = await _flood_setup(r)
        updates = []
        bob.on_view = lambda c, now: updates.append(now)
        for i in range(10):  # a NAT switch: a burst, well inside the limits
            await mallory.conn.send(m.Candidates(candidates=[m.Candidate(kind="reflexive",
                                                                         addr=f"198.51.100.9:{2000 + i}")]))
        want = [m.Candidate(kind="reflexive", addr="198.51.100.9:2009")]
        await bob.wait_for(lambda: bob.mirror.peers[mallory.node_id].candidates == want, timeout=5)
        assert len(updates) <= 3  # the first at once, the latest when due
        results = [await mallory.request(m.SetNickname, nickname=f"m{i}") for i in range(CONTROL_RATE_FANOUT[0] + 3)]
        assert [x.ok for x in results[:CONTROL_RATE_FANOUT[0]]] == [True] * CONTROL_RATE_FANOUT[0]
        refused = [x for x in results if not x.ok]
        assert refused and {x.code for x in refused} == {"rate_limited"}  # (a token may refill meanwhile)
        assert mallory.closed is None  # a few over the limit: refused, not closed
        for c in (alice, bob, mallory):
            await c.close()


async def test_a_failing_sender_closes_its_session_with_a_logged_reason(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(tmp_path) as r:
        alice = await login(r, "alice")
        s = next(iter(r.control._sessions.values()))

        async def broken(msg: object) -> None:
            raise ValueError("FullView encodes to 5000000 bytes, over 4194304")

        s.conn.send = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="shoal.server"):
            await alice.conn.send(m.Ping(nonce=5))
            closed = await alice.wait_closed(5)
        assert closed is not None and getattr(closed, "code", None) == 1011
        assert "sending Pong failed" in caplog.text
        assert r.control.stats["sender_failures"] == 1


async def test_a_view_of_3000_peers_with_full_candidate_lists_reaches_the_node_in_parts(tmp_path: Path) -> None:
    """Issue 18 F9 through the real transport: about 6 MB of view, over the 4 MiB frame limit."""
    nodes, net, members = big_network(3000)
    store = await Store.open(tmp_path)
    await store.apply([*(PutNode(n) for n in nodes), PutNetwork(net), *(PutMember(x) for x in members)])
    await store.close()
    async with running(tmp_path) as r:
        give_full_candidates(r.control.core, [n.node_id for n in nodes[1:]])
        alice = await login(r, "alice", timeout=30.0)
        assert len(alice.mirror.peers) == 3000 and alice.mirror.full_views == 1 and not alice.mirror.staged
        want = r.control.core.full_view(alice.node_id)
        assert alice.mirror.as_full_view() == (want.node, want.networks, want.peers)
        assert sum(len(m.encode(p)) for p in want.peers) > m.MAX_SERVER_FRAME
        assert alice.closed is None and r.control.stats["sender_failures"] == 0
        assert await alice.ping(1) < 5
        await alice.close()


# ------------------------------------------------------------------ issue 18 F3: scrypt off the loop


class SlowHasher(PasswordHasher):
    """scrypt that takes `delay` seconds of wall time (sleeping, as scrypt releases the GIL)."""

    def __init__(self, delay: float) -> None:
        super().__init__(log2_n=4)
        self.delay = delay

    def hash(self, password: str, salt: bytes) -> str:
        time.sleep(self.delay)
        return super().hash(password, salt)


async def test_scrypt_never_runs_on_the_event_loop(tmp_path: Path) -> None:
    """A slow hash for one session does not delay another session's ping."""
    async with running(tmp_path, hasher=SlowHasher(1.5)) as r:
        alice, bob = await login(r, "alice"), await login(r, "bob")
        t0 = time.monotonic()
        create = asyncio.create_task(alice.request(m.CreateNetwork, name="lan", password="pw-lan-123"))
        await asyncio.sleep(0.1)  # the hash is running now
        rtts = [await bob.ping(i) for i in range(5)]
        assert max(rtts) < 0.3, rtts
        assert time.monotonic() - t0 < 1.4  # bob got all five answers while the hash still ran
        assert (await create).ok
        assert time.monotonic() - t0 >= 1.5
        await alice.close()
        await bob.close()


async def test_a_full_password_pool_answers_busy_at_once(tmp_path: Path) -> None:
    async with running(tmp_path, hasher=SlowHasher(1.0)) as r:
        r.control.password_pending = 1
        alice = await login(r, "alice")
        t0 = time.monotonic()
        results = await asyncio.gather(*(alice.request(m.CreateNetwork, name=f"net{i}", password="pw-lan-123")
                                         for i in range(3)))
        assert sorted(x.code for x in results) == ["", "busy", "busy"]
        busy = [x for x in results if x.code == "busy"]
        assert all("busy" in x.message and not x.ok for x in busy)
        assert len(r.control.core.networks) == 1 and r.control.stats["password_busy"] == 2
        assert time.monotonic() - t0 < 1.8
        assert await alice.ping(1) < 0.3 and alice.closed is None
        await alice.close()


async def test_forwarded_headers_do_not_choose_the_source_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Admission and the per-prefix limits key on the source address: a client on the server
    host cannot pick another one with X-Forwarded-For (uvicorn would trust it from 127.0.0.1)."""
    seen: list[str | None] = []
    handle = server_app.ControlServer.handle

    async def spy(self, ws, remote_ip):  # noqa: ANN001, ANN202
        seen.append(remote_ip)
        return await handle(self, ws, remote_ip)

    monkeypatch.setattr(server_app.ControlServer, "handle", spy)
    async with running(tmp_path) as r:
        async with websockets.connect(url(r), additional_headers={"X-Forwarded-For": "203.0.113.9",
                                                                  "X-Real-IP": "203.0.113.9"}) as ws:
            await ws.close()
        alice = await login(r, "alice")
        await alice.close()
    assert seen and all(ip == "127.0.0.1" for ip in seen), seen
