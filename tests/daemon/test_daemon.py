"""The daemon against an in-memory data plane and a scripted control server, through its real API socket."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shoal.control import messages as M
from shoal.control import transport
from shoal.daemon import identity
from shoal.daemon.daemon import Daemon, DaemonEnv, Options
from shoal.daemon.localapi import ApiClient, ApiError
from shoal.testing.plane import MemoryPlane
from shoal.wireguard.keys import PrivateKey

SERVER_KEY = PrivateKey.from_seed(b"server")
OTHER_KEY = PrivateKey.from_seed(b"mitm")
PEER_KEYS = [PrivateKey.from_seed(bytes([i])) for i in range(4)]
SELF = M.SelfInfo(node_id="me1", nickname="me", ipv4="100.64.0.1", ipv6="fd5a::1")


def peer(i: int) -> M.PeerInfo:
    return M.PeerInfo(node_id=f"p{i}", nickname=f"peer{i}", public_key=bytes(PEER_KEYS[i].public_key()),
                      ipv4=f"100.64.0.{10 + i}", ipv6=f"fd5a::{10 + i:x}", endpoints=[f"203.0.113.{10 + i}:51820"])


def network(nid: str, members: list[str]) -> M.NetworkInfo:
    return M.NetworkInfo(network_id=nid, name=f"net-{nid}", owner_id="me1", kind="ip", locked=False, approval="auto",
                         members=[M.MemberInfo(node_id=m, nickname=m, role="owner" if m == "me1" else "member", online=True)
                                  for m in members])


class FakeConn:
    def __init__(self, server: "FakeServer") -> None:
        self.server = server
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        self.sent: list[object] = []
        self.closed = False

    async def send(self, msg) -> None:  # noqa: ANN001
        if self.closed:
            raise transport.ConnectionClosed(None, "closed")
        self.sent.append(msg)
        await self.server.on_message(self, msg)

    async def recv(self):  # noqa: ANN201
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = True

    def push(self, *msgs: object) -> None:
        for m in msgs:
            self.inbox.put_nowait(m)

    def drop(self) -> None:
        self.closed = True
        self.inbox.put_nowait(transport.ConnectionClosed(None, "connection lost"))


class FakeServer:
    """Scripted: answers Login with LoginOk + the current view; requests with `results`."""

    def __init__(self) -> None:
        self.key = SERVER_KEY
        self.version = 1
        self.networks = [network("aa", ["me1", "p0", "p1"])]
        self.peers = [peer(0), peer(1)]
        self.conns: list[FakeConn] = []
        self.logins: list[M.Login] = []
        self.results: dict[type, M.Result] = {}
        self.after_result: list[M.ViewUpdate] = []
        self.reachable = True

    def full_view(self) -> M.FullView:
        return M.FullView(version=self.version, node=SELF, networks=self.networks, peers=self.peers)

    async def connect(self, url: str, node_key: PrivateKey, server_public, *, timeout: float = 10):  # noqa: ANN001
        if not self.reachable:
            raise transport.ConnectError(f"cannot reach the control server at {url}")
        if server_public != self.key.public_key():
            raise transport.ServerKeyMismatch(url, server_public, None)
        conn = FakeConn(self)
        self.conns.append(conn)
        return conn

    async def fetch_key(self, url: str):  # noqa: ANN201
        return self.key.public_key()

    async def on_message(self, conn: FakeConn, msg) -> None:  # noqa: ANN001
        if isinstance(msg, M.Login):
            self.logins.append(msg)
            conn.push(M.LoginOk(node=SELF, server_time=0.0), self.full_view())
        elif isinstance(msg, M.ResyncRequest):
            conn.push(self.full_view())
        elif hasattr(msg, "req_id"):
            result = self.results.get(type(msg), M.Result(req_id=0, ok=True))
            conn.push(M.Result(req_id=msg.req_id, ok=result.ok, code=result.code, message=result.message,
                               network_id=result.network_id))
            conn.push(*self.after_result)
            self.after_result = []


class Harness:
    def __init__(self, tmp: Path, server: FakeServer, sock: Path | None = None) -> None:
        self.server = server
        self.sock = sock or tmp / "run" / "shoald.sock"
        self.opts = Options(state_dir=tmp / "state", run_dir=tmp / "run", socket_path=self.sock,
                            endpoints=["203.0.113.1:41641"], lan=False, traversal=False)
        self.daemon = Daemon(self.opts, DaemonEnv(connect=server.connect, fetch_server_key=server.fetch_key,
                                                  make_plane=MemoryPlane, pinger=FakePinger()))
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Harness":
        self.task = asyncio.create_task(self.daemon.run(self.stop))
        for _ in range(200):
            if self.sock.exists():
                break
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)

    async def call(self, method: str, path: str, body: dict | None = None) -> dict:
        return await asyncio.to_thread(ApiClient(self.sock, timeout=10).call, method, path, body)

    @property
    def plane(self) -> MemoryPlane:
        return self.daemon.plane  # type: ignore[return-value]

    def engine_peers(self) -> set:
        return set(self.plane.device.peers)


class FakePinger:
    async def ping(self, address: str, timeout: float = 1.0) -> float | None:
        return 0.0015 if address.startswith("100.64.0.1") else None

    def close(self) -> None:
        pass


async def until(pred, timeout: float = 3.0) -> None:  # noqa: ANN001
    for _ in range(int(timeout / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


async def test_login_tofu_pins_key_and_brings_up_the_view(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        st = await h.call("GET", "/v1/status")
        assert st["connection"]["state"] == "logged-out" and st["node"] is None
        r = await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        assert r["trusted_on_first_use"] is True
        assert r["fingerprint"] == SERVER_KEY.public_key().fingerprint()
        assert identity.load_pin(h.opts.state_dir).public_key == SERVER_KEY.public_key()
        login = server.logins[0]
        assert login.listen_port == 41641 and login.endpoints == ["203.0.113.1:41641"] and login.have_version is None
        assert h.engine_peers() == {PEER_KEYS[0].public_key(), PEER_KEYS[1].public_key()}
        assert h.plane.addresses == [ipaddress.ip_interface("100.64.0.1/10"), ipaddress.ip_interface("fd5a::1/48")]
        p0 = h.plane.device.peers[PEER_KEYS[0].public_key()]
        assert p0.endpoint == ("203.0.113.10", 51820)
        # plus the link-local its LAN interface derives from its IPv4 (docs/lan.md); a Shoal peer
        assert [str(n) for n in h.plane.device.allowed_ips(p0)] == ["100.64.0.10/32", "fd5a::a/128",
                                                                     "fe80::53:64ff:fe40:a/128"]
        assert p0.shoal
        st = await h.call("GET", "/v1/status")
        assert st["connection"]["state"] == "connected" and st["view_version"] == 1
        assert [p["nickname"] for p in st["peers"]] == ["peer0", "peer1"]
        assert st["networks"][0]["name"] == "net-aa" and st["networks"][0]["role"] == "owner"


async def test_first_login_to_a_server_with_another_key_pins_nothing(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080",
                                               "server_key": OTHER_KEY.public_key().to_base64()})
        assert e.value.code == "server_key_mismatch" and "not the server you trusted" in e.value.message
        assert identity.load_pin(h.opts.state_dir) is None and h.daemon.pin is None
        assert h.engine_peers() == set()


async def test_a_later_other_key_is_refused_loudly_and_changes_nothing(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "http://192.0.2.1:8080"})
        peers = h.engine_peers()
        server.key = OTHER_KEY  # the "server" now presents another key (MITM)
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/login", {"server": "http://192.0.2.1:8080"})
        assert e.value.code == "server_key_mismatch" and "REFUSED" in e.value.message
        assert identity.load_pin(h.opts.state_dir).public_key == SERVER_KEY.public_key()
        # and on reconnect the daemon refuses it too, keeping every tunnel
        server.conns[-1].drop()
        await until(lambda: "server key mismatch" in h.daemon.last_error)
        assert h.engine_peers() == peers


async def test_updates_apply_gaps_resync_and_replays_change_nothing(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        conn = server.conns[-1]
        conn.push(M.ViewUpdate(prev_version=1, version=2, peers_upsert=[peer(2)], peers_removed=["p0"]))
        await until(lambda: h.daemon.view.version == 2)
        assert h.engine_peers() == {PEER_KEYS[1].public_key(), PEER_KEYS[2].public_key()}
        calls = h.plane.set_peers_calls
        conn.push(M.ViewUpdate(prev_version=1, version=2, peers_upsert=[peer(2)], peers_removed=["p0"]))  # replay
        conn.push(M.ViewUpdate(prev_version=5, version=6, peers_removed=["p1"]))  # a gap
        await until(lambda: any(isinstance(m, M.ResyncRequest) for m in conn.sent))
        assert next(m for m in conn.sent if isinstance(m, M.ResyncRequest)).have_version == 2
        await until(lambda: h.daemon.view.version == 1)  # the FullView answer is authoritative
        assert h.engine_peers() == {PEER_KEYS[0].public_key(), PEER_KEYS[1].public_key()}
        assert calls >= 1


async def test_disconnect_keeps_tunnels_and_reconnect_sends_have_version(tmp_path, server, monkeypatch):
    monkeypatch.setattr("shoal.daemon.backoff.BASE", 0.05)
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        server.conns[-1].push(M.ViewUpdate(prev_version=1, version=2, peers_upsert=[peer(2)]))
        await until(lambda: h.daemon.view.version == 2)
        kept = {k: p for k, p in h.plane.device.peers.items()}
        server.reachable = False
        server.version = 2
        server.peers = [peer(0), peer(1), peer(2)]
        server.conns[-1].drop()
        await until(lambda: h.daemon.state == "reconnecting")
        await asyncio.sleep(0.2)
        assert h.plane.device.peers == kept  # same Peer objects: sessions untouched
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/networks/create", {"name": "x", "password": "p"})
        assert e.value.code == "not_connected"
        server.reachable = True
        await until(lambda: h.daemon.state == "connected", timeout=20)
        assert server.logins[-1].have_version == 2
        assert all(h.plane.device.peers[k] is p for k, p in kept.items())


async def test_requests_are_correlated_and_refusals_are_clear(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        server.results[M.CreateNetwork] = M.Result(req_id=0, ok=True, network_id="bb")
        server.after_result = [M.ViewUpdate(prev_version=1, version=2, networks_upsert=[network("bb", ["me1"])])]
        r = await h.call("POST", "/v1/networks/create", {"name": "net-bb", "password": "pw", "approval": "manual"})
        assert r["network_id"] == "bb"
        sent = [m for m in server.conns[-1].sent if isinstance(m, M.CreateNetwork)][0]
        assert (sent.name, sent.password, sent.approval) == ("net-bb", "pw", "manual")
        server.results[M.JoinNetwork] = M.Result(req_id=0, ok=False, code="wrong_password", message="wrong password for net-cc")
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/networks/join", {"name": "net-cc", "password": "nope"})
        assert (e.value.code, e.value.message) == ("wrong_password", "wrong password for net-cc")
        assert set(h.daemon.view.networks) == {"aa", "bb"}
        sent_before = len(server.conns[-1].sent)
        for path, body in (("/v1/networks/create", {"name": "net-dd"}), ("/v1/networks/join", {"name": "net-cc"}),
                           ("/v1/networks/join", {"name": "net-cc", "password": ""}),
                           ("/v1/networks/password", {"network": "net-bb", "password": ""})):
            with pytest.raises(ApiError) as e:  # no password: refused here, "" is never sent (issue 18 F4)
                await h.call("POST", path, body)
            assert (e.value.status, e.value.code) == (400, "invalid") and "password" in e.value.message
        assert len(server.conns[-1].sent) == sent_before
        # names resolve to ids; members by nickname
        server.results[M.Evict] = M.Result(req_id=0, ok=True)
        server.after_result = [M.ViewUpdate(prev_version=2, version=3, networks_upsert=[network("aa", ["me1", "p1"])],
                                            peers_removed=["p0"])]
        r = await h.call("POST", "/v1/networks/evict", {"network": "net-aa", "member": "p0", "ban": True})
        ev = [m for m in server.conns[-1].sent if isinstance(m, M.Evict)][0]
        assert (ev.network_id, ev.node_id, ev.ban) == ("aa", "p0", True)
        assert PEER_KEYS[0].public_key() not in h.engine_peers()
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/networks/leave", {"network": "no-such"})
        assert e.value.code == "no_such_network"


async def test_ping_and_peer_lookup(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        r = await h.call("POST", "/v1/ping", {"peer": "peer0", "count": 2, "timeout": 0.1})
        assert r["received"] == 2 and r["rtt_ms"] == [1.5, 1.5] and r["endpoint"] == "203.0.113.10:51820"
        st = await h.call("GET", "/v1/status")
        assert next(p for p in st["peers"] if p["nickname"] == "peer0")["rtt_ms"] == 1.5
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/ping", {"peer": "ghost"})
        assert e.value.code == "no_such_peer"


async def test_bad_api_input_gets_json_errors(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/networks/create", {"name": 5})
        assert e.value.status == 400
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/networks/create", {"name": "x", "password": "pw-lan-123"})
        assert e.value.code == "not_logged_in"
        with pytest.raises(ApiError) as e:
            await h.call("GET", "/v1/nope")
        assert e.value.status == 404
        with pytest.raises(ApiError) as e:
            await h.call("GET", "/v1/login")
        assert e.value.status == 405
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/login", {"server": "ftp://x"})
        assert e.value.status == 400

        def raw(data: bytes) -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(h.sock))
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                return s.recv(65536)

        reply = await asyncio.to_thread(raw, b"POST /v1/login HTTP/1.1\r\nContent-Length: 5\r\n\r\n{nope")
        assert reply.startswith(b"HTTP/1.1 400") and json.loads(reply.split(b"\r\n\r\n", 1)[1])["ok"] is False
        reply = await asyncio.to_thread(raw, b"GARBAGE\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 400")
        assert stat.S_IMODE(h.sock.stat().st_mode) == 0o660


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root and a system python")
async def test_other_users_get_403(tmp_path, server):
    open_dir = Path(tempfile.mkdtemp(prefix="shoal-api-test-"))
    os.chmod(open_dir, 0o755)
    try:
        await _other_user(tmp_path, server, open_dir / "shoald.sock")
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


async def _other_user(tmp_path: Path, server: FakeServer, sock: Path) -> None:
    async with Harness(tmp_path, server, sock) as h:
        os.chmod(h.sock, 0o666)  # let the file open; SO_PEERCRED must still refuse
        code = (
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
            "s.sendall(b'GET /v1/status HTTP/1.1\\r\\n\\r\\n'); print(s.recv(4096).decode())"
        )
        p = await asyncio.to_thread(subprocess.run, ["/usr/bin/python3", "-c", code, str(h.sock)],
                                    capture_output=True, text=True, user=65534, group=65534, timeout=20)
        assert p.stdout.startswith("HTTP/1.1 403"), p.stderr
        assert "permission denied" in p.stdout


async def test_restart_brings_the_stored_view_back_before_the_server_answers(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
    server.reachable = False  # the daemon restarts while the server is away
    async with Harness(tmp_path, server) as h2:
        assert h2.engine_peers() == {PEER_KEYS[0].public_key(), PEER_KEYS[1].public_key()}
        assert h2.plane.addresses == [ipaddress.ip_interface("100.64.0.1/10"), ipaddress.ip_interface("fd5a::1/48")]
        st = await h2.call("GET", "/v1/status")
        assert st["view_version"] == 1 and st["connection"]["state"] in ("connecting", "reconnecting")


async def test_logout_forgets_server_view_and_tunnels(tmp_path, server):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        r = await h.call("POST", "/v1/logout")
        assert r["server"] == "http://192.0.2.1:8080"
        assert any(isinstance(m, M.Logout) for m in server.conns[-1].sent)
        assert h.engine_peers() == set() and h.plane.addresses == []
        assert identity.load_pin(h.opts.state_dir) is None and identity.load_view(h.opts.state_dir, h.daemon.key) is None
        st = await h.call("GET", "/v1/status")
        assert st["connection"]["state"] == "logged-out" and st["node"] is None
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/logout")
        assert e.value.code == "not_logged_in"


async def test_nickname_option_names_a_new_node_only(tmp_path, server, monkeypatch):
    monkeypatch.setattr("shoal.daemon.backoff.BASE", 0.05)
    h = Harness(tmp_path, server)
    h.opts.nickname = "ann"
    async with h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        server.conns[-1].drop()
        await until(lambda: len(server.logins) == 2, timeout=10)
    assert [login.nickname for login in server.logins] == ["ann", None]  # set-nick survives reconnects


# ------------------------------------------------------------------ server away: liveness, checks, stored view


class ScriptedPinger:
    """Answers echo requests for the addresses in `alive`; counts what was asked."""

    def __init__(self, alive: set[str]) -> None:
        self.alive = alive
        self.asked: list[str] = []

    async def ping(self, address: str, timeout: float = 1.0) -> float | None:
        self.asked.append(address)
        if address in self.alive:
            return 0.001
        await asyncio.sleep(min(timeout, 0.05))
        return None

    def close(self) -> None:
        pass


def _peer_row(st: dict, node_id: str) -> dict:
    return next(p for p in st["peers"] if p["node_id"] == node_id)


async def test_losing_the_server_probes_every_tunnel_marks_the_dead_one_down_and_keeps_it(
        tmp_path, server, monkeypatch):
    monkeypatch.setattr("shoal.daemon.backoff.BASE", 5.0)  # stay disconnected during the test
    monkeypatch.setattr("shoal.daemon.liveness.DOWN_AFTER", 0.6)
    monkeypatch.setattr("shoal.daemon.liveness.SUSPECT_AFTER", 0.3)
    monkeypatch.setattr("shoal.daemon.liveness.PROBE_INTERVAL", 0.1)
    monkeypatch.setattr("shoal.daemon.livecheck.LIVENESS_TICK", 0.05)
    async with Harness(tmp_path, server) as h:
        pinger = ScriptedPinger({"100.64.0.10"})
        h.daemon.env.pinger = pinger
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        await asyncio.sleep(0.3)
        assert pinger.asked == []  # connected: no probes
        kept = dict(h.plane.device.peers)
        server.reachable = False
        server.conns[-1].drop()
        await until(lambda: h.daemon.state == "reconnecting")
        await until(lambda: h.daemon.liveness.state(PEER_KEYS[1].public_key()) == "down")
        st = await h.call("GET", "/v1/status")
        assert st["connection"]["state"] == "reconnecting" and st["connection"]["checking_tunnels"] is True
        assert 0 < st["connection"]["next_try_in_s"] <= 5.0
        assert _peer_row(st, "p0")["liveness"] == "up" and _peer_row(st, "p0")["last_seen_s_ago"] < 0.5
        assert _peer_row(st, "p1")["liveness"] == "down" and _peer_row(st, "p1")["in_engine"]
        assert h.plane.device.peers == kept  # nothing torn down, not even the dead one
        n = pinger.asked.count("100.64.0.11")
        await asyncio.sleep(0.3)
        assert pinger.asked.count("100.64.0.11") > n  # the dead one is still retried
        # it answers again: up
        pinger.alive.add("100.64.0.11")
        await until(lambda: h.daemon.liveness.state(PEER_KEYS[1].public_key()) == "up")
        # the quiet, answering peer is probed; a peer with traffic needs no probes (rx grows)
        assert pinger.asked.count("100.64.0.10") >= 2


async def test_check_peer_makes_the_daemon_verify_and_report(tmp_path, server, monkeypatch):
    monkeypatch.setattr("shoal.daemon.liveness.DOWN_AFTER", 0.6)
    monkeypatch.setattr("shoal.daemon.liveness.SUSPECT_AFTER", 0.3)
    monkeypatch.setattr("shoal.daemon.liveness.PROBE_INTERVAL", 0.1)
    monkeypatch.setattr("shoal.daemon.livecheck.LIVENESS_TICK", 0.05)
    monkeypatch.setattr("shoal.daemon.livecheck.REPORT_INTERVAL", 0.2)
    orig = server.on_message

    async def with_features(conn, msg):  # noqa: ANN001, ANN202
        if isinstance(msg, M.Login):
            server.logins.append(msg)
            conn.push(M.LoginOk(node=SELF, server_time=0.0, features=[M.FEATURE_CHECK_PEER]), server.full_view())
        else:
            await orig(conn, msg)

    server.on_message = with_features
    async with Harness(tmp_path, server) as h:
        pinger = ScriptedPinger({"100.64.0.10"})
        h.daemon.env.pinger = pinger
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        assert M.FEATURE_CHECK_PEER in server.logins[-1].features
        conn = server.conns[-1]
        conn.push(M.CheckPeer(node_id="p0"), M.CheckPeer(node_id="p1"))

        def reports(node_id: str) -> list[bool]:
            return [m.reachable for m in conn.sent if isinstance(m, M.PeerReport) and m.node_id == node_id]

        await until(lambda: len(reports("p0")) >= 3 and reports("p1") == [False])
        assert all(reports("p0"))
        st = await h.call("GET", "/v1/status")
        assert _peer_row(st, "p1")["server_asked_check"] and _peer_row(st, "p1")["liveness"] == "down"
        assert st["connection"]["checking_tunnels"] is False  # only the asked-for peers are probed
        # the server has p0 back: its check ends, no more reports or probes
        conn.push(M.CheckPeer(node_id="p0", active=False))
        await until(lambda: not h.daemon.liveness.peers[PEER_KEYS[0].public_key()].requested)
        n_rep, n_ping = len(reports("p0")), pinger.asked.count("100.64.0.10")
        await asyncio.sleep(0.4)
        assert len(reports("p0")) == n_rep and pinger.asked.count("100.64.0.10") == n_ping


async def test_edited_stored_view_is_refused_and_the_daemon_still_starts(tmp_path, server, caplog):
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
    path = tmp_path / "state" / identity.VIEW_FILE
    data = path.read_bytes()
    # a local edit: the frame gets one more peer (re-encoded, with the old MAC)
    frame = identity.open_view(PrivateKey.from_base64((tmp_path / "state" / identity.NODE_KEY).read_text()), data)
    view = M.decode_server(frame)
    forged = M.FullView(version=view.version, node=view.node, networks=view.networks, peers=[*view.peers, peer(3)])
    path.write_bytes(data[:36] + M.encode(forged))
    server.reachable = False
    async with Harness(tmp_path, server) as h2:
        assert h2.engine_peers() == set()  # nothing from the edited file
        st = await h2.call("GET", "/v1/status")
        assert st["view_version"] is None and st["connection"]["state"] in ("connecting", "reconnecting")
    assert "REFUSING the stored view" in caplog.text


async def test_pings_the_server_and_drops_a_silent_one(tmp_path, server, monkeypatch):
    """A blackholed path looks like silence: Ping every KEEPALIVE_INTERVAL, reconnect after
    SILENCE_TIMEOUT without any frame (the scripted server never answers Ping)."""
    monkeypatch.setattr(M, "KEEPALIVE_INTERVAL", 0.05)
    monkeypatch.setattr(M, "SILENCE_TIMEOUT", 0.4)
    monkeypatch.setattr("shoal.daemon.backoff.BASE", 5.0)
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        conn = server.conns[-1]
        await until(lambda: h.daemon.state == "reconnecting", timeout=3)
        assert sum(isinstance(m, M.Ping) for m in conn.sent) >= 3
        assert "silent" in h.daemon.last_error and h.engine_peers()  # tunnels kept


async def test_layer2_and_broadcast_switch_need_a_server_that_knows_them(tmp_path, server):
    """An older server (no "lan" in LoginOk.features) would ignore kind/broadcast: the daemon
    refuses them itself; with a "lan" server they are sent and the view shows them."""
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        assert M.FEATURE_LAN in server.logins[-1].features
        for path, body in (("/v1/networks/create", {"name": "ipx", "password": "p", "kind": "l2"}),
                           ("/v1/networks/access", {"network": "net-aa", "broadcast": False})):
            with pytest.raises(ApiError) as e:
                await h.call("POST", path, body)
            assert e.value.code == "unsupported" and "upgrade" in e.value.message
        with pytest.raises(ApiError) as e:
            await h.call("POST", "/v1/networks/create", {"name": "ipx", "password": "p", "kind": "l3"})
        assert e.value.code == "invalid"
        assert not [m for m in server.conns[-1].sent if isinstance(m, (M.CreateNetwork, M.SetAccess))]
        h.daemon.server_lan = True  # as after a LoginOk listing "lan"
        server.results[M.CreateNetwork] = M.Result(req_id=0, ok=True, network_id="bb")
        l2 = M.NetworkInfo(network_id="bb", name="ipx", owner_id="me1", kind="l2", locked=False, approval="auto",
                           members=[M.MemberInfo(node_id="me1", nickname="me1", role="owner", online=True)])
        server.after_result = [M.ViewUpdate(prev_version=1, version=2, networks_upsert=[l2])]
        await h.call("POST", "/v1/networks/create", {"name": "ipx", "password": "p", "kind": "l2"})
        sent = [m for m in server.conns[-1].sent if isinstance(m, M.CreateNetwork)][0]
        assert sent.kind == "l2"
        st = await h.call("GET", "/v1/status")
        row = next(n for n in st["networks"] if n["name"] == "ipx")
        assert row["kind"] == "l2" and row["broadcast"] is True


def big_peer(i: int) -> M.PeerInfo:
    """A peer with every list full (about 1.9 kB encoded)."""
    return M.PeerInfo(
        node_id=f"b{i:05d}", nickname=f"member-{i:05d}-with-a-long-nickname",
        public_key=bytes(PrivateKey.from_seed(f"big{i}".encode()).public_key()),
        ipv4=str(ipaddress.IPv4Address("100.65.0.1") + i), ipv6=f"fd5a::1:{i:x}",
        endpoints=[f"[2001:db8:{i:x}:ffff:ffff:ffff:ffff:{j:x}]:65535" for j in range(M.MAX_ENDPOINTS)],
        candidates=[M.Candidate("mapped", f"[2001:db8:ffff:{k:x}:ffff:ffff:ffff:ffff]:65535")
                    for k in range(M.MAX_CANDIDATES)])


async def test_a_view_in_parts_is_applied_once_whole_and_comes_back_after_a_restart(tmp_path, server):
    """Issue 18 F9: 2500 peers (about 5 MB, over MAX_SERVER_FRAME) sent in parts."""
    async with Harness(tmp_path, server) as h:
        await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
        conn = server.conns[-1]
        await until(lambda: h.daemon.view.version == 1)
        big = M.FullView(version=2, node=SELF, networks=server.networks, peers=[peer(0), *map(big_peer, range(2500))])
        parts = M.split_view(big)
        assert len(parts) > 2
        calls = h.plane.set_peers_calls
        conn.push(*parts[:-1])
        await until(lambda: h.daemon.view.parts.staged)
        await asyncio.sleep(0.05)
        # half received: nothing applied, p1 (which the new view drops) is still there
        assert h.plane.set_peers_calls == calls and h.daemon.view.version == 1
        assert h.engine_peers() == {PEER_KEYS[0].public_key(), PEER_KEYS[1].public_key()}
        conn.push(parts[-1])
        await until(lambda: h.daemon.view.version == 2, timeout=10)
        assert h.plane.set_peers_calls == calls + 1 and len(h.engine_peers()) == 2501
    server.reachable = False  # the daemon restarts while the server is away
    async with Harness(tmp_path, server) as h2:
        assert h2.daemon.view.version == 2 and len(h2.engine_peers()) == 2501


async def test_a_refused_first_login_is_answered_at_once_and_pins_nothing(tmp_path, server):
    """The CLI gets the server's refusal, not a 30 s timeout (a stop() that lost its cancel hung here)."""
    async def refuse(conn, msg):  # noqa: ANN001, ANN202
        if isinstance(msg, M.Login):
            conn.push(M.Error(code="registration_limited", message="too many new nodes from 203.0.113.0/24"))

    server.on_message = refuse  # type: ignore[method-assign]
    async with Harness(tmp_path, server) as h:
        for _ in range(5):
            with pytest.raises(ApiError) as e:
                await asyncio.wait_for(h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"}), 5)
            assert e.value.code == "registration_limited" and "too many new nodes" in e.value.message
            assert h.daemon.pin is None and identity.load_pin(h.opts.state_dir) is None
        st = await h.call("GET", "/v1/status")
        assert st["connection"]["state"] == "logged-out"


async def test_logout_answers_when_the_server_closes_first_every_time(tmp_path, server):
    """The server closes the session as soon as it reads Logout; the answer races that close (issue 17)."""
    on_message = server.on_message

    async def close_on_logout(conn, msg):  # noqa: ANN001, ANN202
        if isinstance(msg, M.Logout):
            conn.push(M.Result(req_id=msg.req_id, ok=True))
            conn.drop()
            return
        await on_message(conn, msg)

    server.on_message = close_on_logout  # type: ignore[method-assign]
    async with Harness(tmp_path, server) as h:
        for _ in range(20):
            await h.call("POST", "/v1/login", {"server": "192.0.2.1:8080"})
            r = await asyncio.wait_for(h.call("POST", "/v1/logout"), 5)
            assert r["server"] == "http://192.0.2.1:8080"
            assert identity.load_pin(h.opts.state_dir) is None and h.engine_peers() == set()
            st = await h.call("GET", "/v1/status")
            assert st["connection"]["state"] == "logged-out"
