"""Bad input on the data socket and at the relay (lab, real processes): a stranger on the
internet sends a daemon garbage, STUN junk, forged disco messages (also twice) and relay
frames, and the relay a stranger's frames; everything is dropped and counted, nothing
crashes, and the daemon keeps its direct tunnel. (Replays of valid disco messages and relay frames for
non-member keys are covered beside their engines: tests/nat/test_disco.py,
tests/relay/test_engine.py.)"""

from __future__ import annotations

import os
import time

import pytest

from shoal.constants import DISCO_MAGIC, RELAY_PORT
from shoal.lab.mesh import Mesh
from shoal.lab import HostSpec, Lab, Topology
from shoal.nat.disco import DiscoCodec, Ping
from shoal.relay import frames as f
from shoal.wireguard.keys import PrivateKey, PublicKey

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(120),
]

SENDER = r'''
import socket, sys
dst = (sys.argv[1], int(sys.argv[2]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for line in sys.stdin.read().split():
    s.sendto(bytes.fromhex(line), dst)
'''


def send_from(host, dst: tuple[str, int], datagrams: list[bytes]) -> None:  # noqa: ANN001
    p = host.exec(["python3", "-c", SENDER, dst[0], str(dst[1])], input="\n".join(d.hex() for d in datagrams),
                  text=True, capture_output=True, timeout=20)
    assert p.returncode == 0, p.stderr


def test_garbage_forgeries_and_replays_are_dropped_and_counted() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("b"), HostSpec("evil")])
    with Lab(topo) as lab:
        mesh = Mesh(lab, server_port=443)
        try:
            mesh.server.start()
            key = mesh.server.key()
            a, b = mesh.add_node("a", "a"), mesh.add_node("b", "b")
            for n in (a, b):
                n.cli("login", mesh.server.url, "--server-key", key)
            a.cli("create", "net", "--password", "pw-lab-123")
            b.cli("join", "net", "--password", "pw-lab-123")
            assert a.ping_until(b.ipv4, True, timeout=10) is not None
            st = a.status()
            port = st["interface"]["listen_port"]
            stranger = PrivateKey.generate()  # holds neither a's nor b's key
            b_pub = PublicKey.from_base64(b.status()["public_key"])
            evil = lab.host("evil")
            forger = DiscoCodec(stranger)
            a_pub = bytes(PublicKey.from_base64(a.status()["public_key"]))
            forger.add_peer(a_pub)
            forged = bytearray(forger.seal(a_pub, Ping(bytes(12), bytes(stranger.public_key()))))
            # claim to be b: put b's key in the header (the box, sealed with the stranger's key, does not open)
            forged[len(DISCO_MAGIC):len(DISCO_MAGIC) + 32] = bytes(b_pub)
            junk = [b"", b"\x00", b"\x99" * 40, bytes(forged), bytes(forged),  # forged, then replayed
                    DISCO_MAGIC + os.urandom(200), DISCO_MAGIC + os.urandom(2000),
                    b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12),  # STUN-looking garbage
                    b"SR\x01\x07" + os.urandom(60)]  # relay-looking frame from a stranger
            before = a.status()["traversal"]["stats"]
            send_from(evil, (lab.host("a").addr, port), junk * 20)
            # the relay: a stranger's HELLO, an unauthenticated SEND toward a, garbage
            hello = f.Hello(bytes(stranger.public_key())).encode()
            send_from(evil, ("192.0.2.1", RELAY_PORT), [hello, b"SR\x01\x05" + os.urandom(8 + 32 + 10), b"garbage"])
            time.sleep(1.0)
            after = a.status()["traversal"]["stats"]
            grew = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}
            print("\ncounters that grew:", grew)
            assert grew.get("unknown", 0) >= 40  # garbage and the stranger's relay-looking frames
            assert grew.get("disco_forged", 0) + grew.get("disco_unknown-peer", 0) >= 20
            assert grew.get("disco_oversized", 0) >= 1 or grew.get("disco_truncated", 0) >= 1 or grew.get("disco_forged", 0) >= 40
            assert grew.get("stun_unexpected", 0) >= 20
            # the daemon is alive, the tunnel works, the peer is still direct
            assert a.ping(b.ipv4) and b.ping(a.ipv4)
            assert a.status()["peers"][0]["path"] == "direct"
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
