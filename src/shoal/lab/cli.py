"""`python -m shoal.lab up|down|check|demo|check-clean|list`: the lab's command line.

Exit codes: 0 success; 1 a check failed or the environment is unusable (not root, a command
failed); 2 bad input (unknown command/option, malformed topology, unknown NAT type, duplicate
or too many hosts). Errors are one line on stderr, never a traceback.

Topologies come from `--topology FILE.toml` (format in shoal.lab.topology) or from host
arguments `name=nat[@router][+hairpin]`; without either, `up` and `check` use one client of
every NAT type plus a hairpinning and a non-hairpinning shared NAT.

`up` keeps the lab while it runs (the lab belongs to its process: a run whose owner is gone is
swept by the next start); stop it with Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import NoReturn

from . import runs
from .lab import Lab, LabError
from .topology import LabConfigError, Topology


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _topology(args: argparse.Namespace) -> Topology:
    if args.topology and args.hosts:
        raise LabConfigError("give either --topology FILE or host arguments, not both")
    if args.topology:
        return Topology.from_toml(args.topology)
    if args.hosts:
        return Topology.parse_args(args.hosts)
    from .selftest import all_types_topology
    return all_types_topology()


def cmd_up(args: argparse.Namespace) -> int:
    topo = _topology(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Lab(topo) as lab:
        print(lab.describe())
        print("run commands with: ip netns exec <ns> <command>; Ctrl-C or SIGTERM tears down", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print("lab torn down")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .selftest import format_table, run_selftest
    topo = _topology(args)
    with Lab(topo) as lab:
        rows = run_selftest(lab)
    print(format_table(rows))
    bad = [r.host for r in rows if not r.ok]
    print(f"self-test: {len(rows) - len(bad)}/{len(rows)} as intended" + (f"; wrong: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from shoal.lab.productdemo import product_demo  # the lab's own steps, then the product's
    return product_demo()


def cmd_list(args: argparse.Namespace) -> int:
    found = runs.list_runs()
    if not found:
        print("no lab runs")
    for r in found:
        print(f"{r.run_id}  pid {r.pid} {'alive' if r.alive else 'DEAD (stale)'}  {len(r.namespaces)} namespaces")
        for n in r.namespaces:
            print(f"    {n}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    found = {r.run_id: r for r in runs.list_runs()}
    if not args.all and not args.run_ids:
        raise LabConfigError("say which runs: RUN_ID ... or --all")
    targets = list(found.values()) if args.all else []
    for rid in args.run_ids:
        if rid not in found:
            raise LabConfigError(f"no lab run {rid!r} (see: python -m shoal.lab list)")
        targets.append(found[rid])
    if not targets:
        print("nothing to remove")
    for r in targets:
        if r.alive and not args.force:
            print(f"skipping {r.run_id}: owner pid {r.pid} is alive (use --force, or stop that process)")
            continue
        runs.delete_namespaces(r.namespaces)
        print(f"removed {r.run_id} ({len(r.namespaces)} namespaces)")
    return 0


def cmd_check_clean(args: argparse.Namespace) -> int:
    stale = [r for r in runs.list_runs() if not r.alive]
    live = [r for r in runs.list_runs() if r.alive]
    links = runs.root_links()
    for r in live:
        print(f"note: live run {r.run_id} (pid {r.pid}) with {len(r.namespaces)} namespaces is in use")
    if not stale and not links:
        print("lab clean: no leftover namespaces or interfaces")
        return 0
    for r in stale:
        print(f"LEFTOVER run {r.run_id} (owner pid {r.pid} is gone): {' '.join(r.namespaces)}")
    for link in links:
        print(f"LEFTOVER interface in the root namespace: {link}")
    print("remove them with: python -m shoal.lab down --all")
    return 1


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m shoal.lab", description="Shoal's virtual internet of network namespaces")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    for name, fn, hlp in (("up", cmd_up, "build a lab and keep it until Ctrl-C/SIGTERM"),
                          ("check", cmd_check, "build a lab and measure every NAT behaviour")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("--topology", "-t", metavar="FILE.toml")
        p.add_argument("hosts", nargs="*", metavar="name=nat[@router][+hairpin]")
        p.set_defaults(fn=fn)
    p = sub.add_parser("down", help="remove lab runs (by default only those whose owner is dead)")
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID")
    p.add_argument("--all", action="store_true", help="every run whose owner process is gone")
    p.add_argument("--force", action="store_true", help="also runs whose owner is alive")
    p.set_defaults(fn=cmd_down)
    sub.add_parser("demo", help="build a small lab, show it working, tear it down").set_defaults(fn=cmd_demo)
    sub.add_parser("check-clean", help="exit 1 and list leftovers of dead runs").set_defaults(fn=cmd_check_clean)
    sub.add_parser("list", help="list lab runs and their namespaces").set_defaults(fn=cmd_list)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.fn(args))
    except LabConfigError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    except LabError as e:
        print(f"{ap.prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{ap.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
