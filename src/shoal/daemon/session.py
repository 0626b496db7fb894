"""The daemon's control session: connect, Login, read loop, keepalive, reconnect, requests.

Owns: the `control` task of `shoal.daemon.daemon.Daemon` (`ControlSession`) and the request
correlation table (`Requests`). The session alone mutates the daemon's `conn`, `state`,
`state_since`, `last_error`, `next_try_at`, `connects` and the server's features
(`server_checks`, `server_disco`, `server_lan`); it applies the server's views to `view`.

Connection states (`Daemon.state`; every change is logged, a lost connection as a warning):

    logged-out    no pinned server: wait until login restarts the task
    connecting    dialing (Noise IK to the pinned key), then Login
    connected     LoginOk received: read messages; Ping every KEEPALIVE_INTERVAL; SILENCE_TIMEOUT
                  without a frame = the server is lost
    reconnecting  the last attempt or session failed (`last_error` says why); retry after
                  `Backoff` (`next_try_at`); nothing is torn down meanwhile

Requests (`Requests`): each request to the server carries a fresh req_id; the read loop hands
the server's `Result` with that req_id to the one waiting caller. A caller waits at most
REQUEST_TIMEOUT (504); a send failure or a dropped connection fails it with 503 not_connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import msgspec

from shoal import __version__
from shoal.control import messages as M
from shoal.daemon import identity
from shoal.daemon.backoff import Backoff
from shoal.daemon.env import sleep
from shoal.daemon.identity import ServerPin
from shoal.daemon.localapi import HttpError
from shoal.daemon.traversal import relay_ws_url
from shoal.daemon.view import Outcome

# `Daemon` below is shoal.daemon.daemon.Daemon (not imported: it imports this module)
Daemon = Any

log = logging.getLogger("shoal.daemon")

REQUEST_TIMEOUT = 10.0
LOGIN_TIMEOUT = 15.0


def _transport() -> Any:
    from shoal.control import transport  # lazily: `shoal status` needs no websockets

    return transport


def io_errors() -> tuple[type[BaseException], ...]:
    """What a failing control connection raises."""
    return (_transport().TransportError, OSError)


class LoginFailed(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class Requests:
    """req_id -> the caller waiting for the server's Result."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[M.Result]] = {}
        self._next = 1

    async def call(self, conn: Any, build: Callable[[int], M._Msg], timeout: float | None = None) -> M.Result:
        req_id = self._next
        self._next += 1
        try:
            msg = build(req_id)
        except (msgspec.ValidationError, TypeError, ValueError) as e:
            raise HttpError(400, f"invalid input: {e}", "invalid") from None
        fut: asyncio.Future[M.Result] = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        limit = REQUEST_TIMEOUT if timeout is None else timeout
        try:
            await conn.send(msg)
            return await asyncio.wait_for(fut, limit)
        except asyncio.TimeoutError:
            raise HttpError(504, f"the server did not answer within {limit:.0f} s", "timeout") from None
        except io_errors() as e:
            raise HttpError(503, f"the control connection failed: {e}", "not_connected") from None
        finally:
            self.pending.pop(req_id, None)

    def answer(self, msg: M.Result) -> None:
        fut = self.pending.pop(msg.req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def fail_all(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(HttpError(503, "the control connection dropped before the server answered", "not_connected"))
        self.pending.clear()


class ControlSession:
    """The control task of one daemon (see the module docstring for what it mutates)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.requests = Requests()
        self.login_waiter: asyncio.Future[M.SelfInfo] | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ task

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="control")

    async def stop(self) -> None:
        """Cancel the task and wait until it has ended.

        The cancel is repeated until the task is done: on Python 3.11 `asyncio.wait_for` drops a cancel
        that arrives as its inner awaitable completes (CPython gh-86296), and a lost cancel left the task
        waiting for a login that never came while `shoal login`/`shoal logout` waited for this (issue 17).
        """
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        if task is not None and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()

    async def restart(self) -> None:
        await self.stop()
        self.start()

    def set_state(self, state: str, error: str | None = None) -> None:
        d = self.d
        if state != d.state:
            why = f" ({error})" if error else ""
            level = logging.WARNING if state == "reconnecting" and d.state == "connected" else logging.INFO
            log.log(level, "server connection: %s -> %s%s", d.state, state, why)
            d.mark_state(state)
        if error is not None:
            d.last_error = error

    async def _loop(self) -> None:
        d, t = self.d, _transport()
        backoff = Backoff()
        while True:
            pin = d.pin
            if pin is None:
                self.set_state("logged-out")
                await asyncio.Event().wait()  # until login restarts this task
            conn = None
            try:
                d.next_try_at = None
                if d.state != "reconnecting":
                    self.set_state("connecting")
                try:
                    conn = await d.env.connect(identity.control_url(pin.url), d.key, pin.public_key)
                except t.ServerKeyMismatch as e:
                    log.error("REFUSING the server: %s", e)
                    raise LoginFailed(str(e), "server_key_mismatch") from None
                except io_errors() as e:
                    raise LoginFailed(str(e), "unreachable") from None
                await self._session(conn, pin, backoff)
            except LoginFailed as e:
                self.set_state("reconnecting", e.args[0])
                self._fail_login(e)
            except asyncio.TimeoutError:  # before OSError: TimeoutError is one
                self.set_state("reconnecting", f"the server was silent for {M.SILENCE_TIMEOUT:g} s (path lost?)")
                self._fail_login(LoginFailed("the server does not answer", "unreachable"))
            except io_errors() as e:
                self.set_state("reconnecting", f"control connection lost: {e}")
                self._fail_login(LoginFailed(str(e), "unreachable"))
            finally:
                d.conn = None
                self.requests.fail_all()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(3):  # unlike wait_for, never drops our own cancel
                            await conn.close()
            delay = backoff.next_delay()
            d.next_try_at = d.sched.time() + delay
            log.info("reconnecting in %.1f s (tunnels kept; checking them actively)", delay)
            await sleep(d.sched, delay)

    def _fail_login(self, e: LoginFailed) -> None:
        w, self.login_waiter = self.login_waiter, None
        if w is not None and not w.done():
            w.set_exception(e)

    # ------------------------------------------------------------------ one session

    async def _session(self, conn: Any, pin: ServerPin, backoff: Backoff) -> None:
        d = self.d
        port = d.plane.listen_port if d.plane is not None else 0
        # --nickname names a new node; afterwards the server's (set-nick) is kept across reconnects
        nickname = d.opts.nickname if d.view.node is None else None
        await conn.send(M.Login(nickname=nickname, listen_port=port or 0, endpoints=d.endpoints,
                                have_version=d.view.version, software=f"shoal {__version__}",
                                features=[M.FEATURE_CHECK_PEER, M.FEATURE_LAN]))
        first = await asyncio.wait_for(conn.recv(), LOGIN_TIMEOUT)
        if isinstance(first, M.Error):
            raise LoginFailed(f"the server refused the login: {first.message or first.code}", first.code or "refused")
        if not isinstance(first, M.LoginOk):
            raise LoginFailed(f"the server answered the login with {type(first).__name__}", "protocol")
        d.conn = conn
        d.connects += 1
        backoff.reset()
        d.server_checks = M.FEATURE_CHECK_PEER in first.features
        d.server_disco = M.FEATURE_DISCO in first.features
        if d.traversal is not None and d.server_disco:
            await self._traversal_server(pin, first)
        d.server_lan = M.FEATURE_LAN in first.features
        d.livecheck.on_login()
        self.set_state("connected", "")
        log.info("logged in to %s as %s (%s), %s", pin.url, first.node.node_id, first.node.nickname, first.node.ipv4)
        await d.reconciler.set_self(first.node)
        w, self.login_waiter = self.login_waiter, None
        if w is not None and not w.done():
            w.set_result(first.node)
        pinger = asyncio.create_task(self._keepalive(conn), name="control-keepalive")
        try:
            await self._read(conn)
        finally:
            pinger.cancel()

    async def _traversal_server(self, pin: ServerPin, ok: M.LoginOk) -> None:
        """Tell traversal where the server's STUN and relay are, and report our candidates."""
        d = self.d
        assert d.traversal is not None
        url = identity.control_url(pin.url)
        host = url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        try:
            server_ip = await d.env.resolve(host)
        except (OSError, IndexError) as e:
            log.warning("cannot resolve the server %s for STUN/relay: %s", host, e)
            return
        relay = M.FEATURE_RELAY in ok.features
        d.traversal.set_server(server_ip, pin.public_key, relay_port=ok.relay_port if relay else 0,
                               relay_ws_url=relay_ws_url(url) if relay else None)
        cands, hard = d.traversal.report()
        self.on_candidates(cands, hard)

    def on_candidates(self, cands: list[M.Candidate], hard: bool) -> None:
        conn = self.d.conn
        if conn is None or not self.d.server_disco:
            return  # sent after the next login
        self.d.spawn(send_quiet(conn, M.Candidates(candidates=cands, nat_hard=hard)))

    async def _keepalive(self, conn: Any) -> None:
        """Ping every KEEPALIVE_INTERVAL: the server (and we) notice a dead path by silence."""
        nonce = 0
        with contextlib.suppress(*io_errors()):
            while True:
                await sleep(self.d.sched, M.KEEPALIVE_INTERVAL)
                nonce += 1
                await conn.send(M.Ping(nonce=nonce))

    async def _read(self, conn: Any) -> None:
        while True:
            msg = await asyncio.wait_for(conn.recv(), M.SILENCE_TIMEOUT)
            if isinstance(msg, M.CheckPeer):
                self.d.livecheck.on_check_peer(msg)
            elif isinstance(msg, (M.FullView, M.ViewUpdate)):
                await self._on_view(conn, msg)
            elif isinstance(msg, M.Result):
                self.requests.answer(msg)
            elif isinstance(msg, M.Error):
                raise LoginFailed(f"the server closed the session: {msg.message or msg.code}", msg.code or "error")
            # Pong and anything else: nothing to do

    async def _on_view(self, conn: Any, msg: M.FullView | M.ViewUpdate) -> None:
        d = self.d
        outcome = d.view.apply(msg)
        if outcome is Outcome.RESYNC:
            log.info("view version gap or view part out of sequence (have %s, update %s->%s): asking for a resync",
                     d.view.version, getattr(msg, "prev_version", None), msg.version)
            await conn.send(M.ResyncRequest(have_version=d.view.version or 0))
            return
        if outcome in (Outcome.STALE, Outcome.STAGED):  # STAGED: more parts of a split view to come
            return
        await d.reconciler.reconcile()
        full = d.view.as_full_view()
        if full is not None:
            with contextlib.suppress(OSError):
                identity.save_view(d.opts.state_dir, d.key, M.encode(full))

    # ------------------------------------------------------------------ requests

    async def request(self, build: Callable[[int], M._Msg]) -> M.Result:
        d = self.d
        conn = d.conn
        if conn is None:
            why = f" ({d.last_error})" if d.last_error else ""
            if d.pin is None:
                raise HttpError(409, "not logged in: run `shoal login SERVER_URL` first", "not_logged_in")
            raise HttpError(503, f"not connected to the server {d.pin.url}{why}", "not_connected")
        return await self.requests.call(conn, build)


async def send_quiet(conn: Any, msg: M._Msg) -> None:
    """Send, ignoring a failing connection (the read loop notices it)."""
    with contextlib.suppress(*io_errors()):
        await conn.send(msg)
