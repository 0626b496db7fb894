"""`shoal.testing.simnet`: fake-network binds on the SimLoop's clock (latency in virtual time,
level-triggered readers, counted send errors, the socket.bind rules), and two real
`WgInterface`s through a NAT on it: handshake, pings both ways, the same trace twice, and a
roaming node whose NAT changes its public address."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from typing import Any

import pytest

from shoal.daemon.icmp import build_echo_request
from shoal.dataplane.config import InterfaceConfig, WgConfig
from shoal.dataplane.runtime import WgInterface
from shoal.testing import simloop
from shoal.testing.channel import ChannelHost, echo_reply
from shoal.testing.fakenet import LinkProfile
from shoal.testing.simnet import bind_factory, sim_network
from shoal.tun.checksum import ip_header_checksum
from shoal.wireguard.keys import PrivateKey
from shoal.wireguard.peer import PeerConfig

A4, B4 = ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv4Address("100.64.0.2")
PORT = 51820


def ping(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, seq: int) -> bytes:
    payload = build_echo_request(0x5A, seq, b"shoal-ping" + bytes(6))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 1, 0, src.packed, dst.packed))
    header[10:12] = struct.pack("!H", ip_header_checksum(header))
    return bytes(header) + payload


async def until(pred: Any, timeout: float, *, fail: bool = True) -> None:
    """Waits in virtual time until `pred()`; at `timeout` fails (or returns, `fail=False`)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not pred():
        if loop.time() - start >= timeout:
            assert not fail, "timed out"
            return
        await asyncio.sleep(0.01)


def test_a_bind_delivers_through_a_nat_after_the_links_latency_in_loop_time() -> None:
    async def main() -> tuple[list[Any], int, int]:
        loop = asyncio.get_running_loop()
        net = sim_network(loop, seed=1)
        nat = net.router("nat", public="203.0.113.1", lan="10.0.0.0/24", behavior="port-restricted-cone")
        a = net.host("a", "10.0.0.2", segment=nat.lan, link=LinkProfile(latency=0.010))
        b = net.host("b", "198.51.100.2", link=LinkProfile(latency=0.015))
        ba, bb = bind_factory(a, loop)(4000), bind_factory(b, loop)(PORT)
        with pytest.raises(OSError):
            bind_factory(b, loop)(PORT)
        with pytest.raises(OSError):
            bind_factory(b, loop)(0, host="192.0.2.99")  # not an address of b
        got: list[Any] = []
        bb.set_reader(lambda: got.append(bb.recv_batch(1)))
        ba.send_batch([(b"one", ("198.51.100.2", PORT)), (b"two", ("198.51.100.2", PORT)), (b"bad", ("198.51.100.2", 0))])
        await asyncio.sleep(0.1)
        bb.send_batch([(b"back", got[0][0][1])])  # the reply passes the NAT's filter
        await asyncio.sleep(0.1)
        back = ba.recv_batch()
        bb.close()
        bb.close()
        ba.send_batch([(b"late", ("198.51.100.2", PORT))])
        await asyncio.sleep(0.1)
        assert bind_factory(b, loop)(PORT).port == PORT  # released
        return got + [back], ba.errors, net.stats["dropped:port-unreachable"]

    got, errors, unreachable = simloop.run(main())
    assert got[:2] == [[(b"one", ("203.0.113.1", 4000))], [(b"two", ("203.0.113.1", 4000))]]  # one at a time
    assert got[2] == [(b"back", ("198.51.100.2", PORT))]
    assert errors == 1 and unreachable == 1


def test_deliveries_happen_at_the_sum_of_the_cables_latencies() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        net = sim_network(loop)
        a = net.host("a", "192.0.2.1", link=LinkProfile(latency=0.020))
        b = net.host("b", "192.0.2.2", link=LinkProfile(latency=0.005))
        ba, bb = bind_factory(a, loop)(), bind_factory(b, loop)(9)
        times: list[float] = []
        bb.set_reader(lambda: times.extend(loop.time() for _ in bb.recv_batch()))
        t0 = loop.time()
        ba.send_batch([(b"x", ("192.0.2.2", 9))])
        await asyncio.sleep(1)
        return [t - t0 for t in times]

    assert simloop.run(main()) == [pytest.approx(0.025)]


