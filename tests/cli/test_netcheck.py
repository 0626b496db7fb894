"""`shoal netcheck` rendering (text a user reads) and its one-line error without a daemon."""

from __future__ import annotations

import io
import re

from rich.console import Console
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.cli.netcheck import render_netcheck
from shoal.daemon.netcheck import netcheck_payload
from shoal.nat.discovery import Behavior, Result
from shoal.nat.portmap.client import ProbeResult


def render(payload: dict) -> str:
    buf = io.StringIO()
    render_netcheck(payload, Console(file=buf, width=200))
    return buf.getvalue()


def test_render_symmetric_nat() -> None:
    r = Result(server=("192.0.2.1", 3478), udp=True, reflexive=("203.0.113.14", 61368), other=("192.0.2.2", 3479),
               mapping=Behavior.ADDRESS_AND_PORT_DEPENDENT, filtering=Behavior.ADDRESS_AND_PORT_DEPENDENT,
               rtt=0.000578, rtt_other=0.0006, software="shoal 0.1.0", behind_nat=True)
    text = render(netcheck_payload(r))
    assert re.search(r"^STUN server +192\.0\.2\.1:3478 \(shoal 0\.1\.0\)$", text, re.M)
    assert re.search(r"^UDP works +yes$", text, re.M)
    assert re.search(r"^reflexive address +203\.0\.113\.14:61368$", text, re.M)
    assert re.search(r"^behind NAT +yes$", text, re.M)
    assert re.search(r"^mapping varies by destination +yes \(address-and-port-dependent\)$", text, re.M)
    assert re.search(r"^filtering +address-and-port-dependent \(only address:ports we sent to\)$", text, re.M)
    assert re.search(r"^NAT type +symmetric$", text, re.M)
    assert re.search(r"^port mapping available +not checked$", text, re.M)
    assert re.search(r"^latency to server STUN +0\.58 ms \(its other address 0\.60 ms\)$", text, re.M)


def test_render_udp_blocked_and_notes() -> None:
    r = Result(server=("192.0.2.1", 3478), udp=False, notes=("no answer from the STUN server: UDP blocked, or the server is down",))
    text = render(netcheck_payload(r))
    assert re.search(r"^UDP works +no$", text, re.M) and "NAT type" not in text and "reflexive" not in text
    assert re.search(r"^latency to server STUN +-$", text, re.M)
    assert "note: no answer from the STUN server" in text


def test_render_port_mapping() -> None:
    r = Result(server=("192.0.2.1", 3478), udp=True, reflexive=("203.0.113.14", 61368), behind_nat=True)
    found = ProbeResult("198.18.1.1", pcp=True, natpmp=True, upnp=True, external_ip="203.0.113.14")
    assert re.search(r"^port mapping available +PCP, NAT-PMP, UPnP IGD \(gateway 198\.18\.1\.1\)$",
                     render(netcheck_payload(r, found)), re.M)
    only = ProbeResult("198.18.1.1", upnp=True)
    assert re.search(r"^port mapping available +UPnP IGD \(gateway", render(netcheck_payload(r, only)), re.M)
    none = ProbeResult("198.18.1.1", notes=["PCP: no answer"])
    assert re.search(r"^port mapping available +none \(gateway 198\.18\.1\.1 answers none of PCP, NAT-PMP, UPnP IGD\)$",
                     render(netcheck_payload(r, none)), re.M)
    assert re.search(r"^port mapping available +none \(no gateway", render(netcheck_payload(r, ProbeResult(None))), re.M)


def test_netcheck_without_daemon_is_one_line(tmp_path) -> None:  # noqa: ANN001
    r = CliRunner().invoke(app, ["netcheck", "--socket", str(tmp_path / "none.sock")])
    assert r.exit_code == 1 and "daemon is not running" in r.output and "Traceback" not in r.output
