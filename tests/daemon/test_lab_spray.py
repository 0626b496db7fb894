"""A member aims co-members' birthday probing at a victim (issue 18 F10; lab, real processes).

Mallory joins a network with an honest daemon (a, public) and reports one candidate, the
victim's address, with nat_hard=True: before the fix a sprayed PATH_SPRAY_BUDGET (1024)
probes at random ports of the victim within seconds, and again every minute. Now a sprays only
at the address the server saw Mallory's connection come from (PeerInfo.observed_ip), so the
victim gets a's plain probes of that one candidate and nothing else. A raw socket on the
victim host counts every UDP datagram from a. Measured in 20 s: 1037 datagrams on 1024
distinct ports before the fix (1024 sprayed + 13 plain probes), 13 on port 4000 after.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shoal.lab.mesh import Mesh
from shoal.lab import HostSpec, Lab, Topology

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(180),
]

WATCH = 20.0  # seconds the victim counts (spraying started 1 s after the view, took ~2.6 s)
VICTIM_PORT = 4000
PLAIN_PROBES_MAX = 30  # a's plain probes of the one candidate in WATCH s: 10 burst rounds, then one per 4 s

COUNTER = r'''
import socket, sys, time
src, watch = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.settimeout(0.2)
print("ready", flush=True)
n, ports, end = 0, set(), time.monotonic() + watch
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[0] == src:
        ihl = (data[0] & 15) * 4
        ports.add(int.from_bytes(data[ihl + 2:ihl + 4], "big"))
        n += 1
print(n, " ".join(map(str, sorted(ports))), flush=True)
'''

MALLORY = r'''
import asyncio, sys
from shoal.control import messages as m
from shoal.testing.controlclient import ControlClient
from shoal.wireguard.keys import PrivateKey, PublicKey

async def main(url, server_key, victim, hold):
    c = await ControlClient.login(url, PrivateKey.generate(), PublicKey.from_base64(server_key),
                                  features=[m.FEATURE_DISCO])
    r = await c.request(m.JoinNetwork, name="net", password="pw-spray-lab")
    assert r.ok, r
    await c.conn.send(m.Candidates(candidates=[m.Candidate("reflexive", victim)], nat_hard=True))
    print("sent", flush=True)
    await asyncio.sleep(hold)
    await c.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])))
'''


def test_a_member_cannot_aim_spraying_at_a_victim() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("mallory"), HostSpec("victim")])
    with Lab(topo) as lab:
        mesh = Mesh(lab, server_port=443)
        counter: subprocess.Popen[str] | None = None
        try:
            mesh.server.start()
            key = mesh.server.key()
            a = mesh.add_node("a", "a")
            a.cli("login", mesh.server.url, "--server-key", key)
            a.cli("create", "net", "--password", "pw-spray-lab")
            victim = lab.host("victim")
            src = lab.host("a").addr
            counter = victim.popen([sys.executable, "-c", COUNTER, src, str(WATCH)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            assert counter.stdout is not None and counter.stdout.readline().strip() == "ready"
            url = mesh.server.url.replace("http://", "ws://") + "/control"
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
            mallory = lab.host("mallory").exec(
                [sys.executable, "-c", MALLORY, url, key, f"{victim.addr}:{VICTIM_PORT}", str(WATCH)],
                capture_output=True, text=True, timeout=WATCH + 30, env=env)
            assert mallory.returncode == 0 and "sent" in mallory.stdout, mallory.stderr
            out, err = counter.communicate(timeout=WATCH + 10)
            counter = None
            n_text, _, ports_text = out.strip().splitlines()[-1].partition(" ")
            n, ports = int(n_text), {int(p) for p in ports_text.split()}
            stats = a.status()["traversal"]["peers"]
            print(f"\nvictim got {n} datagrams from a, on {len(ports)} ports ({sorted(ports)[:5]}...); "
                  f"a's engine stats: {stats}")
            assert ports <= {VICTIM_PORT}  # only the plain probes of the named candidate
            assert n <= PLAIN_PROBES_MAX
            assert all("spray-out" not in s for s in stats.values())
            assert any(s.get("spray-no-owned-target", 0) >= 1 for s in stats.values())  # it would have
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            if counter is not None:
                counter.kill()
                counter.wait()
            mesh.close()
