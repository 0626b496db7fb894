"""Lab self-test: measure every client's NAT behaviour and compare it with what was asked for.

Measurement (probe programs from shoal.lab.probe, run inside the namespaces):

    mapping    one client socket asks the server's addr1:port1, addr1:port2 and addr2:port1
               which source they see. Equal everywhere -> endpoint-independent (EIM); equal
               for the same address only -> address-dependent (ADM); otherwise
               address-and-port-dependent (APDM). Seen == the host's own address -> "none".
    filtering  a fresh socket asks addr1:port1 to answer from addr1:port1, addr1:port2 and
               addr2:port1. Reply from the other address arrives -> endpoint-independent
               (EIF); only from the other port -> address-dependent (ADF); only the
               contacted endpoint -> address-and-port-dependent (APDF). For a public host
               (no NAT) all arrive: "open".
    hairpin    two clients behind one NAT learn their mappings; the first sends to the second's
               mapping. "yes" if it arrives (we also record whether the source seen is the
               sender's public mapping, as RFC 4787 REQ-9 wants), "no" otherwise.
    udp        "blocked" if no UDP answer comes back at all; then TCP to addr1:443 must work
               and TCP to addr1:8080 must not.

`run_selftest(lab)` returns one `Row` per client (plus a hairpin row per shared router with at
least two clients); `format_table(rows)` renders them; `Row.ok` says whether measured ==
intended.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .lab import Host, Lab, LabError

PORT1, PORT2 = 3478, 3479
TCP_OPEN, TCP_CLOSED = 443, 8080

EXPECTED: dict[str, dict[str, str]] = {
    "public":          {"udp": "ok", "mapping": "none", "filtering": "open"},
    "full-cone":       {"udp": "ok", "mapping": "EIM", "filtering": "EIF"},
    "port-restricted": {"udp": "ok", "mapping": "EIM", "filtering": "APDF"},
    "symmetric":       {"udp": "ok", "mapping": "APDM", "filtering": "APDF"},
    "double-nat":      {"udp": "ok", "mapping": "EIM", "filtering": "APDF"},
    "udp-blocked":     {"udp": "blocked", "mapping": "-", "filtering": "-", "tcp": "443 only"},
}


@dataclass
class Row:
    host: str
    nat: str
    measured: dict[str, str]
    expected: dict[str, str]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return all(self.measured.get(k) == v for k, v in self.expected.items())


def _probe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "shoal.lab.probe", *args]


class Responder:
    """The server-side responder (UDP on both addresses x both ports, TCP 443 and 8080)."""

    def __init__(self, server: Host, ports: tuple[int, int] = (PORT1, PORT2)) -> None:
        self.server, self.ports = server, ports
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> Responder:
        args = ["responder"]
        for a in self.server.addrs[:2]:
            args += ["--addr", a]
        for p in self.ports:
            args += ["--port", str(p)]
        args += ["--tcp", str(TCP_OPEN), "--tcp", str(TCP_CLOSED)]
        self.proc = self.server.popen(_probe_cmd(*args), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if '"ready"' not in line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.__exit__()
            raise LabError(f"probe responder failed to start: {err.strip()[-300:]}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            for s in (self.proc.stdout, self.proc.stderr):
                if s is not None:
                    s.close()
            self.proc = None


def _run_json(host: Host, *args: str, timeout: float = 20) -> dict[str, Any]:
    p = host.exec(_probe_cmd(*args), capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"probe {args[0]} in {host.name} failed: {p.stderr.strip()[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def classify(result: dict[str, Any], a1: str, a2: str, p1: int, p2: int) -> dict[str, str]:
    """Turn a `client` probe result into {"udp", "mapping", "filtering"} labels."""
    if not result.get("udp"):
        return {"udp": "blocked", "mapping": "-", "filtering": "-"}
    m = result["mapping"]
    m11, m12, m21 = m.get(f"{a1}:{p1}"), m.get(f"{a1}:{p2}"), m.get(f"{a2}:{p1}")
    if m11 == result.get("local") and m11 == m12 == m21:
        mapping = "none"
    elif m11 == m12 == m21:
        mapping = "EIM"
    elif m11 == m12:
        mapping = "ADM"
    else:
        mapping = "APDM"
    got = set(result["filter"])
    if f"{a1}:{p1}" not in got:
        filtering = "?"
    elif f"{a2}:{p1}" in got:
        filtering = "open" if mapping == "none" else "EIF"
    elif f"{a1}:{p2}" in got:
        filtering = "ADF"
    else:
        filtering = "APDF"
    return {"udp": "ok", "mapping": mapping, "filtering": filtering}


def measure_host(lab: Lab, name: str, ports: tuple[int, int] = (PORT1, PORT2)) -> tuple[dict[str, str], str]:
    """Measure one host (the responder must run). Returns (labels, detail text)."""
    a1, a2 = lab.server.addrs[:2]
    p1, p2 = ports
    host = lab.host(name)
    res = _run_json(host, "client", "--a1", a1, "--a2", a2, "--p1", str(p1), "--p2", str(p2))
    labels = classify(res, a1, a2, p1, p2)
    if labels["udp"] == "blocked":
        tcp = _run_json(host, "tcp", "--to", f"{a1}:{TCP_OPEN}", "--to", f"{a1}:{TCP_CLOSED}")
        open_ = [k.rsplit(":", 1)[1] for k, v in tcp.items() if v]
        labels["tcp"] = "443 only" if open_ == [str(TCP_OPEN)] else (",".join(open_) or "none")
        return labels, f"tcp {tcp}"
    seen = sorted(set(v for v in res["mapping"].values() if v))
    return labels, f"local {res['local']} seen {' '.join(seen)}"


def measure_hairpin(lab: Lab, sender: str, listener: str,
                    ports: tuple[int, int] = (PORT1, PORT2)) -> tuple[bool, bool, str]:
    """(arrived, source_is_sender_mapping, detail) for sender -> listener's public mapping."""
    a1, p1 = lab.server.addrs[0], ports[0]
    lp = lab.host(listener).popen(_probe_cmd("hairpin-listen", "--a1", a1, "--p1", str(p1), "--wait", "1.5"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert lp.stdout is not None
        first = json.loads(lp.stdout.readline() or "{}")
        target = first.get("mapped")
        if not target:
            raise LabError(f"hairpin listener {listener} got no mapping")
        sent = _run_json(lab.host(sender), "hairpin-send", "--a1", a1, "--p1", str(p1), "--to", target)
        result = json.loads(lp.stdout.readline() or "{}")
    finally:
        try:
            lp.wait(timeout=5)
        except subprocess.TimeoutExpired:
            lp.kill()
            lp.wait()
        for s in (lp.stdout, lp.stderr):
            if s is not None:
                s.close()
    arrived = bool(result.get("got"))
    src_ok = arrived and result.get("from") == sent.get("mapped")
    return arrived, src_ok, f"{sender} {sent.get('mapped')} -> {listener} {target}: from {result.get('from')}"


def run_selftest(lab: Lab, ports: tuple[int, int] = (PORT1, PORT2)) -> list[Row]:
    rows: list[Row] = []
    with Responder(lab.server, ports):
        names = [h.name for h in lab.clients]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
            results = list(pool.map(lambda n: measure_host(lab, n, ports), names))
        for name, (labels, detail) in zip(names, results):
            nat = lab.host(name).nat
            rows.append(Row(name, nat, labels, dict(EXPECTED[nat]), detail))
        for rname, r in lab.plan.routers.items():
            if len(r.clients) < 2:
                continue
            a, b = r.clients[0], r.clients[1]
            arrived, src_ok, detail = measure_hairpin(lab, a, b, ports)
            measured = {"hairpin": "yes" if arrived else "no"}
            expected = {"hairpin": "yes" if r.hairpin else "no"}
            if r.hairpin:
                measured["source"] = "mapped" if src_ok else "other"
                expected["source"] = "mapped"
            rows.append(Row(f"{a}->{b}", f"{r.nat} @{rname}", measured, expected, detail))
    return rows


def format_table(rows: list[Row]) -> str:
    head = f"{'host':<12} {'asked':<22} {'measured':<44} {'ok':<4} detail"
    lines = [head, "-" * len(head)]
    for r in rows:
        meas = " ".join(f"{k}={v}" for k, v in r.measured.items())
        lines.append(f"{r.host:<12} {r.nat:<22} {meas:<44} {'yes' if r.ok else 'NO':<4} {r.detail}")
        if not r.ok:
            want = " ".join(f"{k}={v}" for k, v in r.expected.items())
            lines.append(f"{'':<12} {'':<22} expected: {want}")
    return "\n".join(lines)


ALL_TYPES_TOPOLOGY: list[tuple[str, str, str | None, bool]] = [
    ("pub", "public", None, False),
    ("cone", "full-cone", None, False),
    ("prc", "port-restricted", None, False),
    ("sym", "symmetric", None, False),
    ("dbl", "double-nat", None, False),
    ("blk", "udp-blocked", None, False),
    ("hp1", "port-restricted", "hairpin", True),
    ("hp2", "port-restricted", "hairpin", True),
    ("nh1", "port-restricted", "nohair", False),
    ("nh2", "port-restricted", "nohair", False),
]


def all_types_topology() -> Any:
    """A topology with one client of every NAT type plus a hairpinning and a plain shared NAT."""
    from .topology import HostSpec, Topology
    return Topology(clients=[HostSpec(n, nat, r, hp) for n, nat, r, hp in ALL_TYPES_TOPOLOGY])


__all__ = ["EXPECTED", "Responder", "Row", "all_types_topology", "classify", "format_table",
           "measure_hairpin", "measure_host", "run_selftest"]
