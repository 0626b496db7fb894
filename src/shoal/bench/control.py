"""`python -m shoal.bench.control`: the control-plane benchmark (issue #4 acceptance).

One real `shoal server` process on loopback; N control-plane-only nodes (real WebSockets +
Noise IK, `shoal.testing.controlclient.ControlClient`, no WireGuard) spread over a few client
processes (asyncio, one connection per node). Phases, each timed:

1. login: every node connects, handshakes, sends Login and waits for its FullView
   (per node: connect start -> FullView; total: first connect -> last FullView);
2. networks: NETS networks of SIZE members (owner creates, the others join; all auto);
3. presence: ROUNDS rounds; in each, one random member of every network goes offline in
   it (SetOnline false), and once every other member saw that, online again. Fan-out latency
   = request sent by the subject -> ViewUpdate showing the change applied at a member, for
   every (event, member) pair (an upper bound of "event at the server -> received": it
   includes the subject's uplink). A network's members all live in one client process, so
   both ends of a measurement use the same monotonic clock.

Server CPU seconds (utime+stime from /proc/PID/stat) are taken per phase; RSS (VmRSS) after
each phase and the peak (VmHWM). Results go to stdout, to a JSON file, and to the section of
BENCHMARKS.md between CONTROL_BEGIN/CONTROL_END (after the data-plane bench's notes marker,
which `python -m shoal.bench` keeps). Everything runs on loopback (the server on 127.0.0.1,
each node from its own 127.x.y.z, `node_address`), bounded in time by --timeout; every process started here is stopped by its PID, the data dir is temporary.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
CONTROL_BEGIN = "<!-- control-plane bench: begin (written by python -m shoal.bench.control) -->"
CONTROL_END = "<!-- control-plane bench: end -->"
NOTES_MARKER = "<!-- notes below are kept when the bench refreshes this file -->"


NODES_PER_PREFIX = 16  # bench nodes sharing one /24 (a busy home or a small office)


def node_address(i: int) -> str:
    """Node i's own loopback source address, NODES_PER_PREFIX to a /24 (127.1.0.1, 127.1.0.2,
    ..., 127.1.1.1, ...): the server's admission limits per address and per prefix (issue 18 F7)
    then see many homes, as in production, not one host opening thousands of sessions."""
    prefix, host = divmod(i, NODES_PER_PREFIX)
    return f"127.{1 + prefix // 256}.{prefix % 256}.{host + 1}"


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------- worker (client process)


async def _worker(args: argparse.Namespace) -> None:
    from shoal.control import messages as m
    from shoal.testing.controlclient import ControlClient
    from shoal.wireguard.keys import PrivateKey, PublicKey

    server_pub = PublicKey.from_base64(args.server_key)
    first, count, size = args.first, args.count, args.size
    keys = [PrivateKey.from_seed(f"bench-{args.seed}-{i}".encode()) for i in range(first, first + count)]
    clients: list[ControlClient | None] = [None] * count
    rnd = random.Random(args.seed * 7919 + first)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def login_all() -> dict[str, Any]:
        sem = asyncio.Semaphore(args.concurrency)
        times: list[float] = []

        async def one(i: int) -> None:
            async with sem:
                t0 = time.monotonic()
                clients[i] = await ControlClient.login(args.url, keys[i], server_pub, timeout=60,
                                                       local_addr=(node_address(first + i), 0),
                                                       nickname=f"b{first + i}", listen_port=40000 + i % 20000)
                times.append(time.monotonic() - t0)

        t0 = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(count)))
        return {"login_times": times, "t_start": t0, "t_end": time.monotonic()}

    nets = [list(range(j, min(j + size, count))) for j in range(0, count, size)]
    net_ids: list[str] = []

    async def create(c: ControlClient, name: str) -> m.Result:
        """CreateNetwork, again after a pause while the server answers "busy" (its scrypt pool is
        full: the wait doubles, 0.1 s to 2 s, with jitter) or "rate_limited" (this session's
        password requests, 0.5/s: 2 s and jitter), as a well-behaved client retries."""
        for attempt in itertools.count():
            r = await c.request(m.CreateNetwork, name=name, password="bench-password", timeout=60)
            if r.code == "busy":
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + rnd.random()))
            elif r.code == "rate_limited":
                await asyncio.sleep(2.0 + rnd.random())
            else:
                return r
        raise AssertionError("unreachable")

    async def networks() -> dict[str, Any]:
        t0 = time.monotonic()
        results = await asyncio.gather(*(create(clients[g[0]], f"bench-{first + g[0]}") for g in nets))  # type: ignore[arg-type]
        assert all(r.ok for r in results), results
        net_ids.extend(r.network_id or "" for r in results)
        joins = [clients[i].request(m.JoinNetwork, name=f"bench-{first + g[0]}", password="bench-password", timeout=60)  # type: ignore[union-attr]
                 for g in nets for i in g[1:]]
        res = await asyncio.gather(*joins)
        assert all(r.ok for r in res), [r for r in res if not r.ok][:3]
        # wait until every member holds every other member as a peer
        for g in nets:
            for i in g:
                c = clients[i]
                assert c is not None
                want = {clients[x].node_id for x in g if x != i}  # type: ignore[union-attr]
                await c.wait_for(lambda c=c, w=want: w <= set(c.mirror.peers), timeout=60)
        return {"t": time.monotonic() - t0}

    async def presence(rounds: int) -> dict[str, Any]:
        lat: list[float] = []

        async def event(g: list[int], net: str, online: bool, subject: int) -> None:
            subj = clients[subject]
            assert subj is not None
            others = [clients[i] for i in g if i != subject]
            seen: dict[int, float] = {}
            done = asyncio.Event()

            def hook(c: ControlClient, now: float, idx: int) -> None:
                if idx not in seen and c.mirror.member_online(net, subj.node_id) is online:
                    seen[idx] = now
                    if len(seen) == len(others):
                        done.set()

            for idx, c in enumerate(others):
                c.on_view = lambda c, now, idx=idx: hook(c, now, idx)  # type: ignore[misc]
            t0 = time.monotonic()
            r = await subj.request(m.SetOnline, network_id=net, online=online, timeout=60)
            assert r.ok, r
            await asyncio.wait_for(done.wait(), 60)
            for c in others:
                c.on_view = None  # type: ignore[union-attr]
            lat.extend(t - t0 for t in seen.values())

        async def net_rounds(g: list[int], net: str) -> None:
            for _ in range(rounds):
                subject = rnd.choice(g)
                await event(g, net, False, subject)
                await event(g, net, True, subject)

        t0 = time.monotonic()
        await asyncio.gather(*(net_rounds(g, net) for g, net in zip(nets, net_ids)))
        return {"latencies": lat, "t": time.monotonic() - t0, "events": 2 * rounds * len(nets)}

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        if cmd["cmd"] == "login":
            reply(await login_all())
        elif cmd["cmd"] == "networks":
            reply(await networks())
        elif cmd["cmd"] == "presence":
            reply(await presence(cmd["rounds"]))
        elif cmd["cmd"] == "quit":
            await asyncio.gather(*(c.close() for c in clients if c is not None), return_exceptions=True)
            reply({"ok": True})
            break


# ---------------------------------------------------------------- parent


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_mem(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024  # MiB
    return out


class _Worker:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"client process {self.proc.pid} died (exit {self.proc.poll()})")
        return json.loads(line)


def _stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(opts: argparse.Namespace) -> dict[str, Any]:
    if opts.nodes % opts.size:
        raise SystemExit("--nodes must be a multiple of --size")
    nets_total = opts.nodes // opts.size
    per_worker_nets = -(-nets_total // opts.workers)
    data = Path(tempfile.mkdtemp(prefix="shoal-bench-control-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "shoal", "server", "--data-dir", str(data / "server"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    workers: list[_Worker] = []
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError(f"benchmark exceeded {opts.timeout} s")))
    signal.alarm(opts.timeout)
    try:
        port, key = None, None
        assert server.stdout is not None
        for line in server.stdout:
            if mm := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                port = int(mm.group(1))
            if mm := re.search(r"--server-key (\S+)", line):
                key = mm.group(1)
                break
        if port is None or key is None:
            raise RuntimeError("the server did not start")
        url = f"ws://127.0.0.1:{port}/control"
        first = 0
        while first < opts.nodes:
            count = min(per_worker_nets * opts.size, opts.nodes - first)
            cmd = [sys.executable, "-m", "shoal.bench.control", "--worker", "--url", url, "--server-key", key,
                   "--first", str(first), "--count", str(count), "--size", str(opts.size),
                   "--seed", str(opts.seed), "--concurrency", str(opts.concurrency)]
            workers.append(_Worker(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)))
            first += count
        time.sleep(1.0)  # let the client processes import
        res: dict[str, Any] = {"server_pid": server.pid}
        cpu0 = _proc_cpu(server.pid)
        res["rss_idle_mib"] = _proc_mem(server.pid)["VmRSS"]

        def phase(cmd: dict[str, Any]) -> tuple[list[dict[str, Any]], float, float]:
            c0, t0 = _proc_cpu(server.pid), time.monotonic()
            for w in workers:
                w.send(cmd)
            out = [w.recv() for w in workers]
            return out, time.monotonic() - t0, _proc_cpu(server.pid) - c0

        out, wall, cpu = phase({"cmd": "login"})
        times = [t for o in out for t in o["login_times"]]
        res["login"] = {
            "nodes": len(times), "total_s": max(o["t_end"] for o in out) - min(o["t_start"] for o in out),
            "p50_ms": pct(times, 0.5) * 1e3, "p99_ms": pct(times, 0.99) * 1e3, "max_ms": max(times) * 1e3,
            "server_cpu_s": cpu, "rate_per_s": len(times) / wall,
        }
        res["rss_after_login_mib"] = _proc_mem(server.pid)["VmRSS"]
        out, wall, cpu = phase({"cmd": "networks"})
        res["networks"] = {"networks": nets_total, "size": opts.size, "total_s": wall, "server_cpu_s": cpu}
        out, wall, cpu = phase({"cmd": "presence", "rounds": opts.rounds})
        lat = [x for o in out for x in o["latencies"]]
        res["presence"] = {
            "events": sum(o["events"] for o in out), "deliveries": len(lat), "total_s": wall,
            "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3, "max_ms": max(lat) * 1e3,
            "server_cpu_s": cpu,
        }
        mem = _proc_mem(server.pid)
        res["rss_end_mib"], res["rss_peak_mib"] = mem["VmRSS"], mem["VmHWM"]
        res["server_cpu_total_s"] = _proc_cpu(server.pid) - cpu0
        for w in workers:
            w.send({"cmd": "quit"})
            w.recv()
        return res
    finally:
        signal.alarm(0)
        for w in workers:
            _stop(w.proc)
        _stop(server)
        shutil.rmtree(data, ignore_errors=True)


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, Linux {platform.release()}"


def render(res: dict[str, Any], opts: argparse.Namespace, command: str) -> str:
    lg, nw, pr = res["login"], res["networks"], res["presence"]
    return "\n".join([
        CONTROL_BEGIN,
        "## Control plane: one server, many nodes",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M')}, reproduced by `{command}`: one `shoal server` process on "
        f"127.0.0.1, {opts.nodes} control-plane-only nodes (real WebSocket + Noise IK sessions, no WireGuard; "
        f"each from its own loopback address, {NODES_PER_PREFIX} per /24, under the server's admission limits) "
        f"in {opts.workers} client processes on the same machine, {nw['networks']} networks of {nw['size']}, "
        f"{opts.rounds} rounds of offline+online per network (all networks at once).",
        "",
        f"Machine: {machine()}.",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| login, all {lg['nodes']} nodes (first connect -> last FullView) | {lg['total_s']:.2f} s |",
        f"| login per node p50 / p99 (connect -> FullView) | {lg['p50_ms']:.0f} / {lg['p99_ms']:.0f} ms |",
        f"| server CPU for the logins | {lg['server_cpu_s']:.2f} s |",
        f"| create + join {nw['networks']} networks, until every member holds every peer | {nw['total_s']:.2f} s |",
        f"| server CPU for create + join (one scrypt hash per create; joins hit the verified-password fast path) | {nw['server_cpu_s']:.2f} s |",
        f"| presence fan-out p50 / p99 / max ({pr['events']} events, {pr['deliveries']} member deliveries) "
        f"| {pr['p50_ms']:.1f} / {pr['p99_ms']:.1f} / {pr['max_ms']:.1f} ms |",
        f"| server CPU for the presence phase | {pr['server_cpu_s']:.2f} s |",
        f"| server CPU, whole run | {res['server_cpu_total_s']:.2f} s |",
        f"| server RSS idle / after login / end / peak | {res['rss_idle_mib']:.0f} / {res['rss_after_login_mib']:.0f} / "
        f"{res['rss_end_mib']:.0f} / {res['rss_peak_mib']:.0f} MiB |",
        "",
        "Fan-out latency is measured from the subject's SetOnline request leaving its client to the "
        "member's client having applied the ViewUpdate (so it includes the uplink and the server's store "
        "commit). Client and server processes share the machine's cores. Target of issue #4: "
        f"p99 < 1 s: **{'met' if pr['p99_ms'] < 1000 else 'NOT met'}**.",
        CONTROL_END,
        "",
    ])


def update_doc(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    if CONTROL_BEGIN in text and CONTROL_END in text:
        a = text.index(CONTROL_BEGIN)
        b = text.index(CONTROL_END) + len(CONTROL_END)
        text = text[:a] + section.rstrip("\n") + text[b:]
    else:
        if NOTES_MARKER not in text:  # keep our section in the part the data-plane bench preserves
            text = text.rstrip("\n") + ("\n\n" if text else "") + NOTES_MARKER + "\n"
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m shoal.bench.control", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--size", type=int, default=20, help="members per network")
    p.add_argument("--rounds", type=int, default=10, help="offline+online rounds per network")
    p.add_argument("--workers", type=int, default=2, help="client processes")
    p.add_argument("--concurrency", type=int, default=64, help="logins in flight per client process")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=int, default=600, help="give up after this many seconds")
    p.add_argument("--out", type=Path, default=REPO / "results")
    p.add_argument("--no-doc", action="store_true", help="do not update BENCHMARKS.md")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--server-key", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.worker:
        asyncio.run(_worker(opts))
        return 0
    command = "python -m shoal.bench.control" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(
        sys.argv[1:] if argv is None else argv))
    res = run(opts)
    print(json.dumps(res, indent=2))
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (opts.out / f"bench-control-{stamp}.json").write_text(json.dumps({"options": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}, "results": res}, indent=2) + "\n")
    section = render(res, opts, command)
    print(section)
    if not opts.no_doc:
        update_doc(REPO / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
