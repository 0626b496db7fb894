"""`shoal.testing.simserver`: the server's STUN responder answers through a NAT with the
node's reflexive address (and from the alternate port on a change request), and the server's
built-in relay, with the real core's membership rule, carries frames between a node on UDP
and a node on the relay WebSocket; a non-member is refused, and a dropped WebSocket unbinds."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.control import messages as m
from shoal.nat import stun
from shoal.nat.responder import StunResponder
from shoal.relay.client import RelayClient
from shoal.testing import simloop
from shoal.testing.controlclient import ControlClient
from shoal.testing.simcontrol import SimControl
from shoal.testing.simnet import bind_factory, sim_network
from shoal.testing.simserver import RelayWsDialer, SimStun, start_relay
from shoal.wireguard.keys import PrivateKey

SERVER = "192.0.2.10"
URL = "ws://sim-server/control"


def key(name: str) -> PrivateKey:
    return PrivateKey.from_seed(b"simserver-" + name.encode())


def test_stun_answers_through_a_nat_with_the_reflexive_address() -> None:
    async def main() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        net = sim_network(loop)
        server = net.host("server", SERVER)
        nat = net.router("nat", public="203.0.113.5", lan="10.1.0.0/24", behavior="full-cone")
        node = net.host("n", "10.1.0.2", segment=nat.lan)
        stun_side = SimStun(StunResponder([SERVER], [3478, 3479]), server, loop)
        b = bind_factory(node, loop)(5000)
        b.send_batch([(stun.binding_request(b"t" * 12), (SERVER, 3478)),
                      (stun.binding_request(b"u" * 12, change_port=True), (SERVER, 3478))])
        await asyncio.sleep(1)
        replies = {(src, stun.decode(data).reflexive_address()) for data, src in b.recv_batch()}
        stun_side.close()
        return replies, stun_side.stats["sent"]

    replies, sent = simloop.run(main())
    assert replies == {((SERVER, 3478), ("203.0.113.5", 5000)), ((SERVER, 3479), ("203.0.113.5", 5000))}
    assert sent == 2


def test_the_relay_joins_a_udp_node_and_a_websocket_node_of_one_network(tmp_path: Path) -> None:
    async def main() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        net = sim_network(loop)
        server = net.host("server", SERVER)
        sim = await SimControl.start(tmp_path, relay_port=3340)
        relay = await start_relay(sim.control.core, sim.control.server_key, server, loop, port=3340)
        dial = RelayWsDialer(relay)
        pub = sim.public_key
        alice = await ControlClient.login(URL, key("alice"), pub, dial=sim.dial, clock=loop.time, nickname="alice")
        bob = await ControlClient.login(URL, key("bob"), pub, dial=sim.dial, clock=loop.time, nickname="bob")
        await alice.request(m.CreateNetwork, name="sim", password="pw-sim-net")
        await bob.request(m.JoinNetwork, name="sim", password="pw-sim-net")
        await alice.wait_for(lambda: bob.node_id in alice.mirror.peers)

        a_client = RelayClient(key("alice"), pub)  # alice on UDP
        a_bind = bind_factory(net.host("a", "198.51.100.1"), loop)()
        a_bind.set_reader(lambda: [a_bind.send_batch([(o, (SERVER, 3340))])
                                   for data, _ in a_bind.recv_batch() for o in a_client.receive(data, loop.time())])
        a_bind.send_batch([(a_client.start(loop.time()), (SERVER, 3340))])
        b_client = RelayClient(key("bob"), pub)  # bob on the WebSocket
        out: dict[str, object] = {}
        async with dial(f"ws://{SERVER}/relay") as ws:
            await ws.send(b_client.start(loop.time()))
            while not b_client.ready:
                for o in b_client.receive(await ws.recv(), loop.time()):
                    await ws.send(o)
            await asyncio.sleep(1)
            assert a_client.ready
            await ws.send(b_client.wrap(key("alice").public_key(), b"hello over tcp"))
            await asyncio.sleep(1)
            out["to_alice"] = list(a_client.inbox)
            a_bind.send_batch([(a_client.wrap(key("bob").public_key(), b"hello over udp"), (SERVER, 3340))])
            a_bind.send_batch([(a_client.wrap(key("carol").public_key(), b"to a stranger"), (SERVER, 3340))])
            assert b_client.receive(await ws.recv(), loop.time()) == []  # data: nothing to answer
            out["to_bob"] = list(b_client.inbox)
            out["sessions"] = dial.sessions
            dial.drop_all()
            await asyncio.sleep(1)
        out["stats"] = dict(relay.engine.stats)
        await relay.close()
        await sim.stop()
        return out

    out = simloop.run(main(), max_time=100_000)
    assert out["to_alice"] == [(bytes(key("bob").public_key()), b"hello over tcp")]
    assert out["to_bob"] == [(bytes(key("alice").public_key()), b"hello over udp")]
    assert out["sessions"] == 1
    stats = out["stats"]
    assert isinstance(stats, dict)
    assert (stats["auth_ok"], stats["forwarded"], stats["drop_not_member"], stats["disconnected"]) == (2, 2, 1, 1)
