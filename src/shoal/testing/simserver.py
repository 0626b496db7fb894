"""The server's UDP side and relay WebSocket in the simulation, glued as the real server does.

Owns, on the server's fakenet host (`shoal.testing.fakenet.Host`) and the SimLoop:

- `SimStun`: the real `shoal.nat.responder.StunResponder` behind one `SimBind` per local
  endpoint (address x port), each reply sent from the bind the responder names: the job of
  `shoal.server.stunlistener.StunListener`, whose datagram endpoints a SimLoop refuses.
- `start_relay(core, key, node, sched)`: the real `RelayService` around a `RelayEngine` under
  the server key with the core's membership oracle (`Core.may_relay`, `core_may_bind`),
  exactly as `shoal.server.app.serve` builds it, its UDP side a `SimBind` on `node`.
- `RelayWsDialer`: the daemon's relay WebSocket dialer (`DaemonEnv.relay_ws_connect`,
  called like `websockets.connect(url, ...)`) into the service's `serve_stream`, over an
  in-memory pair (`shoal.testing.simcontrol.ws_pair`); `up = False` refuses new sessions
  and `drop_all()` ends the live ones (a relay restart).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import websockets

from shoal.clock import Scheduler
from shoal.constants import RELAY_PORT
from shoal.endpoint import Endpoint
from shoal.nat.responder import StunResponder
from shoal.relay.engine import RelayEngine
from shoal.relay.service import RelayService, core_may_bind
from shoal.server.core import Core
from shoal.testing.fakenet import Host
from shoal.testing.simcontrol import MemoryWebSocket, ws_pair
from shoal.testing.simnet import SimBind, bind_factory
from shoal.wireguard.keys import PrivateKey

__all__ = ["RelayWsDialer", "SimStun", "start_relay"]


class SimStun:
    """A STUN responder on SimBinds (module docstring); `close()` releases them."""

    def __init__(self, responder: StunResponder, node: Host, sched: Scheduler) -> None:
        self.responder = responder
        self.sched = sched
        self.stats: collections.Counter[str] = collections.Counter()
        self.binds: dict[Endpoint, SimBind] = {}
        open_bind = bind_factory(node, sched)
        for ep in responder.local_endpoints():
            b = self.binds[ep] = open_bind(ep[1], host=ep[0])
            b.set_reader(lambda ep=ep, b=b: self._read(ep, b))

    def _read(self, local: Endpoint, b: SimBind) -> None:
        for data, src in b.recv_batch():
            self.stats["received"] += 1
            reply = self.responder.handle(data, src, local, self.sched.time())
            if reply is None:
                continue
            out = self.binds.get(reply.local)
            if out is None or out.closed:
                self.stats["dropped:no-socket"] += 1
                continue
            out.send_batch([(reply.data, reply.dst)])
            self.stats["sent"] += 1

    def close(self) -> None:
        for b in self.binds.values():
            b.close()
        self.binds.clear()


async def start_relay(core: Core, key: PrivateKey, node: Host, sched: Scheduler, *,
                      port: int = RELAY_PORT) -> RelayService:
    """The server's built-in relay (as `shoal.server.app.serve` makes it) on fake `node`."""
    engine = RelayEngine(key, core.may_relay, may_bind=core_may_bind(core))
    relay = RelayService(engine, node.address, port, udp=True, ws=False, bind=bind_factory(node, sched), sched=sched)
    await relay.start()
    return relay


class _Session:
    """What `websockets.connect(...)` gives: an async context manager around a connection."""

    def __init__(self, dialer: RelayWsDialer) -> None:
        self.dialer = dialer
        self.ws: MemoryWebSocket | None = None

    async def __aenter__(self) -> MemoryWebSocket:
        if not self.dialer.up:
            raise OSError("simulated relay WebSocket refused")
        client, server = ws_pair()
        self.dialer.live.append(server)
        self.dialer.sessions += 1
        task = asyncio.get_running_loop().create_task(self.dialer.serve(server))
        self.dialer.tasks.add(task)
        task.add_done_callback(self.dialer.tasks.discard)
        self.ws = client
        return client

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()


class RelayWsDialer:
    """`websockets.connect`-compatible dialer into `relay.serve_stream` (module docstring)."""

    def __init__(self, relay: RelayService) -> None:
        self.relay = relay
        self.up = True
        self.sessions = 0
        self.live: list[MemoryWebSocket] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, url: str, **_kw: Any) -> _Session:
        return _Session(self)

    async def serve(self, ws: MemoryWebSocket) -> None:
        async def frames() -> AsyncIterator[bytes]:
            with contextlib.suppress(websockets.ConnectionClosed):
                while True:
                    msg = await ws.recv()
                    if not isinstance(msg, bytes):
                        await ws.close(1003, "binary relay frames only")
                        return
                    yield msg

        with contextlib.suppress(websockets.ConnectionClosed):
            await self.relay.serve_stream(frames(), ws.send_bytes)
        self.live = [w for w in self.live if w is not ws]

    def drop_all(self) -> None:
        for w in self.live:
            w.drop()
        self.live = []
