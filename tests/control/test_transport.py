"""Control channel over loopback WebSockets: handshake, messages both ways, key pinning,
size limits, bad frames closing only their session, TOFU key fetch."""

from __future__ import annotations

import asyncio
import http.server
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import websockets
from websockets.asyncio.server import ServerConnection as WsServerConn
from websockets.asyncio.server import serve

from shoal.control import messages as m
from shoal.control.noise import ClientHandshake
from shoal.control.transport import (
    CLOSE_KEY_MISMATCH,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
    MAX_CLIENT_WS_MESSAGE,
    AcceptFailed,
    ConnectError,
    ConnectionClosed,
    ProtocolFailure,
    ServerConnection,
    ServerKeyMismatch,
    WebsocketsServerSocket,
    accept,
    connect,
    control_url,
    fetch_server_key,
    server_key_document,
)
from shoal.wireguard.keys import PrivateKey, PublicKey

pytestmark = pytest.mark.timeout(10)

SERVER = PrivateKey.from_seed(b"control server")
OTHER_SERVER = PrivateKey.from_seed(b"impostor server")
NODE = PrivateKey.from_seed(b"node a")
NODE_B = PrivateKey.from_seed(b"node b")
SELF = m.SelfInfo(node_id="k3x9q2", nickname="alice", ipv4="100.64.0.1", ipv6="fd00::1")

Handler = Callable[[ServerConnection], Awaitable[None]]


class Server:
    """A control server on 127.0.0.1:0 running `handler` per accepted session."""

    def __init__(self, key: PrivateKey, handler: Handler, timeout: float = 5.0) -> None:
        self.key = key
        self.handler = handler
        self.timeout = timeout
        self.failures: list[AcceptFailed | ProtocolFailure] = []
        self.sessions: list[ServerConnection] = []
        self.url = ""

    async def _ws_handler(self, conn: WsServerConn) -> None:
        try:
            sc = await accept(WebsocketsServerSocket(conn), self.key, timeout=self.timeout)
        except AcceptFailed as exc:
            self.failures.append(exc)
            return
        self.sessions.append(sc)
        try:
            await self.handler(sc)
        except ProtocolFailure as exc:
            self.failures.append(exc)
        except ConnectionClosed:
            pass


async def until(cond: Callable[[], object], limit: float = 2.0) -> None:
    """Wait until cond() is true (server-side bookkeeping runs after the close handshake)."""
    async with asyncio.timeout(limit):
        while not cond():
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(key: PrivateKey, handler: Handler, timeout: float = 5.0,
                  max_size: int | None = MAX_CLIENT_WS_MESSAGE) -> AsyncIterator[Server]:
    """max_size=None: the framework lets any size through (as Litestar's 16 MiB default
    would for our limits), so the transport's own size check is what refuses."""
    srv = Server(key, handler, timeout)
    async with serve(srv._ws_handler, "127.0.0.1", 0, max_size=max_size,
                     compression=None) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        srv.url = f"ws://127.0.0.1:{port}/control"
        yield srv


async def echo_pings(sc: ServerConnection) -> None:
    """Login -> LoginOk; Ping(n) -> Pong(n); forever."""
    while True:
        msg = await sc.recv()
        if isinstance(msg, m.Login):
            await sc.send(m.LoginOk(node=SELF, server_time=1.0))
        elif isinstance(msg, m.Ping):
            await sc.send(m.Pong(nonce=msg.nonce))


async def test_login_and_ping_roundtrip() -> None:
    async with running(SERVER, echo_pings) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key(), timeout=5)
        await conn.send(m.Login(nickname="alice"))
        assert await conn.recv() == m.LoginOk(node=SELF, server_time=1.0)
        for i in range(50):
            await conn.send(m.Ping(nonce=i))
        assert [await conn.recv() for _ in range(50)] == [m.Pong(nonce=i) for i in range(50)]
        assert srv.sessions[0].node_public == NODE.public_key()
        await conn.close()


