"""Unit tests of shoal.lab.lanapps: the teeworlds 0.7 discovery codec (known bytes, round trip,
fuzz), the browse exchange against an in-process fake server on loopback, IPX framings and the
avahi-browse line parser. The real programs are exercised by tests/lan/test_lab_programs.py."""

from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.lab import lanapps as apps


def test_token_request_layout() -> None:
    req = apps.tw_token_request(0x01020304)
    assert len(req) == 520
    assert req[:12] == bytes([0x04, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0x05, 1, 2, 3, 4])
    assert req[12:] == bytes(508)


def test_token_reply_and_info_request() -> None:
    reply = bytes([0x04, 0, 0]) + struct.pack(">I", 0xAABBCCDD) + b"\x05" + struct.pack(">I", 0x11223344)
    assert apps.parse_tw_token_reply(reply, 0xAABBCCDD) == 0x11223344
    assert apps.parse_tw_token_reply(reply, 0xAABBCCDE) is None  # not for us
    assert apps.parse_tw_token_reply(reply[:11], 0xAABBCCDD) is None
    assert apps.parse_tw_token_reply(b"\x21" + reply[1:], 0xAABBCCDD) is None  # connless, not control
    req = apps.tw_info_request(0x11223344, 0xAABBCCDD, 7)
    assert req == b"\x21\x11\x22\x33\x44\xaa\xbb\xcc\xdd\xff\xff\xff\xffgie3\x07"
    with pytest.raises(ValueError):
        apps.tw_info_request(1, 2, 64)


def _info_reply(client: int, server: int, browse: int, strings: list[bytes]) -> bytes:
    return struct.pack(">BII", 0x21, client, server) + apps.TW_INFO + bytes([browse]) + b"\0".join(strings) + b"\0\x00\x01"


def test_info_reply_parsed() -> None:
    data = _info_reply(5, 6, 9, [b"0.7.5", b"my server", b"", b"dm1", b"DM"])
    assert apps.parse_tw_info(data, 5, 9) == {"version": "0.7.5", "name": "my server", "hostname": "",
                                              "map": "dm1", "gametype": "DM"}
    assert apps.parse_tw_info(data, 6, 9) is None  # other client token
    assert apps.parse_tw_info(data, 5, 8) is None  # other browse token
    assert apps.parse_tw_info(data[:20], 5, 9) is None  # too few strings


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 2**32 - 1), st.integers(0, 63))
def test_parsers_never_raise(data: bytes, token: int, browse: int) -> None:
    apps.parse_tw_token_reply(data, token)
    apps.parse_tw_info(data, token, browse)
    for prefix in (apps.TW_INFO, bytes([0x21]) + struct.pack(">II", token, 0) + apps.TW_INFO + bytes([browse])):
        apps.parse_tw_info(prefix + data, token, browse)


class _FakeServer(threading.Thread):
    """Answers the two steps of the 0.7 LAN browse like the server's token manager does."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []

    def run(self) -> None:
        try:
            while True:
                data, addr = self.sock.recvfrom(2048)
                self.requests.append(data)
                if data[0] == 0x04 and len(data) >= 520:
                    client = struct.unpack_from(">I", data, 8)[0]
                    self.sock.sendto(bytes([0x04, 0, 0]) + struct.pack(">I", client) + b"\x05" + struct.pack(">I", 0x0BADC0DE), addr)
                elif data[0] == 0x21 and data[9:17] == b"\xff\xff\xff\xffgie3":
                    assert struct.unpack_from(">I", data, 1)[0] == 0x0BADC0DE
                    client = struct.unpack_from(">I", data, 5)[0]
                    self.sock.sendto(_info_reply(client, 0x0BADC0DE, data[17], [b"0.7.5", b"fake", b"", b"ctf1", b"CTF"]), addr)
                    return
        except OSError:
            return


@pytest.mark.timeout(10)
def test_browse_exchange_on_loopback() -> None:
    srv = _FakeServer()
    srv.start()
    try:
        found = apps.tw_browse(3.0, ports=[srv.port], bcast="127.0.0.1", settle=0.05)
    finally:
        srv.join(5)
        srv.sock.close()
    assert [(f["address"], f["port"], f["info"]["name"], f["info"]["map"]) for f in found] == [("127.0.0.1", srv.port, "fake", "ctf1")]


def test_ipx_framings() -> None:
    dst, src = b"\xff" * 6, bytes.fromhex("020000000001")
    pkt = apps.ipx_packet(1, dst, 0x4000, 2, src, 0x4001, b"hello")
    assert pkt[:6] == b"\xff\xff\x00\x23\x00\x04" and len(pkt) == 35
    assert pkt[6:10] == b"\0\0\0\1" and pkt[10:16] == dst and pkt[16:18] == b"\x40\x00"
    e2 = apps.ipx_frame(dst, src, pkt, "ethernet2")
    raw = apps.ipx_frame(dst, src, pkt, "raw8023")
    llc = apps.ipx_frame(dst, src, pkt, "llc")
    assert e2 == dst + src + b"\x81\x37" + pkt
    assert raw == dst + src + b"\x00\x23" + pkt
    assert llc == dst + src + b"\x00\x26\xe0\xe0\x03" + pkt
    with pytest.raises(ValueError):
        apps.ipx_frame(dst, src, pkt, "snap")
    assert apps.mac_bytes("02:00:00:00:00:01") == src


def test_avahi_resolved_line() -> None:
    line = '=;shoal0;IPv4;svc;_shoaltest._tcp;local;h.local;100.64.0.2;4242;"a=b;c" "d=e"'
    assert apps.parse_avahi_resolved(line) == {
        "iface": "shoal0", "proto": "IPv4", "name": "svc", "type": "_shoaltest._tcp", "domain": "local",
        "host": "h.local", "address": "100.64.0.2", "port": "4242", "txt": '"a=b;c" "d=e"'}
    assert apps.parse_avahi_resolved("+;shoal0;IPv4;svc;_shoaltest._tcp;local") is None
    assert apps.parse_avahi_resolved("") is None
