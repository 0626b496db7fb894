"""Real TUN devices (root): two namespaces joined by a Python "wire" that moves packets with
read_batch/write_batch. TCP over it exercises the kernel's TSO superpackets (split on read) and
our coalesced writes (the kernel must accept and verify them): data arrives intact, both ways,
IPv4 and IPv6, and the link helpers (sync and async) configure what they claim."""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator

import pytest
from pyroute2 import netns

from shoal.tun.device import Tun
from shoal.tun.link import AsyncLink, Link, LinkError

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]

if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

SERVER = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
c.sendall(h.hexdigest().encode()); c.close()
"""

CLIENT = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
data = bytes.fromhex(sys.argv[3]) * (int(sys.argv[4]) // 32)
c.sendall(data); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


def open_in_ns(ns: str, name: str, offload: bool, tso: bool = True) -> Tun:
    netns.pushns(ns)
    try:
        return Tun.open(name, offload=offload, tso=tso)
    finally:
        netns.popns()


class Wire:
    """Moves packets between two TUN fds until stopped."""

    def __init__(self, a: Tun, b: Tun) -> None:
        self.a, self.b = a, b
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        peer = {self.a.fileno(): (self.a, self.b), self.b.fileno(): (self.b, self.a)}
        while not self.stop:
            ready, _, _ = select.select(list(peer), [], [], 0.1)
            for fd in ready:
                src, dst = peer[fd]
                pkts = src.read_batch(64)
                if pkts:
                    dst.write_batch(pkts)


@pytest.fixture(params=[(True, True), (True, False), (False, False)], ids=["tso+coalesce", "coalesce", "plain"])
def wire(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, Tun, Tun]]:
    tag = uuid.uuid4().hex[:6]
    na, nb = f"shtun-{os.getpid()}-{tag}-a", f"shtun-{os.getpid()}-{tag}-b"
    sh("ip", "netns", "add", na)
    sh("ip", "netns", "add", nb)
    ta = tb = None
    w = None
    try:
        ta = open_in_ns(na, "tunw0", *request.param)
        tb = open_in_ns(nb, "tunw0", *request.param)
        for ns, me, other in ((na, 1, 2), (nb, 2, 1)):
            netns.pushns(ns)
            try:
                with Link("tunw0") as link:
                    link.configure(mtu=1420, addresses=[f"100.64.77.{me}/32", f"fd7a:115c::{me}/128"],
                                   routes=[f"100.64.77.{other}/32", f"fd7a:115c::{other}/128"])
                    with pytest.raises(LinkError, match="nonexist0"):
                        Link("nonexist0").set_up()
            finally:
                netns.popns()
        assert ta.mtu == 1420
        w = Wire(ta, tb)
        w.thread.start()
        yield na, nb, ta, tb
    finally:
        if w:
            w.stop = True
            w.thread.join(5)
        for t in (ta, tb):
            if t:
                t.close()
        subprocess.run(["ip", "netns", "del", na], capture_output=True)
        subprocess.run(["ip", "netns", "del", nb], capture_output=True)


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_tcp_through_the_wire_is_intact(wire: tuple[str, str, Tun, Tun], family: str) -> None:
    na, nb, ta, tb = wire
    addr = "100.64.77.2" if family == "v4" else "fd7a:115c::2"
    size = 6 * 1024 * 1024
    chunk = hashlib.sha256(family.encode()).hexdigest()  # 32 bytes as hex
    expect = hashlib.sha256(bytes.fromhex(chunk) * (size // 32)).hexdigest()
    srv = subprocess.Popen(["ip", "netns", "exec", nb, sys.executable, "-c", SERVER, addr, "5555"],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        cli = subprocess.run(["ip", "netns", "exec", na, sys.executable, "-c", CLIENT, addr, "5555", chunk, str(size)],
                             capture_output=True, text=True, timeout=40)
        assert cli.stdout.strip() == expect, cli.stderr
    finally:
        srv.kill()
        srv.wait()
    if ta.offload and ta.offload_flags:
        assert ta.stats["rx_superpackets"] > 0  # the kernel sent TSO superpackets, we split them
    else:
        assert ta.stats["rx_superpackets"] == 0
    if tb.offload:
        assert tb.stats["tx_superpackets"] > 0  # we coalesced, the kernel accepted them
    assert ta.stats["tx_errors"] == tb.stats["tx_errors"] == 0


def test_async_link_inside_a_loop() -> None:
    ns = f"shtun-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        t = open_in_ns(ns, "tuna0", True)
        netns.pushns(ns)
        try:
            async def go() -> None:
                async with AsyncLink("tuna0") as link:
                    await link.configure(mtu=1380, addresses=["100.64.78.1/32"], routes=["100.64.79.0/24"])
                    with pytest.raises(LinkError):
                        await link.add_address("100.64.78.1/32")  # already there
                    await link.del_route("100.64.79.0/24")
            asyncio.run(go())
        finally:
            netns.popns()
        assert t.mtu == 1380
        out = subprocess.run(["ip", "-n", ns, "addr", "show", "tuna0"], capture_output=True, text=True).stdout
        assert "100.64.78.1/32" in out and "UP" in out
        t.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_tap_mode_and_bad_names() -> None:
    ns = f"shtun-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", ns)
    try:
        netns.pushns(ns)
        try:
            t = Tun.open("tapx0", tap=True, offload=False)
            assert t.tap and not t.offload and t.read_batch() == []
            t.close()
            t = Tun.open("tapx1", tap=True, tso=True)
            assert t.tap and t.offload and t.offload_flags == 0  # vnet header, never TSO on a TAP
            t.close()
            with pytest.raises(ValueError):
                Tun.open("x" * 20)
        finally:
            netns.popns()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class TapWire:
    """Moves frames between two TAPs like the LAN plane does: IP frames are stripped to the IP
    packet and written back with `write_ip_frames` (coalesced), anything else (ARP) as is."""

    def __init__(self, a: Tun, b: Tun, macs: dict[int, bytes]) -> None:
        self.a, self.b, self.macs = a, b, macs
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        peer = {self.a.fileno(): (self.a, self.b), self.b.fileno(): (self.b, self.a)}
        while not self.stop:
            ready, _, _ = select.select(list(peer), [], [], 0.1)
            for fd in ready:
                src, dst = peer[fd]
                ip, other = [], []
                for f in src.read_batch(64):
                    (ip if f[12:14] in (b"\x08\x00", b"\x86\xdd") else other).append(f)
                header = self.macs[dst.fileno()] + self.macs[src.fileno()]
                dst.write_ip_frames([f[14:] for f in ip], lambda p: header + (b"\x08\x00" if p[0] >> 4 == 4 else b"\x86\xdd"))
                dst.write_batch(other)


@pytest.mark.parametrize("offload", [True, False], ids=["coalesce", "plain"])
def test_tcp_through_a_tap_wire_is_intact(offload: bool) -> None:
    tag = uuid.uuid4().hex[:6]
    na, nb = f"shtap-{os.getpid()}-{tag}-a", f"shtap-{os.getpid()}-{tag}-b"
    sh("ip", "netns", "add", na)
    sh("ip", "netns", "add", nb)
    taps: list[Tun] = []
    w = None
    try:
        macs = {}
        for ns, me in ((na, 1), (nb, 2)):
            netns.pushns(ns)
            try:
                t = Tun.open("tapw0", tap=True, offload=offload)
                taps.append(t)
                mac = bytes([2, 0x53, 100, 64, 79, me])
                macs[t.fileno()] = mac
                with Link("tapw0") as link:
                    link._ipr.link("set", index=link.index(), address=mac.hex(":"))
                    link.configure(mtu=1420, addresses=[f"100.64.79.{me}/24"])
            finally:
                netns.popns()
        w = TapWire(taps[0], taps[1], macs)
        w.thread.start()
        size = 6 * 1024 * 1024
        chunk = hashlib.sha256(b"tap").hexdigest()
        expect = hashlib.sha256(bytes.fromhex(chunk) * (size // 32)).hexdigest()
        srv = subprocess.Popen(["ip", "netns", "exec", nb, sys.executable, "-c", SERVER, "100.64.79.2", "5555"],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            cli = subprocess.run(["ip", "netns", "exec", na, sys.executable, "-c", CLIENT, "100.64.79.2", "5555", chunk,
                                  str(size)], capture_output=True, text=True, timeout=40)
            assert cli.stdout.strip() == expect, cli.stderr
        finally:
            srv.kill()
            srv.wait()
        if offload:
            assert taps[1].stats["tx_superpackets"] > 0  # coalesced frames accepted by the kernel
        assert taps[0].stats["tx_errors"] == taps[1].stats["tx_errors"] == 0
    finally:
        if w:
            w.stop = True
            w.thread.join(5)
        for t in taps:
            t.close()
        subprocess.run(["ip", "netns", "del", na], capture_output=True)
        subprocess.run(["ip", "netns", "del", nb], capture_output=True)
