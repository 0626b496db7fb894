"""The control server in the simulation: an in-memory WebSocket pair and a dialer into a real
`ControlServer`, so real daemons log in, sync and lose their server in virtual time.

Owns:

- `ws_pair()`: two connected in-memory WebSocket ends (`MemoryWebSocket`). Each end is both a
  node-side `shoal.control.transport.ClientSocket` (`send`/`recv`/`close`, as a `websockets`
  client connection) and a server-side `ServerSocket` (`receive_bytes`/`send_bytes`/`close`).
  Messages (bytes or text) arrive in order; `close(code, reason)` ends both directions: the
  peer's next `recv` (after what was already queued) and every later call on either end raise
  `websockets.ConnectionClosed` carrying that code and reason. `drop()` is a lost connection
  (no close frame: the transport reports code None, "connection lost").
- `SimControl`: a real `ControlServer` (real `Core` from the store's state, real `Store` on a
  SQLite file via `shoal.testing.simstore`) and `dial`, a drop-in for `transport.connect`
  (the `DaemonEnv.connect` seam) that runs the real Noise handshake of `transport.connect_over`
  over a fresh pair into `ControlServer.handle`. Password jobs run inline (the SimLoop's
  executor). `fetch_key` is the `DaemonEnv.fetch_server_key` seam (trust on first use).
- Outage: `outage()` drops every live session and refuses new dials (ConnectError, as an
  unreachable host); `restore()` accepts again. The core keeps its state (as a server whose
  process is back with the same database).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import websockets
from websockets.frames import Close

from shoal.control.transport import ClientConnection, ConnectError, connect_over
from shoal.server.app import ControlServer
from shoal.server.core import PRESENCE_GRACE, Core
from shoal.server.passwords import PasswordHasher
from shoal.server.store import Store
from shoal.testing.simstore import open_store
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = ["MemoryWebSocket", "SimControl", "ws_pair"]

_LOST = Close(1006, "")  # marker: the connection went away without a close frame


class MemoryWebSocket:
    """One end of an in-memory WebSocket (module docstring)."""

    def __init__(self) -> None:
        self.peer: MemoryWebSocket | None = None
        self._inbox: deque[bytes | str | Close] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: Close | None = None  # set once this end is closed (by either side)
        self.sent = 0

    def _error(self, close: Close) -> websockets.ConnectionClosed:
        if close is _LOST:
            return websockets.ConnectionClosed(None, None)
        return websockets.ConnectionClosed(close, close, True)

    def _push(self, item: bytes | str | Close) -> None:
        self._inbox.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def send(self, message: bytes | str) -> None:
        if self._closed is not None:
            raise self._error(self._closed)
        assert self.peer is not None
        self.sent += 1
        self.peer._push(message)

    async def recv(self) -> bytes | str:
        while not self._inbox:
            if self._closed is not None:
                raise self._error(self._closed)
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = self._inbox.popleft()
        if isinstance(item, Close):
            self._closed = item
            self._inbox.clear()
            raise self._error(item)
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._end(Close(code, reason))

    def drop(self) -> None:
        """The connection is lost: no close frame either way."""
        self._end(_LOST)

    def _end(self, close: Close) -> None:
        if self._closed is not None:
            return
        self._closed = close
        self._push(close)  # wakes our own reader
        if self.peer is not None and self.peer._closed is None:
            self.peer._push(close)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def __aiter__(self) -> AsyncIterator[bytes | str]:
        """Messages until a normal close (1000/1001); other closes raise, as in websockets."""
        while True:
            try:
                yield await self.recv()
            except websockets.ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code in (1000, 1001):
                    return
                raise

    # the server side's ServerSocket names
    async def receive_bytes(self) -> bytes:
        data = await self.recv()
        if not isinstance(data, bytes):
            raise TypeError("text message on a binary WebSocket")
        return data

    async def send_bytes(self, data: bytes) -> None:
        await self.send(data)


def ws_pair() -> tuple[MemoryWebSocket, MemoryWebSocket]:
    """Two connected ends: (client, server)."""
    a, b = MemoryWebSocket(), MemoryWebSocket()
    a.peer, b.peer = b, a
    return a, b


class SimControl:
    """A real control server reached through in-memory WebSockets (module docstring)."""

    def __init__(self, control: ControlServer, store: Store) -> None:
        self.control = control
        self.store = store
        self.up = True
        self.dials = 0
        self._live: list[MemoryWebSocket] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def start(cls, data_dir: Path, *, key: PrivateKey | None = None, grace: float = PRESENCE_GRACE,
                    relay_port: int = 0, **core_kw: Any) -> SimControl:
        """Open the store in `data_dir`, rebuild the core from it, start the server's tasks."""
        store = await open_store(data_dir)
        loaded = await store.load()
        loop = asyncio.get_running_loop()
        now = loop.time()
        core_kw.setdefault("hasher", PasswordHasher(log2_n=4))  # cheap scrypt: the sim checks logic, not cost
        core = Core.from_state(loaded.ula_prefix, loaded.nodes, loaded.networks, loaded.members, loaded.bans,
                               now=now, wall_offset=0.0, grace=grace, relay=relay_port != 0,
                               relay_port=relay_port, **core_kw)
        control = ControlServer(core, store, key or PrivateKey.from_seed(b"sim-server"), clock=loop.time)
        await control.start()
        return cls(control, store)

    @property
    def public_key(self) -> PublicKey:
        return self.control.server_key.public_key()

    async def dial(self, url: str, node_key: PrivateKey, server_public: PublicKey, *,
                   timeout: float = 10.0, remote_ip: str = "198.51.100.1", **_kw: Any) -> ClientConnection:
        """`transport.connect` into this server (ConnectError while it is out)."""
        self.dials += 1
        if not self.up:
            raise ConnectError(f"cannot reach the control server at {url}: simulated outage")
        client, server = ws_pair()
        self._live = [w for w in self._live if not w.closed] + [server]
        task = asyncio.get_running_loop().create_task(self.control.handle(server, remote_ip))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await connect_over(client, url, node_key, server_public, timeout=timeout)

    async def fetch_key(self, url: str) -> PublicKey:
        if not self.up:
            raise OSError(f"cannot reach {url}: simulated outage")
        return self.public_key

    def outage(self) -> None:
        """Drop every live session and refuse new ones until `restore`."""
        self.up = False
        for w in self._live:
            w.drop()
        self._live = []

    def restore(self) -> None:
        self.up = True

    async def stop(self) -> None:
        self.outage()
        await self.control.stop()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()
