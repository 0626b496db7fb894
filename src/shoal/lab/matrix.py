"""Connectivity matrix with real processes in the lab: which hosts, networks and pairs, and
how a pair's time to first packet and path are measured.

Used by tests/daemon/test_lab_paths.py (issue #5's acceptance). Builds on shoal.lab.mesh
(real `shoal server` and `shoal daemon`s). The plan:

- two hosts of every lab NAT type, each behind its own router (distinct NATs of one type):
  `pub1 pub2 cone1 cone2 prc1 prc2 sym1 sym2 dbl1 dbl2 blk1 blk2`, plus two port-restricted
  LAN peers behind one hairpinning router (`hp1 hp2`) and two behind one without (`nh1 nh2`);
- networks chosen so that exactly the pairs under test are peers (every member of a network
  probes every other member; 16 daemons in one network would be 120 pairs): `mx` holds the
  first host of every type (the 15 pairs of distinct types), `s-<type>` the two hosts of one
  type, `lan-hp` and `lan-nh` the LAN pairs. 23 pairs in all.

Time to first packet: from the wall-clock moment just before the later of a pair's two nodes
joins their shared network (`POST /v1/networks/join`) to the first overlay ping reply in
either direction (`ping -D` every PING_INTERVAL from both sides, so the resolution is that
interval). The path comes from both sides' `shoal status --json`: each peer's tunnel object
("path": "direct" | "relay" | null, "endpoint", "rtt_ms", "lan").
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from shoal.lab.mesh import Mesh, NodeProc
from shoal.lab import HostSpec, Topology
from shoal.lab.topology import NAT_TYPES

SHORT: dict[str, str] = {"public": "pub", "full-cone": "cone", "port-restricted": "prc",
                         "symmetric": "sym", "double-nat": "dbl", "udp-blocked": "blk"}
LAN_KINDS: dict[str, str] = {"hp": "same NAT, hairpin", "nh": "same NAT, no hairpin"}
PING_INTERVAL = 0.05
STATUS_EVERY = 0.5        # how often every node's status is read while waiting
_REPLY = re.compile(r"^\[(\d+\.\d+)\] \d+ bytes from ")


@dataclass(frozen=True)
class Pair:
    """Two hosts that must connect. `kind_a`/`kind_b` are NAT types; `lan` names the shared
    NAT for LAN peers (then both kinds are the NAT type behind it)."""

    a: str
    b: str
    kind_a: str
    kind_b: str
    network: str
    lan: str | None = None

    @property
    def label(self) -> str:
        if self.lan is not None:
            return f"{self.lan} ({self.kind_a})"
        return f"{self.kind_a} x {self.kind_b}"


@dataclass
class MatrixPlan:
    topology: Topology
    pairs: list[Pair]
    networks: dict[str, list[str]]   # name -> members; the first creates it, the rest join in order


def matrix_plan(types: tuple[str, ...] = NAT_TYPES, shared_nat: bool = True) -> MatrixPlan:
    """Hosts, networks and pairs for every unordered pair of `types` (same-type pairs
    included) plus, with `shared_nat`, the two LAN pairs (see the module docstring)."""
    for t in types:
        if t not in SHORT:
            raise ValueError(f"unknown NAT type {t!r}")
    specs: list[HostSpec] = []
    pairs: list[Pair] = []
    networks: dict[str, list[str]] = {}
    for t in types:
        s = SHORT[t]
        specs += [HostSpec(f"{s}1", nat=t), HostSpec(f"{s}2", nat=t)]
        networks[f"s-{s}"] = [f"{s}1", f"{s}2"]
    if len(types) > 1:
        networks["mx"] = [f"{SHORT[t]}1" for t in types]
    for i, ta in enumerate(types):
        for tb in types[i:]:
            if ta == tb:
                pairs.append(Pair(f"{SHORT[ta]}1", f"{SHORT[ta]}2", ta, ta, f"s-{SHORT[ta]}"))
            else:
                pairs.append(Pair(f"{SHORT[ta]}1", f"{SHORT[tb]}1", ta, tb, "mx"))
    if shared_nat:
        for r, kind in LAN_KINDS.items():
            specs += [HostSpec(f"{r}1", nat="port-restricted", router=r, hairpin=r == "hp"),
                      HostSpec(f"{r}2", nat="port-restricted", router=r, hairpin=r == "hp")]
            networks[f"lan-{r}"] = [f"{r}1", f"{r}2"]
            pairs.append(Pair(f"{r}1", f"{r}2", "port-restricted", "port-restricted", f"lan-{r}", kind))
    return MatrixPlan(Topology(clients=specs), pairs, networks)


def tunnel(status: dict[str, Any], peer: str) -> dict[str, Any] | None:
    """The tunnel object {"path", "endpoint", "rtt_ms", "lan", ...} a node's status shows for
    the peer with nickname `peer` (None: not a peer). Reads a nested "tunnel" object when the
    row has one, else the row's own fields."""
    for row in status.get("peers", []):
        if row.get("nickname") == peer:
            t = row.get("tunnel")
            return t if isinstance(t, dict) else row
    return None


