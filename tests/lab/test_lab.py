"""Lab-tier tests of shoal.lab.lab: build, exec/popen, reachability, MTU, cleanup, faults."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from shoal.lab import HostSpec, Lab, LabError, Topology
from shoal.lab import runs

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _ping(host, addr: str, count: int = 1, size: int | None = None, extra: list[str] | None = None):
    cmd = ["ping", "-n", "-q", "-c", str(count), "-W", "1", "-i", "0.2"]
    if size is not None:
        cmd += ["-s", str(size), "-M", "do"]
    return host.exec(cmd + (extra or []) + [addr], capture_output=True, text=True, timeout=20)


def test_two_public_clients_fast_and_reachable() -> None:
    t0 = time.monotonic()
    with Lab(Topology(clients=[HostSpec("a"), HostSpec("b")])) as lab:
        built = time.monotonic() - t0
        assert built < 1.0, f"two-public-client lab took {built:.2f}s"
        a, b = lab.host("a"), lab.host("b")
        assert len(lab.server.addrs) == 2
        for dst in (*lab.server.addrs, b.addr):
            assert _ping(a, dst).returncode == 0, dst
        # full 1500-byte IP packets cross without fragmentation (1472 + 28 = 1500)
        assert _ping(a, b.addr, size=1472).returncode == 0
        assert _ping(a, b.addr, size=1473).returncode != 0
        # the namespaces know only lab prefixes: no default route anywhere
        for h in lab.hosts.values():
            routes = h.exec(["ip", "route"], capture_output=True, text=True).stdout
            assert "default" not in routes
        # popen runs inside the namespace too, and its PID is the command's own
        p = a.popen(["sh", "-c", "readlink /proc/self/ns/net; ip -o addr show eth0"],
                    stdout=subprocess.PIPE, text=True)
        out, _ = p.communicate(timeout=10)
        assert a.addr in out
        names = list(lab.ns.values())
    assert not set(names) & set(runs.list_namespaces())


def test_nat_clients_reach_server_but_not_each_others_lan() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("b", nat="port-restricted"),
                             HostSpec("c", nat="port-restricted")])
    with Lab(topo) as lab:
        a, b, c = lab.host("a"), lab.host("b"), lab.host("c")
        assert b.addr.startswith("198.18.") and b.wan_addr.startswith("203.0.113.")
        assert _ping(b, lab.server.addrs[0]).returncode == 0
        assert _ping(b, a.addr).returncode == 0
        assert _ping(a, b.addr).returncode != 0          # a private LAN is not routed
        assert _ping(b, c.addr).returncode != 0


def test_cleanup_on_exception() -> None:
    lab = Lab(Topology(clients=[HostSpec("a", nat="symmetric")]))
    with pytest.raises(RuntimeError, match="boom"):
        with lab:
            names = list(lab.ns.values())
            assert set(names) <= set(runs.list_namespaces())
            lab.host("a").popen(["sleep", "30"])    # a process left running inside
            raise RuntimeError("boom")
    assert not set(names) & set(runs.list_namespaces())
    assert lab.closed
    with pytest.raises(LabError):
        lab.link_down("a")


def test_unknown_host_is_a_clear_keyerror() -> None:
    with Lab(Topology(clients=[HostSpec("a")])) as lab:
        with pytest.raises(KeyError, match="no host 'zz'"):
            lab.host("zz")


# --- faults -------------------------------------------------------------------------------
def _received(host, addr: str, count: int = 200) -> int:
    p = host.exec(["ping", "-n", "-q", "-c", str(count), "-i", "0.002", "-W", "1", addr],
                  capture_output=True, text=True, timeout=30)
    m = re.search(r"(\d+) received", p.stdout)
    assert m, p.stdout + p.stderr
    return int(m[1])


def _seen_by_server(lab, name: str) -> str:
    """The source address the server observes for a UDP packet from `name`."""
    from shoal.lab.selftest import Responder, _run_json
    with Responder(lab.server):
        res = _run_json(lab.host(name), "map", "--a1", lab.server.addr, "--p1", "3478")
    assert res["seen"], res
    return res["seen"].rsplit(":", 1)[0]


def test_fault_loss_is_random_and_clears() -> None:
    with Lab(Topology(clients=[HostSpec("b", nat="port-restricted")])) as lab:
        b = lab.host("b")
        assert _received(b, lab.server.addr) == 200
        lab.set_loss("b", 50)          # 50 % each way -> about 25 % of round trips survive
        got = _received(b, lab.server.addr)
        assert 20 <= got <= 90, got
        lab.clear_loss("b")
        assert _received(b, lab.server.addr) == 200
        with pytest.raises(ValueError):
            lab.set_loss("b", 101)


def test_fault_link_down_up() -> None:
    with Lab(Topology(clients=[HostSpec("a"), HostSpec("b", nat="double-nat")])) as lab:
        a, b = lab.host("a"), lab.host("b")
        assert _ping(b, lab.server.addr).returncode == 0
        lab.link_down("b")
        assert _ping(b, lab.server.addr).returncode != 0
        assert _ping(a, lab.server.addr).returncode == 0     # only b's link is down
        lab.link_up("b")
        assert _ping(b, lab.server.addr, count=3, extra=["-w", "3"]).returncode == 0
        lab.link_down("server")
        assert _ping(a, lab.server.addr).returncode != 0
        lab.link_up("server")
        assert _ping(a, lab.server.addr, count=3, extra=["-w", "3"]).returncode == 0


@pytest.mark.parametrize("nat", ["public", "port-restricted", "full-cone", "double-nat"])
def test_fault_roam_changes_the_address_the_server_sees(nat: str) -> None:
    with Lab(Topology(clients=[HostSpec("m", nat=nat)])) as lab:
        m = lab.host("m")
        before = m.wan_addr
        assert _seen_by_server(lab, "m") == before
        new = lab.roam("m")
        assert new != before and new.startswith("198.51.100.")
        assert m.wan_addr == new
        if nat == "public":
            assert m.addr == new
        assert _seen_by_server(lab, "m") == new
        assert _ping(m, lab.server.addr).returncode == 0


def test_two_labs_in_one_process_do_not_collide() -> None:
    topo = Topology(clients=[HostSpec("a"), HostSpec("b", nat="port-restricted")])
    with Lab(topo) as one, Lab(topo) as two:
        assert one.run_id != two.run_id
        assert not set(one.ns.values()) & set(two.ns.values())
        assert one.host("a").addr == two.host("a").addr      # same plan, separate worlds
        for lab in (one, two):
            assert _ping(lab.host("b"), lab.server.addr).returncode == 0
        one.link_down("b")
        assert _ping(two.host("b"), two.server.addr).returncode == 0


def test_set_nat_switches_a_router_in_place_and_keeps_open_flows() -> None:
    from shoal.lab.selftest import Responder, measure_host

    with Lab(Topology(clients=[HostSpec("b", nat="udp-blocked"), HostSpec("d", nat="double-nat")])) as lab, \
            Responder(lab.server):
        b = lab.host("b")
        assert measure_host(lab, "b")[0]["udp"] == "blocked"
        # a TCP connection to 443 opened while UDP is blocked survives the switch
        srv = lab.server.popen(["python3", "-c", "import socket,sys\ns=socket.create_server(('192.0.2.2',443))\n"
                                "print('ready',flush=True)\nc,_=s.accept()\nc.sendall(c.recv(100))"],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
            cli = b.popen(["python3", "-c", "import socket,sys\nc=socket.create_connection(('192.0.2.2',443),timeout=5)\n"
                                            "print('connected',flush=True)\nsys.stdin.readline()\nc.sendall(b'still')\n"
                                            "print(c.recv(100).decode(),flush=True)"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert cli.stdout is not None and cli.stdin is not None
            assert cli.stdout.readline().strip() == "connected"
            lab.set_nat("b", "port-restricted")
            assert b.nat == "port-restricted"
            assert measure_host(lab, "b")[0] == {"udp": "ok", "mapping": "EIM", "filtering": "APDF"}
            cli.stdin.write("go\n")
            cli.stdin.flush()
            assert cli.stdout.readline().strip() == "still"
            cli.wait(5)
        finally:
            srv.kill()
            srv.wait(5)
        lab.set_nat("b", "full-cone")
        assert measure_host(lab, "b")[0] == {"udp": "ok", "mapping": "EIM", "filtering": "EIF"}
        lab.set_nat("b", "udp-blocked")
        assert measure_host(lab, "b")[0]["udp"] == "blocked"
        for bad_host, bad_nat in (("b", "double-nat"), ("b", "public"), ("d", "full-cone")):
            with pytest.raises(ValueError):
                lab.set_nat(bad_host, bad_nat)
        with pytest.raises(KeyError):
            lab.set_nat("nobody", "full-cone")
