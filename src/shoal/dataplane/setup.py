"""What the interface runtime checks and runs around bringing an interface up (no engine, no fds).

Owns: `SetupError` (the interface could not be brought up; one line saying which step and
why), `routes_for` (the routes wg-quick would add for a config: each peer's AllowedIPs not
covered by an interface address; a /0 is refused, shoal wg does no policy routing),
`run_hooks` (PreUp/PostUp/PreDown/PostDown through /bin/sh, `%i` = the interface name) and
`timers_from_env` (shortened engine timers for tests). `shoal.dataplane.runtime` re-exports
`SetupError` and `timers_from_env`, where its users import them from.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess

from shoal.constants import Timers
from shoal.dataplane.config import WgConfig

__all__ = ["SetupError", "routes_for", "run_hooks", "timers_from_env"]


def timers_from_env(environ: dict[str, str] | None = None) -> Timers | None:
    """Shortened engine timers for tests, from SHOAL_WG_TEST_TIMERS="rekey_after_time=5,..."
    (never set by users; None when unset). A malformed value raises ValueError naming it."""
    spec = (os.environ if environ is None else environ).get("SHOAL_WG_TEST_TIMERS")
    if not spec:
        return None
    values = {}
    for item in spec.split(","):
        key, _, value = item.partition("=")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"SHOAL_WG_TEST_TIMERS: {item!r} is not name=seconds") from None
    try:
        return Timers(**values)
    except TypeError as e:
        raise ValueError(f"SHOAL_WG_TEST_TIMERS: {e}") from None


class SetupError(RuntimeError):
    """The interface could not be brought up; the message says which step and why."""


def routes_for(config: WgConfig) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    connected = {addr.network for addr in config.interface.addresses}
    routes = []
    for peer in config.peers:
        for net in peer.allowed_ips:
            if net.prefixlen == 0:
                raise SetupError(
                    f"AllowedIPs {net} would route all traffic into the tunnel; "
                    "shoal wg does not do policy routing: set 'Table = off' and route it yourself"
                )
            if net not in connected and net not in routes:
                routes.append(net)
    return routes


def run_hooks(hooks: list[str], name: str, stage: str) -> None:
    for hook in hooks:
        command = hook.replace("%i", name)
        result = subprocess.run(["/bin/sh", "-c", command], check=False)
        if result.returncode != 0:
            raise SetupError(f"{stage} hook failed (exit {result.returncode}): {command}")
