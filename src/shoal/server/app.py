"""The server's asyncio glue: Litestar app on uvicorn, one task per control session, the
write-through writer and the presence timer around the sans-IO `shoal.server.core.Core`.

Owns: the HTTP surface and the order in which things happen.

    GET  /v1/server-key   {"public_key": base64, "fingerprint": fp} (trust on first use)
    WS   /control         Noise IK control channel (`shoal.control.transport.accept`)
    WS   /relay           relay sessions (`shoal.relay.service.RelayService.serve_stream`),
                          for nodes that reach the server only over TCP (UDP blocked)

TLS. With `tls=(cert, key)` (PEM files; `shoal server --tls-cert/--tls-key`) the HTTP port
speaks only HTTPS: the key fetch, /control and /relay become https/wss. The Noise session
inside /control still pins the server key, so TLS adds privacy for the first-use key fetch
and passes proxies that only allow TLS; it is not what authenticates the server to a node.

Relay. Unless turned off, the server process runs one `RelayEngine` under the server's key
(which every node pins) with `Core.may_relay` as its membership oracle: UDP on the relay
port (default RELAY_PORT) of the listen address and WebSocket at /relay on the HTTP port.

Ordering rule: every core call runs to completion on the event loop (the core is never
entered concurrently). Its `Effects` go to the writer in call order: the writer commits the
persist intents of everything queued so far in ONE transaction (group commit), then hands
the outgoing messages to the sessions' queues in the same order. So a node is told
something only once it is on disk, and every node receives its ViewUpdates in version order.
Effects without writes skip the writer only when it is idle (order is kept either way).

Admission (issue 18 F7). Before a byte of the handshake is read, `shoal.control.limits.Admission`
decides whether this WebSocket may try: caps on unauthenticated sessions (in all, per source
address, per source prefix) and token buckets on handshake starts (per address, per prefix,
in all). A refused one is closed at once with 1013 (try again later) and costs no X25519;
refusals are logged as a count (at most every REFUSAL_LOG_INTERVAL). An admitted one has
CONTROL_HANDSHAKE_TIMEOUT seconds to complete the handshake and send its first frame; a
message1 replayed from one seen before (`ReplayCache`) is refused before any X25519.

Sessions. Each WebSocket gets a reader (this handler: recv -> limiter -> core.receive) and a
sender task draining a bounded queue (SEND_QUEUE_LIMIT messages). A node that cannot keep up
(queue full) is disconnected with 4008 instead of being buffered forever; like any dropped
connection it keeps its presence for the grace period. If sending fails for any other reason
(a bug: e.g. a message over the frame limit), the sender logs the error and closes the
session with 1011: a sender task never dies silently.

Rate limits (issue 18 F8). Every message of a logged-in session passes its
`shoal.control.limits.SessionLimiter` before the core sees it: a request over its class limit
is answered Result(ok=False, code "rate_limited") here (through `_emit`, so Results stay in
request order), a Ping/PeerReport over it is dropped, Candidates and ResyncRequest are held
and only the latest is handed to the core when due (a timer per session, `_release_held`), so
superseded Candidates never fan out to co-members. A session that stays over its limits gets
Error(code "rate_limited") and is closed with 4029; its victims keep their sessions. A node that pings (Login lists "check_peer") and
stays silent for SILENCE_TIMEOUT is treated as gone (blackholed path). Malformed, oversized, undecryptable, unknown or
out-of-order frames close only that session (4002 from the transport or the core) and are
logged with the reason. Close codes used here: 4002 protocol error, 4008 too slow, 4029 rate
limited, 1013 try again later, 1011 server error, 1001 server shutting down; the core's codes
(1000 logout, 4000 replaced, 4004 new node refused: registration limit or address pool full)
pass through.

Password work (issue 18 F3). The core hands scrypt out as `PasswordJob`s (`Effects.jobs`);
`_emit` runs them on a thread pool of PASSWORD_POOL_WORKERS threads (hashlib.scrypt releases
the GIL, so the event loop and every other session go on meanwhile) and hands each result
back on the loop with `Core.password_done`, which answers the request. At most
PASSWORD_POOL_PENDING jobs are submitted and not finished at a time; a job beyond that is not
queued: its request is answered at once Result(ok=False, code "busy") through
`Core.password_failed`. A job that raises is answered code "server_error" and logged. The
per-node work budget (PASSWORD_WORK) is the core's; the per-session request limit above
(class "password") comes first.

Attribute owners: `_sessions` is mutated by the session handlers; `admission` by `handle`;
a session's `limiter` and `timer` by its handler and its timer callback; `core` only through
`_emit`-ed calls on the loop; the writer task owns `_batches`; the timer task calls `core.handle_timer`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn
from litestar import Litestar, Response, get, websocket
from litestar.connection import WebSocket

from shoal.constants import CONTROL_HANDSHAKE_TIMEOUT, PASSWORD_POOL_PENDING, PASSWORD_POOL_WORKERS
from shoal.control import messages as m
from shoal.control.limits import Admission, ReplayCache, SessionLimiter, Ticket, Verdict
from shoal.control.transport import (
    CLOSE_RATE_LIMITED,
    CLOSE_TOO_SLOW,
    CLOSE_TRY_AGAIN_LATER,
    MAX_CLIENT_WS_MESSAGE,
    AcceptFailed,
    ConnectionClosed,
    ProtocolFailure,
    ServerConnection,
    ServerSocket,
    accept,
    server_key_document,
)
from shoal.constants import RELAY_PORT, RELAY_WS_PATH
from shoal.relay.engine import RelayEngine
from shoal.relay.service import RelayService, core_may_bind
from shoal.server.core import PRESENCE_GRACE, Close, Core, Effects, PasswordJob, Send
from shoal.server.passwords import PasswordHasher
from shoal.server.store import Store, load_or_create_server_key
from shoal.wireguard.keys import PrivateKey

__all__ = ["ControlServer", "build_app", "serve", "Running", "SEND_QUEUE_LIMIT", "CLOSE_TOO_SLOW"]

log = logging.getLogger("shoal.server")

SEND_QUEUE_LIMIT = 1024
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
HANDSHAKE_TIMEOUT = CONTROL_HANDSHAKE_TIMEOUT
REFUSAL_LOG_INTERVAL = 10.0  # refused handshakes are logged as a count at most this often
WS_MAX_SIZE = max(MAX_CLIENT_WS_MESSAGE, 65535)  # uvicorn drops bigger frames (1009) before we see them


@dataclass(eq=False)
class _Session:
    sid: int
    conn: ServerConnection
    peer: str
    queue: asyncio.Queue[m.ServerMessage | Close] = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE_LIMIT))
    closing: bool = False
    sender: asyncio.Task[None] | None = None
    limiter: SessionLimiter | None = None
    timer: asyncio.TimerHandle | None = None  # releases the limiter's held messages


class ControlServer:
    """Runs the core for live WebSocket sessions; see the module docstring."""

    def __init__(self, core: Core, store: Store, server_key: PrivateKey,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.store = store
        self.server_key = server_key
        self.clock = clock
        self._sessions: dict[int, _Session] = {}
        self._sid = itertools.count(1)
        self._batches: asyncio.Queue[Effects] = asyncio.Queue()
        self._inflight = 0  # effects handed to the writer and not yet dispatched
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.admission = Admission(clock())
        self.replays = ReplayCache()
        self._refused_logged = (float("-inf"), 0)  # when we last logged refusals, and the count then
        self._pool = concurrent.futures.ThreadPoolExecutor(PASSWORD_POOL_WORKERS, thread_name_prefix="shoal-scrypt")
        self.password_pending = PASSWORD_POOL_PENDING  # jobs submitted and not finished, at most
        self._pw_inflight = 0
        self.stats = {"sessions": 0, "protocol_errors": 0, "too_slow": 0, "commits": 0, "refused": 0,
                      "rate_limited": 0, "sender_failures": 0, "password_jobs": 0, "password_busy": 0}

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._writer(), name="shoal-writer"),
                       asyncio.create_task(self._timer(), name="shoal-presence-timer")]

    async def stop(self) -> None:
        for s in list(self._sessions.values()):
            await s.conn.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._inflight:  # let already decided writes reach the disk
            try:
                await asyncio.wait_for(self._drained(), 5)
            except TimeoutError:
                log.error("store writes still pending at shutdown")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _drained(self) -> None:
        while self._inflight:
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------ effects
    def _emit(self, fx: Effects) -> None:
        if fx.out or fx.persist:
            if fx.persist or self._inflight:
                self._inflight += 1
                self._batches.put_nowait(fx)
            else:
                self._dispatch(fx.out)
            self._wake.set()
        for job in fx.jobs:
            self._submit(job)

    # ------------------------------------------------------------ password work (F3)
    def _submit(self, job: PasswordJob) -> None:
        """Run one job on the pool, or answer "busy" at once when the pool is full."""
        if self._pw_inflight >= self.password_pending:
            self.stats["password_busy"] += 1
            self._emit(self.core.password_failed(
                job.job_id, "busy", "the server is busy checking passwords; try again in a few seconds", self.clock()))
            return
        self._pw_inflight += 1
        self.stats["password_jobs"] += 1
        fut = asyncio.get_running_loop().run_in_executor(self._pool, job.run)
        fut.add_done_callback(lambda f: self._job_done(job, f))

    def _job_done(self, job: PasswordJob, fut: asyncio.Future[str | bool]) -> None:
        self._pw_inflight -= 1
        if fut.cancelled():  # shutting down
            return
        exc = fut.exception()
        if exc is not None:
            log.error("password job %d failed: %s: %s", job.job_id, type(exc).__name__, exc, exc_info=exc)
            self._emit(self.core.password_failed(job.job_id, "server_error",
                                                 "the server could not check the password", self.clock()))
            return
        self._emit(self.core.password_done(job.job_id, fut.result(), self.clock()))

    async def _writer(self) -> None:
        while True:
            first = await self._batches.get()
            group = [first]
            while not self._batches.empty():
                group.append(self._batches.get_nowait())
            try:
                await self.store.apply([p for fx in group for p in fx.persist])
                self.stats["commits"] += 1
            except Exception:  # the in-memory state stays right; say loudly that the disk is not
                log.exception("store write failed; %d effects not persisted", len(group))
            for fx in group:
                self._dispatch(fx.out)
            self._inflight -= len(group)

    def _dispatch(self, out: list[Send | Close]) -> None:
        for o in out:
            s = self._sessions.get(o.session)
            if s is None or s.closing:
                continue
            item: m.ServerMessage | Close = o.message if isinstance(o, Send) else o
            if isinstance(o, Close):
                s.closing = True
            try:
                s.queue.put_nowait(item)
            except asyncio.QueueFull:
                self.stats["too_slow"] += 1
                log.warning("session %d (%s): outgoing queue full, disconnecting", s.sid, s.peer)
                s.closing = True
                if s.sender is not None:
                    s.sender.cancel()
                asyncio.get_running_loop().create_task(
                    s.conn.close(CLOSE_TOO_SLOW, "too slow: outgoing queue full"))

    async def _timer(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            now = self.clock()
            if deadline is not None and deadline <= now:
                self._emit(self.core.handle_timer(now))
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), None if deadline is None else deadline - now)
            except TimeoutError:
                pass

    # ------------------------------------------------------------ sessions
    async def _sender(self, s: _Session) -> None:
        item: m.ServerMessage | Close | None = None
        try:
            while True:
                item = await s.queue.get()
                if isinstance(item, Close):
                    log.info("session %d (%s): closing %d %s", s.sid, s.peer, item.code, item.reason)
                    await s.conn.close(item.code, item.reason)
                    return
                await s.conn.send(item)
        except ConnectionClosed:
            return
        except Exception as exc:  # never die silently: the session ends, with the reason logged
            self.stats["sender_failures"] += 1
            log.error("session %d (%s): sending %s failed, closing the session: %s: %s", s.sid, s.peer,
                      type(item).__name__, type(exc).__name__, exc, exc_info=exc)
            s.closing = True
            await s.conn.close(CLOSE_INTERNAL_ERROR, f"server error sending {type(item).__name__}")

    def _log_refused(self, peer: str, reason: str) -> None:
        """Refusals come in floods: log the first, then a count at most every REFUSAL_LOG_INTERVAL."""
        now = self.clock()
        last, count = self._refused_logged
        if now - last >= REFUSAL_LOG_INTERVAL:
            more = self.stats["refused"] - 1 - count
            log.warning("control connection from %s refused before the handshake: %s%s", peer, reason,
                        f" ({more} more refused in the last {now - last:.0f} s)" if more > 0 and last > 0 else "")
            self._refused_logged = (now, self.stats["refused"])

    async def handle(self, ws: ServerSocket, remote_ip: str | None) -> None:
        """One control session, from the Noise handshake to the end of the connection."""
        peer = remote_ip or "?"
        ticket = self.admission.admit(remote_ip, self.clock())
        if not isinstance(ticket, Ticket):  # refused before reading a byte: no X25519 work
            self.stats["refused"] += 1
            self._log_refused(peer, ticket)
            with contextlib.suppress(Exception):
                await ws.close(CLOSE_TRY_AGAIN_LATER, ticket[:120])
            return
        try:
            conn = await accept(ws, self.server_key, timeout=HANDSHAKE_TIMEOUT, replays=self.replays)
        except AcceptFailed as exc:
            log.info("control connection from %s refused: %s", peer, exc)
            return
        finally:
            self.admission.release(ticket)
        sid = next(self._sid)
        s = _Session(sid, conn, f"{peer} {conn.node_public.fingerprint()}", limiter=SessionLimiter(self.clock()))
        self._sessions[sid] = s
        self.stats["sessions"] += 1
        s.sender = asyncio.create_task(self._sender(s), name=f"shoal-send-{sid}")
        self._emit(self.core.connect(sid, conn.node_public, self.clock(), remote_ip))
        reason = "closed"
        try:
            while not s.closing:
                if self.core.expects_pings(sid):  # a pinging node: silence = a dead path
                    try:
                        msg = await asyncio.wait_for(conn.recv(), m.SILENCE_TIMEOUT)
                    except TimeoutError:
                        reason = f"silent for {m.SILENCE_TIMEOUT:.0f} s (path to the node lost?)"
                        break
                else:
                    msg = await conn.recv()
                self._limited(s, msg)
        except ConnectionClosed as exc:
            reason = f"connection closed ({exc.code}) {exc.reason}".strip()
        except ProtocolFailure as exc:
            self.stats["protocol_errors"] += 1
            reason = f"protocol error: {exc}"
        finally:
            if s.timer is not None:
                s.timer.cancel()
            log.info("session %d (%s) ended: %s", sid, s.peer, reason)
            self._sessions.pop(sid, None)
            self._emit(self.core.disconnect(sid, self.clock()))
            if s.closing and not s.sender.done():
                try:  # let a queued Close (logout, protocol error) go out
                    await asyncio.wait_for(asyncio.shield(s.sender), 2.0)
                except (TimeoutError, asyncio.CancelledError):
                    pass
            s.sender.cancel()
            await conn.close(1000, "")

    # ------------------------------------------------------------ per-session limits (F8)
    def _limited(self, s: _Session, msg: m.ClientMessage) -> None:
        """Hand one message to the core as the session's limiter says (shoal.control.limits)."""
        assert s.limiter is not None
        now = self.clock()
        if self.core.session_node(s.sid) is None:  # before Login (and after the core closed it)
            self._emit(self.core.receive(s.sid, msg, now))
            return
        verdict = s.limiter.check(msg, now)
        if verdict is Verdict.PASS:
            self._emit(self.core.receive(s.sid, msg, now))
        elif verdict is Verdict.REFUSE:
            self._emit(Effects(out=[Send(s.sid, s.conn.node_public, m.Result(
                req_id=msg.req_id, ok=False, code="rate_limited", message=s.limiter.limit_text(msg)))]))  # type: ignore[union-attr]
        elif verdict is Verdict.HOLD:
            self._arm(s)
        elif verdict is Verdict.CLOSE:
            self.stats["rate_limited"] += 1
            log.warning("session %d (%s): over its rate limits for too long (%s), closing", s.sid, s.peer,
                        s.limiter.stats)
            text = "too many messages: over the rate limits for too long; closing"
            self._emit(Effects(out=[Send(s.sid, s.conn.node_public, m.Error(code="rate_limited", message=text)),
                                    Close(s.sid, CLOSE_RATE_LIMITED, "rate limited")]))
        # Verdict.DROP: nothing

    def _arm(self, s: _Session) -> None:
        assert s.limiter is not None
        deadline = s.limiter.next_deadline()
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if deadline is not None:
            delay = max(0.0, deadline - self.clock())
            s.timer = asyncio.get_running_loop().call_later(delay, self._release_held, s)

    def _release_held(self, s: _Session) -> None:
        s.timer = None
        if s.closing or s.sid not in self._sessions or s.limiter is None:
            return
        now = self.clock()
        for msg in s.limiter.due(now):
            self._emit(self.core.receive(s.sid, msg, now))
        self._arm(s)