def reply_times(ping_output: str) -> list[float]:
    """Wall-clock times of the replies in `ping -D` output ("[1700000000.123456] 64 bytes from ...")."""
    return [float(m.group(1)) for m in map(_REPLY.match, ping_output.splitlines()) if m]


class FirstReply:
    """`ping -D` from a lab host every PING_INTERVAL until stopped; the wall-clock time of the
    first reply (ping's own -D timestamp, taken when the reply arrived)."""

    def __init__(self, node: NodeProc, addr: str, log: Path, deadline_s: float = 90,
                 interval: float = PING_INTERVAL) -> None:
        self.node, self.addr, self.log = node, addr, log
        with open(log, "wb") as out:
            self.proc = node.host.popen(["ping", "-D", "-n", "-i", f"{interval:g}", "-W", "1",
                                         "-w", f"{deadline_s:g}", addr], stdout=out, stderr=out)
        self._first: float | None = None

    def replies(self) -> list[float]:
        try:
            return reply_times(self.log.read_text(errors="replace"))
        except OSError:
            return []

    def first(self) -> float | None:
        if self._first is None:
            got = self.replies()
            self._first = got[0] if got else None
        return self._first

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:  # noqa: BLE001 - then kill by its PID
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class PairResult:
    pair: Pair
    joined_at: float                              # wall clock, just before the later join
    first_ab: float | None = None                 # wall clock of a's first reply from b
    first_ba: float | None = None
    tunnel_a: dict[str, Any] | None = None        # a's view of b, when the path was read
    tunnel_b: dict[str, Any] | None = None
    path_settled_s: float | None = None           # since the join, when both sides showed an accepted path

    @property
    def both_ways(self) -> bool:
        return self.first_ab is not None and self.first_ba is not None

    @property
    def ttfp_s(self) -> float | None:
        got = [t for t in (self.first_ab, self.first_ba) if t is not None]
        return min(got) - self.joined_at if got else None

    @property
    def paths(self) -> tuple[str | None, str | None]:
        return (None if self.tunnel_a is None else self.tunnel_a.get("path"),
                None if self.tunnel_b is None else self.tunnel_b.get("path"))


@dataclass
class MatrixRun:
    results: list[PairResult]
    setup_s: float = 0.0           # daemons started and logged in
    connect_s: float = 0.0         # networks created -> the last pair's first packets
    settle_s: float = 0.0          # networks created -> every path accepted (or the limit)
    daemon_cpu_s: float = 0.0      # CPU of all daemons from the first join to the end
    notes: list[str] = field(default_factory=list)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of processes (seconds), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def start_nodes(mesh: Mesh, names: list[str], workers: int = 4) -> None:
    """Start daemons for `names` (a few at a time) and log every one in to the mesh's server."""
    key = mesh.server.key()

    def one(name: str) -> None:
        node = mesh.add_node(name)
        node.call("POST", "/v1/login", {"server": mesh.server.url, "server_key": key})

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, names))