def test_the_network_refuses_to_run_its_own_time() -> None:
    async def main() -> None:
        sim_network(asyncio.get_running_loop()).run_for(1.0)

    with pytest.raises(RuntimeError, match="event loop"):
        simloop.run(main())


class NatPair:
    """a behind a port-restricted NAT (knows b's endpoint), b public (learns a's by roaming)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, seed: int) -> None:
        self.net = sim_network(loop, seed=seed, trace=True)
        self.nat = self.net.router("nat", public="203.0.113.1", lan="10.0.0.0/24", behavior="port-restricted-cone")
        fake = {"a": self.net.host("a", "10.0.0.2", segment=self.nat.lan, link=LinkProfile(latency=0.005, jitter=0.002)),
                "b": self.net.host("b", "198.51.100.2", link=LinkProfile(latency=0.010, loss=0.05))}
        keys = {n: PrivateKey.from_seed(b"simnet-" + n.encode()) for n in "ab"}
        own = {"a": A4, "b": B4}
        self.hosts = {n: ChannelHost(sched=loop) for n in "ab"}
        self.ifaces: dict[str, WgInterface] = {}
        for me, other in (("a", "b"), ("b", "a")):
            peer = PeerConfig(public_key=keys[other].public_key(),
                              allowed_ips=[ipaddress.ip_network(f"{own[other]}/32")],
                              endpoint=("198.51.100.2", PORT) if me == "a" else None, persistent_keepalive=5)
            cfg = WgConfig("shoal0", InterfaceConfig(private_key=keys[me], listen_port=PORT,
                                                     addresses=[ipaddress.ip_interface(f"{own[me]}/10")]), [peer])
            self.ifaces[me] = WgInterface(cfg, uapi_dir=None, host=self.hosts[me], warm=False,
                                          bind=bind_factory(fake[me], loop), sched=loop)

    def tun(self, node: str) -> Any:
        return self.hosts[node].tuns["shoal0"]

    async def exchange(self, src: str, dst: str, seq: int) -> float:
        own = {"a": A4, "b": B4}
        request = ping(own[src], own[dst], seq)
        loop = asyncio.get_running_loop()
        start = loop.time()
        while echo_reply(request) not in self.tun(src).inbox:  # a ping lost on the lossy cable is sent again
            assert loop.time() - start < 30, "timed out"
            self.tun(src).inject([request])
            await until(lambda: echo_reply(request) in self.tun(src).inbox, timeout=1.0, fail=False)
        took = loop.time() - start
        assert request in self.tun(dst).take()
        self.tun(src).take()
        return took


def _sized(what: Any) -> Any:
    """A datagram event's (src, dst, payload) with the payload replaced by its size."""
    if isinstance(what, tuple) and len(what) == 3 and isinstance(what[2], bytes):
        return what[0], what[1], len(what[2])
    return what


def _nat_pair_run(seed: int) -> tuple[list[float], list[Any]]:
    async def main() -> tuple[list[float], list[Any]]:
        loop = asyncio.get_running_loop()
        pair = NatPair(loop, seed)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(i.run(stop)) for i in pair.ifaces.values()]
        await asyncio.gather(*(i.ready.wait() for i in pair.ifaces.values()))
        took = [await pair.exchange("a", "b", 1), await pair.exchange("b", "a", 2)]
        pair.nat.set_public_address("203.0.113.77")  # a's NAT renumbers: a roams
        await asyncio.sleep(12)  # a's keepalive carries the new address to b
        took.append(await pair.exchange("b", "a", 3))
        stop.set()
        await asyncio.gather(*tasks)
        # WireGuard's ephemeral keys and nonces are random, so the payload bytes differ from run
        # to run; what must not differ is every event's time, kind, place, addresses and size.
        return took, [(t, kind, where, _sized(what)) for t, kind, where, what in pair.net.trace or []]

    return simloop.run(main(), max_time=10_000)


def test_two_real_interfaces_through_a_nat_handshake_ping_and_roam_deterministically() -> None:
    took, trace = _nat_pair_run(seed=7)
    assert all(t < 10 for t in took)
    assert any(kind == "delivered" and what[0][0] == "203.0.113.77" for _, kind, _, what in trace)
    assert _nat_pair_run(seed=7) == (took, trace)  # same seed, same run, event for event
