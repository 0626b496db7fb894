"""The product inside the lab: a real `shoal server` and real `shoal daemon`s in lab hosts.

Used by the lab tests (tests/daemon/test_lab_*.py) and the demo (shoal.lab.productdemo).

Every process gets its own files under one temporary directory (state dir, run dir with the
UAPI socket, API socket, log), so several daemons run on one machine in different network
namespaces without sharing anything; every interface is `shoal0` inside its own namespace.
Processes are stopped by their PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal.daemon.localapi import ApiClient
from shoal.lab.lab import Host
from shoal.testing.tls import self_signed

SERVER_PORT = 8080
START_TIMEOUT = 20.0
SHOAL = [sys.executable, "-m", "shoal.cli.main"]


def _stop(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class ServerProc:
    host: Host
    data_dir: Path
    addr: str
    port: int = SERVER_PORT
    proc: subprocess.Popen[Any] | None = None
    tls: tuple[Path, Path] | None = None  # (certificate, key): HTTPS on the HTTP port
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.addr}:{self.port}"

    def _fetch(self, code: str, **kw: Any) -> subprocess.CompletedProcess[Any]:
        env = {**os.environ, "SSL_CERT_FILE": str(self.tls[0])} if self.tls else None
        return self.host.exec(["python3", "-c", f"import urllib.request;{code}"], capture_output=True, env=env, **kw)

    def start(self) -> "ServerProc":
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)  # the server refuses a data dir group/others can reach (F20)
        with open(self.log, "ab") as log:
            tls = ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])] if self.tls else []
            self.proc = self.host.popen([*SHOAL, "server", "--data-dir", str(self.data_dir),
                                         "--listen", f"{self.addr}:{self.port}", *tls],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal server exited with {self.proc.returncode}:\n{_tail(self.log)}")
            p = self._fetch(f"urllib.request.urlopen('{self.url}/v1/server-key', timeout=1)")
            if p.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError(f"shoal server did not answer within {START_TIMEOUT:.0f} s:\n{_tail(self.log)}")

    def key(self) -> str:
        p = self._fetch(f"print(urllib.request.urlopen('{self.url}/v1/server-key').read().decode())", text=True, timeout=10)
        return json.loads(p.stdout)["public_key"]

    def stop(self, sig: int = signal.SIGTERM) -> None:
        _stop(self.proc, sig)


@dataclass
class NodeProc:
    host: Host
    base: Path
    nickname: str
    proc: subprocess.Popen[Any] | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment (SSL_CERT_FILE for a TLS server)

    def __post_init__(self) -> None:
        self.state_dir = self.base / "state"
        self.run_dir = self.base / "run"
        self.socket = self.base / "shoald.sock"
        self.log = self.base / "daemon.log"

    @property
    def api(self) -> ApiClient:
        return ApiClient(self.socket, timeout=30)

    def start(self) -> "NodeProc":
        self.base.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env, "SHOAL_RUN_DIR": str(self.run_dir)}
        with open(self.log, "ab") as log:
            self.proc = self.host.popen([*SHOAL, "daemon", "--state-dir", str(self.state_dir), "--socket", str(self.socket),
                                         "--nickname", self.nickname],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"shoal daemon exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if self.socket.exists():
                try:
                    self.api.call("GET", "/v1/status")
                    return self
                except Exception:  # noqa: BLE001 - not ready yet
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"shoal daemon did not come up within {START_TIMEOUT:.0f} s:\n{_tail(self.log)}")

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `shoal ARGS --socket ...` as a user would (outside the namespace: the socket is a file)."""
        env = {**os.environ, "SHOAL_SOCKET": str(self.socket), "COLUMNS": "160"}
        p = subprocess.run([*SHOAL, *args], capture_output=True, text=True, env=env, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"shoal {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.api.call(method, path, body)

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status")

    @property
    def ipv4(self) -> str:
        return self.status()["node"]["ipv4"]

    @property
    def node_id(self) -> str:
        return self.status()["node"]["node_id"]

    def ping(self, addr: str, wait: float = 1.0, count: int = 1) -> bool:
        """One kernel ping from this host over the overlay."""
        p = self.host.exec(["ping", "-n", "-q", "-c", str(count), "-W", f"{wait:g}", addr], capture_output=True, timeout=30)
        return p.returncode == 0

    def ping_until(self, addr: str, ok: bool, timeout: float = 5.0, wait: float = 0.2) -> float | None:
        """Ping every ~20 ms until a ping's outcome is `ok`. Returns a monotonic time, or None:
        for ok=True when that ping's reply was in (an upper bound of when the tunnel worked),
        for ok=False when the failing ping was sent (the tunnel was gone by then)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            sent = time.monotonic()
            if self.ping(addr, wait) == ok:
                return time.monotonic() if ok else sent
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        _stop(self.proc)


class Mesh:
    """Server + nodes in one lab; `close()` stops everything and removes the files."""

    def __init__(self, lab: Any, server_port: int = SERVER_PORT, tls: bool = False) -> None:
        """`server_port`: the server's HTTP port (443 when a udp-blocked host must reach it).
        `tls`: the server speaks HTTPS with a fresh self-signed certificate for its address,
        which the daemons (and only they) trust through SSL_CERT_FILE."""
        self.lab = lab
        self.dir = Path(tempfile.mkdtemp(prefix=f"shoal-mesh-{os.getpid()}-"))
        addr = lab.server.addrs[0]
        self.server = ServerProc(lab.server, self.dir / "server", addr, server_port,
                                 tls=self_signed(self.dir / "tls", addr, "server") if tls else None)
        self.node_env = {"SSL_CERT_FILE": str(self.server.tls[0])} if self.server.tls else {}
        self.nodes: dict[str, NodeProc] = {}

    def add_node(self, host_name: str, nickname: str | None = None) -> NodeProc:
        node = NodeProc(self.lab.host(host_name), self.dir / host_name, nickname or host_name, env=self.node_env)
        self.nodes[host_name] = node
        return node.start()

    def joined(self, *hosts: str, network: str = "net", password: str = "pw-lab-mesh") -> list[NodeProc]:
        """Start the server and a node per host, log them all in; the first creates `network`
        and the others join it. Returns the nodes in order."""
        self.server.start()
        key = self.server.key()
        nodes = [self.add_node(h, h) for h in hosts]
        for n in nodes:
            n.cli("login", self.server.url, "--server-key", key)
        nodes[0].cli("create", network, "--password", password)
        for n in nodes[1:]:
            n.cli("join", network, "--password", password)
        return nodes

    def close(self) -> None:
        for node in self.nodes.values():
            node.stop()
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> str:
        parts = [f"--- server\n{_tail(self.server.log, 30)}"]
        parts += [f"--- {name}\n{_tail(n.log, 30)}" for name, n in self.nodes.items()]
        return "\n".join(parts)
