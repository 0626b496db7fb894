"""The product demo (`make demo`): a coordination server and three node daemons in the lab.

Extends shoal.lab.demo with steps (DemoStep) run after the lab's own: the server starts and
prints its key; ann, ben and cat start `shoal daemon` and log in (two with --server-key, one
trusting on first use); ann creates "lan-party" and "study-group", ben joins the first, cat
the second; `shoal list` / `shoal status`; overlay pings with path and RTT; isolation of ben
and cat, who share no network (and the tunnel cut when ann evicts ben); teardown. Every
command shown is the real CLI talking to a real daemon. The three nodes are public hosts:
NAT traversal comes with the next issue.

    python -m shoal.lab.productdemo          # or: make demo  (python -m shoal.lab demo)
"""

from __future__ import annotations

import atexit
import time

from shoal.lab.mesh import Mesh, NodeProc
from shoal.lab.demo import DEFAULT_STEPS, DemoStep, Out, demo, demo_topology
from shoal.lab.lab import Lab
from shoal.lab.topology import HostSpec, Topology

NODES = ("ann", "ben", "cat")


class _Product:
    mesh: Mesh | None = None


_P = _Product()


def _mesh(lab: Lab) -> Mesh:
    if _P.mesh is None or _P.mesh.lab is not lab:
        _P.mesh = Mesh(lab)
        atexit.register(_P.mesh.close)
    return _P.mesh


def _show(out: Out, node: NodeProc, *args: str, check: bool = True) -> bool:
    p = node.cli(*args, check=False)
    out(f"  {node.nickname}$ shoal {' '.join(args)}")
    for line in (p.stdout + p.stderr).rstrip().splitlines():
        out(f"    {line}")
    return (p.returncode == 0) == check


def step_server(lab: Lab, out: Out) -> bool:
    m = _mesh(lab)
    m.server.start()
    out(f"  shoal server --data-dir ... --listen {m.server.addr}:{m.server.port}   (in the lab's server host)")
    for line in m.server.log.read_text(errors="replace").splitlines():
        if "fingerprint" in line or "give clients" in line:
            out(f"    {line.strip()}")
    return True


def step_login(lab: Lab, out: Out) -> bool:
    m = _mesh(lab)
    key = m.server.key()
    ok = True
    for name in NODES:
        node = m.add_node(name)
        out(f"  {name}: shoal daemon running (pid {node.proc.pid}) in host {name} ({node.host.addr})")
    for name in NODES[:2]:
        ok &= _show(out, m.nodes[name], "login", m.server.url, "--server-key", key)
    ok &= _show(out, m.nodes["cat"], "login", m.server.url)  # trust on first use
    return ok


def step_networks(lab: Lab, out: Out) -> bool:
    m = _mesh(lab)
    ann, ben, cat = (m.nodes[n] for n in NODES)
    return all([
        _show(out, ann, "create", "lan-party", "--password", "pizza-party"),
        _show(out, ann, "create", "study-group", "--password", "calculus"),
        _show(out, ben, "join", "lan-party", "--password", "pizza-party"),
        _show(out, cat, "join", "study-group", "--password", "calculus"),
        _show(out, cat, "join", "lan-party", "--password", "wrong", check=False),
    ])


def step_list(lab: Lab, out: Out) -> bool:
    m = _mesh(lab)
    ann, ben = m.nodes["ann"], m.nodes["ben"]
    # a first packet each way so the tables show handshake RTTs
    ann.ping(ben.ipv4)
    ann.ping(m.nodes["cat"].ipv4)
    return _show(out, ann, "list") and _show(out, ben, "status")


def step_ping(lab: Lab, out: Out) -> bool:
    m = _mesh(lab)
    ann, ben, cat = (m.nodes[n] for n in NODES)
    return all([_show(out, ann, "ping", "ben", "-c", "3"), _show(out, ann, "ping", "cat", "-c", "3"),
                _show(out, cat, "ping", "ann", "-c", "2")])


def step_isolation(lab: Lab, out: Out) -> bool:
    m = _mesh(lab)
    ann, ben, cat = (m.nodes[n] for n in NODES)
    ok = _show(out, ben, "ping", "cat", "-c", "1", check=False)
    kernel = ben.ping(cat.ipv4, wait=0.5)
    out(f"  ben -> cat with the kernel's ping ({cat.ipv4}): {'REACHED (wrong!)' if kernel else 'no reply (no tunnel: neither engine has the other as a peer)'}")
    ok &= not kernel
    t0 = time.monotonic()
    ok &= _show(out, ann, "evict", "lan-party", "ben")
    gone = ann.ping_until(ben.ipv4, False, timeout=5)
    if gone is None:
        out("  ann -> ben still works after the eviction (wrong!)")
        return False
    out(f"  ann -> ben: tunnel cut {1000 * (gone - t0):.0f} ms after `shoal evict` started")
    ok &= _show(out, ben, "list")
    return ok


def step_teardown(lab: Lab, out: Out) -> bool:
    m = _P.mesh
    if m is None:
        return True
    for name, node in m.nodes.items():
        node.stop()
        out(f"  {name}: daemon stopped (exit {node.proc.returncode if node.proc else '-'})")
    m.server.stop()
    out(f"  server stopped (exit {m.server.proc.returncode if m.server.proc else '-'})")
    left = [n for n, node in m.nodes.items() if node.host.exec(["ip", "link", "show", "shoal0"], capture_output=True).returncode == 0]
    m.close()
    _P.mesh = None
    if left:
        out(f"  interfaces left behind on {', '.join(left)} (wrong!)")
    return not left


PRODUCT_STEPS: list[DemoStep] = [
    DemoStep("coordination server", step_server),
    DemoStep("three node daemons log in (pinned key, trust on first use)", step_login),
    DemoStep("two networks with overlapping members", step_networks),
    DemoStep("shoal list / shoal status", step_list),
    DemoStep("pings across the overlay (path and RTT)", step_ping),
    DemoStep("isolation: ben and cat share no network; eviction cuts the tunnel", step_isolation),
    DemoStep("teardown", step_teardown),
]


def product_topology() -> Topology:
    return Topology(clients=[*demo_topology().clients, *(HostSpec(n, nat="public") for n in NODES)])


def product_demo(out: Out = print) -> int:
    return demo(steps=[*DEFAULT_STEPS, *PRODUCT_STEPS], topology=product_topology(), out=out)


if __name__ == "__main__":
    raise SystemExit(product_demo())
