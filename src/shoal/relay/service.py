"""The relay service (asyncio glue): a UDP listener and a WebSocket endpoint around
`shoal.relay.engine.RelayEngine`, and the standalone `shoal relay` command.

Owns: the sockets, the clock, one session number per WebSocket, the engine's timer, and the
standalone membership oracle. Seams (for the simulation tier): `bind` opens the UDP side
(`shoal.udp.bind.BindFactory`, default `open_udp`) and `sched` gives time and the timer
(`shoal.clock.Scheduler`, default the running loop).

    UDP        HOST:PORT   one relay frame per datagram (`shoal.relay.frames`), read in
                           batches (`shoal.udp.socket.UdpSocket`, GRO) and answered in batches
    WebSocket  HOST:PORT   (TCP, same number) path RELAY_WS_PATH ("/relay"): one binary message
                           per relay frame; text messages, other paths and frames above
                           RELAY_MAX_FRAME close that session (1003/1008/1009). Each
                           connection is one `StreamBinding`; its end unbinds the node.

Ordering: every engine call runs on the event loop, to completion, and its outbox is sent
right after (UDP with one send_batch; WebSocket frames through a bounded per-session queue
of WS_QUEUE_LIMIT frames: a session that cannot keep up loses frames, counted as
`ws_queue_full`, like a congested UDP path, instead of buffering without bound).

Standalone membership (`shoal relay`): the relay reads the coordination server's SQLite
store (DATA_DIR/shoal.db, read-only) when it changed, looked at every
RELAY_MEMBERSHIP_REFRESH seconds, one row per membership (never the member pairs), and
relays between two node keys only when both are present, approved, online members of a
common network (`StoreMembership`: the server core's rule, presence included). Inside the server process (`shoal.server.app`) the core answers
(`Core.may_relay`), and the server's HTTP port also takes relay WebSocket sessions
(`serve_stream`).
The relay authenticates nodes against the server's static key (DATA_DIR/server.key), which
every node pins at login, so no new key is distributed. (Issue 18 F13 left for the relay
tickets of issue 14: a relay key of its own needs the server to hand nodes that key, a
control-protocol change; and signed tickets remove the database read.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import typer
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

from shoal.clock import Cancellable, Scheduler, running
from shoal.constants import RELAY_MAX_FRAME, RELAY_MEMBERSHIP_REFRESH, RELAY_PORT, RELAY_WS_PATH, SERVER_DATA_DIR
from shoal.relay import authz
from shoal.relay.engine import Binding, MayRelay, RelayEngine, RelayLimits, StreamBinding, UdpBinding
from shoal.udp.bind import Bind, BindFactory, open_udp
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = ["RelayService", "StoreMembership", "core_may_bind", "relay", "main", "WS_QUEUE_LIMIT"]

log = logging.getLogger("shoal.relay")

WS_QUEUE_LIMIT = 4096
_UDP_BATCH = 256


def _udp_host(host: str) -> str:
    """UdpSocket is an AF_INET6 dual-stack socket: IPv4 addresses bind as v4-mapped."""
    if host in ("0.0.0.0", ""):
        return "::"
    if ":" not in host:
        return "::ffff:" + host
    return host


class RelayService:
    """UDP + WebSocket around one engine. `start()`, then `close()`; ports in udp_port/ws_port."""

    def __init__(self, engine: RelayEngine, host: str = "127.0.0.1", port: int = RELAY_PORT,
                 *, udp: bool = True, ws: bool = True, ws_port: int | None = None,
                 bind: BindFactory = open_udp, sched: Scheduler | None = None) -> None:
        self.engine = engine
        self._bind = bind
        self._sched = sched
        self.host = host
        self.port = port
        self._want_udp = udp
        self._want_ws = ws
        self._ws_port_wanted = port if ws_port is None else ws_port
        self.udp: Bind | None = None
        self.udp_port: int | None = None
        self.ws_port: int | None = None
        self._ws_server: Server | None = None
        self._sessions: dict[int, asyncio.Queue[bytes]] = {}
        self._sids = itertools.count(1)
        self._timer: Cancellable | None = None
        self._armed_at: float | None = None
        self._closed = False
        self.stats: dict[str, int] = {"ws_queue_full": 0, "ws_sessions": 0}

    async def start(self) -> None:
        self._sched = running(self._sched)
        if self._want_udp:
            self.udp = self._bind(self.port, host=_udp_host(self.host))
            self.udp_port = self.udp.port
            self.udp.set_reader(self._on_udp)
        if self._want_ws:
            ws_port = self.udp_port if (self.udp_port and self._ws_port_wanted == 0 and self._want_udp) else self._ws_port_wanted
            self._ws_server = await serve(self._ws_handler, self.host, ws_port, max_size=RELAY_MAX_FRAME,
                                          compression=None, ping_interval=20, ping_timeout=20)
            self.ws_port = self._ws_server.sockets[0].getsockname()[1] if self._ws_server.sockets else None
        log.info("relay %s listening: udp %s:%s, websocket ws://%s:%s%s", self.engine.public_key.fingerprint(),
                 self.host, self.udp_port, self.host, self.ws_port, RELAY_WS_PATH)

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.udp is not None:
            self.udp.close()
            self.udp = None
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
            self._ws_server = None

    # ------------------------------------------------------------------ plumbing

    def _flush(self) -> None:
        self._arm()
        out = self.engine.take_outbox()
        if not out:
            return
        udp_out = []
        for data, binding in out:
            if isinstance(binding, UdpBinding):
                udp_out.append((data, (binding.ip, binding.port)))
            else:
                q = self._sessions.get(binding.session)
                if q is None:
                    continue
                try:
                    q.put_nowait(data)
                except asyncio.QueueFull:
                    self.stats["ws_queue_full"] += 1
        if udp_out and self.udp is not None:
            self.udp.send_batch(udp_out)

    def _now(self) -> float:
        self._sched = running(self._sched)
        return self._sched.time()

    def _on_udp(self) -> None:
        assert self.udp is not None
        batch = self.udp.recv_batch(_UDP_BATCH)
        now = self._now()
        receive = self.engine.receive
        for data, (ip, port) in batch:
            receive(data, UdpBinding(ip, port), now)
        self._flush()

    def _arm(self) -> None:
        """Keep one loop timer at the engine's next deadline (rescheduled only when it moves)."""
        deadline = self.engine.next_deadline()
        if deadline == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = deadline
        if deadline is not None and not self._closed:
            sched = running(self._sched)
            self._timer = sched.call_at(max(deadline, sched.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_at = None
        self.engine.tick(self._now())
        self._flush()

    async def serve_stream(self, frames: AsyncIterator[bytes], send: Callable[[bytes], Awaitable[None]]) -> None:
        """One stream session (a WebSocket of this service or of the server's HTTP port):
        `frames` yields the client's binary messages, `send` delivers ours. Returns when the
        client's side ends; the node's binding ends with it."""
        sid = next(self._sids)
        binding: Binding = StreamBinding(sid)
        q: asyncio.Queue[bytes] = asyncio.Queue(WS_QUEUE_LIMIT)
        self._sessions[sid] = q
        self.stats["ws_sessions"] += 1
        sender = asyncio.create_task(self._stream_sender(send, q))
        try:
            async for msg in frames:
                self.engine.receive(msg, binding, self._now())
                self._flush()
        finally:
            sender.cancel()
            self._sessions.pop(sid, None)
            self.engine.disconnect(binding, self._now())
            self._flush()

    async def _ws_handler(self, conn: ServerConnection) -> None:
        if conn.request is None or conn.request.path.split("?")[0] != RELAY_WS_PATH:
            await conn.close(1008, "not a relay endpoint")
            return

        async def frames() -> AsyncIterator[bytes]:
            async for msg in conn:
                if not isinstance(msg, bytes):
                    await conn.close(1003, "binary relay frames only")
                    return
                yield msg

        with contextlib.suppress(websockets.ConnectionClosed):
            await self.serve_stream(frames(), conn.send)

    @staticmethod
    async def _stream_sender(send: Callable[[bytes], Awaitable[None]], q: asyncio.Queue[bytes]) -> None:
        with contextlib.suppress(Exception):  # the session's end is noticed by its reader
            while True:
                await send(await q.get())


class StoreMembership:
    """Membership oracle from the server's SQLite store, with the server core's rule
    (`shoal.relay.authz.may_relay`, which `Core.may_relay` applies too): (src, dst) are two
    different nodes, both present (`nodes.present`, written through by the server), approved
    (not pending) and online members of a common network.

    Loading (issue 18 F13): one row per approved, online membership (O(memberships), never
    the O(N^2) member pairs), kept as node key -> frozenset of network ids, and the set of
    present keys; the rule combines the two (presence is not filtered in SQL). `refresh()` (every RELAY_MEMBERSHIP_REFRESH seconds) first asks SQLite's
    `PRAGMA data_version` on its one read-only connection and reloads only when another
    connection committed since; a failed read keeps the last answer and logs."""

    _PRESENT = "SELECT public_key FROM nodes WHERE present = 1"
    _QUERY = """
        SELECT n.public_key, m.network_id
        FROM memberships m JOIN nodes n ON n.node_id = m.node_id
        WHERE m.pending = 0 AND m.online = 1
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self._nets: dict[bytes, frozenset[str]] = {}
        self._present: frozenset[bytes] = frozenset()
        self._con: sqlite3.Connection | None = None
        self._version: int | None = None
        self.loads = 0  # reloads done
        self.rows_loaded = 0  # rows read by the last reload

    def refresh(self) -> None:
        try:
            if self._con is None:
                self._con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=1.0, check_same_thread=False)
                self._version = None
            version = self._con.execute("PRAGMA data_version").fetchone()[0]
            if version == self._version:
                return
            rows = self._con.execute(self._QUERY).fetchall()
            present = self._con.execute(self._PRESENT).fetchall()
        except sqlite3.Error as exc:
            log.warning("relay: cannot read memberships from %s: %s (keeping the last ones)", self.db_path, exc)
            self.close()
            return
        nets: dict[bytes, set[str]] = {}
        for key, network in rows:
            nets.setdefault(bytes(key), set()).add(network)
        self._nets = {k: frozenset(v) for k, v in nets.items()}
        self._present = frozenset(bytes(k) for (k,) in present)
        self._version = version
        self.loads += 1
        self.rows_loaded = len(rows)

    def close(self) -> None:
        if self._con is not None:
            with contextlib.suppress(sqlite3.Error):
                self._con.close()
            self._con = None

    def may_bind(self, key: bytes) -> bool:
        """The relay's binding rule (issue 18 F11, as `core_may_bind`): a present node."""
        return bytes(key) in self._present

    def __call__(self, src: bytes, dst: bytes) -> bool:
        return authz.may_relay(bytes(src), bytes(dst), self._present.__contains__, self._online_networks)

    def _online_networks(self, key: bytes) -> frozenset[str]:
        return self._nets.get(key, frozenset())


def core_may_bind(core: Any) -> Callable[[bytes], bool]:
    """The relay's binding rule inside the server (issue 18 F11): the key is a node the core
    knows and that is present (logged in, or inside its presence grace)."""

    def may_bind(key: bytes) -> bool:
        try:
            rec = core.node_by_key(PublicKey(bytes(key)))
        except (TypeError, ValueError):
            return False
        return rec is not None and core.is_present(rec.node_id)

    return may_bind


async def _refresh_loop(refresh: Callable[[], None], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(refresh)


async def run(private_key: PrivateKey, may_relay: MayRelay, host: str, port: int,
              refresh: Callable[[], None] | None = None, limits: RelayLimits = RelayLimits(),
              may_bind: Callable[[bytes], bool] | None = None) -> None:
    """Serve until SIGINT/SIGTERM."""
    service = RelayService(RelayEngine(private_key, may_relay, may_bind=may_bind, limits=limits), host, port)
    await service.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    refresher = asyncio.create_task(_refresh_loop(refresh, RELAY_MEMBERSHIP_REFRESH)) if refresh else None
    try:
        await stop.wait()
    finally:
        if refresher is not None:
            refresher.cancel()
        await service.close()
        log.info("relay stopped; counters: %s", dict(service.engine.stats))


def relay(
    listen: str = typer.Option(f"0.0.0.0:{RELAY_PORT}", "--listen", help="HOST:PORT for UDP and WebSocket (TCP)"),
    server_key: Path = typer.Option(Path(SERVER_DATA_DIR) / "server.key", "--server-key",
                                    help="the coordination server's private key file (nodes pin its public key)"),
    data_dir: Path | None = typer.Option(None, "--data-dir",
                                         help="the server's data directory (shoal.db: memberships); default: the key's directory"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every binding"),
) -> None:
    """Run a relay alone: forwards ciphertext between nodes that share a network."""
    from shoal.endpoint import parse_listen

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    try:
        host, port = parse_listen(listen)
        key = PrivateKey.from_base64(server_key.read_text())
    except (OSError, ValueError) as exc:
        typer.echo(f"shoal: {exc}", err=True)
        raise typer.Exit(1) from None
    db = (data_dir or server_key.parent) / "shoal.db"
    if not db.exists():
        typer.echo(f"shoal: no server database at {db} (give --data-dir)", err=True)
        raise typer.Exit(1)
    membership = StoreMembership(db)
    membership.refresh()
    typer.echo(f"relay {key.public_key().fingerprint()} on udp+ws {host}:{port} (path {RELAY_WS_PATH})")
    asyncio.run(run(key, membership, host, port, membership.refresh, may_bind=membership.may_bind))


def main() -> None:
    typer.run(relay)