async def test_large_server_frame_crosses_chunking() -> None:
    """A FullView far above one Noise message (65535 bytes) arrives intact."""
    peers = [m.PeerInfo(node_id=f"n{i}", nickname=f"peer {i}", public_key=bytes(32), ipv4="100.64.0.2",
                        ipv6="fd00::2", endpoints=["198.51.100.7:51820"]) for i in range(3000)]
    view = m.FullView(version=7, node=SELF, networks=[], peers=peers)

    async def handler(sc: ServerConnection) -> None:
        await sc.recv()
        await sc.send(view)
        await sc.recv()

    async with running(SERVER, handler) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key())
        await conn.send(m.Login())
        assert len(m.encode(view)) > 3 * 65535
        assert await conn.recv() == view
        await conn.close()


async def test_pinned_key_mismatch_is_loud_on_both_sides() -> None:
    async with running(OTHER_SERVER, echo_pings) as srv:
        with pytest.raises(ServerKeyMismatch) as err:
            await connect(srv.url, NODE, SERVER.public_key(), timeout=5)
        text = str(err.value)
        assert SERVER.public_key().fingerprint() in text  # the key we expected
        assert OTHER_SERVER.public_key().fingerprint() in text  # what the server says it is
        assert "not the server you trusted" in text
        assert err.value.claimed == OTHER_SERVER.public_key().fingerprint()
        await until(lambda: srv.failures)
        assert len(srv.failures) == 1 and srv.failures[0].code == CLOSE_KEY_MISMATCH
        assert srv.sessions == []


