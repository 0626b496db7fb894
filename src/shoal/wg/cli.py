"""`shoal wg up|down|show`: a standalone userspace WireGuard over wg-quick style config files.

`up` checks the whole config first (a bad file changes nothing), then starts the interface
process in the background (like wireguard-go does) and returns once it answers on its UAPI
socket; `--foreground` keeps it in the terminal. The process writes its pid and log under the
run directory (/run/shoal by default). `down` stops it by that pid; the interface, its
addresses and routes vanish with it. `show` reads the UAPI socket, so stock `wg show` works
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer

from shoal.dataplane import config as wgconfig
from shoal.dataplane import uapi
from shoal.dataplane.runtime import DEFAULT_UAPI_DIR, SetupError, WgInterface, timers_from_env
from shoal.wireguard.keys import PresharedKey, PublicKey

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Userspace WireGuard (wg-quick style configs)")

RUN_DIR = Path(os.environ.get("SHOAL_RUN_DIR", "/run/shoal"))
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


def _fail(message: str) -> None:
    typer.echo(f"shoal wg: {message}", err=True)
    raise typer.Exit(1)


def _load(config: str) -> wgconfig.WgConfig:
    try:
        return wgconfig.load(config)
    except wgconfig.ConfigError as e:
        typer.echo(f"shoal wg: {e}", err=True)
        raise typer.Exit(2) from None


def _pidfile(name: str) -> Path:
    return RUN_DIR / f"wg-{name}.pid"


def _uapi_request(name: str, request: bytes, uapi_dir: Path = DEFAULT_UAPI_DIR) -> str:
    return uapi.query(uapi_dir / f"{name}.sock", request.decode())


def _serve(cfg: wgconfig.WgConfig, timers=None, warm: bool = True) -> None:  # noqa: ANN001
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        kwargs = {"timers": timers} if timers is not None else {}
        await WgInterface(cfg, warm=warm, **kwargs).run(stop)

    try:
        asyncio.run(main())
    except SetupError as e:
        _fail(str(e))


@app.command()
def up(
    config: str = typer.Argument(..., help="config file, or NAME for /etc/wireguard/NAME.conf"),
    foreground: bool = typer.Option(False, "--foreground", "-f", help="stay in the foreground"),
    no_warm: bool = typer.Option(False, "--no-warm", help="do not keep the packet path warm while data flows "
                                 "(saves a few per cent of a core, costs latency on a quiet tunnel)"),
) -> None:
    """Bring up the interface described by CONFIG."""
    cfg = _load(config)
    if foreground:
        _pidfile(cfg.name).parent.mkdir(parents=True, exist_ok=True)
        _pidfile(cfg.name).write_text(f"{os.getpid()}\n")
        try:
            _serve(cfg, timers_from_env(), warm=not no_warm)
        finally:
            _pidfile(cfg.name).unlink(missing_ok=True)
        return
    if (DEFAULT_UAPI_DIR / f"{cfg.name}.sock").exists():
        with contextlib.suppress(OSError):
            _uapi_request(cfg.name, b"get=1\n\n")
            _fail(f"interface {cfg.name} is already up")
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    log_path = RUN_DIR / f"wg-{cfg.name}.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal.cli.main", "wg", "up", "--foreground", *(["--no-warm"] if no_warm else []), config],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            if tail and tail[0].startswith("shoal wg: "):
                typer.echo(tail[0], err=True)  # the interface process's own one-line reason
                raise typer.Exit(1)
            _fail(f"interface process exited with {proc.returncode} (log: {log_path})")
        try:
            _uapi_request(cfg.name, b"get=1\n\n")
            typer.echo(f"{cfg.name}: up (pid {proc.pid}, log {log_path})")
            return
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    _fail(f"interface {cfg.name} did not come up within {START_TIMEOUT:.0f} s (log: {log_path})")


@app.command()
def down(config: str = typer.Argument(..., help="config file or interface name")) -> None:
    """Take the interface down (stops its process)."""
    path = Path(config)
    name = wgconfig.interface_name_for(path) if path.suffix == ".conf" else config
    pidfile = _pidfile(name)
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        _fail(f"interface {name} is not up (no pid file {pidfile})")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pidfile.unlink(missing_ok=True)
        _fail(f"interface {name}: process {pid} was already gone")
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    typer.echo(f"{name}: down")


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for unit, size in (("minute", 60), ("second", 1)):
        if seconds >= size or (unit == "second" and not parts):
            n, seconds = divmod(seconds, size)
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return ", ".join(parts) + " ago"


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def format_show(name: str, text: str, now_wall: float) -> str:
    """Render a UAPI get response like `wg show` does."""
    out = [f"interface: {name}"]
    peer: dict[str, list[str]] | None = None
    peers: list[dict[str, list[str]]] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "public_key":
            peer = {}
            peers.append(peer)
        if peer is None:
            if key == "private_key":
                out.append(f"  public key: {_pub_of(value)}")
                out.append("  private key: (hidden)")
            elif key == "listen_port":
                out.append(f"  listening port: {value}")
        else:
            peer.setdefault(key, []).append(value)
    for p in peers:
        out.append("")
        out.append(f"peer: {PublicKey.from_hex(p['public_key'][0]).to_base64()}")
        if "preshared_key" in p and not PresharedKey.from_hex(p["preshared_key"][0]).is_zero():
            out.append("  preshared key: (hidden)")
        if "endpoint" in p:
            out.append(f"  endpoint: {p['endpoint'][0]}")
        out.append(f"  allowed ips: {', '.join(p.get('allowed_ip', [])) or '(none)'}")
        sec = int(p.get("last_handshake_time_sec", ["0"])[0])
        if sec:
            out.append(f"  latest handshake: {_ago(max(0.0, now_wall - sec))}")
        rx, tx = int(p.get("rx_bytes", ["0"])[0]), int(p.get("tx_bytes", ["0"])[0])
        if rx or tx:
            out.append(f"  transfer: {_human_bytes(rx)} received, {_human_bytes(tx)} sent")
        keepalive = int(p.get("persistent_keepalive_interval", ["0"])[0])
        if keepalive:
            out.append(f"  persistent keepalive: every {keepalive} seconds")
    return "\n".join(out)


def _pub_of(private_hex: str) -> str:
    from shoal.wireguard.keys import PrivateKey

    return PrivateKey.from_hex(private_hex).public_key().to_base64()


@app.command()
def show(name: str = typer.Argument(None, help="interface name (default: all)")) -> None:
    """Show interfaces like `wg show`."""
    if name:
        names = [name]
    else:
        names = sorted(p.stem for p in DEFAULT_UAPI_DIR.glob("*.sock")) if DEFAULT_UAPI_DIR.exists() else []
    shown = 0
    for n in names:
        try:
            text = _uapi_request(n, b"get=1\n\n")
        except OSError as e:
            if name:
                _fail(f"interface {n}: cannot reach it ({e.strerror or e})")
            continue
        if shown:
            typer.echo("")
        typer.echo(format_show(n, text, time.time()))
        shown += 1
