"""`shoal server --data-dir DIR --listen HOST:PORT`: run the coordination server.

On start it prints the server key's fingerprint and the line to give clients
(`shoal login http://ADDR:PORT, https:// with --tls-cert --server-key <base64>`), one per local address when it
listens on a wildcard address. Logs go to stderr; SIGINT/SIGTERM stop it cleanly.
Before anything listens it checks --data-dir (made 0700 if missing): an existing dir, or a
server.key / shoal.db(-wal/-shm) in it, that group/others can reach, that is not ours or is a
symlink is refused with exit 1 and the chmod that fixes it (`shoal.securefile`).

STUN (shoal.server.stunlistener): UDP on --stun-port (default 3478) and --stun-alt-port
(3479) of up to two addresses (--stun-addr, repeatable; default the listen address plus one
more local address), so nodes can run RFC 5780 NAT discovery; --stun-port 0 turns it off.

TLS: --tls-cert FILE --tls-key FILE (PEM) make the HTTP port HTTPS (the key fetch, /control
and /relay become https/wss; clients log in with https://). A missing or unusable pair is
refused with exit 1 before anything listens. Without them the port is plain HTTP: the Noise
session pins the server key either way, but a first login without --server-key then trusts
whatever key the path hands over (the client warns about it).

Relay (shoal.relay, inside the server process): UDP on --relay-port (default 3480) of the
listen address, and WebSocket at /relay on the HTTP port; --relay-port 0 keeps only the
WebSocket relay, --no-relay turns relaying off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import socket
from pathlib import Path

import typer

from shoal.constants import RELAY_PORT, SERVER_DATA_DIR
from shoal.endpoint import parse_listen

DEFAULT_DATA_DIR = Path(SERVER_DATA_DIR)


def _local_addresses(family: int) -> list[str]:
    """Non-loopback addresses of this host (for the "give clients" line)."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=family)]
    except Exception:  # no netlink (containers): fall back to the loopback hint
        return []
    out = []
    for a in addrs:
        ip = ipaddress.ip_address(a)
        if not ip.is_loopback and not ip.is_link_local:
            out.append(a)
    return out


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def server(
    data_dir: Path = typer.Option(DEFAULT_DATA_DIR, "--data-dir", help="where the key and the database live"),
    listen: str = typer.Option("0.0.0.0:8080", "--listen", help="HOST:PORT to listen on"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log every session"),
    stun_port: int = typer.Option(3478, "--stun-port", help="UDP port answering STUN (0: no STUN)"),
    stun_alt_port: int = typer.Option(3479, "--stun-alt-port", help="second STUN port for RFC 5780 (0: none)"),
    stun_addr: list[str] = typer.Option([], "--stun-addr", help="address answering STUN (repeat for the second)"),
    relay_port: int = typer.Option(RELAY_PORT, "--relay-port", help="UDP port of the built-in relay (0: WebSocket relay only)"),
    no_relay: bool = typer.Option(False, "--no-relay", help="do not relay at all (nodes that cannot punch through stay apart)"),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate chain: serve HTTPS/WSS on the HTTP port"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert"),
) -> None:
    """Run the coordination server (nodes log in here)."""
    from shoal.server.app import Running, serve

    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        typer.echo(f"shoal server: {exc}", err=True)
        raise typer.Exit(2) from None
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("shoal.server").setLevel(logging.INFO)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if not 0 <= relay_port <= 65535:
        typer.echo(f"shoal server: --relay-port {relay_port} is not a port number", err=True)
        raise typer.Exit(2)
    if (tls_cert is None) != (tls_key is None):
        typer.echo("shoal server: --tls-cert and --tls-key go together", err=True)
        raise typer.Exit(2)
    tls = (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None
    if tls is not None:
        from shoal.server.app import load_tls

        try:
            load_tls(*tls)
        except OSError as exc:
            typer.echo(f"shoal server: {exc}", err=True)
            raise typer.Exit(1) from None
    try:  # F20: refuse a data dir (or key/db in it) that group/others can reach, before anything runs
        from shoal.server.store import DB_NAME, KEY_NAME
        from shoal.securefile import check_private_file, ensure_private_dir

        ensure_private_dir(data_dir)
        for name in (KEY_NAME, DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
            check_private_file(data_dir / name)
    except OSError as exc:
        typer.echo(f"shoal server: {exc}", err=True)
        raise typer.Exit(1) from None
    wildcard = ipaddress.ip_address(host).is_unspecified
    addrs = _local_addresses(socket.AF_INET6 if ":" in host else socket.AF_INET) if wildcard else [host]
    from shoal import __version__
    from shoal.nat.responder import StunResponder
    from shoal.server.stunlistener import default_stun_addresses, run_with_stun

    responder = None
    if stun_port:
        stun_addrs = stun_addr or default_stun_addresses(host, _local_addresses(socket.AF_INET6 if ":" in host else socket.AF_INET))
        try:
            responder = StunResponder(stun_addrs, [p for p in (stun_port, stun_alt_port) if p], software=f"shoal {__version__}")
        except ValueError as exc:
            typer.echo(f"shoal server: STUN: {exc}", err=True)
            raise typer.Exit(2) from None

    def ready(r: Running) -> None:
        pub = r.server_key.public_key()
        typer.echo(f"shoal server: listening on {_url_host(r.host)}:{r.port}, data in {data_dir}")
        typer.echo(f"server key fingerprint: {pub.fingerprint()}")
        for a in (addrs or ["127.0.0.1"])[:8]:
            typer.echo(f"give clients: shoal login {r.scheme}://{_url_host(a)}:{r.port} --server-key {pub.to_base64()}")

    # SIGTERM before uvicorn runs stops us at once; while it runs, uvicorn shuts down cleanly
    # and then re-raises the signal, which this handler turns into a normal exit (status 0).
    def _terminate(*_: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        asyncio.run(run_with_stun(serve(data_dir, host, port, ready=ready, relay_port=None if no_relay else relay_port,
                                        tls=tls),
                                  responder, typer.echo))
    except (PermissionError, OSError) as exc:
        typer.echo(f"shoal server: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
