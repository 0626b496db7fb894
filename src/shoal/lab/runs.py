"""Lab run identity, listing and sweeping of leftovers (what `down`, `list`, `check-clean` use).

Every network namespace a lab creates is named

    shl-<pid>-<start>-<seq>-<role>

where <pid> is the owning process, <start> its start time (clock ticks since boot, base 36,
from /proc/<pid>/stat field 22; guards against PID reuse), <seq> a per-process counter (one
process may run several labs) and <role> the namespace's job (inet, server, h-<host>,
r-<router>, c-<router>). `shl-<pid>-<start>-<seq>` is the run id. A run is *stale* when its
owner is gone (no such PID, or a PID with another start time); only stale runs are swept, never
a live concurrent run. Interfaces are created directly inside the namespaces, so the root
namespace never holds one of ours; check-clean still reports any root link named `shl*`.

Sweeping kills (by PID) processes still running inside a stale run's namespaces (delay
forwarders, probes, daemons started through Host.popen), then deletes the namespaces.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

NETNS_DIR = "/run/netns"
PREFIX = "shl-"
NS_RE = re.compile(r"^shl-(\d+)-([0-9a-z]+)-(\d+)-(.+)$")

_seq_lock = threading.Lock()
_seq = 0


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def proc_start(pid: int) -> str | None:
    """Start time of `pid` (base 36), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2:].split()
    try:
        return _b36(int(rest[19]))  # field 22 overall = index 19 after pid and comm
    except (IndexError, ValueError):
        return None


def new_run_id() -> str:
    global _seq
    with _seq_lock:
        n = _seq
        _seq += 1
    pid = os.getpid()
    return f"shl-{pid}-{proc_start(pid)}-{n}"


@dataclass
class RunInfo:
    run_id: str
    pid: int
    alive: bool
    namespaces: list[str] = field(default_factory=list)


def owner_alive(pid: int, start: str) -> bool:
    return proc_start(pid) == start


def list_namespaces() -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except FileNotFoundError:
        return []


def list_runs() -> list[RunInfo]:
    runs: dict[str, RunInfo] = {}
    for name in list_namespaces():
        m = NS_RE.match(name)
        if not m:
            continue
        pid, start, seq = int(m[1]), m[2], m[3]
        rid = f"shl-{pid}-{start}-{seq}"
        if rid not in runs:
            runs[rid] = RunInfo(rid, pid, owner_alive(pid, start))
        runs[rid].namespaces.append(name)
    return sorted(runs.values(), key=lambda r: r.run_id)


def root_links() -> list[str]:
    """Links named shl* in the root namespace (we never make any; a leak if present)."""
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith("shl"))
    except FileNotFoundError:
        return []


def _ns_inode(name: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, name)).st_ino
    except OSError:
        return None


def pids_in_namespaces(names: list[str]) -> dict[str, list[int]]:
    """PIDs of processes whose network namespace is one of `names` (one /proc scan)."""
    inodes = {ino: n for n in names if (ino := _ns_inode(n)) is not None}
    out: dict[str, list[int]] = {n: [] for n in names}
    if not inodes:
        return out
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            ino = os.stat(f"/proc/{entry}/ns/net").st_ino
        except OSError:
            continue
        if ino in inodes:
            out[inodes[ino]].append(int(entry))
    return out


def kill_pids(pids: list[int], grace: float = 1.0) -> None:
    """SIGTERM the given PIDs, wait up to `grace` seconds, then SIGKILL the survivors."""
    live = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            live.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        live = [p for p in live if _exists(p)]
        if live:
            time.sleep(0.02)
    for pid in live:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except (OSError, IndexError):
        return False


def delete_namespaces(names: list[str]) -> None:
    """Kill what still runs inside `names`, then delete the namespaces (idempotent)."""
    names = [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]
    if not names:
        return
    pids = [p for ps in pids_in_namespaces(names).values() for p in ps]
    if pids:
        kill_pids(pids)
    batch = "".join(f"netns del {n}\n" for n in names)
    # -force: keep going past a namespace that vanished meanwhile.
    subprocess.run(["ip", "-force", "-batch", "-"], input=batch, text=True,
                   capture_output=True, check=False)


def sweep_stale() -> list[str]:
    """Delete the namespaces of runs whose owner process is dead. Returns the run ids swept."""
    swept = []
    for run in list_runs():
        if not run.alive:
            delete_namespaces(run.namespaces)
            swept.append(run.run_id)
    return swept
