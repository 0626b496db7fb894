"""A real port-mapping gateway in the lab: Debian's miniupnpd (nftables build) in a NAT router.

Owns: running one miniupnpd (UPnP IGD, NAT-PMP and PCP) inside a lab router namespace for the
life of a `with` block, and reading back the mappings it installed. Used by
`tests/nat/portmap/test_client_lab.py`; needs root and the `miniupnpd` + `miniupnpd-nftables`
packages (scripts/setup-system.sh; their postinst does not start the system service: the
debconf default of miniupnpd/start_daemon is false).

    with Lab(topo) as lab, MiniUpnpd(lab, "b") as gw:     # router of host "b"
        gw.lan_addr                                         # where clients send requests
        gw.mappings()                                       # [(ext port, int ip, int port)]

How it fits the lab's router (`shoal.lab.nat`, table `ip shoal`, forward policy drop):

  - miniupnpd's own table `inet miniupnpd` holds the base chains it jumps from (forward at
    priority -1, policy accept; nat prerouting/postrouting one step before the lab's) and the
    chains miniupnpd fills (`miniupnpd`, `prerouting_miniupnpd`, `postrouting_miniupnpd`).
    A mapping is a DNAT rule in prerouting_miniupnpd plus an accept in `miniupnpd`; the lab's
    forward chain already accepts `ct status dnat` from wan0 to lan0. Deleting the namespace
    removes the table.
  - The router's own STUN exchange with the lab server is not tracked (`notrack` in raw
    prerouting/output chains of the same table): untracked, it is neither masqueraded by the
    router's NAT (behind a `symmetric` router the random ports would make miniupnpd conclude
    that "a restrictive NAT upstream" makes port forwarding impossible) nor dropped as a new
    inbound flow by a WAN input firewall (the CHANGE-REQUEST answers come from other
    addresses and ports). Forwarded LAN traffic keeps the router's NAT type.
  - Its files (config, pid file) live in a temporary directory; the process is started and
    stopped by PID (the lab would also kill it at teardown).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from .lab import Lab, LabError

__all__ = ["MiniUpnpd", "MINIUPNPD", "available"]

MINIUPNPD = "/usr/sbin/miniupnpd"
STUN_PORTS = (3478, 3479)
START_TIMEOUT = 10.0
TABLE = "miniupnpd"

_NFT = """table inet {table} {{
  chain forward {{ type filter hook forward priority -1; policy accept; jump miniupnpd; }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority -101; policy accept; jump prerouting_miniupnpd; }}
  chain postrouting {{ type nat hook postrouting priority 99; policy accept; jump postrouting_miniupnpd; }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
  chain stun_in {{
    type filter hook prerouting priority -300;
    iifname "wan0" ip saddr {{ {servers} }} udp sport {{ {ports} }} notrack
  }}
  chain stun_out {{
    type filter hook output priority -300;
    oifname "wan0" ip daddr {{ {servers} }} udp dport {{ {ports} }} notrack
  }}
}}
"""

_STUN_SERVER = """
import asyncio, sys
from shoal.nat.responder import StunResponder
from shoal.server.stunlistener import StunListener
async def main():
    listener = StunListener(StunResponder(sys.argv[1:3], [int(p) for p in sys.argv[3:5]]))
    await listener.start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""

_DNAT = re.compile(r"dport (\d+) dnat ip to ([0-9.]+):(\d+)")


def available() -> bool:
    return Path(MINIUPNPD).exists() and shutil.which("nft") is not None


