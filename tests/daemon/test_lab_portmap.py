"""Port mapping in the daemon (lab, real processes): two nodes behind symmetric NATs, which
hole punching alone cannot join (both hard: the relay), go direct when one of the routers
runs a real port-mapping gateway (Debian's miniupnpd: PCP, NAT-PMP, UPnP IGD). The mapped
address is advertised as a candidate; stopping the daemon deletes the mapping."""

from __future__ import annotations

import os
import time

import pytest

from shoal.lab.mesh import Mesh
from shoal.lab import HostSpec, Lab, Topology

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.timeout(120),
]


def _path(node, peer_nick: str) -> dict:  # noqa: ANN001
    for p in node.status()["peers"]:
        if p["nickname"] == peer_nick:
            return p
    return {}


def test_mapped_candidate_joins_two_symmetric_nats_directly() -> None:
    from shoal.lab.miniupnpd import MiniUpnpd, available

    if not available():
        pytest.skip("miniupnpd is not installed (scripts/setup-system.sh)")
    topo = Topology(clients=[HostSpec("a", nat="symmetric"), HostSpec("b", nat="symmetric")])
    with Lab(topo) as lab, MiniUpnpd(lab, "b") as gw:
        mesh = Mesh(lab, server_port=443)
        try:
            mesh.server.start()
            key = mesh.server.key()
            a, b = mesh.add_node("a", "a"), mesh.add_node("b", "b")
            for n in (a, b):
                n.cli("login", mesh.server.url, "--server-key", key)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (b.status().get("traversal") or {}).get("mapped"):
                time.sleep(0.1)
            tr = b.status()["traversal"]
            assert tr["mapped"], tr
            assert tr["mapped"].startswith(lab.host("b").wan_addr + ":")
            assert gw.mappings(), "miniupnpd lists the daemon's mapping"
            a.cli("create", "net", "--password", "pw-lab-123")
            t0 = time.monotonic()
            b.cli("join", "net", "--password", "pw-lab-123")
            ok = None
            while time.monotonic() < t0 + 15:
                pa, pb = _path(a, "b"), _path(b, "a")
                if pa.get("path") == "direct" and pb.get("path") == "direct":
                    ok = time.monotonic() - t0
                    break
                time.sleep(0.1)
            assert ok is not None, (_path(a, "b"), _path(b, "a"))
            assert _path(a, "b")["endpoint"] == tr["mapped"]  # a reaches b at the mapped port
            assert a.ping(b.ipv4) and b.ping(a.ipv4)
            print(f"\nsymmetric x symmetric+miniupnpd ({tr['mapped_via']}): direct {ok:.2f} s after the join")
            b.stop()
            assert not gw.mappings(), "the mapping is deleted when the daemon stops"
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
