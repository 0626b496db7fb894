"""The relay service on loopback with real sockets: UDP<->UDP, WS<->WS, WS<->UDP (a client
whose UDP is blocked reaches a UDP client), non-members refused, bindings end with the
WebSocket, the standalone membership oracle reads the server's store."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from shoal.constants import RELAY_WS_PATH
from shoal.relay import frames as f
from shoal.relay.client import RelayClient
from shoal.relay.engine import RelayEngine
from shoal.relay.service import RelayService, StoreMembership
from shoal.wireguard.keys import PrivateKey

RELAY_KEY = PrivateKey.from_seed(b"relay-service" * 3)


def _key(name: str) -> PrivateKey:
    return PrivateKey.from_seed(name.encode() * 8)


class UdpPeer:
    def __init__(self, key: PrivateKey, port: int) -> None:
        self.client = RelayClient(key, RELAY_KEY.public_key())
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr = ("127.0.0.1", port)

    async def _recv(self, timeout: float = 2.0) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 70000), timeout)

    async def login(self) -> None:
        self.sock.sendto(self.client.start(0.0), self.addr)
        while not self.client.ready:
            for out in self.client.receive(await self._recv(), 0.0):
                self.sock.sendto(out, self.addr)

    def send(self, dst: PrivateKey, payload: bytes) -> None:
        self.sock.sendto(self.client.wrap(dst.public_key(), payload), self.addr)

    async def next(self) -> tuple[bytes, bytes]:
        while not self.client.inbox:
            for out in self.client.receive(await self._recv(), 0.0):
                self.sock.sendto(out, self.addr)
        return self.client.inbox.pop(0)

    def close(self) -> None:
        self.sock.close()


class WsPeer:
    def __init__(self, key: PrivateKey, port: int) -> None:
        self.client = RelayClient(key, RELAY_KEY.public_key())
        self.url = f"ws://127.0.0.1:{port}{RELAY_WS_PATH}"

    async def login(self) -> None:
        self.ws = await connect(self.url, compression=None)
        await self.ws.send(self.client.start(0.0))
        while not self.client.ready:
            for out in self.client.receive(await asyncio.wait_for(self.ws.recv(), 2.0), 0.0):
                await self.ws.send(out)

    async def send(self, dst: PrivateKey, payload: bytes) -> None:
        await self.ws.send(self.client.wrap(dst.public_key(), payload))

    async def next(self) -> tuple[bytes, bytes]:
        while not self.client.inbox:
            for out in self.client.receive(await asyncio.wait_for(self.ws.recv(), 2.0), 0.0):
                await self.ws.send(out)
        return self.client.inbox.pop(0)


A, B, C = _key("alice"), _key("bob"), _key("carol")
PUB = {bytes(k.public_key()) for k in (A, B)}


def members_ab(src: bytes, dst: bytes) -> bool:  # A and B share a network; C shares none
    return src in PUB and dst in PUB


async def _service() -> RelayService:
    svc = RelayService(RelayEngine(RELAY_KEY, members_ab), "127.0.0.1", 0)
    await svc.start()
    assert svc.udp_port and svc.ws_port
    return svc


async def test_udp_to_udp() -> None:
    svc = await _service()
    a, b = UdpPeer(A, svc.udp_port), UdpPeer(B, svc.udp_port)  # type: ignore[arg-type]
    try:
        await a.login()
        await b.login()
        for i in range(20):
            a.send(B, b"a->b %d" % i)
        got = [await b.next() for _ in range(20)]
        assert got == [(bytes(A.public_key()), b"a->b %d" % i) for i in range(20)]
        b.send(A, bytes(1400))
        assert await a.next() == (bytes(B.public_key()), bytes(1400))
        assert svc.engine.stats["forwarded"] == 21
    finally:
        a.close()
        b.close()
        await svc.close()


async def test_ws_to_ws_and_disconnect_unbinds() -> None:
    svc = await _service()
    a, b = WsPeer(A, svc.ws_port), WsPeer(B, svc.ws_port)  # type: ignore[arg-type]
    try:
        await a.login()
        await b.login()
        await a.send(B, b"over tcp")
        assert await b.next() == (bytes(A.public_key()), b"over tcp")
        await b.send(A, b"and back")
        assert await a.next() == (bytes(B.public_key()), b"and back")
        await b.ws.close()
        for _ in range(100):
            if svc.engine.binding_of(B.public_key()) is None:
                break
            await asyncio.sleep(0.01)
        assert svc.engine.binding_of(B.public_key()) is None
        await a.send(B, b"gone")
        await asyncio.wait_for(a.ws.recv(), 2.0)  # ERROR unknown destination
    finally:
        await a.ws.close()
        await svc.close()
    assert svc.engine.stats["drop_unknown_destination"] == 1


async def test_ws_client_reaches_udp_client_and_non_member_refused() -> None:
    svc = await _service()
    a = WsPeer(A, svc.ws_port)  # type: ignore[arg-type]  # UDP blocked: WebSocket only
    b = UdpPeer(B, svc.udp_port)  # type: ignore[arg-type]
    c = UdpPeer(C, svc.udp_port)  # type: ignore[arg-type]
    try:
        await a.login()
        await b.login()
        await c.login()
        await a.send(B, b"ws->udp")
        assert await b.next() == (bytes(A.public_key()), b"ws->udp")
        b.send(A, b"udp->ws")
        assert await a.next() == (bytes(B.public_key()), b"udp->ws")
        c.send(A, b"intruder")
        c.client.receive(await c._recv(), 0.0)
        assert c.client.errors == [(f.ERR_NOT_MEMBER, bytes(A.public_key()))]
        assert svc.engine.stats["drop_not_member"] == 1
    finally:
        await a.ws.close()
        b.close()
        c.close()
        await svc.close()


async def test_wrong_path_and_text_frames_closed() -> None:
    svc = await _service()
    try:
        ws = await connect(f"ws://127.0.0.1:{svc.ws_port}/control")
        await asyncio.wait_for(ws.wait_closed(), 2.0)
        assert ws.close_code == 1008
        ws = await connect(f"ws://127.0.0.1:{svc.ws_port}{RELAY_WS_PATH}")
        await ws.send("hello")
        await asyncio.wait_for(ws.wait_closed(), 2.0)
        assert ws.close_code == 1003
    finally:
        await svc.close()


async def test_service_timer_expires_idle_bindings() -> None:
    from shoal.relay.engine import RelayLimits

    svc = RelayService(RelayEngine(RELAY_KEY, members_ab, limits=RelayLimits(binding_timeout=0.2)),
                       "127.0.0.1", 0, ws=False)
    await svc.start()
    a = UdpPeer(A, svc.udp_port)  # type: ignore[arg-type]
    try:
        await a.login()
        assert svc.engine.binding_of(A.public_key()) is not None
        await asyncio.sleep(0.4)
        assert svc.engine.binding_of(A.public_key()) is None and svc.engine.stats["expired"] == 1
    finally:
        a.close()
        await svc.close()


def test_relay_command(tmp_path: Path) -> None:
    """`shoal relay` (the command function) starts on loopback with a server key and store,
    authenticates a node, and stops on SIGTERM printing nothing alarming."""
    import signal
    import subprocess
    import sys
    import time

    key = PrivateKey.generate()
    (tmp_path / "server.key").write_text(key.to_base64())
    (tmp_path / "server.key").chmod(0o600)
    con = sqlite3.connect(tmp_path / "shoal.db")
    con.executescript("CREATE TABLE nodes (node_id TEXT, public_key BLOB, present BOOLEAN);"
                      "CREATE TABLE memberships (network_id TEXT, node_id TEXT, pending BOOLEAN, online BOOLEAN);")
    con.execute("INSERT INTO nodes VALUES ('n', ?, 1)", (bytes(_key("node").public_key()),))  # a present node may bind
    con.commit()
    con.close()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from shoal.relay.service import main; main()",
         "--listen", f"127.0.0.1:{port}", "--server-key", str(tmp_path / "server.key")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        c = RelayClient(_key("node"), key.public_key())
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        deadline = time.monotonic() + 10
        while not c.ready and time.monotonic() < deadline:
            s.sendto(c.start(0.0), ("127.0.0.1", port))
            try:
                for out in c.receive(s.recv(100), 0.0):
                    s.sendto(out, ("127.0.0.1", port))
                c.receive(s.recv(100), 0.0)
            except OSError:
                continue
        s.close()
        assert c.ready
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"relay {key.public_key().fingerprint()}" in out
    assert "Traceback" not in err


def _store(db: Path) -> sqlite3.Connection:
    con = sqlite3.connect(db)
    con.executescript("""
        PRAGMA journal_mode = WAL;
        CREATE TABLE nodes (node_id TEXT PRIMARY KEY, public_key BLOB, present BOOLEAN);
        CREATE TABLE memberships (network_id TEXT, node_id TEXT, pending BOOLEAN, online BOOLEAN);
    """)
    return con


def test_store_membership(tmp_path: Path) -> None:
    db = tmp_path / "shoal.db"
    con = _store(db)
    ka, kb, kc, kd, ke = (bytes(_key(n).public_key()) for n in ("a", "b", "c", "d", "e"))
    con.executemany("INSERT INTO nodes VALUES (?, ?, ?)", [("a", ka, 1), ("b", kb, 1), ("c", kc, 1), ("d", kd, 1), ("e", ke, 0)])
    con.executemany("INSERT INTO memberships VALUES (?, ?, ?, ?)", [
        ("n1", "a", 0, 1), ("n1", "b", 0, 1), ("n1", "c", 1, 1),  # c pending
        ("n2", "c", 0, 1), ("n2", "d", 0, 0),  # d offline there
        ("n1", "e", 0, 1),  # e not present (issue 18 F13: one rule with the server core)
    ])
    con.commit()
    oracle = StoreMembership(db)
    oracle.refresh()
    assert oracle(ka, kb) and oracle(kb, ka)
    assert not oracle(ka, kc) and not oracle(kc, kd) and not oracle(ka, ka) and not oracle(ka, ke)
    con.execute("UPDATE memberships SET online = 1 WHERE node_id = 'd'")
    con.commit()
    oracle.refresh()
    assert oracle(kc, kd)
    loads = oracle.loads
    oracle.refresh()  # nothing committed since: no reload
    assert oracle.loads == loads
    con.close()
    oracle.close()
    db.unlink()
    oracle.refresh()  # unreadable: keeps the last answer
    assert oracle(kc, kd)


def test_store_membership_loads_memberships_not_pairs(tmp_path: Path) -> None:
    """Issue 18 F13: 400 members of one network are 400 rows (the old query read 159,600 pairs)."""
    db = tmp_path / "shoal.db"
    con = _store(db)
    keys = [bytes(PrivateKey.from_seed(i.to_bytes(32, "big")).public_key()) for i in range(400)]
    con.executemany("INSERT INTO nodes VALUES (?, ?, 1)", [(f"n{i}", k) for i, k in enumerate(keys)])
    con.executemany("INSERT INTO memberships VALUES ('net', ?, 0, 1)", [(f"n{i}",) for i in range(400)])
    con.commit()
    con.close()
    oracle = StoreMembership(db)
    oracle.refresh()
    assert oracle.rows_loaded == 400
    assert oracle(keys[0], keys[399]) and not oracle(keys[5], keys[5])
    oracle.close()


_BLASTER = r"""
import socket, sys, time
port, frame, secs, fd = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(fileno=fd)
s.setblocking(True)
end = time.monotonic() + secs
while time.monotonic() < end:
    for _ in range(256):
        try:
            s.sendto(frame, ("127.0.0.1", port))
        except OSError:
            pass
