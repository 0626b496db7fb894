"""The control channel over WebSocket: Noise IK session + control messages (asyncio glue).

Owns: the node side (`connect`, over the `websockets` library; `connect_over` runs the same
handshake over any open `ClientSocket`, e.g. the simulation's in-memory one), the server side (`accept`,
over any `ServerSocket`: Litestar's WebSocket fits, `WebsocketsServerSocket` adapts a
`websockets` server connection), the trust-on-first-use key fetch (`fetch_server_key`) and
the JSON document the server serves for it (`server_key_document`).

Wire format. Every WebSocket message is binary and is exactly one of:

    node -> server   1st message   Noise message1 (`shoal.control.noise`), empty payload
    server -> node   1st message   Noise message2, empty payload
    either way       afterwards    one transport frame = Noise-sealed `messages.encode(msg)`:
                                   version byte + msgpack (see `shoal.control.messages`)

The node speaks first after the handshake (Login). `accept` returns only once that first
frame has decrypted: a replayed message1 (someone presenting a node's key without its private
key) never becomes a connection. Frame sizes are checked before any decryption work: a
node's frame is at most MAX_CLIENT_WS_MESSAGE bytes (MAX_CLIENT_FRAME + Noise tags), the
server's at most MAX_SERVER_WS_MESSAGE, a handshake message at most 65535.

Close codes (the reason is one line for humans, at most 123 bytes):

    4001  handshake failed: wrong server key?  the server could not read message1 (the node
          pinned another key); the reason ends "this server is <fingerprint>". The node
          reports `ServerKeyMismatch`, as it does when message2 does not verify.
    4002  protocol error: malformed/oversized/undecryptable/unexpected frame, handshake
          timeout, or a node that could not prove its key. Only that session is closed.
    4004  refused: the server will not register this node's key now (`shoal.server.core`):
          too many new nodes from its source prefix or in all (retry later), or no free
          overlay address. An Error comes first, code "registration_limited" or
          "address_pool_full", its message says which. Only a first Login can get it.
    4008  too slow: the node did not read its messages and its send queue filled up.
    4029  rate limited: the node kept sending more than its limits (shoal.control.limits);
          an Error(code "rate_limited") comes first.
    1013  try again later: the server refused the session before the handshake (too many
          handshakes in progress or started, from this address, its prefix, or in all;
          shoal.control.limits.Admission). Nothing was read; the node retries later.
          The node reports `ServerBusy` (a ConnectError).

Handshake (server side). `accept` gives the node CONTROL_HANDSHAKE_TIMEOUT seconds from the
accept to its first transport frame. A message1 whose ephemeral key a `ReplayCache` has
seen before (a replay) is refused with 4002 before any X25519 work.

GET /v1/server-key (served by the server) returns {"public_key": base64, "fingerprint": fp}.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Protocol

import websockets
from websockets.asyncio.server import ServerConnection as _WsServer

from shoal.constants import CONTROL_HANDSHAKE_TIMEOUT
from shoal.control import messages
from shoal.control.limits import ReplayCache
from shoal.control.messages import MAX_CLIENT_FRAME, MAX_SERVER_FRAME, ClientMessage, ServerMessage
from shoal.control.noise import (
    DHLEN,
    MAX_MESSAGE_LEN,
    MESSAGE1_MIN_LEN,
    ClientHandshake,
    DecryptFailed,
    HandshakeFailed,
    ServerHandshake,
    Session,
    ciphertext_len,
)
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = [
    "CLOSE_KEY_MISMATCH",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REFUSED",
    "CLOSE_TOO_SLOW",
    "CLOSE_RATE_LIMITED",
    "CLOSE_TRY_AGAIN_LATER",
    "MAX_CLIENT_WS_MESSAGE",
    "MAX_SERVER_WS_MESSAGE",
    "TransportError",
    "ConnectError",
    "ServerKeyMismatch",
    "ServerBusy",
    "ProtocolFailure",
    "ConnectionClosed",
    "AcceptFailed",
    "ClientConnection",
    "ClientSocket",
    "ServerConnection",
    "ServerSocket",
    "WebsocketsServerSocket",
    "connect",
    "connect_over",
    "accept",
    "fetch_server_key",
    "server_key_document",
    "control_url",
]

log = logging.getLogger(__name__)

CLOSE_KEY_MISMATCH = 4001
CLOSE_PROTOCOL_ERROR = 4002
CLOSE_REFUSED = 4004
CLOSE_TOO_SLOW = 4008
CLOSE_RATE_LIMITED = 4029
CLOSE_TRY_AGAIN_LATER = 1013
MAX_CLIENT_WS_MESSAGE = ciphertext_len(MAX_CLIENT_FRAME)
MAX_SERVER_WS_MESSAGE = ciphertext_len(MAX_SERVER_FRAME)
_MAX_REASON = 123  # RFC 6455: control frame payload 125 bytes, 2 of them the code
_CLAIM = re.compile(r"this server is ([A-Za-z0-9+/=]{1,44})")
_MAX_KEY_DOCUMENT = 4096


class TransportError(Exception):
    """Base of the control channel's errors."""


