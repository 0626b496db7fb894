"""`make bench`: Shoal and wireguard-go side by side, in one run, in the lab.

Setup: two public lab hosts ``a`` and ``b`` on the TEST-NET underlay (MTU 1500); each
implementation builds a tunnel between them with overlay 100.64.0.1/24 (a) and 100.64.0.2/24
(b), tunnel MTU 1420 on both ends (so no fragmentation). For each round (order alternates
between rounds so neither always goes first) each implementation: comes up on both hosts,
waits for a handshake, is measured, goes down. Measurements, client in ``a``, server in ``b``:

    ping       N pings at 10 ms interval (idle tunnel): avg and p99 RTT
    tcp1/tcp4  iperf3 TCP, 1 and 4 streams (first second omitted), received Mbit/s
    udp64      iperf3 UDP, 64-byte payloads, unlimited rate: packets/s the server received
    cpu_s      CPU seconds (user+sys, /proc/<pid>/stat) of both tunnel processes over the round
    rss_mb     peak RSS (VmHWM) of the larger tunnel process

Medians over rounds, ratios Shoal / wireguard-go and pass/fail against issue #3's floors are
computed in ``shoal.bench.stats``. Output: results/bench-<timestamp>.json and .md, and
BENCHMARKS.md (table, command, machine). Every process started here is stopped by its PID;
the lab removes its namespaces.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shoal.bench import stats
from shoal.lab import HostSpec, Lab, Topology
from shoal.lab.lab import Host

OVERLAY = {"a": "100.64.0.1", "b": "100.64.0.2"}
OVERLAY_PREFIX = 24
TUNNEL_MTU = 1420
LISTEN_PORT = 51820
IPERF_PORT = 5201
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[3]


@dataclasses.dataclass
class Options:
    rounds: int = 5
    tcp_seconds: int = 8
    udp_seconds: int = 5
    pings: int = 200
    impls: tuple[str, ...] = ("wireguard-go", "shoal")
    out_dir: Path = REPO / "results"
    doc: Path | None = REPO / "BENCHMARKS.md"
    command: str = "make bench"

    @classmethod
    def quick(cls, **kw: Any) -> "Options":
        return cls(rounds=1, tcp_seconds=3, udp_seconds=2, pings=50, **kw)


class BenchError(RuntimeError):
    pass


def _keypair() -> tuple[str, str]:
    priv = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True, timeout=5).stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, text=True, check=True, timeout=5).stdout.strip()
    return priv, pub


@dataclasses.dataclass
class Side:
    host: Host
    role: str  # "a" or "b"
    ifname: str
    priv: str
    pub: str
    proc: subprocess.Popen[bytes] | None = None


class Impl:
    """One tunnel implementation: bring a pair up / down; ``pids`` are the tunnel processes."""

    name = "?"

    def up(self, me: Side, peer: Side, workdir: Path) -> None:
        raise NotImplementedError

    def down(self, me: Side) -> None:
        if me.proc is not None:
            _stop(me.proc)
            me.proc = None


def _stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _peer_section(peer: Side) -> str:
    return (
        f"[Peer]\nPublicKey = {peer.pub}\nAllowedIPs = {OVERLAY[peer.role]}/32\n"
        f"Endpoint = {peer.host.addr}:{LISTEN_PORT}\n"
    )


def _wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise BenchError(f"timed out waiting for {what}")


class WireguardGo(Impl):
    name = "wireguard-go"

    def up(self, me: Side, peer: Side, workdir: Path) -> None:
        sock = Path("/var/run/wireguard") / f"{me.ifname}.sock"
        env = {**os.environ, "LOG_LEVEL": "error"}
        me.proc = me.host.popen(["wireguard-go", "-f", me.ifname], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        _wait_for(lambda: sock.exists() or me.proc.poll() is not None, 10, f"{me.ifname} UAPI socket")  # type: ignore[union-attr]
        if me.proc.poll() is not None:
            raise BenchError(f"wireguard-go exited with {me.proc.returncode}")
        conf = workdir / f"{me.ifname}.wg"
        conf.write_text(f"[Interface]\nPrivateKey = {me.priv}\nListenPort = {LISTEN_PORT}\n\n{_peer_section(peer)}")
        for cmd in (["wg", "setconf", me.ifname, str(conf)],
                    ["ip", "addr", "add", f"{OVERLAY[me.role]}/{OVERLAY_PREFIX}", "dev", me.ifname],
                    ["ip", "link", "set", me.ifname, "mtu", str(TUNNEL_MTU), "up"]):
            r = me.host.exec(cmd, capture_output=True, text=True, timeout=10)
            if r.returncode:
                raise BenchError(f"{' '.join(cmd)}: {r.stderr.strip()}")


class Shoal(Impl):
    name = "shoal"

    def __init__(self, extra_env: dict[str, str] | None = None, name: str = "shoal",
                 python_args: tuple[str, ...] = ("-m", "shoal"), wg_args: tuple[str, ...] = ()) -> None:
        self.extra_env = extra_env or {}
        self.name = name
        self.python_args = python_args  # how to start `shoal` (a variant may wrap it)
        self.wg_args = wg_args  # extra options of `wg up`

    def up(self, me: Side, peer: Side, workdir: Path) -> None:
        conf = workdir / f"{me.ifname}.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {me.priv}\nListenPort = {LISTEN_PORT}\n"
            f"Address = {OVERLAY[me.role]}/{OVERLAY_PREFIX}\nMTU = {TUNNEL_MTU}\n\n{_peer_section(peer)}"
        )
        env = {**os.environ, "SHOAL_RUN_DIR": str(workdir / "run"), **self.extra_env}
        log = open(workdir / f"{me.ifname}.log", "ab")
        me.proc = me.host.popen([sys.executable, *self.python_args, "wg", "up", "--foreground", *self.wg_args, str(conf)],
                                stdout=log, stderr=log, env=env)
        log.close()
        sock = Path("/var/run/wireguard") / f"{me.ifname}.sock"
        _wait_for(lambda: sock.exists() or me.proc.poll() is not None, 20, f"{me.ifname} UAPI socket")  # type: ignore[union-attr]
        if me.proc.poll() is not None:
            tail = (workdir / f"{me.ifname}.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"shoal wg up exited with {me.proc.returncode}: {' | '.join(tail)}")


def _ticks(pid: int) -> int:
    return stats.proc_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())


def _hwm(pid: int) -> float:
    return stats.proc_hwm_mb(Path(f"/proc/{pid}/status").read_text())


def measure(a: Host, b: Host, pids: list[int], opts: Options, log: Callable[[str], None]) -> dict[str, float]:
    """One round of measurements through an up tunnel."""
    dst = OVERLAY["b"]
    ok = lambda: a.exec(["ping", "-c1", "-W1", dst], capture_output=True, timeout=5).returncode == 0  # noqa: E731
    _wait_for(ok, 20, "the tunnel to pass a ping (handshake)")
    t0 = {p: _ticks(p) for p in pids}
    m: dict[str, float] = {}
    r = a.exec(["ping", "-c", str(opts.pings), "-i", "0.01", "-W", "1", dst], capture_output=True, text=True,
               timeout=opts.pings * 0.05 + 10)
    m.update(stats.ping_summary(r.stdout, opts.pings))
    server = b.popen(["iperf3", "-s", "-B", dst, "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: b.exec(["ss", "-ltnH", f"sport = :{IPERF_PORT}"], capture_output=True,
                                 text=True, timeout=5).stdout.strip() != "", 10, "iperf3 server")
        base = ["iperf3", "-c", dst, "-p", str(IPERF_PORT), "-J"]
        tcp = ["-t", str(opts.tcp_seconds), "-O", "1"]
        runs = {
            "tcp1_mbps": (base + tcp, stats.iperf_tcp_mbps),
            "tcp4_mbps": (base + tcp + ["-P", "4"], stats.iperf_tcp_mbps),
            "udp64_pps": (base + ["-u", "-l", "64", "-b", "0", "-t", str(opts.udp_seconds)], stats.iperf_udp_pps),
        }
        for key, (cmd, parse) in runs.items():
            out = a.exec(cmd, capture_output=True, text=True, timeout=opts.tcp_seconds + 30)
            try:
                m[key] = parse(out.stdout)
            except stats.ParseError as e:
                log(f"    {key}: {e} ({out.stderr.strip()[:200]})")
            time.sleep(0.3)
    finally:
        _stop(server)
    m["cpu_s"] = sum(_ticks(p) - t0[p] for p in pids) / CLK_TCK
    m["rss_mb"] = max(_hwm(p) for p in pids)
    return m


def _tag() -> str:
    return f"{os.getpid() % 1000:03d}{uuid.uuid4().hex[:3]}"


def run_round(lab: Lab, impl: Impl, opts: Options, workdir: Path, log: Callable[[str], None]) -> dict[str, float]:
    a, b = lab.host("a"), lab.host("b")
    tag = _tag()
    prefix = "bw" if isinstance(impl, WireguardGo) else "bs"
    (ka, pa), (kb, pb) = _keypair(), _keypair()
    sa = Side(a, "a", f"{prefix}{tag}a", ka, pa)
    sb = Side(b, "b", f"{prefix}{tag}b", kb, pb)
    try:
        impl.up(sa, sb, workdir)
        impl.up(sb, sa, workdir)
        pids = [s.proc.pid for s in (sa, sb) if s.proc is not None]
        return measure(a, b, pids, opts, log)
    finally:
        impl.down(sa)
        impl.down(sb)


def machine_info() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wireguard-go": out(["wireguard-go", "--version"]),
        "iperf3": out(["iperf3", "--version"]),
        "shoal commit": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }


def _impl(name: str) -> Impl:
    if name == "wireguard-go":
        return WireguardGo()
    if name == "shoal":
        return Shoal()
    if name == "shoal-tap":  # the node daemon's default interface mode (TAP, docs/lan.md)
        return Shoal(name="shoal-tap", python_args=("-m", "shoal.bench.lanwg"))
    if name == "shoal-nowarm":  # the latency keeper off (shoal.dataplane.warm): what it buys, what it costs
        return Shoal(name="shoal-nowarm", wg_args=("--no-warm",))
    raise BenchError(f"unknown implementation {name!r}")


def run(opts: Options, impls: list[Impl] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole benchmark; returns the result document (also written to disk)."""
    impls = impls if impls is not None else [_impl(n) for n in opts.impls]
    rounds: dict[str, list[dict[str, float]]] = {i.name: [] for i in impls}
    errors: list[str] = []
    started = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp, \
            Lab(Topology(clients=[HostSpec("a", nat="public"), HostSpec("b", nat="public")])) as lab:
        workdir = Path(tmp)
        for rnd in range(opts.rounds):
            order = impls if rnd % 2 == 0 else list(reversed(impls))
            for impl in order:
                log(f"round {rnd + 1}/{opts.rounds}: {impl.name}")
                try:
                    m = run_round(lab, impl, opts, workdir, log)
                except (BenchError, subprocess.SubprocessError, OSError, stats.ParseError) as e:
                    errors.append(f"round {rnd + 1} {impl.name}: {e}")
                    log(f"  error: {e}")
                    continue
                rounds[impl.name].append(m)
                log("  " + ", ".join(f"{k}={v:.4g}" for k, v in m.items()))
    med = {name: stats.medians(r) for name, r in rounds.items()}
    doc: dict[str, Any] = {
        "started": started,
        "command": opts.command,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()},
        "machine": machine_info(),
        "rounds": rounds,
        "medians": med,
        "errors": errors,
    }
    base = med.get("wireguard-go", {})
    for name, m in med.items():
        if name == "wireguard-go":
            continue
        doc.setdefault("ratios", {})[name] = stats.ratios(m, base)
        doc.setdefault("verdicts", {})[name] = stats.verdicts(m, stats.ratios(m, base))
    md = render_markdown(doc)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    (opts.out_dir / f"bench-{started}.json").write_text(json.dumps(doc, indent=2) + "\n")
    (opts.out_dir / f"bench-{started}.md").write_text(md)
    if opts.doc is not None:
        update_doc(opts.doc, md)
    log(md)
    return doc