async def test_forged_message2_is_a_key_mismatch() -> None:
    """A server that answers without holding the pinned key (e.g. a MITM) is refused."""

    async def impostor(conn: WsServerConn) -> None:
        await conn.recv()
        await conn.send(bytes(48))  # any message2 it can make fails to verify
        await conn.wait_closed()

    async with serve(impostor, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        with pytest.raises(ServerKeyMismatch, match="cannot prove it holds that key"):
            await connect(f"ws://127.0.0.1:{port}/control", NODE, SERVER.public_key())


async def test_unreachable_and_silent_servers_are_connect_errors() -> None:
    # a port nobody listens on
    async with serve(echo_pings, "127.0.0.1", 0) as ws_server:  # type: ignore[arg-type]
        port = ws_server.sockets[0].getsockname()[1]
    with pytest.raises(ConnectError, match="cannot reach"):
        await connect(f"ws://127.0.0.1:{port}/control", NODE, SERVER.public_key(), timeout=2)

    async def silent(conn: WsServerConn) -> None:
        await conn.wait_closed()

    async with serve(silent, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        with pytest.raises(ConnectError, match="did not answer"):
            await connect(f"ws://127.0.0.1:{port}/control", NODE, SERVER.public_key(), timeout=0.3)


async def test_server_handshake_timeout_closes_4002() -> None:
    async with running(SERVER, echo_pings, timeout=0.2) as srv:
        async with websockets.connect(srv.url) as raw:
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(raw.recv(), 2)
            assert raw.close_code == CLOSE_PROTOCOL_ERROR and "timeout" in raw.close_reason
        await until(lambda: srv.failures)
        assert isinstance(srv.failures[0], AcceptFailed)


async def _raw_session(url: str, node: PrivateKey = NODE):  # noqa: ANN202
    """A hand-driven client: returns (websocket, session) after the handshake."""
    hs = ClientHandshake(node, SERVER.public_key())
    raw = await websockets.connect(url, max_size=None)
    await raw.send(hs.message1())
    session, _ = hs.read_message2(await raw.recv())
    return raw, session


@pytest.mark.parametrize(
    "bad_frame,reason",
    [
        (lambda s: s.encrypt(b"\x02" + m._encoder.encode(m.Ping(nonce=1))), "version"),
        (lambda s: s.encrypt(b"\x01" + m._encoder.encode({"type": "launch_missiles"})), "malformed"),
        (lambda s: s.encrypt(b"\x01\xc1"), "malformed"),
        (lambda s: s.encrypt(b"\x01\x83\xa4type\xacset_nickname\xa6req_id\x01\xa8nickname\xa2\xff\xfe"),
         "malformed"),  # invalid UTF-8
        (lambda s: s.encrypt(m.encode(m.LoginOk(node=SELF, server_time=0.0))), "malformed"),  # server->client type
        (lambda s: s.encrypt(b"\x01" + bytes(70000)), "exceeds"),
        (lambda s: bytes(MAX_CLIENT_WS_MESSAGE + 1), "exceeds"),  # rejected before decryption
        (lambda s: bytes(40), "decrypt"),
    ],
)
async def test_bad_frames_close_only_that_session(bad_frame, reason: str) -> None:  # noqa: ANN001
    async with running(SERVER, echo_pings, max_size=None) as srv:
        good = await connect(srv.url, NODE_B, SERVER.public_key())
        await good.send(m.Login())
        await good.recv()
        raw, session = await _raw_session(srv.url)
        await raw.send(session.encrypt(m.encode(m.Login())))  # proves the key: accepted
        await raw.recv()
        await raw.send(bad_frame(session))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(raw.recv(), 2)
        assert raw.close_code == CLOSE_PROTOCOL_ERROR
        assert reason in raw.close_reason
        await until(lambda: srv.failures)
        assert isinstance(srv.failures[-1], ProtocolFailure)
        # the other session is untouched
        await good.send(m.Ping(nonce=9))
        assert await good.recv() == m.Pong(nonce=9)
        await good.close()


async def test_replayed_message1_gets_nothing() -> None:
    """Someone presenting node A's key without its private key (replaying A's message1)
    gets a message2 it cannot use and never becomes a connection."""
    async with running(SERVER, echo_pings, timeout=1) as srv:
        hs = ClientHandshake(NODE, SERVER.public_key())
        m1 = hs.message1()
        async with websockets.connect(srv.url) as attacker:
            await attacker.send(m1)
            await attacker.recv()  # message2, useless without A's ephemeral private key
            await attacker.send(bytes(64))  # cannot make a valid first frame
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(attacker.recv(), 2)
            assert attacker.close_code == CLOSE_PROTOCOL_ERROR
        await until(lambda: srv.failures)
        assert srv.sessions == []
        assert "did not prove its key" in str(srv.failures[0])


async def test_node_key_without_private_key_is_refused() -> None:
    """A message1 claiming node A's static key, made with another private key."""
    from shoal.control import noise

    class Liar(noise.ClientHandshake):
        pass

    liar = Liar(NODE_B, SERVER.public_key())
    liar._s = _KeyClaiming(NODE_B, NODE.public_key())  # sends A's public key, does ss with B's
    async with running(SERVER, echo_pings) as srv:
        async with websockets.connect(srv.url) as raw:
            await raw.send(liar.message1())
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(raw.recv(), 2)
            assert raw.close_code == CLOSE_PROTOCOL_ERROR
        assert srv.sessions == []


class _KeyClaiming(PrivateKey):
    """A private key that announces someone else's public key."""

    def __new__(cls, private: PrivateKey, claimed: PublicKey) -> "_KeyClaiming":
        obj = super().__new__(cls, bytes(private))
        obj.__dict__["_pub"] = claimed
        return obj


async def test_server_close_reason_reaches_client() -> None:
    async def refuse(sc: ServerConnection) -> None:
        await sc.recv()
        await sc.send(m.Error(code="registration_limited", message="too many new nodes"))
        await sc.close(CLOSE_REFUSED, "refused")

    async with running(SERVER, refuse) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key())
        await conn.send(m.Login())
        assert await conn.recv() == m.Error(code="registration_limited", message="too many new nodes")
        with pytest.raises(ConnectionClosed) as err:
            await conn.recv()
        assert (err.value.code, err.value.reason) == (CLOSE_REFUSED, "refused")


async def test_client_rejects_bad_server_frames() -> None:
    async def rogue(sc: ServerConnection) -> None:
        await sc.recv()
        await sc._ws.send_bytes(sc._session.encrypt(b"\x01garbage"))
        await sc.recv()  # ConnectionClosed once the client closed with 4002

    async with running(SERVER, rogue) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key())
        await conn.send(m.Login())
        with pytest.raises(ProtocolFailure, match="malformed"):
            await conn.recv()