class ConnectError(TransportError):
    """The server could not be reached, or the handshake did not finish (network, timeout)."""


class ServerBusy(ConnectError):
    """The server refused the session before the handshake (1013): retry later."""


class ServerKeyMismatch(TransportError):
    """The server does not hold the key this node pinned: not the server we trust."""

    def __init__(self, url: str, expected: PublicKey, claimed: str | None) -> None:
        self.url = url
        self.expected = expected
        self.claimed = claimed
        said = (
            f"the server says it is {claimed} (unverified)"
            if claimed
            else "the server cannot prove it holds that key"
        )
        super().__init__(
            f"server key mismatch: {url} is not the server you trusted (expected key fingerprint "
            f"{expected.fingerprint()}; {said}). Refusing to talk to it. If the server's key was "
            "changed on purpose, log in again with its new key (--server-key)."
        )


class ProtocolFailure(TransportError):
    """The peer sent something invalid; the session was closed with code 4002."""


class ConnectionClosed(TransportError):
    """The peer (or the network) closed the connection; `code` is None when no close frame came."""

    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed (code {code}): {reason}" if reason else f"connection closed (code {code})")


class AcceptFailed(TransportError):
    """Server side: the node did not complete the handshake; the socket was closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"handshake refused ({code}): {reason}")


def _clip(reason: str) -> str:
    data = reason.encode("utf-8")[:_MAX_REASON]
    return data.decode("utf-8", "ignore")


def _from_ws_closed(exc: websockets.ConnectionClosed) -> ConnectionClosed:
    if exc.rcvd is not None:
        return ConnectionClosed(exc.rcvd.code, exc.rcvd.reason)
    return ConnectionClosed(None, "connection lost")


# ---------------------------------------------------------------- node side


class ClientSocket(Protocol):
    """What the node side needs of a WebSocket (a `websockets` client connection fits):
    binary or text messages, and `websockets.ConnectionClosed` once it is closed."""

    async def send(self, message: bytes) -> None: ...

    async def recv(self) -> bytes | str: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class ClientConnection:
    """The node's end of an established control session."""

    def __init__(self, ws: ClientSocket, session: Session, url: str, node_public: PublicKey,
                 server_public: PublicKey) -> None:
        self._ws = ws
        self._session = session
        self._send_lock = asyncio.Lock()
        self.url = url
        self.node_public = node_public
        self.server_public = server_public

    async def send(self, msg: messages._Msg) -> None:
        """Encode, seal and send one message; ConnectionClosed if the connection is gone."""
        frame = messages.encode(msg)
        if len(frame) > MAX_CLIENT_FRAME:
            raise ValueError(f"{type(msg).__name__} encodes to {len(frame)} bytes, over {MAX_CLIENT_FRAME}")
        async with self._send_lock:  # nonce order == send order
            data = self._session.encrypt(frame)
            try:
                await self._ws.send(data)
            except websockets.ConnectionClosed as exc:
                raise _from_ws_closed(exc) from None

    async def recv(self) -> ServerMessage:
        """The next server message; ConnectionClosed when closed, ProtocolFailure on bad input."""
        try:
            data = await self._ws.recv()
        except websockets.ConnectionClosed as exc:
            raise _from_ws_closed(exc) from None
        if not isinstance(data, bytes):
            await self._fail("text frame on the control channel")
        if len(data) > MAX_SERVER_WS_MESSAGE:
            await self._fail(f"frame of {len(data)} bytes exceeds {MAX_SERVER_WS_MESSAGE}")
        try:
            plain = self._session.decrypt(data)
        except DecryptFailed as exc:
            await self._fail(f"frame does not decrypt: {exc}")
        try:
            return messages.decode_server(plain)
        except ValueError as exc:  # ProtocolError; also msgspec's UnicodeDecodeError on bad UTF-8
            await self._fail(str(exc) if isinstance(exc, messages.ProtocolError) else f"malformed message: {exc}")
        raise AssertionError("unreachable")

    async def __aiter__(self) -> AsyncIterator[ServerMessage]:
        """Messages until the connection closes (a clean end stops the iteration)."""
        while True:
            try:
                yield await self.recv()
            except ConnectionClosed:
                return

    async def _fail(self, reason: str) -> None:
        log.warning("control session with %s: protocol error: %s", self.url, reason)
        await self._ws.close(CLOSE_PROTOCOL_ERROR, _clip(f"protocol error: {reason}"))
        raise ProtocolFailure(reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code, _clip(reason))


