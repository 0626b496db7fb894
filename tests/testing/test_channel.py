"""`shoal.testing.channel`: echo replies a kernel would send (valid checksums), level-triggered
readers, the loopback wire's addressing, and the host's interface and link bookkeeping."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

import pytest

from shoal.tun.checksum import slow_checksum, slow_l4_checksum
from shoal.tun.link import LinkError
from shoal.testing.channel import ChannelHost, ChannelWire, echo_reply

A, B = ipaddress.IPv4Address("100.64.0.1"), ipaddress.IPv4Address("100.64.0.2")
A6, B6 = ipaddress.IPv6Address("fd5a::1"), ipaddress.IPv6Address("fd5a::2")


def echo4(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, kind: int = 8) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", kind, 0, 0, 7, 1) + b"payload!")
    icmp[2:4] = struct.pack("!H", slow_checksum(bytes(icmp)))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 9, 0, 5, 1, 0, src.packed, dst.packed))
    header[10:12] = struct.pack("!H", slow_checksum(bytes(header)))
    return bytes(header + icmp)


def echo6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", 128, 0, 0, 7, 1) + b"payload!")
    icmp[2:4] = struct.pack("!H", slow_l4_checksum(src.packed, dst.packed, 58, bytes(icmp)))
    return struct.pack("!IHBB", 0x60000000, len(icmp), 58, 5) + src.packed + dst.packed + bytes(icmp)


def test_echo_reply_v4_swaps_addresses_and_has_valid_checksums() -> None:
    reply = echo_reply(echo4(A, B))
    assert reply is not None and reply[12:16] == B.packed and reply[16:20] == A.packed and reply[8] == 64
    assert slow_checksum(reply[:20]) == 0 and slow_checksum(reply[20:]) == 0
    assert reply[20] == 0 and reply[24:] == echo4(A, B)[24:]  # type 0, identifier/sequence/payload kept
    assert echo_reply(echo4(A, B, kind=0)) is None and echo_reply(b"\x45" + bytes(30)) is None


def test_echo_reply_v6_has_a_valid_pseudo_header_checksum() -> None:
    reply = echo_reply(echo6(A6, B6))
    assert reply is not None and reply[8:24] == B6.packed and reply[24:40] == A6.packed and reply[40] == 129
    assert slow_l4_checksum(B6.packed, A6.packed, 58, reply[40:]) in (0, 0xFFFF)


async def test_tun_answers_pings_to_its_own_addresses_and_wakes_its_reader_until_drained() -> None:
    host = ChannelHost()
    tun = host.open("t0")
    async with host.link("t0") as link:
        await link.configure(mtu=1400, addresses=["100.64.0.2/24"])
    reads: list[list[bytes]] = []
    tun.set_reader(lambda: reads.append(tun.read_batch(1)))
    tun.write_batch([echo4(A, B), echo4(B, A)])  # only the first is for us
    assert tun.take() == [echo4(A, B), echo4(B, A)]
    tun.inject([b"one", b"two"])
    await asyncio.sleep(0.01)
    assert reads == [[echo_reply(echo4(A, B))], [b"one"], [b"two"]]  # level-triggered, one at a time
    tun.close()
    tun.inject([b"late"])
    await asyncio.sleep(0.01)
    assert len(reads) == 3 and tun.read_batch() == []


async def test_a_tap_answers_behind_swapped_mac_addresses() -> None:
    host = ChannelHost()
    tap = host.open("t0", tap=True)
    async with host.link("t0") as link:
        await link.add_address("100.64.0.2/10")
    mac_a, mac_b = b"\x02" * 6, b"\x04" * 6
    tap.write_ip_frames([echo4(A, B)], lambda p: mac_b + mac_a + b"\x08\x00")
    assert tap.read_batch() == [mac_a + mac_b + b"\x08\x00" + echo_reply(echo4(A, B))]


async def test_host_refuses_a_busy_name_and_links_of_missing_interfaces() -> None:
    host = ChannelHost()
    tun = host.open("t0")
    with pytest.raises(OSError):
        host.open("t0")
    with pytest.raises(ValueError):
        host.open("x" * 16)
    tun.close()
    host.open("t0")  # free again once closed
    with pytest.raises(LinkError, match="no such interface"):
        async with host.link("nope") as link:
            await link.set_up()
    async with host.link("t0") as link:
        await link.add_address("100.64.0.1/10")
        with pytest.raises(LinkError):
            await link.add_address("100.64.0.1/10")
        await link.replace_address("100.64.0.1/10")
        await link.del_address("100.64.0.1/10")
    assert host.tuns["t0"].link.addresses == []


async def test_wire_delivers_by_address_from_the_senders_address() -> None:
    wire = ChannelWire()
    a, b = wire.factory("192.0.2.1")(0), wire.factory("192.0.2.2")(51820)
    with pytest.raises(OSError):
        wire.factory("192.0.2.2")(51820)
    got: list[list] = []
    b.set_reader(lambda: got.append(b.recv_batch()))
    a.send_batch([(b"hi", ("192.0.2.2", 51820)), (b"lost", ("192.0.2.9", 1))])
    await asyncio.sleep(0.01)
    assert got == [[(b"hi", ("192.0.2.1", a.port))]] and wire.dropped == 1
    b.close()
    a.send_batch([(b"again", ("192.0.2.2", 51820))])
    assert wire.dropped == 2 and ("192.0.2.2", 51820) not in wire.binds
