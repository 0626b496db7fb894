"""`shoal wg up|down|show` as a user runs them: background process, errors, no half-configured interface."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from shoal.lab import HostSpec, Lab, Topology
from shoal.wg.cli import format_show
from shoal.wireguard.keys import PrivateKey

from .wglab import unique_ifname

KEY = PrivateKey.generate()
PEER = PrivateKey.generate().public_key()


def conf(port: int = 51820, extra: str = "") -> str:
    return (
        f"[Interface]\nPrivateKey = {KEY.to_base64()}\nListenPort = {port}\nAddress = 100.64.9.1/24\n{extra}\n"
        f"[Peer]\nPublicKey = {PEER.to_base64()}\nAllowedIPs = 100.64.9.2/32, 198.51.100.128/25\nEndpoint = 192.0.2.2:51820\n"
    )


def test_format_show_matches_wg_show_layout():
    text = (
        f"private_key={KEY.hex()}\nlisten_port=51820\npublic_key={PEER.hex()}\npreshared_key={'0' * 64}\n"
        "protocol_version=1\nendpoint=192.0.2.2:51820\nlast_handshake_time_sec=1000\nlast_handshake_time_nsec=0\n"
        "tx_bytes=2048\nrx_bytes=100\npersistent_keepalive_interval=25\nallowed_ip=100.64.9.2/32\nerrno=0\n"
    )
    out = format_show("shoal0", text, now_wall=1065.0)
    assert out.splitlines() == [
        "interface: shoal0",
        f"  public key: {KEY.public_key().to_base64()}",
        "  private key: (hidden)",
        "  listening port: 51820",
        "",
        f"peer: {PEER.to_base64()}",
        "  endpoint: 192.0.2.2:51820",
        "  allowed ips: 100.64.9.2/32",
        "  latest handshake: 1 minute, 5 seconds ago",
        "  transfer: 100 B received, 2.00 KiB sent",
        "  persistent keepalive: every 25 seconds",
    ]


def lab_test(fn):
    for mark in (pytest.mark.lab, pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"), pytest.mark.timeout(120)):
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def host():
    with Lab(Topology(clients=[HostSpec("a")])) as lab:
        yield lab.host("a")


def shoal(host, *args: str, env: dict[str, str]):
    return host.exec([sys.executable, "-m", "shoal", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@lab_test
def test_up_show_down(host, tmp_path):
    name = unique_ifname("c")
    path = tmp_path / f"{name}.conf"
    path.write_text(conf())
    env = {"SHOAL_RUN_DIR": str(tmp_path / "run")}
    up = shoal(host, "wg", "up", str(path), env=env)
    assert up.returncode == 0, up.stderr
    try:
        link = host.exec(["ip", "-o", "addr", "show", "dev", name], capture_output=True, text=True)
        assert "100.64.9.1/24" in link.stdout
        routes = host.exec(["ip", "route", "show", "dev", name], capture_output=True, text=True).stdout
        assert "100.64.9.2" in routes and "198.51.100.128/25" in routes
        assert "mtu 1420" in host.exec(["ip", "link", "show", name], capture_output=True, text=True).stdout
        shown = shoal(host, "wg", "show", name, env=env)
        assert f"peer: {PEER.to_base64()}" in shown.stdout and "allowed ips: 100.64.9.2/32, 198.51.100.128/25" in shown.stdout
        stock = host.exec(["wg", "show", name, "peers"], capture_output=True, text=True)
        assert stock.stdout.strip() == PEER.to_base64()
        again = shoal(host, "wg", "up", str(path), env=env)
        assert again.returncode != 0 and "already up" in again.stderr
    finally:
        down = shoal(host, "wg", "down", str(path), env=env)
    assert down.returncode == 0, down.stderr
    assert host.exec(["ip", "link", "show", name], capture_output=True).returncode != 0


@lab_test
def test_up_no_warm_reaches_the_interface_process(host, tmp_path):
    name = unique_ifname("c")
    path = tmp_path / f"{name}.conf"
    path.write_text(conf())
    env = {"SHOAL_RUN_DIR": str(tmp_path / "run")}
    up = shoal(host, "wg", "up", "--no-warm", str(path), env=env)
    assert up.returncode == 0, up.stderr
    try:
        pid = int((tmp_path / "run" / f"wg-{name}.pid").read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--no-warm" in argv and b"--foreground" in argv
    finally:
        down = shoal(host, "wg", "down", str(path), env=env)
    assert down.returncode == 0, down.stderr


@lab_test
@pytest.mark.parametrize(
    "case",
    ["bad-line", "port-in-use", "failing-postup", "default-route"],
)
def test_errors_leave_nothing_half_configured(host, tmp_path, case):
    name = unique_ifname("e")
    path = tmp_path / f"{name}.conf"
    env = {"SHOAL_RUN_DIR": str(tmp_path / "run")}
    blocker = None
    if case == "bad-line":
        path.write_text(conf().replace("Address = 100.64.9.1/24", "Address = 100.64.9.1/40"))
    elif case == "port-in-use":
        blocker = host.popen([sys.executable, "-c", "import socket,time; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(('::', 51999)); time.sleep(30)"])
        path.write_text(conf(port=51999))
        time.sleep(0.5)
    elif case == "failing-postup":
        path.write_text(conf(extra="PostUp = false"))
    else:
        path.write_text(conf().replace("AllowedIPs = 100.64.9.2/32", "AllowedIPs = 0.0.0.0/0"))
    try:
        up = shoal(host, "wg", "up", str(path), env=env)
    finally:
        if blocker is not None:
            blocker.kill()
            blocker.wait()
    assert up.returncode != 0
    message = up.stderr.strip()
    assert message and len(message.splitlines()) <= 3, message
    assert "Traceback" not in up.stderr
    if case == "bad-line":
        assert up.returncode == 2 and f"{path}:4:" in message
    assert host.exec(["ip", "link", "show", name], capture_output=True).returncode != 0