async def connect(url: str, node_key: PrivateKey, server_public: PublicKey, *,
                  timeout: float = 10.0, local_addr: tuple[str, int] | None = None) -> ClientConnection:
    """Open a control session to `url` (e.g. "ws://192.0.2.1:8080/control"), from `local_addr`
    if given (the control benchmark gives each node its own loopback address).

    Raises ServerKeyMismatch (the server is not the one pinned), ConnectError (unreachable,
    refused, timeout, closed during the handshake) or ProtocolFailure."""
    try:
        ws = await asyncio.wait_for(
            websockets.connect(url, max_size=MAX_SERVER_WS_MESSAGE, compression=None,
                               open_timeout=None, close_timeout=2,
                               **({"local_addr": local_addr} if local_addr is not None else {})),
            timeout,
        )
    except (OSError, TimeoutError, websockets.InvalidURI, websockets.InvalidHandshake) as exc:
        raise ConnectError(f"cannot reach the control server at {url}: {exc or type(exc).__name__}") from None
    return await connect_over(ws, url, node_key, server_public, timeout=timeout)


async def connect_over(ws: ClientSocket, url: str, node_key: PrivateKey, server_public: PublicKey, *,
                       timeout: float = 10.0) -> ClientConnection:
    """The node's handshake over an open WebSocket `ws` (what `connect` does once connected; the
    simulation tier passes an in-memory one). Raises as `connect`; closes `ws` on failure."""
    hs = ClientHandshake(node_key, server_public)
    m1 = hs.message1()
    try:
        async with asyncio.timeout(timeout):
            await ws.send(m1)
            m2 = await ws.recv()
    except TimeoutError:
        await ws.close(CLOSE_PROTOCOL_ERROR, "handshake timeout")
        raise ConnectError(f"the control server at {url} did not answer the handshake within {timeout:g} s") from None
    except websockets.ConnectionClosed as exc:
        closed = _from_ws_closed(exc)
        if closed.code == CLOSE_KEY_MISMATCH:
            m = _CLAIM.search(closed.reason)
            raise ServerKeyMismatch(url, server_public, m.group(1) if m else None) from None
        if closed.code == CLOSE_TRY_AGAIN_LATER:
            raise ServerBusy(f"the control server at {url} is busy and refused the connection "
                             f"({closed.reason or 'try again later'}); retrying later") from None
        raise ConnectError(f"the control server at {url} closed the connection during the handshake: "
                           f"{closed}") from None
    except BaseException:
        await ws.close()
        raise
    if not isinstance(m2, bytes):
        await ws.close(CLOSE_PROTOCOL_ERROR, "protocol error: text frame in the handshake")
        raise ProtocolFailure(f"{url} answered the handshake with a text frame")
    try:
        session, _payload = hs.read_message2(m2)
    except HandshakeFailed:
        await ws.close(CLOSE_KEY_MISMATCH, "server key mismatch")
        raise ServerKeyMismatch(url, server_public, None) from None
    return ClientConnection(ws, session, url, node_key.public_key(), server_public)


