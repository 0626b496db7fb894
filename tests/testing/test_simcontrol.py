"""`shoal.testing.simcontrol`: the in-memory WebSocket pair (order, both directions, close
codes and reasons, a lost connection), and real control sessions into a real ControlServer in
virtual time: the Noise handshake, a wrong pinned key, login + create/join network through the
real core and store, and an outage (sessions dropped, dials refused, back after restore)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import websockets

from shoal.control import messages as m
from shoal.control.transport import ConnectError, ServerKeyMismatch
from shoal.testing import simloop
from shoal.testing.controlclient import ControlClient
from shoal.testing.simcontrol import SimControl, ws_pair
from shoal.wireguard.keys import PrivateKey

URL = "ws://sim-server/control"


def key(name: str) -> PrivateKey:
    return PrivateKey.from_seed(b"simcontrol-" + name.encode())


def test_a_pair_carries_messages_both_ways_then_the_close_code_and_reason() -> None:
    async def main() -> tuple[list[object], tuple[object, object], tuple[object, object], object]:
        a, b = ws_pair()
        await a.send(b"one")
        await a.send("two")
        await b.send_bytes(b"back")
        got = [await b.receive_bytes(), await b.recv(), await a.recv()]
        await a.send(b"last")
        await a.close(4002, "protocol error: test")
        got.append(await b.recv())  # queued before the close: still delivered
        with pytest.raises(websockets.ConnectionClosed) as seen_b:
            await b.recv()
        with pytest.raises(websockets.ConnectionClosed) as seen_a:
            await a.send(b"after")
        c, d = ws_pair()
        waiting = asyncio.ensure_future(d.recv())
        await asyncio.sleep(1)
        c.drop()
        with pytest.raises(websockets.ConnectionClosed) as lost:
            await waiting
        return got, (seen_b.value.rcvd.code, seen_b.value.rcvd.reason), \
            (seen_a.value.rcvd.code, seen_a.value.rcvd.reason), lost.value.rcvd

    got, at_b, at_a, lost = simloop.run(main())
    assert got == [b"one", "two", b"back", b"last"]
    assert at_b == at_a == (4002, "protocol error: test") and lost is None


def test_nodes_log_in_create_and_join_a_network_through_the_real_server(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sim = await SimControl.start(tmp_path)
        pub = sim.public_key
        with pytest.raises(ServerKeyMismatch):
            await sim.dial(URL, key("eve"), key("not-the-server").public_key(), timeout=5)
        alice = await ControlClient.login(URL, key("alice"), pub, dial=sim.dial, clock=loop.time, nickname="alice")
        bob = await ControlClient.login(URL, key("bob"), pub, dial=sim.dial, clock=loop.time, nickname="bob")
        assert (await alice.request(m.CreateNetwork, name="sim", password="pw-sim-net")).ok
        res = await bob.request(m.JoinNetwork, name="sim", password="pw-sim-net")
        assert res.ok, res
        await alice.wait_for(lambda: bob.node_id in alice.mirror.peers)
        assert await alice.ping(7) == 0.0  # no latency inside one process
        stored = await sim.store.load()
        assert {n.nickname for n in stored.nodes} == {"alice", "bob"} and [n.name for n in stored.networks] == ["sim"]

        sim.outage()
        assert isinstance(await alice.wait_closed(), Exception) and bob.closed is not None
        with pytest.raises(ConnectError, match="outage"):
            await sim.dial(URL, key("alice"), pub)
        await asyncio.sleep(30)
        sim.restore()
        again = await ControlClient.login(URL, key("alice"), pub, dial=sim.dial, clock=loop.time)
        assert again.node_id == alice.node_id and bob.node_id in again.mirror.peers
        await again.close()
        await sim.stop()

    simloop.run(main(), max_time=100_000)
