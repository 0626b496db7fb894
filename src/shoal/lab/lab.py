"""The lab: builds a Topology as real network namespaces, runs commands in them, tears down.

Owns the life cycle of one run's namespaces (naming and sweeping rules live in
`shoal.lab.runs`), the Host handles given to users, and the faults applied to a host's link to
the internet (loss, link down/up, roaming, delay; see docs/lab.md), and switching a router's NAT
type in place (`set_nat`).

Layout of one run (netns names are `<run id>-<role>`):

    inet      bridge br0; port p0 -> server, p<k> -> k-th internet attachment
              (table `bridge shoal_faults` for loss; delay re-plumbs p<k> via d<k>/q<k>)
    server    eth0: 192.0.2.1/24 + 192.0.2.2/24
    h-<name>  eth0: public 203.0.113.x/24, or 198.18.j.n/24 behind router j
    r-<rtr>   wan0 (internet or carrier), lan0 bridge of lp<i> ports, table `ip shoal`
    c-<rtr>   carrier NAT of a double NAT: wan0 (internet), cin0 (to the home router)

Interfaces are created directly inside their namespaces (`ip link add ... netns A type veth
peer name ... netns B`), so no name ever appears in the root namespace and names inside a
namespace cannot collide with another run. No namespace has a default route: only the three
internet test prefixes are routed; nothing leaves the machine.

Teardown happens on `__exit__`/`close()`, at interpreter exit (atexit), and on SIGTERM/SIGHUP
when the main thread still has the default handler (we then install one raising SystemExit so
`with` blocks unwind). A SIGKILLed run leaves namespaces behind; the next Lab start sweeps
them (only runs whose owner PID is dead).
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from . import nat as natrules
from . import runs
from .topology import INTERNET_PREFIXES, ROAM_BASE, Plan, Topology

SWITCHABLE_NATS: tuple[str, ...] = ("full-cone", "port-restricted", "symmetric", "udp-blocked")

_live: set[Lab] = set()
_live_lock = threading.Lock()
_hooks_installed = False


class LabError(RuntimeError):
    """The lab could not be built or operated (environment problem, failed command)."""


def _run(cmd: Sequence[str], input: str | None = None) -> None:
    p = subprocess.run(list(cmd), input=input, text=True, capture_output=True, check=False)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise LabError(f"{' '.join(cmd[:5])} failed: {msg[-1] if msg else p.returncode}")


def _ip_batch(lines: list[str], ns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    _run(cmd, input="".join(line + "\n" for line in lines))


def _close_all_live() -> None:
    with _live_lock:
        labs = list(_live)
    for lab in labs:
        lab.close()


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(_close_all_live)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) == signal.SIG_DFL:
                signal.signal(sig, _on_signal)


@dataclass
class Host:
    """A namespace with an address: a client host or the server (then `addrs` has two)."""

    name: str
    ns: str
    addr: str
    nat: str = "public"
    addrs: list[str] = field(default_factory=list)
    router: str | None = None
    lab: Lab | None = field(default=None, repr=False)

    def _wrap(self, cmd: Sequence[str] | str) -> list[str]:
        if isinstance(cmd, str):
            return ["ip", "netns", "exec", self.ns, "sh", "-c", cmd]
        return ["ip", "netns", "exec", self.ns, *cmd]

    def exec(self, cmd: Sequence[str] | str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """subprocess.run(cmd, **kw) inside this host's namespace (a str runs under sh -c)."""
        return subprocess.run(self._wrap(cmd), **kw)

    def popen(self, cmd: Sequence[str] | str, **kw: Any) -> subprocess.Popen[Any]:
        """subprocess.Popen(cmd, **kw) inside the namespace; the PID is the command's own."""
        return subprocess.Popen(self._wrap(cmd), **kw)

    @property
    def wan_addr(self) -> str:
        """The address the internet sees this host as (its own if public, else its NAT's)."""
        if self.lab is None or self.router is None:
            return self.addr
        return self.lab.router_public_addr(self.router)