"""


@pytest.mark.slow
async def test_forwarding_rate_one_core() -> None:
    """UDP->UDP forwarding rate with 1400-byte payloads: a sender process floods the relay
    (on the other core); the relay process is measured over 2 s. Prints the rate."""
    import subprocess
    import sys
    import time

    from shoal.relay.engine import RelayLimits

    unlimited = RelayLimits(rate_packets=1e9, burst_packets=1e9, rate_bytes=1e12, burst_bytes=1e12)
    svc = RelayService(RelayEngine(RELAY_KEY, members_ab, limits=unlimited), "127.0.0.1", 0, ws=False)
    await svc.start()
    a, b = UdpPeer(A, svc.udp_port), UdpPeer(B, svc.udp_port)  # type: ignore[arg-type]
    proc = None
    try:
        await a.login()
        await b.login()
        frame = a.client.wrap(B.public_key(), bytes(1400))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _BLASTER, str(svc.udp_port), frame.hex(), "3.0", str(a.sock.fileno()),
            pass_fds=(a.sock.fileno(),), stdout=subprocess.DEVNULL)
        await asyncio.sleep(0.5)
        f0, t0, c0 = svc.engine.stats["forwarded"], time.perf_counter(), time.process_time()
        await asyncio.sleep(2.0)
        f1, t1, c1 = svc.engine.stats["forwarded"], time.perf_counter(), time.process_time()
        rate = (f1 - f0) / (t1 - t0)
        print(f"\nrelay UDP->UDP: {rate:,.0f} frames/s, {rate * 1400 * 8 / 1e9:.2f} Gbit/s payload, "
              f"relay CPU {(c1 - c0) / (t1 - t0) * 100:.0f}% of one core")
        assert rate > 20_000
    finally:
        if proc is not None:
            await asyncio.wait_for(proc.wait(), 10)
        a.close()
        b.close()
        await svc.close()
