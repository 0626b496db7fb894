"""Tests of shoal.daemon.netcheck: server parsing, a real discovery run over loopback against
the server's STUN listener, the local API handler, and (lab tier) `shoal netcheck` from a real
daemon behind every lab NAT type against a real `shoal server`."""

from __future__ import annotations

import json
import re
import types

import pytest

from shoal.daemon.localapi import HttpError
from shoal.nat.discovery import Result
from shoal.daemon.netcheck import PORT_MAPPING_NOTE, api_netcheck, netcheck_payload, parse_server, run_discovery
from shoal.nat.responder import StunResponder
from shoal.server.stunlistener import StunListener
from tests.server.test_stunlistener import A1, A2, free_port_pair


def test_parse_server() -> None:
    assert parse_server("192.0.2.1") == ("192.0.2.1", 3478)
    assert parse_server("192.0.2.1:4000") == ("192.0.2.1", 4000)
    assert parse_server("[2001:db8::1]:5") == ("2001:db8::1", 5)
    assert parse_server("2001:db8::1") == ("2001:db8::1", 3478)
    assert parse_server("http://192.0.2.1:8080") == ("192.0.2.1", 3478)  # the pinned URL: STUN's port
    assert parse_server("stun.example:3479") == ("stun.example", 3479)
    for bad in ("", ":5", "a:0", "a:99999", "a:x", "http://"):
        with pytest.raises(ValueError):
            parse_server(bad)


async def test_run_discovery_over_loopback() -> None:
    p1, p2 = free_port_pair()
    listener = StunListener(StunResponder([A1, A2], [p1, p2], software="shoal-test"))
    await listener.start()
    try:
        r = await run_discovery((A1, p1))
    finally:
        listener.close()
    assert r.udp and r.reflexive is not None and r.reflexive[0] == A1
    assert (r.mapping.value, r.filtering.value, r.nat_type, r.behind_nat) == ("none", "endpoint-independent", "open", False)
    # issue 18 F14: SOFTWARE is sent only when it fits in the request's size (this client's do not pad)
    assert r.other == (A2, p2) and r.software is None
    assert r.rtt is not None and 0 < r.rtt < 0.5 and r.duration < 1.0


async def test_run_discovery_retransmits_on_its_timer() -> None:
    """The first two requests are lost: the glue must send what the engine's timer hands back."""
    p1, p2 = free_port_pair()
    listener = StunListener(StunResponder([A1, A2], [p1, p2]))
    await listener.start()
    real = listener._received
    seen: list[bytes] = []

    def lossy(data: bytes, src: tuple[str, int], local: tuple[str, int]) -> None:
        seen.append(data)
        if len(seen) > 2:
            real(data, src, local)

    listener._received = lossy  # type: ignore[method-assign]
    try:
        r = await run_discovery((A1, p1), rto=0.05)
    finally:
        listener.close()
    assert r.udp and r.nat_type == "open" and seen[0] == seen[1] == seen[2]
    assert r.rtt is None and 0.15 <= r.duration < 1.0  # answered after 0.05 + 0.1 s; no clean RTT sample


async def test_run_discovery_without_a_server_times_out_as_udp_blocked() -> None:
    p1, _ = free_port_pair()  # nobody listens: ICMP port unreachable is ignored, retransmissions run out
    r = await run_discovery((A1, p1), rto=0.02, final_wait=0.05)
    assert not r.udp and r.nat_type == "udp-blocked"


async def test_api_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # no gateway: the port mapping probe must not reach this machine's real default gateway
    monkeypatch.setattr("shoal.daemon.netcheck.find_gateway", lambda toward=None: None)
    p1, p2 = free_port_pair()
    daemon = types.SimpleNamespace(pin=None)
    with pytest.raises(HttpError) as e:
        await api_netcheck(daemon, {})
    assert e.value.status == 409 and "--server" in e.value.message
    for bad in ({"server": 5}, {"server": "a:b:c:x"}):
        with pytest.raises(HttpError) as e:
            await api_netcheck(daemon, bad)
        assert e.value.status == 400
    listener = StunListener(StunResponder([A1, A2], [p1, p2]))
    await listener.start()
    try:
        out = await api_netcheck(daemon, {"server": f"{A1}:{p1}"})
        daemon.pin = types.SimpleNamespace(url=f"http://{A1}:8080")  # pinned server, STUN's default port
        json.dumps(out)
    finally:
        listener.close()
    assert out["udp"] is True and out["nat_type"] == "open" and out["server"] == f"{A1}:{p1}"
    pm = out["port_mapping"]
    assert pm["available"] is False and pm["protocols"] == [] and pm["gateway"] is None
    assert pm["notes"] == ["no default gateway and no next hop towards the server"]
    assert daemon.netcheck is out


def test_payload_without_a_probe() -> None:
    out = netcheck_payload(Result(server=(A1, 3478), udp=False))
    assert out["port_mapping"] == {"available": None, "protocols": [], "note": PORT_MAPPING_NOTE}


# ------------------------------------------------------------------ lab tier

LAB_EXPECT = {
    # lab NAT type: (udp, behind NAT, mapping, filtering, NAT type) - what docs/lab.md says each is
    "public": (True, False, "none", "endpoint-independent", "open"),
    "full-cone": (True, True, "endpoint-independent", "endpoint-independent", "full-cone"),
    "port-restricted": (True, True, "endpoint-independent", "address-and-port-dependent", "port-restricted-cone"),
    "symmetric": (True, True, "address-and-port-dependent", "address-and-port-dependent", "symmetric"),
    "double-nat": (True, True, "endpoint-independent", "address-and-port-dependent", "port-restricted-cone"),
    "udp-blocked": (False, None, "unknown", "unknown", "udp-blocked"),
}


