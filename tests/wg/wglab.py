"""Test support: run `shoal wg` and stock wireguard-go interfaces inside lab hosts.

Interface names are unique per test process so concurrent runs never share a UAPI socket
(/var/run/wireguard is one directory for every namespace).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shoal.lab.lab import Host
from shoal.dataplane import uapi as wg_uapi
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey

UAPI_DIR = Path("/var/run/wireguard")
PORT = 51820
MTU = 1420
_names = itertools.count()


def unique_ifname(tag: str) -> str:
    return f"t{os.getpid() % 100000}{tag}{next(_names)}"[:15]


def uapi(ifname: str, request: str) -> dict[str, list[str]]:
    data = wg_uapi.query(UAPI_DIR / f"{ifname}.sock", request)
    out: dict[str, list[str]] = {}
    for line in data.splitlines():
        k, _, v = line.partition("=")
        out.setdefault(k, []).append(v)
    return out


def stats(ifname: str) -> dict[str, int]:
    return {k[5:]: int(v[0]) for k, v in uapi(ifname, "get=stats\n\n").items() if k.startswith("stat_")}


def handshakes_seen(ifname: str) -> int:
    return int(uapi(ifname, "get=1\n\n").get("last_handshake_time_sec", ["0"])[0])


@dataclass
class End:
    """One tunnel end in a lab host: its key, overlay addresses and running process."""

    host: Host
    kind: str  # "shoal" | "wireguard-go"
    overlay4: str
    overlay6: str
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    ifname: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def public(self) -> PublicKey:
        return self.key.public_key()

    def peer_section(self, psk: PresharedKey | None = None, keepalive: int = 0, endpoint: bool = True) -> str:
        lines = ["[Peer]", f"PublicKey = {self.public.to_base64()}", f"AllowedIPs = {self.overlay4}/32, {self.overlay6}/128"]
        if psk is not None:
            lines.append(f"PresharedKey = {psk.to_base64()}")
        if endpoint:
            lines.append(f"Endpoint = {self.host.addr}:{PORT}")
        if keepalive:
            lines.append(f"PersistentKeepalive = {keepalive}")
        return "\n".join(lines) + "\n"

    def start(self, peers: str, workdir: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> None:
        self.ifname = unique_ifname("s" if self.kind == "shoal" else "g")
        self.log = workdir / f"{self.ifname}.log"
        iface = f"[Interface]\nPrivateKey = {self.key.to_base64()}\nListenPort = {PORT}\n"
        if self.kind == "shoal":
            conf = workdir / f"{self.ifname}.conf"
            conf.write_text(iface + f"Address = {self.overlay4}/24, {self.overlay6}/64\nMTU = {MTU}\n\n" + peers)
            with open(self.log, "ab") as log:
                self.proc = self.host.popen(
                    [sys.executable, "-m", "shoal", "wg", "up", "--foreground", *args, str(conf)],
                    stdout=log, stderr=log, env={**os.environ, "SHOAL_RUN_DIR": str(workdir / "run"), **(env or {})},
                )
        else:
            with open(self.log, "ab") as log:
                self.proc = self.host.popen(["wireguard-go", "-f", self.ifname], stdout=log, stderr=log,
                                            env={**os.environ, "LOG_LEVEL": "debug"})
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited {self.proc.returncode}: {self.log.read_text()[-500:]}")
            try:
                uapi(self.ifname, "get=1\n\n")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} {self.ifname} did not come up") from None
                time.sleep(0.05)
        if self.kind == "wireguard-go":
            conf = workdir / f"{self.ifname}.wg"
            conf.write_text(iface + "\n" + peers)
            for cmd in (
                ["wg", "setconf", self.ifname, str(conf)],
                ["ip", "addr", "add", f"{self.overlay4}/24", "dev", self.ifname],
                ["ip", "addr", "add", f"{self.overlay6}/64", "dev", self.ifname],
                ["ip", "link", "set", self.ifname, "mtu", str(MTU), "up"],
            ):
                r = self.host.exec(cmd, capture_output=True, text=True, timeout=10)
                assert r.returncode == 0, r.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def ping(host: Host, addr: str, count: int = 3, interval: float = 0.2, wait: float = 2.0) -> subprocess.CompletedProcess:
    cmd = ["ping", "-6" if ":" in addr else "-4", "-c", str(count), "-i", str(interval), "-W", str(wait), addr]
    return host.exec(cmd, capture_output=True, text=True, timeout=count * interval + wait + 10)


def wait_for_ping(host: Host, addr: str, timeout: float) -> float:
    """Seconds until `addr` first answers a ping from `host` (raises after `timeout`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if ping(host, addr, count=1, wait=0.5).returncode == 0:
            return time.monotonic() - start
    raise AssertionError(f"{addr} did not answer within {timeout} s")
