"""`shoal netcheck`: what the network between this node and the server lets through.

A thin client of the daemon's `POST /v1/netcheck` (shoal.daemon.netcheck, which runs the
RFC 5780 discovery of shoal.nat.discovery and the port mapping probe of shoal.nat.portmap.client).
Prints one line per question, or JSON with --json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from shoal.cli.node import SocketOpt, _call, out

_FILTERING = {
    "endpoint-independent": "endpoint-independent (anyone may answer)",
    "address-dependent": "address-dependent (only addresses we sent to)",
    "address-and-port-dependent": "address-and-port-dependent (only address:ports we sent to)",
    "unknown": "unknown",
}


def _yes(v: Any) -> str:
    return "unknown" if v is None else ("yes" if v else "no")


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _port_mapping(pm: dict[str, Any]) -> str:
    """"PCP, NAT-PMP, UPnP IGD (gateway 198.18.1.1)", "none (...)" or the daemon's note."""
    if pm.get("available") is None:
        return str(pm.get("note", "unknown"))
    gw = pm.get("gateway")
    if pm["available"]:
        return ", ".join(pm["protocols"]) + (f" (gateway {gw})" if gw else "")
    if not gw:
        return "none (no gateway: this host is on the internet, or has no route)"
    return f"none (gateway {gw} answers none of PCP, NAT-PMP, UPnP IGD)"


def render_netcheck(r: dict[str, Any], console: Console) -> None:
    rows: list[tuple[str, str]] = [("STUN server", f"{r['server']}" + (f" ({r['server_software']})" if r.get("server_software") else ""))]
    rows.append(("UDP works", _yes(r["udp"])))
    if r["udp"]:
        rows.append(("reflexive address", r["reflexive"] or "-"))
        rows.append(("behind NAT", _yes(r["behind_nat"])))
        varies = r["mapping_varies_by_destination"]
        rows.append(("mapping varies by destination", f"{_yes(varies)} ({r['mapping']})"))
        rows.append(("filtering", _FILTERING.get(r["filtering"], r["filtering"])))
        rows.append(("NAT type", r["nat_type"]))
    rows.append(("port mapping available", _port_mapping(r["port_mapping"])))
    latency = _ms(r["rtt_ms"])
    if r.get("rtt_other_ms") is not None:
        latency += f" (its other address {_ms(r['rtt_other_ms'])})"
    rows.append(("latency to server STUN", latency))
    relays = r["relays"].get("relays") or []
    if relays:
        for x in relays:
            rows.append(("relay", f"{x['address']} over {'UDP' if x['via'] == 'udp' else 'WebSocket'}, "
                                  f"latency {_ms(x['rtt_ms'])}"))
    else:
        rows.append(("relays", r["relays"]["note"]))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        console.print(f"{k.ljust(width)}  {v}")
    for note in r.get("notes") or []:
        console.print(f"note: {note}")


def netcheck(
    server: Optional[str] = typer.Option(None, "--server", help="STUN server host[:port] (default: the logged-in server, port 3478)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    socket: Optional[Path] = SocketOpt,
) -> None:
    """Check the network: UDP, reflexive address, NAT mapping and filtering, port mapping, latency to the server."""
    r = _call(socket, "POST", "/v1/netcheck", {"server": server} if server else {}, timeout=60)
    r.pop("ok", None)
    if as_json:
        typer.echo(json.dumps(r, indent=2))
    else:
        render_netcheck(r, out)
