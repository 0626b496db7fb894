"""Lab tier: shoal.nat.portmap.client against Debian's miniupnpd (shoal.lab.miniupnpd) in a
real lab NAT router.

For each protocol (PCP, NAT-PMP, UPnP IGD) a host behind a NAT that filters unsolicited
inbound UDP (port-restricted; symmetric for PCP) binds a UDP socket, and:

  1. a datagram from a public lab host to the router's WAN address and that port is lost
     (the NAT really filters);
  2. PortMapper maps the port with only that protocol; miniupnpd lists the DNAT;
  3. the same datagram to the mapped external ip:port now reaches the socket;
  4. with a 4 s lifetime the mapping is renewed (at 2 s) and still works;
  5. after close() miniupnpd lists no mapping and the datagram is lost again.

Plus: a miniupnpd restart (mappings gone, epoch reset) is repaired by the next renewal; and
probe() finds all three behind miniupnpd and none (in 1.25 s) behind a plain router.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.timeout(40),
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None, reason="the lab needs root and nftables")]

PORT = 40123
LIFETIME = 4

# runs inside the NATed host: one UDP socket on PORT, a PortMapper for it, driven by stdin
HOST_SCRIPT = r"""
import asyncio, json, socket, sys
from shoal.nat.portmap.client import PortMapper

async def main():
    gw, proto, port, lifetime = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    changes = []
    mapper = PortMapper(port, gateway=gw, protocols=(proto,), lifetime=lifetime, on_change=changes.append)
    lines = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lines), sys.stdin)

    def say(**kw):
        print(json.dumps(kw), flush=True)

    async def recv(timeout):
        while True:  # copies of earlier test datagrams
            try:
                sock.recv(2048)
            except BlockingIOError:
                break
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 2048), timeout)
            return data.decode()
        except asyncio.TimeoutError:
            return None

    say(ready=True)
    while True:
        cmd = (await lines.readline()).decode().strip()
        if cmd.startswith("recv"):
            say(got=await recv(float(cmd.split()[1])))
        elif cmd == "start":
            t = loop.time()
            ext = await mapper.start()
            say(external=ext, protocol=mapper.protocol, seconds=loop.time() - t)
        elif cmd == "renewal":
            t = loop.time()
            while mapper.renewals < 1 and loop.time() - t < 3 * lifetime:
                await asyncio.sleep(0.05)
            say(renewals=mapper.renewals, seconds=loop.time() - t, external=mapper.external, stats=mapper.stats)
        elif cmd == "renewal2":  # one more renewal than now
            t, n = loop.time(), mapper.renewals
            while mapper.renewals <= n and loop.time() - t < 3 * lifetime:
                await asyncio.sleep(0.05)
            say(renewals=mapper.renewals, seconds=loop.time() - t, external=mapper.external, stats=mapper.stats)
        elif cmd == "close":
            t = loop.time()
            await mapper.close()
            say(closed=True, seconds=loop.time() - t, changes=changes, external=mapper.external)
        else:
            return

asyncio.run(main())
"""

SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(4):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"""