class Lab:
    """A built Topology. Use as a context manager; `close()` is idempotent."""

    def __init__(self, topology: Topology | None = None, *, sweep: bool = True) -> None:
        self.topology = topology if topology is not None else Topology(clients=[])
        self.plan: Plan = self.topology.plan()
        self.sweep = sweep
        self.run_id = ""
        self.ns: dict[str, str] = {}
        self.hosts: dict[str, Host] = {}
        self.server: Host
        self._closed = True
        self._lock = threading.RLock()
        self._loss: dict[int, float] = {}
        self._delay: dict[int, tuple[float, subprocess.Popen[str]]] = {}
        self._roams = 0

    # --- life cycle ---------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Lab:
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, nftables)")
        if self.sweep:
            runs.sweep_stale()
        _install_hooks()
        self.run_id = runs.new_run_id()
        self.ns = {role: f"{self.run_id}-{role}" for role in self.plan.roles()}
        with _live_lock:
            _live.add(self)
        self._closed = False
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for _, proc in self._delay.values():
                _stop(proc)
            self._delay.clear()
            runs.delete_namespaces(list(self.ns.values()))
        with _live_lock:
            _live.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- building -----------------------------------------------------------------------
    def _build(self) -> None:
        p, ns = self.plan, self.ns
        root = [f"netns add {n}" for n in ns.values()]
        for link in p.links:
            root.append(f"link add {link.a_if} netns {ns[link.a]} type veth "
                        f"peer name {link.b_if} netns {ns[link.b]}")
        _ip_batch(root)

        batches: dict[str, list[str]] = {n: ["link set lo up"] for n in ns.values()}
        inet = batches[ns["inet"]]
        inet += ["link add br0 type bridge mcast_snooping 0", "link set br0 up"]
        for link in p.links:
            if link.b == "inet":
                inet += [f"link set {link.b_if} master br0", f"link set {link.b_if} up"]

        srv = batches[ns["server"]]
        srv += ["link set eth0 up"] + [f"addr add {a}/24 dev eth0" for a in p.server_addrs]
        srv += [f"route add {pfx} dev eth0" for pfx in INTERNET_PREFIXES if pfx != "192.0.2.0/24"]

        for r in p.routers.values():
            rb = batches[ns[r.role]]
            rb += ["link add lan0 type bridge mcast_snooping 0", "link set lan0 up",
                   f"addr add {r.lan_addr}/24 dev lan0", "link set wan0 up"]
            rb += [f"link set lp{i} master lan0" for i in range(len(r.clients))]
            rb += [f"link set lp{i} up" for i in range(len(r.clients))]
            if r.carrier_role:
                cb = batches[ns[r.carrier_role]]
                cb += ["link set wan0 up", "link set cin0 up",
                       f"addr add {r.carrier_wan_addr}/24 dev wan0",
                       f"addr add {r.carrier_in_addr}/24 dev cin0"]
                cb += self._onlink_routes("wan0", r.carrier_wan_addr or "")
                rb += [f"addr add {r.wan_addr}/24 dev wan0"]
                rb += [f"route add {pfx} via {r.carrier_in_addr}" for pfx in INTERNET_PREFIXES]
            else:
                rb += [f"addr add {r.wan_addr}/24 dev wan0"]
                rb += self._onlink_routes("wan0", r.wan_addr)

        for h in p.hosts.values():
            hb = batches[ns[h.role]]
            hb += ["link set eth0 up", f"addr add {h.addr}/{h.prefix_len} dev eth0"]
            if h.gateway is None:
                hb += self._onlink_routes("eth0", h.addr)
            else:
                hb += [f"route add {pfx} via {h.gateway}" for pfx in INTERNET_PREFIXES]

        # Sequential on purpose: a veth gets carrier when one end comes up while the other
        # is already up; bringing both ends up concurrently can leave the pair NO-CARRIER.
        for n, lines in batches.items():
            try:
                _ip_batch(lines, n)
            except LabError as e:
                raise LabError(f"configuring {n} failed: {e}") from None

        # br_netfilter is loaded on this kernel and defaults to on in every new namespace:
        # bridged frames would traverse the IP hooks (and the routers' forward policy drop).
        nobrnf = {f"net.bridge.bridge-nf-call-{t}": "0" for t in ("iptables", "ip6tables", "arptables")}
        sysctl_procs = [self._sysctl_async(ns["inet"], nobrnf)]
        for r in p.routers.values():
            sysctl_procs.append(self._sysctl_async(ns[r.role], {**nobrnf, "net.ipv4.ip_forward": "1"}))
            if r.carrier_role:
                sysctl_procs.append(self._sysctl_async(ns[r.carrier_role], {"net.ipv4.ip_forward": "1"}))
        for proc in sysctl_procs:
            _wait_ok(proc, "sysctl")
        if p.routers:
            procs2 = []
            for r in p.routers.values():
                roles = [r.role] + ([r.carrier_role] if r.carrier_role else [])
                for role in roles:
                    text = natrules.router_ruleset(r) if role == r.role else natrules.carrier_ruleset()
                    procs2.append(self._nft_async(ns[role], text))
            for proc in procs2:
                _wait_ok(proc, "nft")

        self.server = Host("server", ns["server"], p.server_addrs[0], "public",
                           list(p.server_addrs), None, self)
        self.hosts = {"server": self.server}
        for h in p.hosts.values():
            self.hosts[h.name] = Host(h.name, ns[h.role], h.addr, h.nat, [h.addr], h.router, self)

    @staticmethod
    def _onlink_routes(dev: str, own: str) -> list[str]:
        own_net = ipaddress.ip_network(f"{own}/24", strict=False)
        return [f"route replace {pfx} dev {dev}" for pfx in INTERNET_PREFIXES
                if ipaddress.ip_network(pfx) != own_net]

    @staticmethod
    def _sysctl_async(ns: str, values: dict[str, str]) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                                 *[f"{k}={v}" for k, v in values.items()]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def _nft_async(self, ns: str, text: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, "nft", "-f", "-"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdin is not None
        proc.stdin.write(text)
        proc.stdin.close()
        return proc

    def _nft(self, ns: str, text: str) -> None:
        _wait_ok(self._nft_async(ns, text), "nft")

    # --- access -------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"no host {name!r} in this lab (have: {', '.join(self.hosts)})") from None

    @property
    def clients(self) -> list[Host]:
        return [h for n, h in self.hosts.items() if n != "server"]

    def router_ns(self, router: str) -> str:
        return self.ns[self.plan.routers[router].role]

    def router_public_addr(self, router: str) -> str:
        r = self.plan.routers[router]
        return r.carrier_wan_addr if r.carrier_role else r.wan_addr  # type: ignore[return-value]

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("the lab is closed")

    def describe(self) -> str:
        """A readable listing of hosts, namespaces and addresses."""
        rows = [f"lab {self.run_id}",
                f"  server   {', '.join(self.server.addrs):<28} ns {self.server.ns}"]
        for h in self.clients:
            where = h.addr if h.router is None else f"{h.addr} via {h.router} -> {h.wan_addr}"
            rows.append(f"  {h.name:<8} {h.nat:<16} {where:<40} ns {h.ns}")
        return "\n".join(rows)

    # --- faults -------------------------------------------------------------------------
    def _attach(self, name: str) -> int:
        """Index k of the internet attachment carrying `name`'s traffic (bridge port p<k>)."""
        if name == "server":
            return 0
        h = self.plan.hosts.get(name)
        if h is None:
            raise KeyError(f"no host {name!r} in this lab")
        if h.router is None:
            assert h.attach_index is not None
            return h.attach_index
        return self.plan.routers[h.router].attach_index

    def set_loss(self, name: str, percent: float) -> None:
        """Drop `percent` % of frames on `name`'s internet link, each direction (0 clears)."""
        if not 0 <= percent <= 100:
            raise ValueError("loss percent must be within 0..100")
        with self._lock:
            self._check_open()
            k = self._attach(name)
            self._loss[k] = percent
            table = {(f"p{i}", f"q{i}"): pc for i, pc in self._loss.items()}
            self._nft(self.ns["inet"], natrules.faults_ruleset(table))

    def clear_loss(self, name: str) -> None:
        self.set_loss(name, 0)

    def link_down(self, name: str) -> None:
        """Take `name`'s internet link down (the host side sees no carrier)."""
        with self._lock:
            self._check_open()
            _ip_batch([f"link set p{self._attach(name)} down"], self.ns["inet"])

    def link_up(self, name: str) -> None:
        with self._lock:
            self._check_open()
            _ip_batch([f"link set p{self._attach(name)} up"], self.ns["inet"])

    def roam(self, name: str, new_addr: str | None = None) -> str:
        """Give `name`'s internet-facing interface a new address (public: the host itself;
        behind NAT: the outermost router's WAN, whose conntrack is flushed as on a real
        reconnect). Returns the new public address."""
        with self._lock:
            self._check_open()
            if name == "server":
                raise ValueError("the server does not roam")
            if new_addr is None:
                new_addr = str(ROAM_BASE + self._roams)
                self._roams += 1
            ipaddress.IPv4Address(new_addr)
            h = self.plan.hosts[name]
            if h.router is None:
                ns, dev, old = self.ns[h.role], "eth0", h.addr
            else:
                r = self.plan.routers[h.router]
                if r.carrier_role:
                    ns, dev, old = self.ns[r.carrier_role], "wan0", r.carrier_wan_addr or ""
                else:
                    ns, dev, old = self.ns[r.role], "wan0", r.wan_addr
            _ip_batch([f"addr del {old}/24 dev {dev}", f"addr add {new_addr}/24 dev {dev}",
                       *self._onlink_routes(dev, new_addr)], ns)
            if h.router is None:
                h.addr = new_addr
                self.hosts[name].addr = new_addr
                self.hosts[name].addrs = [new_addr]
            else:
                r = self.plan.routers[h.router]
                if r.carrier_role:
                    r.carrier_wan_addr = new_addr
                else:
                    r.wan_addr = new_addr
                    self._nft(ns, natrules.router_ruleset(r))
                subprocess.run(["ip", "netns", "exec", ns, "conntrack", "-F"],
                               capture_output=True, check=False)
            return new_addr

    def set_nat(self, name: str, nat: str) -> None:
        """Switch the NAT router in front of `name` to another type in place, like a changed
        firewall or CPE setting: its ruleset is replaced atomically and conntrack is kept, so
        open flows (a TCP connection, existing UDP mappings) survive; new flows get the new
        behaviour. For a single-level router (not double-nat); `nat` one of full-cone,
        port-restricted, symmetric, udp-blocked. Affects every client behind that router."""
        if nat not in SWITCHABLE_NATS:
            raise ValueError(f"set_nat: {nat!r} is not one of {', '.join(SWITCHABLE_NATS)}")
        with self._lock:
            self._check_open()
            h = self.plan.hosts.get(name)
            if h is None:
                raise KeyError(f"no host {name!r} in this lab")
            if h.router is None:
                raise ValueError(f"set_nat: {name!r} is public (no NAT router to switch)")
            r = self.plan.routers[h.router]
            if r.carrier_role:
                raise ValueError(f"set_nat: {name!r} sits behind a double NAT (not switchable)")
            if r.hairpin and nat not in ("port-restricted", "full-cone", "symmetric"):
                raise ValueError(f"set_nat: hairpin is not supported with NAT type {nat!r}")
            r.nat = nat
            self._nft(self.ns[r.role], natrules.router_ruleset(r))
            for c in r.clients:
                self.plan.hosts[c].nat = nat
                self.hosts[c].nat = nat

    def set_delay(self, name: str, ms: float) -> None:
        """Delay every frame on `name`'s internet link by `ms` milliseconds in each direction
        (a userspace forwarder, see shoal.lab.delay). `ms` = 0 removes the element."""
        if not 0 <= ms <= 10_000:
            raise ValueError("delay must be within 0..10000 ms")
        with self._lock:
            self._check_open()
            k = self._attach(name)
            inet = self.ns["inet"]
            cur = self._delay.pop(k, None)
            if cur is not None:
                _stop(cur[1])
            if ms == 0:
                if cur is not None:
                    _ip_batch([f"link del d{k}", f"link set p{k} master br0"], inet)
                return
            if cur is None:
                _ip_batch([f"link set p{k} nomaster", f"link add d{k} type veth peer name q{k}",
                           f"link set q{k} master br0", f"link set q{k} up", f"link set d{k} up"],
                          inet)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", inet, sys.executable, "-m", "shoal.lab.delay",
                 f"p{k}", f"d{k}", str(ms)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                err = proc.stderr.read() if proc.stderr else ""
                _stop(proc)
                raise LabError(f"delay element failed to start: {err.strip()[-200:]}")
            self._delay[k] = (ms, proc)

    def clear_delay(self, name: str) -> None:
        self.set_delay(name, 0)


def _wait_ok(proc: subprocess.Popen[str], what: str) -> None:
    proc.wait()
    err = proc.stderr.read() if proc.stderr else ""
    for s in (proc.stdout, proc.stderr):
        if s is not None:
            s.close()
    if proc.returncode != 0:
        raise LabError(f"{what} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for s in (proc.stdout, proc.stderr, proc.stdin):
        if s is not None:
            s.close()
