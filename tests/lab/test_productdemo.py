"""`make demo` shows the product: server, three daemons, two networks, list, pings, isolation, teardown."""

from __future__ import annotations

import os

import pytest

from shoal.lab.productdemo import product_demo
from shoal.lab import runs

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180),
              pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")]


def test_product_demo_succeeds_and_cleans_up():
    lines: list[str] = []
    assert product_demo(out=lines.append) == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "fetched over plain http and trusted on first use" in text  # the loud TOFU warning (issue 18 F18)
    assert "Joined network lan-party" in text and "wrong password" in text
    assert "direct via 203.0.113." in text and "rtt min/avg/max" in text
    assert "no peer 'cat'" in text and "tunnel cut" in text and "(wrong!)" not in text
    assert "steps ok" in text
    run_id = next(ln.split()[3] for ln in lines if ln.startswith("== built lab "))
    assert not [n for n in runs.list_namespaces() if n.startswith(run_id + "-")]  # nothing of ours left