class MiniUpnpd:
    """miniupnpd in the NAT router of `router` (a router name; a host behind its own router
    has a router of the same name). `min_lifetime` lets lab tests ask for short PCP lifetimes."""

    def __init__(self, lab: Lab, router: str, *, min_lifetime: int = 2, upnp: bool = True,
                 natpmp: bool = True, stun: bool = True) -> None:
        self.lab = lab
        self.router = router
        self.plan = lab.plan.routers[router]
        self.ns = lab.router_ns(router)
        self.lan_addr = self.plan.lan_addr
        self.min_lifetime = min_lifetime
        self.upnp = upnp
        self.natpmp = natpmp
        self.own_stun = stun  # False: a `shoal server` in the lab already answers STUN on 3478
        self.proc: subprocess.Popen[str] | None = None
        self.stun: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._dir = ""

    def config(self) -> str:
        a1 = self.lab.server.addrs[0]
        return "\n".join([
            "ext_ifname=wan0", "listening_ip=lan0", "http_port=0",
            f"enable_upnp={'yes' if self.upnp else 'no'}", f"enable_natpmp={'yes' if self.natpmp else 'no'}",
            "secure_mode=yes", "system_uptime=no", f"uuid={uuid.uuid4()}",
            "ext_perform_stun=yes", f"ext_stun_host={a1}", f"ext_stun_port={STUN_PORTS[0]}",
            f"upnp_table_name={TABLE}", f"upnp_nat_table_name={TABLE}",
            "upnp_forward_chain=miniupnpd", "upnp_nat_chain=prerouting_miniupnpd",
            "upnp_nat_postrouting_chain=postrouting_miniupnpd",
            f"min_lifetime={self.min_lifetime}", "max_lifetime=86400",
            "allow 1024-65535 198.18.0.0/15 1024-65535", "deny 0-65535 0.0.0.0/0 0-65535", ""])

    def __enter__(self) -> MiniUpnpd:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if not available():
            raise LabError(f"{MINIUPNPD} or nft missing: run scripts/setup-system.sh")
        if self.own_stun:
            a1, a2 = self.lab.server.addrs[:2]
            self.stun = self.lab.server.popen([sys.executable, "-c", _STUN_SERVER, a1, a2, *map(str, STUN_PORTS)],
                                              stdout=subprocess.PIPE, text=True)
            assert self.stun.stdout is not None
            if self.stun.stdout.readline().strip() != "ready":
                raise LabError("the lab STUN responder did not start")
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=_NFT.format(
            table=TABLE, servers=", ".join(self.lab.server.addrs), ports=", ".join(map(str, STUN_PORTS))),
                       text=True, check=True)
        self._dir = tempfile.mkdtemp(prefix=f"shoal-miniupnpd-{self.lab.run_id}-")
        Path(self._dir, "miniupnpd.conf").write_text(self.config())
        self._run()

    def _run(self) -> None:
        self.log.clear()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, MINIUPNPD, "-d", "-f", str(Path(self._dir, "miniupnpd.conf")),
             "-P", str(Path(self._dir, "pid"))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()
        threading.Thread(target=self._read_log, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            raise LabError("miniupnpd did not come up:\n" + "\n".join(self.log[-20:]))
        if not any("Port forwarding is now enabled" in line for line in self.log):
            raise LabError("miniupnpd refuses to forward ports:\n" + "\n".join(self.log[-20:]))

    def restart(self) -> None:
        """Like a rebooting router: stop miniupnpd, empty its chains (it leaves its redirects
        behind when stopped) and the router's conntrack table, start a new one (epoch 0)."""
        assert self.proc is not None
        _terminate(self.proc)
        flush = "".join(f"flush chain inet {TABLE} {c}\n" for c in ("miniupnpd", "prerouting_miniupnpd",
                                                                      "postrouting_miniupnpd"))
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=flush, text=True, check=True)
        subprocess.run(["ip", "netns", "exec", self.ns, "conntrack", "-F"], capture_output=True)
        self._run()

    def _read_log(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        want = "Listening for NAT-PMP/PCP traffic" if self.natpmp else "HTTP listening on port"
        for line in proc.stdout:
            if proc is not self.proc:  # a restarted one's last words
                continue
            self.log.append(line.rstrip())
            if want in line:
                ready.set()
        ready.set()  # exited: start() then finds no "enabled" line or a dead process

    def mappings(self) -> list[tuple[int, str, int]]:
        """(external port, internal ip, internal port) of every DNAT miniupnpd installed."""
        out = subprocess.run(["ip", "netns", "exec", self.ns, "nft", "list", "chain", "inet", TABLE,
                              "prerouting_miniupnpd"], capture_output=True, text=True).stdout
        return [(int(p), ip, int(ip_port)) for p, ip, ip_port in _DNAT.findall(out)]

    def stop(self) -> None:
        for proc in (self.proc, self.stun):
            if proc is not None:
                _terminate(proc)
        self.proc = self.stun = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def grep(self, pattern: str) -> list[str]:
        return [line for line in self.log if re.search(pattern, line)]

    def wait_log(self, pattern: str, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.grep(pattern):
                return True
            time.sleep(0.05)
        return False


def _terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM by PID, SIGKILL after 3 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
