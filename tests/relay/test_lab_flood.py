"""Issue 18 acceptance (lab, real processes): a random-key AUTH flood at the relay (valid
proofs from fresh random keys, 200/s for 60 s, UDP from a host in no network) while a real
udp-blocked member (relayed over the server's WebSocket) binds and passes traffic with a
public peer: the member binds, overlay pings during the flood get through, and no flood key
is ever bound (AUTH_OK).

Before issue 18 F11 every flood key with a valid proof was bound (the relay answered AUTH_OK
and kept a binding for each: 12,000 in 60 s of the 65,536) and spent the shared X25519
budget (RELAY_AUTH_RATE = 200/s) that real nodes need; the in-process numbers are in
tests/relay/test_engine.py::test_random_key_flood_binds_nothing_and_spends_no_shared_budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from shoal.constants import RELAY_PORT
from shoal.lab.mesh import Mesh
from shoal.lab.matrix import start_nodes
from shoal.lab import HostSpec, Lab, Topology
from tests.daemon.test_lab_paths import HTTP_PORT, both_ping, wait_paths

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

FLOOD_RATE = 200.0  # AUTHs per second (issue 18)
FLOOD_SECONDS = 60.0

_FLOOD = r"""
import json, socket, sys, time
from shoal.relay import frames as f
from shoal.relay.engine import auth_key, node_proof
from shoal.wireguard.crypto import DH
from shoal.wireguard.keys import PrivateKey, PublicKey
host, port, relay_b64, rate, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
relay = PublicKey.from_base64(relay_b64)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.05)
st = {"hello": 0, "challenge": 0, "auth": 0, "auth_ok": 0, "error": 0, "silent": 0}
t0 = time.monotonic()
i = 0
while time.monotonic() - t0 < secs:
    key = PrivateKey.generate()
    pub = bytes(key.public_key())
    s.sendto(f.Hello(pub).encode(), (host, port))
    st["hello"] += 1
    nonce = None
    end = time.monotonic() + 0.05
    while nonce is None and time.monotonic() < end:
        try:
            fr = f.parse(s.recv(2000))
        except (OSError, f.FrameError):
            break
        if isinstance(fr, f.Challenge):
            nonce = fr.nonce
        elif isinstance(fr, f.AuthOk):
            st["auth_ok"] += 1
        elif isinstance(fr, f.Error):
            st["error"] += 1
    if nonce is not None:
        st["challenge"] += 1
        k = auth_key(DH(key, relay))
        s.sendto(f.Auth(pub, nonce, node_proof(k, nonce, pub, bytes(relay))).encode(), (host, port))
        st["auth"] += 1
    i += 1
    delay = t0 + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
s.settimeout(0.5)
try:
    while True:
        fr = f.parse(s.recv(2000))
        st["auth_ok" if isinstance(fr, f.AuthOk) else "error" if isinstance(fr, f.Error) else "silent"] += 1
except (OSError, f.FrameError):
    pass
st["seconds"] = time.monotonic() - t0
print(json.dumps(st))
"""


@pytest.mark.timeout(150)
def test_random_key_auth_flood_does_not_lock_out_a_udp_blocked_member() -> None:
    specs = [HostSpec("pub", nat="public"), HostSpec("blk", nat="udp-blocked"), HostSpec("atk", nat="public")]
    with Lab(Topology(clients=specs)) as lab:
        mesh = Mesh(lab, server_port=HTTP_PORT)
        flood = None
        try:
            mesh.server.start()
            relay_key = mesh.server.key()
            flood = lab.host("atk").popen(
                [sys.executable, "-c", _FLOOD, lab.server.addrs[0], str(RELAY_PORT), relay_key, str(FLOOD_RATE), str(FLOOD_SECONDS)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            t_flood = time.monotonic()
            time.sleep(2.0)  # the flood is running before the member logs in and binds
            start_nodes(mesh, ["pub", "blk"])
            pub, blk = mesh.nodes["pub"], mesh.nodes["blk"]
            pub.call("POST", "/v1/networks/create", {"name": "n", "password": "pw-lab-123"})
            blk.call("POST", "/v1/networks/join", {"name": "n", "password": "pw-lab-123"})
            both_ping(mesh, "pub", "blk", timeout=30)
            assert wait_paths(mesh, "pub", "blk", "relay", 15) is not None
            bound_after = time.monotonic() - t_flood
            status = blk.status()
            # traffic through the relay for the rest of the flood: 5 pings a second
            left = max(5.0, FLOOD_SECONDS - (time.monotonic() - t_flood) - 2.0)
            count = int(left * 5)
            p = blk.host.exec(["ping", "-n", "-q", "-i", "0.2", "-W", "1", "-c", str(count), pub.ipv4],
                              capture_output=True, text=True, timeout=left + 30)
            line = next((ln for ln in p.stdout.splitlines() if "packets transmitted" in ln), p.stdout)
            received = int(line.split(",")[1].split()[0])
            out, err = flood.communicate(timeout=FLOOD_SECONDS + 30)
            stats = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
            print(f"\nflood: {stats} ({err.strip()[-300:]})")
            print(f"udp-blocked member relayed (path relay, mode {status.get('traversal', {}).get('relay', {}).get('mode', '?')}) "
                  f"{bound_after:.1f} s after the flood began; pings during the flood: {received}/{count} answered ({line.strip()})")
            assert stats.get("auth", 0) >= 0.9 * FLOOD_RATE * FLOOD_SECONDS, "the flood did not reach 200 valid AUTHs/s"
            assert stats["auth_ok"] == 0, "the relay bound random keys"
            assert received >= 0.98 * count, line
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            if flood is not None and flood.poll() is None:
                flood.kill()
                flood.wait(5)
            mesh.close()
