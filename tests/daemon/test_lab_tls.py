"""A server behind TLS with real processes: `shoal server --tls-cert/--tls-key` on 443 with a
certificate made by openssl(1), two real daemons that trust it (SSL_CERT_FILE), one public and
one behind a firewall that lets only TCP 80/443 out. The first login trusts the key on first use
over https (and says so), the control sessions are wss, the udp-blocked member relays over
wss://.../relay, and overlay pings cross both ways (issue 18 F18: "support https")."""

from __future__ import annotations

import os

import pytest

from shoal.lab.mesh import Mesh
from shoal.lab.matrix import tunnel
from shoal.lab import HostSpec, Lab, Topology

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]


@pytest.mark.timeout(120)
def test_login_control_and_ws_relay_over_tls() -> None:
    with Lab(Topology(clients=[HostSpec("a", nat="public"), HostSpec("b", nat="udp-blocked")])) as lab:
        mesh = Mesh(lab, server_port=443, tls=True)
        try:
            mesh.server.start()
            assert mesh.server.url.startswith("https://")
            a, b = mesh.add_node("a"), mesh.add_node("b")
            out = a.cli("login", mesh.server.url)  # no --server-key: first use, over https
            assert "fetched over https" in out.stdout, out.stdout
            assert "plain http" not in out.stdout + out.stderr
            b.cli("login", mesh.server.url, "--server-key", mesh.server.key())
            a.cli("create", "tls-net", "--password", "pw-tls-lab")
            b.cli("join", "tls-net", "--password", "pw-tls-lab")
            ia, ib = a.ipv4, b.ipv4
            assert b.ping_until(ia, True, timeout=30) is not None, mesh.logs()
            assert a.ping_until(ib, True, timeout=10) is not None, mesh.logs()
            tb = tunnel(b.status(), "a")
            assert tb is not None and tb.get("path") == "relay", tb
            assert str(tb.get("endpoint", "")).startswith("relay ws wss://"), tb
            assert "logged in to https://" in b.log.read_text()
        except BaseException:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
