"""WgInterface run-time changes: set_peers reconciles the engine, set_addresses the link."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap

import pytest

from shoal.lab import HostSpec, Lab, Topology
from shoal.dataplane.config import InterfaceConfig, WgConfig
from shoal.dataplane.runtime import WgInterface
from shoal.wireguard.keys import PrivateKey
from shoal.wireguard.peer import PeerConfig

KEY = PrivateKey.generate()


def _peer(n: int, endpoint: tuple[str, int] | None = None) -> PeerConfig:
    return PeerConfig(
        public_key=PrivateKey.generate().public_key(),
        allowed_ips=[ipaddress.ip_network(f"100.64.0.{n}/32")],
        endpoint=endpoint,
    )


def test_set_peers_before_run_shapes_the_initial_config(tmp_path):
    iface = WgInterface(WgConfig("t0", InterfaceConfig(private_key=KEY), []), uapi_dir=tmp_path)
    a, b = _peer(2), _peer(3)
    iface.set_peers([a, b])
    assert iface.config.peers == [a, b]
    assert not iface.running and iface.listen_port is None
    with pytest.raises(ValueError, match="duplicate"):
        iface.set_peers([a, a])
    with pytest.raises(ValueError, match="own public key"):
        iface.set_peers([PeerConfig(public_key=KEY.public_key())])
    assert iface.config.peers == [a, b]  # a refused change changes nothing


SCRIPT = textwrap.dedent(
    """
    import asyncio, ipaddress, json, subprocess, sys
    from shoal.dataplane.config import InterfaceConfig, WgConfig
    from shoal.dataplane.runtime import WgInterface
    from shoal.wireguard.keys import PrivateKey
    from shoal.wireguard.peer import PeerConfig

    def peer(n, ep=None):
        return PeerConfig(public_key=PrivateKey.generate().public_key(),
                          allowed_ips=[ipaddress.ip_network(f"100.64.0.{n}/32")], endpoint=ep)

    def addrs(name):
        out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True).stdout
        return sorted(f"{a['local']}/{a['prefixlen']}" for a in json.loads(out)[0]["addr_info"]
                      if a.get("scope") != "link")

    async def main():
        name, uapi_dir = sys.argv[1], sys.argv[2]
        events = []
        iface = WgInterface(WgConfig(name, InterfaceConfig(private_key=PrivateKey.generate()), []),
                            uapi_dir=__import__("pathlib").Path(uapi_dir), on_event=lambda e, now: events.append(e))
        stop = asyncio.Event()
        task = asyncio.create_task(iface.run(stop))
        await asyncio.wait_for(iface.ready.wait(), 10)
        out = {"port": iface.listen_port, "addrs0": addrs(name)}
        await iface.set_addresses([ipaddress.ip_interface("100.64.0.1/10"), ipaddress.ip_interface("fd00:5::1/48")])
        out["addrs1"] = addrs(name)
        await iface.set_addresses([ipaddress.ip_interface("100.64.0.1/10")])
        out["addrs2"] = addrs(name)
        a, b, c = peer(2, ("203.0.113.99", 9)), peer(3), peer(4)
        iface.set_peers([a, b])
        kept = iface.device.peers[a.public_key]
        iface.set_peers([a, c])
        out["peers"] = sorted(str(iface.device.allowed_ips(p)[0]) for p in iface.device.peers.values())
        out["kept_same_object"] = iface.device.peers[a.public_key] is kept
        out["endpoint"] = list(iface.device.peers[a.public_key].endpoint)
        stop.set()
        await task
        print(json.dumps(out))

    asyncio.run(main())
    """
)


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")
@pytest.mark.timeout(60)
def test_set_peers_and_addresses_while_running(tmp_path):
    with Lab(Topology(clients=[HostSpec("a")])) as lab:
        p = lab.host("a").exec(
            [sys.executable, "-c", SCRIPT, "shoal0", str(tmp_path)], capture_output=True, text=True, timeout=30
        )
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.strip().splitlines()[-1])
        gone = subprocess.run(["ip", "-n", lab.host("a").ns, "link", "show", "shoal0"], capture_output=True)
    assert out["port"] > 0
    assert out["addrs0"] == []
    assert out["addrs1"] == ["100.64.0.1/10", "fd00:5::1/48"]
    assert out["addrs2"] == ["100.64.0.1/10"]
    assert out["peers"] == ["100.64.0.2/32", "100.64.0.4/32"]
    assert out["kept_same_object"] is True
    assert out["endpoint"] == ["203.0.113.99", 9]
    assert gone.returncode != 0  # the link went away with the process's interface
