"""Lab-tier tests of shoal.lab.delay (via Lab.set_delay): latency added, traffic intact."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from shoal.lab import HostSpec, Lab, Topology

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)


def _rtt(host, addr: str, count: int = 5) -> tuple[float, float]:
    p = host.exec(["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2", addr],
                  capture_output=True, text=True, timeout=20)
    m = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", p.stdout)
    assert p.returncode == 0 and m, p.stdout + p.stderr
    return float(m[1]), float(m[3])


def test_delay_adds_latency_both_ways_and_is_removable() -> None:
    with Lab(Topology(clients=[HostSpec("a"), HostSpec("b", nat="port-restricted")])) as lab:
        a, b = lab.host("a"), lab.host("b")
        lo, hi = _rtt(a, lab.server.addr)
        assert hi < 20
        lab.set_delay("a", 30)                     # 30 ms each way -> RTT >= 60 ms
        lo, hi = _rtt(a, lab.server.addr)
        assert 60 <= lo and hi < 150, (lo, hi)
        lo, hi = _rtt(b, lab.server.addr)          # other hosts unaffected
        assert hi < 20
        lab.set_delay("a", 10)                     # changing the value on the fly
        lo, hi = _rtt(a, lab.server.addr)
        assert 20 <= lo and hi < 60, (lo, hi)
        lab.set_delay("b", 25)                     # a NATed host: delay on its router's link
        lo, _ = _rtt(b, a.addr)
        assert lo >= 70, lo                        # 2 x 10 ms (a) + 2 x 25 ms (b)
        lab.clear_delay("a")
        lab.clear_delay("b")
        lo, hi = _rtt(a, lab.server.addr)
        assert hi < 20


def test_delay_passes_full_size_frames_and_tcp() -> None:
    """GSO super-frames and partial checksums survive the userspace element (vnet header)."""
    with Lab(Topology(clients=[HostSpec("a")])) as lab:
        a = lab.host("a")
        lab.set_delay("a", 5)
        p = a.exec(["ping", "-n", "-q", "-c", "2", "-s", "1472", "-M", "do", lab.server.addr],
                   capture_output=True, text=True, timeout=10)
        assert p.returncode == 0, p.stdout
        srv = lab.server.popen(["iperf3", "-s", "-1", "-B", lab.server.addr],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            r = a.exec(["iperf3", "-c", lab.server.addr, "-n", "8M", "-J"],
                       capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stdout[-500:]
            assert '"bytes":\t8388608' in r.stdout or '"bytes": 8388608' in r.stdout or "8388608" in r.stdout
        finally:
            srv.wait(timeout=10)
