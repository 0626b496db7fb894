"""The relay operator sees only ciphertext: two WireGuard `Device`s exchange IP packets with
marker bytes through a RelayEngine; the marker is delivered end to end, and never appears in
any frame the relay receives or sends, in its logs or in its counters."""

from __future__ import annotations

import ipaddress
import logging
import os
import struct

import pytest

from shoal.relay import frames as f
from shoal.relay.client import RelayClient
from shoal.relay.engine import Binding, RelayEngine, StreamBinding, UdpBinding
from shoal.wireguard.device import Device
from shoal.wireguard.keys import PrivateKey
from shoal.wireguard.peer import PeerConfig

A_IP, B_IP = "100.64.1.1", "100.64.1.2"
RELAY_EP = ("203.0.113.80", 3480)  # where each Device thinks its peer is: the relay
MARKER = b"MARKER-" + os.urandom(9).hex().encode()  # 25 bytes, random per run


def ipv4(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                         ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return header + payload


def test_relay_handles_only_ciphertext(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    relay_key, a_key, b_key = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    a_pub, b_pub = bytes(a_key.public_key()), bytes(b_key.public_key())
    engine = RelayEngine(relay_key, lambda s, d: {s, d} == {a_pub, b_pub})
    a_dev, b_dev = Device(a_key), Device(b_key)
    a_dev.add_peer(PeerConfig(b_key.public_key(), None, [ipaddress.ip_network(f"{B_IP}/32")], RELAY_EP))
    b_dev.add_peer(PeerConfig(a_key.public_key(), None, [ipaddress.ip_network(f"{A_IP}/32")], RELAY_EP))
    a_bind: Binding = UdpBinding("192.0.2.7", 40000)
    b_bind: Binding = StreamBinding(1)  # B is behind a UDP-blocking network
    clients = {a_bind: RelayClient(a_key, relay_key.public_key()), b_bind: RelayClient(b_key, relay_key.public_key())}
    devices = {a_bind: a_dev, b_bind: b_dev}
    seen_by_relay: list[bytes] = []
    now = 100.0

    def to_relay(data: bytes, binding: Binding) -> None:
        seen_by_relay.append(data)
        engine.receive(data, binding, now)

    def pump() -> None:
        for _ in range(20):
            moved = False
            for binding, dev in devices.items():
                for datagram, ep in dev.take_outbox():
                    assert ep == RELAY_EP
                    dst = b_pub if dev is a_dev else a_pub
                    to_relay(clients[binding].wrap(dst, datagram), binding)
                    moved = True
            for data, binding in engine.take_outbox():
                seen_by_relay.append(data)
                for back in clients[binding].receive(data, now):
                    to_relay(back, binding)
                for _src, payload in clients[binding].inbox:
                    devices[binding].receive([(payload, RELAY_EP)], now)
                clients[binding].inbox.clear()
                moved = True
            if not moved:
                return

    for binding, client in clients.items():
        to_relay(client.start(now), binding)
    pump()
    assert all(c.ready for c in clients.values())

    sent_ab = [ipv4(A_IP, B_IP, MARKER + b" a->b %d " % i + MARKER) for i in range(10)]
    sent_ba = [ipv4(B_IP, A_IP, b"b->a %d " % i + MARKER * 3) for i in range(10)]
    a_dev.send(sent_ab, now)
    pump()
    now += 0.5
    b_dev.send(sent_ba, now)
    pump()

    # delivered end to end: the test would see plaintext if there were any
    assert b_dev.take_to_tun() == sent_ab
    assert a_dev.take_to_tun() == sent_ba
    assert engine.stats["forwarded"] >= 22  # handshake (2) + 20 data packets
    assert not any(k.startswith("drop_") and v for k, v in engine.stats.items())

    # ... yet the relay never handled the marker in clear
    assert seen_by_relay and len(seen_by_relay) > 40
    assert not any(MARKER in d for d in seen_by_relay)
    parsed = [f.parse(d) for d in seen_by_relay]
    assert all(MARKER not in getattr(p, "payload", b"") for p in parsed)
    assert MARKER.decode() not in caplog.text and MARKER not in caplog.text.encode()
    assert MARKER.decode() not in repr(engine.stats)
    # the detector works: a frame carrying the plaintext would have been caught
    leak = clients[a_bind].wrap(b_pub, sent_ab[0])
    assert MARKER in leak