def build_app(server: ControlServer, relay: RelayService | None = None) -> Litestar:
    document = server_key_document(server.server_key.public_key())

    @get("/v1/server-key", sync_to_thread=False)
    def server_key() -> Response[bytes]:
        return Response(content=document, media_type="application/json")

    @websocket("/control")
    async def control(socket: WebSocket) -> None:
        await socket.accept()
        await server.handle(socket, socket.client.host if socket.client else None)

    @websocket(RELAY_WS_PATH)
    async def relay_ws(socket: WebSocket) -> None:
        if relay is None:
            await socket.close(1008, "this server does not relay")
            return
        await socket.accept()

        async def frames() -> AsyncIterator[bytes]:
            while True:
                try:
                    data = await socket.receive_data("binary")
                except Exception:  # noqa: BLE001 - the framework's "disconnected", whatever it is
                    return
                if not isinstance(data, bytes):
                    return
                yield data

        await relay.serve_stream(frames(), socket.send_bytes)
        with contextlib.suppress(Exception):
            await socket.close()

    return Litestar(route_handlers=[server_key, control, relay_ws], on_startup=[server.start],
                    on_shutdown=[server.stop], openapi_config=None, logging_config=None)


@dataclass
class Running:
    """What `serve` reports once it listens."""

    host: str
    port: int
    server_key: PrivateKey
    control: ControlServer
    uvicorn: uvicorn.Server
    tls: bool = False

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def load_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context from a PEM certificate chain and its key, or OSError saying which file
    is wrong (missing, unreadable, not PEM, key not matching the certificate)."""
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            raise OSError(f"TLS {what} {path}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as e:
        raise OSError(f"TLS: {cert} and {key} are not a usable certificate and key ({e.reason or e})") from None
    except OSError as e:
        raise OSError(f"TLS: cannot read {e.filename or cert}: {e.strerror}") from None
    return ctx


async def serve(
    data_dir: Path,
    host: str,
    port: int,
    *,
    ready: Callable[[Running], Awaitable[None] | None] | None = None,
    grace: float = PRESENCE_GRACE,
    hasher: PasswordHasher | None = None,
    relay_port: int | None = RELAY_PORT,
    tls: tuple[Path, Path] | None = None,
) -> None:
    """Run the server until uvicorn is told to exit (SIGINT/SIGTERM, or `Running.uvicorn.should_exit`).
    `tls`: (certificate chain, private key) PEM files; checked before anything is opened
    (`load_tls` raises OSError with a clear message for a missing or unusable pair)."""
    if tls is not None:
        load_tls(*tls)
    key = load_or_create_server_key(data_dir)
    store = await Store.open(data_dir)
    relay: RelayService | None = None
    try:
        loaded = await store.load()
        now = time.monotonic()
        core = Core.from_state(
            loaded.ula_prefix, loaded.nodes, loaded.networks, loaded.members, loaded.bans,
            now=now, wall_offset=time.time() - now, grace=grace, hasher=hasher,
            relay=relay_port is not None, relay_port=relay_port or 0,
        )
        control = ControlServer(core, store, key)
        if relay_port is not None:
            relay = RelayService(RelayEngine(key, core.may_relay, may_bind=core_may_bind(core)), host, relay_port, udp=bool(relay_port), ws=False)
            try:
                await relay.start()
            except OSError as e:
                log.warning("the UDP relay is off (%s: %s); relaying over WebSocket only", relay_port, e.strerror)
                relay = RelayService(relay.engine, host, 0, udp=False, ws=False)
                core.relay_port = 0
        config = uvicorn.Config(
            build_app(control, relay), ws="websockets-sansio", ws_max_size=WS_MAX_SIZE,
            ws_per_message_deflate=False, ws_ping_interval=20.0, ws_ping_timeout=20.0,
            lifespan="on", log_level="warning", timeout_graceful_shutdown=3, access_log=False,
            proxy_headers=False,  # the source address feeds admission and the per-prefix limits: never
            #                       take it from X-Forwarded-For (uvicorn trusts it from 127.0.0.1 by default)
            ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog until uvicorn accepts
        userver = uvicorn.Server(config)
        bound = sock.getsockname()
        running = Running(host, bound[1], key, control, userver, tls=tls is not None)
        log.info("serving %d nodes, %d networks on %s:%d (pid %d)", len(core.nodes), len(core.networks),
                 host, bound[1], os.getpid())
        if ready is not None:
            r = ready(running)
            if r is not None:
                await r
        await userver.serve(sockets=[sock])
    finally:
        if relay is not None:
            await relay.close()
            log.info("relay counters: %s", dict(relay.engine.stats))
        await store.close()