@pytest.mark.lab
@pytest.mark.timeout(180)
def test_lab_netcheck_every_nat_type() -> None:
    """A real `shoal server` (STUN on 192.0.2.1/.2 x 3478/3479) and a real daemon per lab NAT
    type; `shoal netcheck --json` and the text output report the intended classification."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("the lab needs root and nftables")
    from shoal.lab.mesh import Mesh
    from shoal.lab import HostSpec, Lab, Topology

    names = {nat: nat.replace("-", "")[:12] for nat in LAB_EXPECT}
    topo = Topology(clients=[HostSpec(names[nat], nat=nat) for nat in LAB_EXPECT])
    with Lab(topo) as lab:
        mesh = Mesh(lab)
        try:
            mesh.server.start()
            key = mesh.server.key()
            for nat, name in names.items():
                mesh.add_node(name)
            found: dict[str, dict] = {}
            texts: dict[str, str] = {}
            for nat, name in names.items():
                node = mesh.nodes[name]
                if nat == "udp-blocked":  # the control channel is HTTP on 8080: blocked too; name the STUN server
                    p = node.cli("netcheck", "--json", "--server", "192.0.2.1")
                else:
                    node.cli("login", mesh.server.url, "--server-key", key)
                    p = node.cli("netcheck", "--json")
                found[nat] = json.loads(p.stdout)
                texts[nat] = node.cli("netcheck", *(["--server", "192.0.2.1"] if nat == "udp-blocked" else [])).stdout
        except Exception:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
    report = []
    for nat, r in found.items():
        got = (r["udp"], r["behind_nat"], r["mapping"], r["filtering"], r["nat_type"])
        report.append(f"{nat:16} udp={r['udp']!s:5} reflexive={r['reflexive']} mapping={r['mapping']} "
                      f"filtering={r['filtering']} type={r['nat_type']} rtt={r['rtt_ms']} ms took={r['duration_s']} s")
        assert got == LAB_EXPECT[nat], (nat, r)
        host = lab.host(names[nat])
        if r["udp"]:
            assert r["reflexive"].split(":")[0] == host.wan_addr
            assert r["other_address"] == "192.0.2.2:3479" and r["rtt_ms"] is not None
    print("\n".join(report))
    # the text a user reads
    t = texts["symmetric"]
    assert re.search(r"^UDP works +yes$", t, re.M) and re.search(r"^NAT type +symmetric$", t, re.M)
    assert re.search(r"^mapping varies by destination +yes \(address-and-port-dependent\)$", t, re.M)
    # lab routers run no port mapping service: the probe asks the router and finds nothing
    assert re.search(r"^port mapping available +none \(gateway 198\.18\.\d+\.1 answers none of PCP, NAT-PMP, UPnP IGD\)$", t, re.M)
    assert re.search(r"^port mapping available +none \(no gateway", texts["public"], re.M)
    assert found["symmetric"]["port_mapping"]["gateway"] == lab.plan.routers[names["symmetric"]].lan_addr
    assert re.search(r"^latency to server STUN +\d+\.\d\d ms", t, re.M)
    assert re.search(r"^mapping varies by destination +no \(endpoint-independent\)$", texts["port-restricted"], re.M)
    assert re.search(r"^filtering +endpoint-independent", texts["full-cone"], re.M)
    assert re.search(r"^UDP works +no$", texts["udp-blocked"], re.M) and "NAT type" not in texts["udp-blocked"]
    # the daemon's relay connection (inside the server): UDP from the data socket, and its latency
    assert re.search(r"^relay +192\.0\.2\.1:3480 over UDP, latency \d+\.\d\d ms$", t, re.M), t
    assert found["symmetric"]["relays"]["relays"][0]["via"] == "udp"
    assert re.search(r"^relays +no relay connection", texts["udp-blocked"], re.M)  # never logged in


@pytest.mark.lab
@pytest.mark.timeout(90)
def test_lab_netcheck_port_mapping_behind_miniupnpd() -> None:
    """A daemon behind a lab router running miniupnpd: `shoal netcheck` lists all three
    protocols (the daemon finds the router as the next hop towards the server)."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("the lab needs root and nftables")
    from shoal.lab.mesh import Mesh
    from shoal.lab import HostSpec, Lab, Topology
    from shoal.lab.miniupnpd import MiniUpnpd, available

    if not available():
        pytest.skip("miniupnpd is not installed (scripts/setup-system.sh)")
    with Lab(Topology(clients=[HostSpec("b", nat="port-restricted")])) as lab:
        mesh = Mesh(lab)
        try:
            mesh.server.start()  # its STUN listener also answers miniupnpd's STUN check
            with MiniUpnpd(lab, "b", stun=False) as gw:
                node = mesh.add_node("b")
                node.cli("login", mesh.server.url, "--server-key", mesh.server.key())
                r = json.loads(node.cli("netcheck", "--json").stdout)
                text = node.cli("netcheck").stdout
        except Exception:
            print(mesh.logs())
            raise
        finally:
            mesh.close()
    pm = r["port_mapping"]
    assert pm["available"] is True and pm["protocols"] == ["PCP", "NAT-PMP", "UPnP IGD"], pm
    assert pm["gateway"] == gw.lan_addr and pm["external_ip"] == lab.host("b").wan_addr
    assert re.search(r"^port mapping available +PCP, NAT-PMP, UPnP IGD \(gateway 198\.18\.1\.1\)$", text, re.M), text