NOTES_MARKER = "<!-- notes below are kept when the bench refreshes this file -->"


def render_markdown(doc: dict[str, Any]) -> str:
    o = doc["options"]
    lines = [
        "# Benchmarks: Shoal vs wireguard-go",
        "",
        f"Run {doc['started']}, reproduced by `{doc['command']}` (as root; "
        f"{o['rounds']} interleaved rounds, TCP {o['tcp_seconds']} s, UDP {o['udp_seconds']} s, "
        f"{o['pings']} pings at 10 ms; medians over rounds). Two lab namespaces on a TEST-NET "
        f"underlay (MTU 1500), tunnel MTU {TUNNEL_MTU} on both ends, iperf3 client in `a`, server in `b`.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in doc["machine"].items()),
        "",
    ]
    base = doc["medians"].get("wireguard-go", {})
    for name, med in doc["medians"].items():
        if name == "wireguard-go":
            continue
        lines += [f"## {name}", "", stats.markdown_table(med, base, doc["verdicts"][name]), ""]
        passed = all(v["pass"] for v in doc["verdicts"][name])
        lines += [f"Targets of issue #3: **{'all met' if passed else 'NOT all met'}**.", ""]
    if not [n for n in doc["medians"] if n != "wireguard-go"]:
        lines += ["## wireguard-go only", "", "| metric | unit | wireguard-go |", "|---|---|---:|"]
        lines += [f"| {label} | {unit} | {base[k]:.4g} |" for k, (label, unit, _) in stats.METRICS.items() if k in base]
        lines += [""]
    lines += ["## Rounds", ""]
    for name, rs in doc["rounds"].items():
        for i, r in enumerate(rs):
            lines.append(f"- {name} #{i + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items()))
    if doc["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in doc["errors"]]
    return "\n".join(lines) + "\n"


def update_doc(path: Path, md: str) -> None:
    notes = ""
    if path.exists():
        text = path.read_text()
        if NOTES_MARKER in text:
            notes = text[text.index(NOTES_MARKER):]
    path.write_text(md + "\n" + (notes or NOTES_MARKER + "\n"))


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m shoal.bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 short round (smoke test)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--tcp-seconds", type=int)
    p.add_argument("--udp-seconds", type=int)
    p.add_argument("--pings", type=int)
    p.add_argument("--impl", action="append", choices=["wireguard-go", "shoal", "shoal-tap", "shoal-nowarm"],
                   help="implementations to run (default both)")
    p.add_argument("--no-doc", action="store_true", help="do not refresh BENCHMARKS.md")
    args = p.parse_args(argv)
    opts = Options.quick() if args.quick else Options()
    for k in ("rounds", "tcp_seconds", "udp_seconds", "pings"):
        v = getattr(args, k)
        if v is not None:
            setattr(opts, k, v)
    if args.impl:
        opts.impls = tuple(args.impl)
    if args.no_doc:
        opts.doc = None
    opts.command = "python -m shoal.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    opts.command = opts.command.strip() if (argv or sys.argv[1:]) else "make bench"
    if os.geteuid() != 0:
        print("shoal.bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    doc = run(opts)
    verdicts = [v for vs in doc.get("verdicts", {}).values() for v in vs]
    return 0 if verdicts and all(v["pass"] for v in verdicts) else 1


__all__ = ["Options", "Impl", "WireguardGo", "Shoal", "run", "main", "measure", "BenchError"]