class HostProc:
    def __init__(self, host, gateway: str, proto: str, lifetime: int = LIFETIME) -> None:
        self.p = host.popen([sys.executable, "-c", HOST_SCRIPT, gateway, proto, str(PORT), str(lifetime)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.read() == {"ready": True}

    def read(self) -> dict:
        line = self.p.stdout.readline()
        assert line, "the host script died"
        return json.loads(line)

    def ask(self, cmd: str) -> dict:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.read()

    def recv_while_sending(self, sender, dst: tuple[str, int], text: str, timeout: float) -> str | None:
        self.p.stdin.write(f"recv {timeout}\n")
        self.p.stdin.flush()
        time.sleep(0.1)
        sender.exec([sys.executable, "-c", SEND, dst[0], str(dst[1]), text], check=True, timeout=10)
        return self.read()["got"]

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


@pytest.mark.parametrize("proto,nat", [("pcp", "symmetric"), ("natpmp", "port-restricted"), ("upnp", "port-restricted")])
def test_mapping_lets_traffic_in_renews_and_is_removed(proto: str, nat: str) -> None:
    from shoal.lab import HostSpec, Lab, Topology
    from shoal.lab.miniupnpd import MiniUpnpd, available

    if not available():
        pytest.skip("miniupnpd is not installed (scripts/setup-system.sh)")
    topo = Topology(clients=[HostSpec("b", nat=nat), HostSpec("pub")])
    with Lab(topo) as lab, MiniUpnpd(lab, "b") as gw:
        b, pub = lab.host("b"), lab.host("pub")
        h = HostProc(b, gw.lan_addr, proto)
        try:
            # 1. without a mapping the NAT drops unsolicited datagrams
            assert h.recv_while_sending(pub, (b.wan_addr, PORT), "before", 1.0) is None
            # 2. map
            r = h.ask("start")
            print(f"{proto} behind {nat}: mapped {r['external']} in {r['seconds'] * 1000:.1f} ms")
            assert r["protocol"] == proto and r["external"] == [b.wan_addr, PORT], r
            assert r["seconds"] < 3.0
            assert (PORT, b.addr, PORT) in gw.mappings()
            ext = tuple(r["external"])
            # 3. the mapping lets a public host in
            assert h.recv_while_sending(pub, ext, "mapped", 2.0) == "mapped"
            # 4. renewal at half the lifetime, and the mapping still works
            r = h.ask("renewal")
            print(f"{proto}: {r['renewals']} renewal(s) with lifetime {LIFETIME} s")
            assert r["renewals"] >= 1 and r["external"] == list(ext), r
            assert h.recv_while_sending(pub, ext, "renewed", 2.0) == "renewed"
            # 5. close removes it
            r = h.ask("close")
            print(f"{proto}: close() took {r['seconds'] * 1000:.1f} ms")
            assert r["external"] is None and r["seconds"] < 1.5
            assert r["changes"] == [list(ext), None]
            assert gw.mappings() == []
            assert h.recv_while_sending(pub, ext, "after", 1.0) is None
        finally:
            h.stop()


@pytest.mark.parametrize("proto", ["pcp", "natpmp"])
def test_gateway_restart_loses_the_mapping_and_renewal_brings_it_back(proto: str) -> None:
    """miniupnpd restarts (a rebooting router: redirects and conntrack gone) right after the
    mapping was made; the next renewal (lifetime 10 s: at 5 s) maps again and traffic flows
    again. (Whether the renewal also sees the epoch go back depends on how long the gateway
    ran before; the epoch rule itself is tested in test_engine.py.)"""
    from shoal.lab import HostSpec, Lab, Topology
    from shoal.lab.miniupnpd import MiniUpnpd, available

    if not available():
        pytest.skip("miniupnpd is not installed (scripts/setup-system.sh)")
    topo = Topology(clients=[HostSpec("b", nat="port-restricted"), HostSpec("pub")])
    with Lab(topo) as lab, MiniUpnpd(lab, "b") as gw:
        b, pub = lab.host("b"), lab.host("pub")
        h = HostProc(b, gw.lan_addr, proto, lifetime=10)
        try:
            ext = tuple(h.ask("start")["external"])
            assert h.recv_while_sending(pub, ext, "first", 2.0) == "first"
            gw.restart()
            assert gw.mappings() == []
            assert h.recv_while_sending(pub, ext, "lost", 1.0) is None
            r = h.ask("renewal2")
            assert r["external"] == list(ext) and r["renewals"] == 1, r
            assert (PORT, b.addr, PORT) in gw.mappings()
            assert h.recv_while_sending(pub, ext, "back", 2.0) == "back"
            print(f"{proto}: mapping back after a gateway restart; engine stats {r['stats']}")
            h.ask("close")
        finally:
            h.stop()


def test_probe_finds_all_three_and_none_without_a_gateway_service() -> None:
    from shoal.lab import HostSpec, Lab, Topology
    from shoal.lab.miniupnpd import MiniUpnpd, available

    if not available():
        pytest.skip("miniupnpd is not installed (scripts/setup-system.sh)")
    code = ("import asyncio, json, sys\nfrom shoal.nat.portmap.client import probe\n"
            "print(json.dumps(asyncio.run(probe(sys.argv[1])).to_json()))")
    topo = Topology(clients=[HostSpec("b", nat="port-restricted"), HostSpec("c", nat="port-restricted")])
    with Lab(topo) as lab, MiniUpnpd(lab, "b") as gw:
        out = json.loads(lab.host("b").exec([sys.executable, "-c", code, gw.lan_addr], capture_output=True,
                                            text=True, check=True, timeout=15).stdout)
        assert out["protocols"] == ["PCP", "NAT-PMP", "UPnP IGD"] and out["external_ip"] == lab.host("b").wan_addr
        print(f"probe behind miniupnpd: {out['protocols']} in {out['duration_s'] * 1000:.0f} ms")
        assert out["duration_s"] < 1.5, out
        c_gw = lab.plan.routers["c"].lan_addr
        none = json.loads(lab.host("c").exec([sys.executable, "-c", code, c_gw], capture_output=True,
                                             text=True, check=True, timeout=15).stdout)
        assert none["available"] is False and none["protocols"] == []
        print(f"probe behind a plain router: {none['protocols']} in {none['duration_s'] * 1000:.0f} ms")
        assert none["duration_s"] < 2.0, none
        assert any("no answer" in n for n in none["notes"]) and any("no SSDP answer" in n for n in none["notes"])
