"""Issue 18 F12 (lab, real processes): a host on the internet spoofs the relay's address and
sends a relayed node ERROR frames (auth refused, full, not member, unknown destination, with
no tag or a made-up one, and ERROR unauthenticated) at 20/s while a udp-blocked peer pings
it through the relay: the node stays bound over UDP, no ping is lost beyond noise, and its
relay client counts the forgeries.

Before F12 the first spoofed ERROR auth refused set the client idle; 2 s later the daemon
took UDP for blocked and moved to the WebSocket, and every spoofed ERROR unauthenticated
dropped the node's token until it had authenticated again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from shoal.lab.mesh import Mesh
from shoal.lab.matrix import start_nodes
from shoal.lab import HostSpec, Lab, Topology
from tests.daemon.test_lab_paths import HTTP_PORT, both_ping, wait_paths

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(150),
]

SPOOF_RATE = 20.0  # frames per second
SPOOF_SECONDS = 20.0

# raw IPv4/UDP with the relay's source address (the attacker shares the internet bridge with
# the victim, as a neighbour on a shared segment would); UDP checksum 0 = none (IPv4)
_SPOOFER = r"""
import os, socket, struct, sys, time
from shoal.constants import RELAY_MAGIC, RELAY_VERSION
from shoal.relay import frames as f
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rate, secs = float(sys.argv[5]), float(sys.argv[6])
frames = []
hdr = RELAY_MAGIC + bytes((RELAY_VERSION, f.KIND_ERROR))  # ERROR: code | key [| tag]
for code in (f.ERR_AUTH_REFUSED, f.ERR_FULL, f.ERR_NOT_MEMBER, f.ERR_UNKNOWN_DESTINATION):
    frames.append(hdr + bytes((code,)) + os.urandom(32))
    frames.append(hdr + bytes((code,)) + os.urandom(32) + os.urandom(16))
frames.append(hdr + bytes((f.ERR_UNAUTHENTICATED,)) + bytes(32))
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def packet(payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp
t0, i = time.monotonic(), 0
while time.monotonic() - t0 < secs:
    s.sendto(packet(frames[i % len(frames)]), (dst, 0))
    i += 1
    delay = t0 + i / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(i)
"""


def _relay(node) -> dict:  # noqa: ANN001
    return node.status()["traversal"]["relay"]


def test_spoofed_relay_errors_do_not_reset_the_binding() -> None:
    specs = [HostSpec("pub", nat="public"), HostSpec("blk", nat="udp-blocked"), HostSpec("atk", nat="public")]
    with Lab(Topology(clients=specs)) as lab:
        mesh = Mesh(lab, server_port=HTTP_PORT)
        spoof = None
        try:
            mesh.server.start()
            start_nodes(mesh, ["pub", "blk"])
            pub, blk = mesh.nodes["pub"], mesh.nodes["blk"]
            pub.call("POST", "/v1/networks/create", {"name": "n", "password": "pw-spoof-lab"})
            blk.call("POST", "/v1/networks/join", {"name": "n", "password": "pw-spoof-lab"})
            both_ping(mesh, "pub", "blk", timeout=30)
            assert wait_paths(mesh, "pub", "blk", "relay", 15) is not None
            before = _relay(pub)
            assert before["mode"] == "udp" and before["ready"], before
            relay_ip, relay_port = before["udp"].rsplit(":", 1)
            port = pub.status()["interface"]["listen_port"]
            spoof = lab.host("atk").popen(
                [sys.executable, "-c", _SPOOFER, relay_ip, relay_port, lab.host("pub").addr, str(port),
                 str(SPOOF_RATE), str(SPOOF_SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            count = int((SPOOF_SECONDS - 2.0) * 5)
            ping = blk.host.popen(["ping", "-n", "-q", "-i", "0.2", "-W", "1", "-c", str(count), pub.ipv4],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seen = []
            end = time.monotonic() + SPOOF_SECONDS - 2.0
            while time.monotonic() < end:
                r = _relay(pub)
                seen.append((r["mode"], r["ready"]))
                time.sleep(0.5)
            out, _ = ping.communicate(timeout=30)
            sent, err = spoof.communicate(timeout=SPOOF_SECONDS + 10)
            line = next((ln for ln in out.splitlines() if "packets transmitted" in ln), out)
            received = int(line.split(",")[1].split()[0])
            after = _relay(pub)
            client = after.get("client", {})
            print(f"\nspoofed frames sent: {sent.strip()} {err.strip()[-200:]}; pub's relay client: {client}; "
                  f"pings through the relay: {received}/{count} ({line.strip()}); (mode, ready) samples: {set(seen)}")
            assert int(sent.strip()) >= 0.9 * SPOOF_RATE * SPOOF_SECONDS
            assert set(seen) == {("udp", True)} and after["mode"] == "udp" and after["ready"]
            assert client.get("forged_error", 0) >= 0.5 * SPOOF_RATE * SPOOF_SECONDS * 8 / 9
            assert client.get("hint_limited", 0) >= 1 and client.get("refused", 0) == 0
            assert received >= count - 1, line
            assert wait_paths(mesh, "pub", "blk", "relay", 5) is not None
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            if spoof is not None and spoof.poll() is None:
                spoof.kill()
                spoof.wait(5)
            mesh.close()
