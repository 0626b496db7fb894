"""Lab-tier tests of shoal.lab.runs: a SIGKILLed run is swept by the next start; live runs are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from shoal.lab import HostSpec, Lab, Topology
from shoal.lab import runs

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]
if os.geteuid() != 0:
    pytest.skip("needs root", allow_module_level=True)

CHILD = """
import sys, time
from shoal.lab import Lab, Topology, HostSpec
lab = Lab(Topology(clients=[HostSpec("a", nat="port-restricted")]), sweep=False).start()
lab.set_delay("a", 5)          # leaves a forwarder process inside the internet namespace
lab.host("a").popen(["sleep", "300"])
print(lab.run_id, flush=True)
time.sleep(300)
"""


def _spawn() -> tuple[subprocess.Popen[str], str]:
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    run_id = p.stdout.readline().strip()
    assert run_id.startswith(f"shl-{p.pid}-"), run_id
    return p, run_id


def test_sigkilled_run_is_swept_by_next_start_live_runs_are_not() -> None:
    live, live_id = _spawn()
    try:
        # A Lab started meanwhile by another process sweeps dead runs too (by design); if the
        # killed run vanished before we looked, kill another one.
        for _ in range(5):
            dead, dead_id = _spawn()
            dead.send_signal(signal.SIGKILL)
            dead.wait(timeout=10)
            by_id = {r.run_id: r for r in runs.list_runs()}
            if dead_id in by_id:
                break
        else:
            pytest.fail("the killed run kept being swept by concurrent labs")
        assert not by_id[dead_id].alive
        assert live_id in by_id and by_id[live_id].alive
        stuck = runs.pids_in_namespaces(by_id[dead_id].namespaces)
        assert any(stuck.values()), "expected orphaned processes inside the killed run"
        with Lab(Topology(clients=[HostSpec("b")])) as lab:   # the next start sweeps
            ids = {r.run_id for r in runs.list_runs()}
            assert dead_id not in ids
            assert live_id in ids and lab.run_id in ids
        for pids in stuck.values():
            for pid in pids:
                assert not runs._exists(pid), f"orphan {pid} survived the sweep"
    finally:
        live.terminate()              # SIGTERM: the child tears down its own lab
        live.wait(timeout=10)
    assert live_id not in {r.run_id for r in runs.list_runs()}


def test_owner_identity_includes_start_time() -> None:
    rid = runs.new_run_id()
    pid, start = rid.split("-")[1:3]
    assert int(pid) == os.getpid() and runs.owner_alive(int(pid), start)
    assert not runs.owner_alive(int(pid), start + "x")   # same PID, other start: a reused PID