# ---------------------------------------------------------------- server side


class ServerSocket(Protocol):
    """What the server's web framework hands over for one WebSocket (Litestar's fits).
    `receive_bytes` raises (anything) when the peer is gone."""

    async def receive_bytes(self) -> bytes: ...

    async def send_bytes(self, data: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class WebsocketsServerSocket:
    """Adapts a `websockets` server connection to `ServerSocket` (tests, benchmarks).
    Serve with max_size >= MAX_CLIENT_WS_MESSAGE and compression=None."""

    def __init__(self, conn: _WsServer) -> None:
        self.conn = conn

    async def receive_bytes(self) -> bytes:
        data = await self.conn.recv()
        return data if isinstance(data, bytes) else data.encode("utf-8")  # text never decrypts

    async def send_bytes(self, data: bytes) -> None:
        await self.conn.send(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.conn.close(code, reason)


async def _receive(ws: ServerSocket) -> bytes:
    try:
        return await ws.receive_bytes()
    except Exception as exc:  # the framework's "disconnected" exception, whatever it is
        if isinstance(exc, websockets.ConnectionClosed):
            raise _from_ws_closed(exc) from None
        raise ConnectionClosed(None, f"{type(exc).__name__}: {exc}") from None


async def _close_quietly(ws: ServerSocket, code: int, reason: str) -> None:
    try:
        await ws.close(code, _clip(reason))
    except Exception as exc:  # already closed / transport gone
        log.debug("closing a control socket failed: %s", exc)


class ServerConnection:
    """The server's end of an established control session; `node_public` is proven."""

    def __init__(self, ws: ServerSocket, session: Session, node_public: PublicKey) -> None:
        self._ws = ws
        self._session = session
        self._send_lock = asyncio.Lock()
        self._pending: ClientMessage | None = None
        self._closed = False
        self.node_public = node_public

    async def send(self, msg: messages._Msg) -> None:
        frame = messages.encode(msg)
        if len(frame) > MAX_SERVER_FRAME:
            raise ValueError(f"{type(msg).__name__} encodes to {len(frame)} bytes, over {MAX_SERVER_FRAME}")
        async with self._send_lock:  # nonce order == send order
            data = self._session.encrypt(frame)
            try:
                await self._ws.send_bytes(data)
            except Exception as exc:
                if isinstance(exc, websockets.ConnectionClosed):
                    raise _from_ws_closed(exc) from None
                raise ConnectionClosed(None, f"{type(exc).__name__}: {exc}") from None

    async def recv(self) -> ClientMessage:
        """The next node message; ConnectionClosed when gone, ProtocolFailure (session closed
        with 4002) on a bad frame."""
        if self._pending is not None:
            msg, self._pending = self._pending, None
            return msg
        return await self._open(await _receive(self._ws))

    async def _open(self, data: bytes) -> ClientMessage:
        if len(data) > MAX_CLIENT_WS_MESSAGE:
            await self._fail(f"frame of {len(data)} bytes exceeds {MAX_CLIENT_WS_MESSAGE}")
        try:
            plain = self._session.decrypt(data)
        except DecryptFailed as exc:
            await self._fail(f"frame does not decrypt: {exc}")
        try:
            return messages.decode_client(plain)
        except ValueError as exc:  # ProtocolError; also msgspec's UnicodeDecodeError on bad UTF-8
            await self._fail(str(exc) if isinstance(exc, messages.ProtocolError) else f"malformed message: {exc}")
        raise AssertionError("unreachable")

    async def _fail(self, reason: str) -> None:
        log.warning("control session of node %s: protocol error: %s", self.node_public.fingerprint(), reason)
        await self.close(CLOSE_PROTOCOL_ERROR, f"protocol error: {reason}")
        raise ProtocolFailure(reason)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closed:
            self._closed = True
            await _close_quietly(self._ws, code, reason)


async def accept(ws: ServerSocket, server_key: PrivateKey, *, timeout: float = CONTROL_HANDSHAKE_TIMEOUT,
                 replays: ReplayCache | None = None) -> ServerConnection:
    """Run the server side of the handshake on an accepted WebSocket. Returns once the node
    proved its key (its first frame decrypted; `recv()` returns that message first).
    Raises AcceptFailed after closing the socket with the code that says why. With
    `replays`, a message1 whose ephemeral key was seen before is refused before any X25519."""
    hs = ServerHandshake(server_key)

    async def refuse(code: int, reason: str) -> AcceptFailed:
        await _close_quietly(ws, code, reason)
        return AcceptFailed(code, reason)

    try:
        async with asyncio.timeout(timeout):
            m1 = await _receive(ws)
            if len(m1) > MAX_MESSAGE_LEN:
                raise await refuse(CLOSE_PROTOCOL_ERROR, f"protocol error: handshake message of {len(m1)} bytes")
            if replays is not None and replays.seen(m1[:DHLEN]):
                raise await refuse(CLOSE_PROTOCOL_ERROR, "protocol error: replayed handshake")
            try:
                node_public, _payload = hs.read_message1(m1)
            except HandshakeFailed as exc:
                if exc.wrong_server_key:
                    raise await refuse(CLOSE_KEY_MISMATCH, "handshake failed: wrong server key? this server is "
                                       + server_key.public_key().fingerprint()) from None
                if len(m1) < MESSAGE1_MIN_LEN:
                    raise await refuse(CLOSE_PROTOCOL_ERROR, "protocol error: truncated handshake") from None
                raise await refuse(CLOSE_PROTOCOL_ERROR, f"handshake failed: {exc}") from None
            if replays is not None:
                replays.remember(m1[:DHLEN])
            await ws.send_bytes(hs.message2())
            conn = ServerConnection(ws, hs.split(), node_public)
            first = await _receive(ws)
    except TimeoutError:
        raise await refuse(CLOSE_PROTOCOL_ERROR, "protocol error: handshake timeout") from None
    except ConnectionClosed as exc:
        raise AcceptFailed(exc.code or 1006, f"node went away during the handshake: {exc.reason}") from None
    except AcceptFailed:
        raise
    except Exception as exc:  # send_bytes on a dead socket, whatever the framework raises
        raise await refuse(1011, f"handshake aborted: {type(exc).__name__}") from None
    try:
        conn._pending = await conn._open(first)
    except ProtocolFailure as exc:
        raise AcceptFailed(CLOSE_PROTOCOL_ERROR, f"node {node_public.fingerprint()} did not prove its key: {exc}") from None
    return conn


# ---------------------------------------------------------------- trust on first use


def server_key_document(public: PublicKey) -> bytes:
    """The JSON body of GET /v1/server-key."""
    return json.dumps({"public_key": public.to_base64(), "fingerprint": public.fingerprint()}).encode()


def control_url(base: str) -> str:
    """"http://host:port" -> "ws://host:port/control" (https -> wss); ws(s) URLs with a path kept."""
    parts = urllib.parse.urlsplit(base.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a server URL: {base!r} (expected http://HOST:PORT)")
    path = parts.path.rstrip("/")
    if parts.scheme in ("http", "https") or not path:
        path += "/control"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


async def fetch_server_key(http_base: str, *, timeout: float = 10.0) -> PublicKey:
    """GET {http_base}/v1/server-key for trust on first use (the caller shows the fingerprint).
    Raises ConnectError (unreachable) or ProtocolFailure (not a server key document)."""
    parts = urllib.parse.urlsplit(http_base.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not a server URL: {http_base!r} (expected http://HOST:PORT)")
    url = http_base.strip().rstrip("/") + "/v1/server-key"

    def get() -> bytes:
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) checked
            return resp.read(_MAX_KEY_DOCUMENT + 1)

    try:
        body = await asyncio.to_thread(get)
    except urllib.error.HTTPError as exc:
        raise ConnectError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
    if len(body) > _MAX_KEY_DOCUMENT:
        raise ProtocolFailure(f"{url}: answer too long for a server key")
    try:
        doc = json.loads(body)
        key = PublicKey.from_base64(doc["public_key"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProtocolFailure(f"{url}: not a server key document ({exc})") from None
    fp = doc.get("fingerprint")
    if fp is not None and fp != key.fingerprint():
        raise ProtocolFailure(f"{url}: fingerprint {fp!r} does not match the key {key.fingerprint()}")
    return key