def run_matrix(mesh: Mesh, plan: MatrixPlan, accepts: Callable[[Pair], frozenset[str]],
               connect_timeout: float = 60.0, settle_timeout: float = 15.0,
               password: str = "pw-lab-paths") -> MatrixRun:
    """Create the plan's networks, join their members one by one (starting both pingers of
    every pair the join completes at once), then wait until every pair has passed traffic both
    ways (at most `connect_timeout` after the last join) and both sides of every pair show
    the same path, one of `accepts(pair)` (at most `settle_timeout` longer; paths are read every
    STATUS_EVERY). The nodes must be running and logged in (start_nodes). Returns what was
    measured; asserts nothing."""
    run = MatrixRun(results=[])
    pids = [n.proc.pid for n in mesh.nodes.values() if n.proc is not None]
    cpu0 = cpu_seconds(pids)
    t_start = time.monotonic()
    for net, members in plan.networks.items():
        mesh.nodes[members[0]].call("POST", "/v1/networks/create", {"name": net, "password": password})
    pingers: dict[Pair, tuple[FirstReply, FirstReply]] = {}
    results: dict[Pair, PairResult] = {}
    ipv4 = {name: n.ipv4 for name, n in mesh.nodes.items()}
    logs = mesh.dir / "pings"
    logs.mkdir(exist_ok=True)
    try:
        for net, members in plan.networks.items():
            joined = {members[0]}
            for m in members[1:]:
                t = time.time()
                mesh.nodes[m].call("POST", "/v1/networks/join", {"name": net, "password": password})
                joined.add(m)
                for p in plan.pairs:
                    if p.network == net and m in (p.a, p.b) and {p.a, p.b} <= joined:
                        results[p] = PairResult(p, joined_at=t)
                        pingers[p] = (FirstReply(mesh.nodes[p.a], ipv4[p.b], logs / f"{p.a}-{p.b}"),
                                      FirstReply(mesh.nodes[p.b], ipv4[p.a], logs / f"{p.b}-{p.a}"))
        # one loop: pingers every 0.1 s, both sides' paths every STATUS_EVERY; done when every
        # pair passed traffic both ways and shows the expected path on both sides
        t_joined = time.monotonic()
        traffic_deadline = t_joined + connect_timeout
        deadline = traffic_deadline + settle_timeout
        next_status = 0.0
        last_first = t_joined
        while True:
            now_m = time.monotonic()
            for p, (ab, ba) in pingers.items():
                r = results[p]
                for which, pinger in (("first_ab", ab), ("first_ba", ba)):
                    if getattr(r, which) is None:
                        setattr(r, which, pinger.first())
                        if getattr(r, which) is not None:
                            pinger.stop()
                            last_first = now_m
            if now_m >= next_status:
                next_status = now_m + STATUS_EVERY
                statuses = {name: n.status() for name, n in mesh.nodes.items()}
                now = time.time()
                for p, r in results.items():
                    r.tunnel_a, r.tunnel_b = tunnel(statuses[p.a], p.b), tunnel(statuses[p.b], p.a)
                    pa, pb = r.paths
                    if pa == pb and pa in accepts(p):
                        if r.path_settled_s is None:
                            r.path_settled_s = now - r.joined_at
                    else:
                        r.path_settled_s = None
            traffic = all(r.both_ways for r in results.values())
            paths = all(r.path_settled_s is not None for r in results.values())
            if (traffic and paths) or now_m >= deadline or (not traffic and now_m >= traffic_deadline):
                break
            time.sleep(0.1)
    finally:
        for ab, ba in pingers.values():
            ab.stop()
            ba.stop()
    run.connect_s = last_first - t_start
    run.settle_s = time.monotonic() - t_start
    run.daemon_cpu_s = cpu_seconds(pids) - cpu0
    run.results = [results[p] for p in plan.pairs if p in results]
    return run


def format_table(run: MatrixRun, expected: Callable[[Pair], str]) -> str:
    """A Markdown table: pair, expected path, both sides' paths and endpoints, time to first
    packet, when both sides showed an accepted path."""
    rows = ["| pair | hosts | expected | path (a / b) | endpoint a->b / b->a | time to first packet | path shown after |",
            "|---|---|---|---|---|---|---|"]
    for r in run.results:
        pa, pb = r.paths
        ea = (r.tunnel_a or {}).get("endpoint")
        eb = (r.tunnel_b or {}).get("endpoint")
        lan = [t.get("lan") for t in (r.tunnel_a, r.tunnel_b) if t is not None and "lan" in t]
        path = f"{pa} / {pb}" + (" (LAN)" if lan and all(lan) else "")
        ttfp = "no traffic" if r.ttfp_s is None else f"{r.ttfp_s * 1000:.0f} ms"
        if r.ttfp_s is not None and not r.both_ways:
            ttfp += " (one way only)"
        settled = "-" if r.path_settled_s is None else f"{r.path_settled_s:.1f} s"
        rows.append(f"| {r.pair.label} | {r.pair.a}, {r.pair.b} | {expected(r.pair)} | {path} | {ea} / {eb} | {ttfp} | {settled} |")
    return "\n".join(rows)

