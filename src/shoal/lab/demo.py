"""`python -m shoal.lab demo`: build a small lab, show it working, tear it down.

The demo is a list of steps run against one Lab. Each step is a `DemoStep` (title + a function
`(lab, out) -> bool`); later features append their own steps (e.g. "two shoal nodes ping each
other through NATs") instead of rewriting this module:

    from shoal.lab.demo import DEFAULT_STEPS, DemoStep, demo
    demo(steps=[*DEFAULT_STEPS, DemoStep("my feature", my_fn)])

`demo()` returns a process exit code: 0 when every step succeeded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from .lab import Lab
from .selftest import format_table, run_selftest
from .topology import HostSpec, Topology

Out = Callable[[str], None]


@dataclass(frozen=True)
class DemoStep:
    title: str
    run: Callable[[Lab, Out], bool]


def demo_topology() -> Topology:
    return Topology(clients=[
        HostSpec("alice", nat="public"),
        HostSpec("bob", nat="port-restricted"),
        HostSpec("carol", nat="symmetric"),
        HostSpec("dave", nat="full-cone"),
        HostSpec("erin", nat="port-restricted", router="home", hairpin=True),
        HostSpec("frank", nat="port-restricted", router="home", hairpin=True),
    ])


def step_describe(lab: Lab, out: Out) -> bool:
    out(lab.describe())
    return True


def step_ping(lab: Lab, out: Out) -> bool:
    ok = True
    pairs = [(h, dst) for h in lab.clients for dst in lab.server.addrs]
    if "erin" in lab.hosts and "frank" in lab.hosts:     # LAN peers behind one NAT
        pairs.append((lab.host("erin"), lab.host("frank").addr))
    for h, dst in pairs:
        p = h.exec(["ping", "-n", "-q", "-c", "1", "-W", "1", dst], capture_output=True, text=True, timeout=10)
        rtt = next((ln.split("=")[1].split("/")[1] for ln in p.stdout.splitlines() if ln.startswith("rtt")), "-")
        out(f"  ping {h.name:<6} ({h.addr:<13}) -> {dst:<13} {'ok  ' if p.returncode == 0 else 'FAIL'} rtt {rtt} ms")
        ok &= p.returncode == 0
    return ok


def step_selftest(lab: Lab, out: Out) -> bool:
    rows = run_selftest(lab)
    out(format_table(rows))
    return all(r.ok for r in rows)


DEFAULT_STEPS: list[DemoStep] = [
    DemoStep("the lab", step_describe),
    DemoStep("pings across the virtual internet", step_ping),
    DemoStep("measured NAT behaviour (RFC 4787)", step_selftest),
]


def demo(steps: list[DemoStep] | None = None, topology: Topology | None = None,
         out: Out = print) -> int:
    steps = DEFAULT_STEPS if steps is None else steps
    t0 = time.monotonic()
    failed: list[str] = []
    with Lab(topology or demo_topology()) as lab:
        out(f"== built lab {lab.run_id} in {time.monotonic() - t0:.2f} s")
        for i, step in enumerate(steps, 1):
            out(f"\n== {i}. {step.title}")
            try:
                ok = step.run(lab, out)
            except Exception as e:  # a failing step is reported, the lab is still torn down
                out(f"  step failed: {type(e).__name__}: {e}")
                ok = False
            if not ok:
                failed.append(step.title)
    out(f"\n== torn down; {len(steps) - len(failed)}/{len(steps)} steps ok in {time.monotonic() - t0:.1f} s")
    if failed:
        out(f"failed: {', '.join(failed)}")
    return 1 if failed else 0
