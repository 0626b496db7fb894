"""A minimal control-plane node for the server's web tests and the control-plane benchmark.

Owns: one control session (`shoal.control.transport.connect`), a reader task that answers
requests by req_id, keeps a `ViewMirror` (asking for a resync on a version gap, as the
contract says) and calls `on_view` after each applied view message, so a caller can time
when a change reached this node. It has no WireGuard and no reconnect logic: the real node
is `shoal.daemon`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

from shoal.control import messages as m
from shoal.control.transport import ClientConnection, ConnectionClosed, ProtocolFailure, connect
from shoal.testing.viewmirror import ViewMirror
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = ["ControlClient"]


class ControlClient:
    def __init__(self, conn: ClientConnection, clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self.clock = clock
        self.mirror = ViewMirror()
        self.login_ok: m.LoginOk | None = None
        self.errors: list[m.Error] = []
        self.checks: list[m.CheckPeer] = []
        self.closed: ConnectionClosed | ProtocolFailure | None = None
        self.on_view: Callable[[ControlClient, float], None] | None = None
        self._req = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[m.Result]] = {}
        self._pongs: dict[int, asyncio.Future[float]] = {}
        self._changed = asyncio.Event()
        self._full_view = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def login(cls, url: str, key: PrivateKey, server_public: PublicKey, *, timeout: float = 10.0,
                    local_addr: tuple[str, int] | None = None, dial: Callable[..., Any] = connect,
                    clock: Callable[[], float] = time.monotonic, **login: Any) -> ControlClient:
        """Connect (from `local_addr` if given; through `dial`, default `transport.connect`, e.g.
        the simulation's `SimControl.dial`), send Login, wait for LoginOk and the first FullView."""
        kw = {"local_addr": local_addr} if local_addr is not None else {}
        c = cls(await dial(url, key, server_public, timeout=timeout, **kw), clock)
        c._reader = asyncio.create_task(c._read())
        await c.conn.send(m.Login(**login))
        await asyncio.wait_for(c._full_view.wait(), timeout)
        return c

    @property
    def node_id(self) -> str:
        assert self.login_ok is not None
        return self.login_ok.node.node_id

    async def _read(self) -> None:
        try:
            while True:
                msg = await self.conn.recv()
                now = self.clock()
                if isinstance(msg, m.Result):
                    fut = self._waiting.pop(msg.req_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif isinstance(msg, (m.FullView, m.ViewUpdate)):
                    full_views = self.mirror.full_views
                    if not self.mirror.apply(msg):
                        await self.conn.send(m.ResyncRequest(have_version=self.mirror.version or 0))
                        continue
                    if self.mirror.staged:
                        continue  # a part of a split view: the rest follows
                    if self.mirror.full_views != full_views:
                        self._full_view.set()
                    if self.on_view is not None:
                        self.on_view(self, now)
                    self._changed.set()
                elif isinstance(msg, m.LoginOk):
                    self.login_ok = msg
                elif isinstance(msg, m.Pong):
                    pf = self._pongs.pop(msg.nonce, None)
                    if pf is not None and not pf.done():
                        pf.set_result(now)
                elif isinstance(msg, m.Error):
                    self.errors.append(msg)
                elif isinstance(msg, m.CheckPeer):
                    self.checks.append(msg)
                    self._changed.set()
        except (ConnectionClosed, ProtocolFailure) as exc:
            self.closed = exc
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed(None, "closed while waiting for a result"))
            self._changed.set()

    async def request(self, cls: type, /, *, timeout: float = 10.0, **kw: Any) -> m.Result:
        req_id = next(self._req)
        fut: asyncio.Future[m.Result] = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = fut
        await self.conn.send(cls(req_id=req_id, **kw))
        return await asyncio.wait_for(fut, timeout)

    async def ping(self, nonce: int, timeout: float = 10.0) -> float:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pongs[nonce] = fut
        t0 = self.clock()
        await self.conn.send(m.Ping(nonce=nonce))
        return await asyncio.wait_for(fut, timeout) - t0

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Until `predicate()` holds after some view change; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                if self._reader is not None and self._reader.done():
                    raise ConnectionClosed(None, "session ended while waiting")
                await self._changed.wait()

    async def wait_closed(self, timeout: float = 10.0) -> ConnectionClosed | ProtocolFailure | None:
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.closed

    async def close(self) -> None:
        await self.conn.close()
        if self._reader is not None:
            try:
                await asyncio.wait_for(self._reader, 5)
            except (TimeoutError, asyncio.CancelledError):
                self._reader.cancel()
