"""Overlay ping: ICMP echo over the tunnel, from the daemon (which is root and owns the interface).

Wire format (RFC 792; what we send and accept on a raw IPPROTO_ICMP socket):

    offset size  field
    0      1     type (8 = echo request, 0 = echo reply)
    1      1     code (0)
    2      2     checksum (internet checksum of the whole ICMP message)
    4      2     identifier (ours: a per-daemon random number)
    6      2     sequence number
    8      n     payload (16 bytes: "shoal-ping" + 6 random bytes, echoed back)

A raw IPv4 socket delivers the IP header too; `parse_echo_reply` skips it (IHL) and returns
(identifier, sequence, payload) only for a well-formed echo reply with a valid checksum, else
None (bad input never raises). `Pinger` is the asyncio glue: one raw socket, replies matched
to waiters by (identifier, sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct

from shoal.tun.checksum import finish, residue

ECHO_REQUEST, ECHO_REPLY = 8, 0
_HDR = struct.Struct("!BBHHH")
MAGIC = b"shoal-ping"


def build_echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    body = _HDR.pack(ECHO_REQUEST, 0, 0, ident, seq) + payload
    return body[:2] + struct.pack("!H", finish(residue(body))) + body[4:]


def parse_echo_reply(packet: bytes) -> tuple[int, int, bytes] | None:
    """(identifier, sequence, payload) of an ICMP echo reply inside an IPv4 packet, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or len(packet) < ihl + _HDR.size or packet[9] != socket.IPPROTO_ICMP:
        return None
    icmp = packet[ihl:]
    kind, code, _, ident, seq = _HDR.unpack_from(icmp)
    if kind != ECHO_REPLY or code != 0 or residue(icmp) != 0:
        return None
    return ident, seq, bytes(icmp[_HDR.size:])


class Pinger:
    """Sends echo requests to IPv4 addresses; `await ping(addr, timeout)` -> RTT seconds or None."""

    def __init__(self) -> None:
        self.ident = int.from_bytes(os.urandom(2), "big")
        self._seq = 0
        self._sock: socket.socket | None = None
        self._waiters: dict[tuple[int, bytes], asyncio.Future[float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> socket.socket:
        if self._sock is None:
            self._loop = asyncio.get_running_loop()
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            s.setblocking(False)
            self._loop.add_reader(s.fileno(), self._on_readable)
            self._sock = s
        return self._sock

    def _on_readable(self) -> None:
        assert self._sock is not None and self._loop is not None
        now = self._loop.time()
        for _ in range(64):
            try:
                packet = self._sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            parsed = parse_echo_reply(packet)
            if parsed is None or parsed[0] != self.ident:
                continue
            fut = self._waiters.pop((parsed[1], parsed[2]), None)
            if fut is not None and not fut.done():
                fut.set_result(now)

    async def ping(self, address: str, timeout: float = 1.0) -> float | None:
        sock = self._open()
        loop = self._loop
        assert loop is not None
        self._seq = (self._seq + 1) & 0xFFFF
        payload = MAGIC + os.urandom(6)
        key = (self._seq, payload)
        fut: asyncio.Future[float] = loop.create_future()
        self._waiters[key] = fut
        sent = loop.time()
        try:
            sock.sendto(build_echo_request(self.ident, self._seq, payload), (address, 0))
        except OSError:
            self._waiters.pop(key, None)
            return None
        try:
            return await asyncio.wait_for(fut, timeout) - sent
        except asyncio.TimeoutError:
            return None
        finally:
            self._waiters.pop(key, None)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())  # type: ignore[union-attr]
            self._sock.close()
            self._sock = None
