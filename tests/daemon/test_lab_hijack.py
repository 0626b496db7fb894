"""Endpoint hijack by forged transport packets (issue 18 F1; lab, real processes).

Two daemons share a network; a third host ("evil", on the internet, in no network) reads the
live receiver index of a's session off the wire (a raw AF_PACKET capture on a's link, as an
on-path observer would), then sends a forged type-4 packet carrying that index (zero counter,
random ciphertext) at a's data socket 5 times a second for 30 s while a and b ping each
other. The endpoint must never move: a sends nothing to the attacker, a's status keeps b's
real address, and no ping is lost. On the old code (endpoint recorded before the AEAD
check) every forged packet moved a's endpoint for b to the attacker, and b's next genuine
packet moved it back: in two runs 42 and 55 of a's datagrams went to the attacker, ~300
endpoint changes, a->b ping lost 29 % and 37 %. The status (traversal's path) did not show
it; the engine's logged endpoint-changed events do."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from shoal.lab.mesh import Mesh
from shoal.lab import HostSpec, Lab, Topology

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(150),
]

RATE, DURATION = 5, 30.0

CAPTURE = r'''
import socket, struct, sys
port = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.settimeout(20)
while True:
    pkt, _ = s.recvfrom(65535)
    ihl = (pkt[0] & 15) * 4
    if pkt[9] != 17:
        continue
    dport = struct.unpack_from("!H", pkt, ihl + 2)[0]
    payload = pkt[ihl + 8:]
    if dport == port and len(payload) >= 32 and payload[:4] == b"\x04\x00\x00\x00":
        print(payload[4:8].hex())
        break
'''

FORGER = r'''
import os, socket, sys, time
dst, index, rate, duration = (sys.argv[1], int(sys.argv[2])), bytes.fromhex(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
sent = got = 0
t0 = time.monotonic()
while time.monotonic() - t0 < duration:
    s.sendto(b"\x04\x00\x00\x00" + index + bytes(8) + os.urandom(16 + 16 * (sent % 4)), dst)
    sent += 1
    until = t0 + sent / rate
    while time.monotonic() < until:
        try:
            data, src = s.recvfrom(65535)
            if src[0] == dst[0]:
                got += 1
        except BlockingIOError:
            time.sleep(0.01)
print(sent, got)
'''


def test_forged_transport_packets_never_move_the_endpoint() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("b"), HostSpec("evil")])
    with Lab(topo) as lab:
        mesh = Mesh(lab, server_port=443)
        try:
            a, b = mesh.joined("a", "b")
            assert a.ping_until(b.ipv4, True, timeout=10) is not None
            a_ip, b_ip = a.ipv4, b.ipv4
            port = a.status()["interface"]["listen_port"]
            # the attacker's view of the wire: a transport packet to a carries a's receiver index
            cap = lab.host("a").popen(["python3", "-c", CAPTURE, str(port)], stdout=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 10
            while cap.poll() is None and time.monotonic() < deadline:
                b.ping(a_ip, wait=0.5)
            out, _ = cap.communicate(timeout=20)
            index = out.strip()
            assert len(index) == 8, out
            before = a.status()["peers"][0]["endpoint"]
            assert before is not None and before.startswith(lab.host("b").wan_addr)
            moves_before = a.log.read_text(errors="replace").count("endpoint-changed")
            count = int(RATE * DURATION)
            pings = [h.popen(["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "1", dst],
                             stdout=subprocess.PIPE, text=True)
                     for h, dst in ((lab.host("a"), b_ip), (lab.host("b"), a_ip))]
            forger = lab.host("evil").exec(["python3", "-c", FORGER, lab.host("a").addr, str(port), index,
                                            str(RATE), str(DURATION)], capture_output=True, text=True,
                                           timeout=DURATION + 20)
            assert forger.returncode == 0, forger.stderr
            sent, got = map(int, forger.stdout.split())
            seen = []
            for p in pings:
                out, _ = p.communicate(timeout=20)
                line = next(ln for ln in out.splitlines() if "transmitted" in ln)
                seen.append(line)
            after = a.status()["peers"][0]["endpoint"]
            # the engine's own endpoint: the data plane logs every "endpoint-changed" event
            moves = a.log.read_text(errors="replace").count("endpoint-changed") - moves_before
            print(f"\nforged sent {sent}, a->attacker datagrams {got}, engine endpoint changes {moves}; "
                  f"status endpoint {before} -> {after}; pings: {seen}")
            assert sent >= count - 2
            assert got == 0  # a never sent the attacker a packet
            assert moves == 0
            assert after == before
            for line in seen:
                tx, rx = (int(line.split()[i]) for i in (0, 3))
                assert tx == count and rx == tx, line  # 0 % loss both ways
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