async def test_send_refuses_oversized_message() -> None:
    async with running(SERVER, echo_pings) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key())
        big = m.Login(endpoints=["x" * 64] * 16, software="y" * 70000)
        with pytest.raises(ValueError, match="over"):
            await conn.send(big)
        await conn.close()


async def test_clean_close_ends_both_sides() -> None:
    seen: list[object] = []

    async def record(sc: ServerConnection) -> None:
        try:
            while True:
                seen.append(await sc.recv())
        except ConnectionClosed as exc:
            seen.append(exc.code)

    async with running(SERVER, record) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key())
        await conn.send(m.Login())
        await conn.send(m.Logout(req_id=1))
        await conn.close()
        await until(lambda: len(seen) == 3)
        assert seen == [m.Login(), m.Logout(req_id=1), 1000]
        with pytest.raises(ConnectionClosed):
            await conn.send(m.Ping(nonce=1))


async def test_async_iteration_until_server_closes() -> None:
    async def three_pongs(sc: ServerConnection) -> None:
        await sc.recv()
        for i in range(3):
            await sc.send(m.Pong(nonce=i))
        await sc.close(1000, "bye")

    async with running(SERVER, three_pongs) as srv:
        conn = await connect(srv.url, NODE, SERVER.public_key())
        await conn.send(m.Login())
        assert [x async for x in conn] == [m.Pong(nonce=i) for i in range(3)]


async def test_client_gone_mid_handshake_is_accept_failed() -> None:
    async with running(SERVER, echo_pings) as srv:
        raw = await websockets.connect(srv.url)
        await raw.send(ClientHandshake(NODE, SERVER.public_key()).message1())
        await raw.recv()
        raw.transport.abort()  # no close frame
        await until(lambda: srv.failures)
        assert isinstance(srv.failures[0], AcceptFailed) and "went away" in str(srv.failures[0])


async def test_plain_http_server_is_connect_error() -> None:
    async with http_server(b"{}") as base:
        with pytest.raises(ConnectError, match="cannot reach"):
            await connect(control_url(base), NODE, SERVER.public_key(), timeout=2)


def test_control_url() -> None:
    assert control_url("http://192.0.2.1:8080") == "ws://192.0.2.1:8080/control"
    assert control_url("https://example.test/") == "wss://example.test/control"
    assert control_url("ws://192.0.2.1:8080/control") == "ws://192.0.2.1:8080/control"
    with pytest.raises(ValueError):
        control_url("192.0.2.1:8080")


@asynccontextmanager
async def http_server(body: bytes, status: int = 200) -> AsyncIterator[str]:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path != "/v1/server-key":
                self.send_error(404)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_fetch_server_key() -> None:
    async with http_server(server_key_document(SERVER.public_key())) as base:
        assert await fetch_server_key(base) == SERVER.public_key()
        assert await fetch_server_key(base + "/") == SERVER.public_key()
    async with http_server(b'{"public_key": "AAAA"}') as base:
        with pytest.raises(ProtocolFailure):
            await fetch_server_key(base)
    doc = f'{{"public_key": "{SERVER.public_key().to_base64()}", "fingerprint": "XXXXXXXX"}}'.encode()
    async with http_server(doc) as base:
        with pytest.raises(ProtocolFailure, match="fingerprint"):
            await fetch_server_key(base)
    async with http_server(b"{}", status=500) as base:
        with pytest.raises(ConnectError, match="500"):
            await fetch_server_key(base)
    with pytest.raises(ConnectError):
        await fetch_server_key(base, timeout=2)  # server gone
