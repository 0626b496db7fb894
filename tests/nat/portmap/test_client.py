"""Unit tests of shoal.nat.portmap.client that need no network: gateway discovery from a
/proc/net/route text, the probe report, PortMapper's argument checks, and PortMapper with
PCP/NAT-PMP against a fake gateway on a loopback address (mapping, fallback from a refused
PCP to NAT-PMP, a garbage answer, deletion) and UPnP control against a fake IGD on loopback
(fault 718: another port; 725: a permanent lease; 606: refused; DeletePortMapping on close). Against a real gateway (miniupnpd, all three
protocols, traffic through the NAT): test_client_lab.py."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import struct

import pytest

from shoal.nat.portmap.client import PortMapper, ProbeResult, default_gateway, route_gateway
from shoal.nat.portmap.upnp import Service
from tests.nat.portmap.test_engine import FakeGateway

HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
# eth0: default via 198.18.1.1 metric 100, and via 198.18.1.254 metric 50; 198.18.1.0/24 on-link;
# 192.0.2.0/24 via 198.18.1.1; a route that is down (flags 0) to 203.0.113.0/24
ROUTES = HEADER + "".join([
    "eth0\t00000000\t010112C6\t0003\t0\t0\t100\t00000000\t0\t0\t0\n",
    "eth0\t00000000\tFE0112C6\t0003\t0\t0\t50\t00000000\t0\t0\t0\n",
    "eth0\t000112C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    "eth0\t000200C0\t010112C6\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    "eth0\t007100CB\t050112C6\t0002\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    "garbage line\n",
])
LAB = HEADER + "".join([  # a lab host: no default route, the internet prefixes via the router
    "eth0\t000112C6\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
    "eth0\t000200C0\t010112C6\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n",
])


@pytest.fixture
def routes(tmp_path):  # noqa: ANN001, ANN201
    def write(text: str) -> str:
        p = tmp_path / "route"
        p.write_text(text)
        return str(p)
    return write


def test_default_gateway(routes) -> None:  # noqa: ANN001
    assert default_gateway(routes(ROUTES)) == "198.18.1.254"  # the lower metric
    assert default_gateway(routes(LAB)) is None
    assert default_gateway("/nonexistent/route") is None


def test_route_gateway(routes) -> None:  # noqa: ANN001
    assert route_gateway("192.0.2.1", routes(LAB)) == "198.18.1.1"
    assert route_gateway("198.18.1.7", routes(LAB)) is None  # on-link
    assert route_gateway("203.0.113.5", routes(LAB)) is None  # no route
    assert route_gateway("203.0.113.5", routes(ROUTES)) == "198.18.1.254"  # the down route is ignored
    assert route_gateway("not an ip", routes(ROUTES)) is None


def test_probe_result_report() -> None:
    r = ProbeResult("198.18.1.1", pcp=True, upnp=True, external_ip="203.0.113.11", notes=["NAT-PMP: no answer"])
    j = r.to_json()
    assert j["available"] is True and j["protocols"] == ["PCP", "UPnP IGD"] and j["natpmp"] is False
    assert j["gateway"] == "198.18.1.1" and j["notes"] == ["NAT-PMP: no answer"]
    assert ProbeResult(None).to_json()["available"] is False


def test_port_mapper_arguments() -> None:
    for bad in (dict(local_port=0), dict(local_port=70000), dict(local_port=1, lifetime=0),
                dict(local_port=1, protocols=("pcp", "stun"))):
        with pytest.raises(ValueError):
            PortMapper(**bad)  # type: ignore[arg-type]
    m = PortMapper(40000, gateway="198.18.1.1")
    assert m.external is None and m.protocol is None and m.renewals == 0


async def test_close_before_start_is_harmless() -> None:
    m = PortMapper(40000, gateway="198.18.1.1")
    await m.close()
    await m.close()
    assert m.external is None


# ---------------------------------------------------------------- on loopback: a fake gateway
# A PCP/NAT-PMP responder on a random 127.x address, port 5351 (the protocols' fixed port);
# only PCP and NAT-PMP are exercised here, never SSDP (multicast) - UPnP runs in the lab tests.


class _Gateway(asyncio.DatagramProtocol):
    def __init__(self, script: list[str]) -> None:
        self.fake = FakeGateway()
        self.script = script  # per request: "ok", "garbage", "refuse" (PCP unsupported version), "silent"
        self.requests: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # noqa: ANN001
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        self.requests.append(data)
        how = self.script.pop(0) if self.script else "ok"
        assert self.transport is not None
        if how == "garbage":
            self.transport.sendto(b"\x02\x81junk", addr)
            how = "ok"
        if data[:2] == b"\x02\x00" and how != "refuse":  # PCP ANNOUNCE
            self.transport.sendto(struct.pack("!BBxBII12x", 2, 0x80, 0, 0, 1000), addr)
        elif how == "refuse" and data[0] == 2:
            self.transport.sendto(struct.pack("!BBHI", 0, 0x80 | data[1], 1, 10), addr)
        elif how == "ok" or (how == "refuse" and data[0] == 0):
            self.transport.sendto(self.fake.answer(data, 0.0), addr)


@contextlib.asynccontextmanager
async def fake_gateway(script: list[str]):  # noqa: ANN201
    loop = asyncio.get_running_loop()
    for _ in range(5):
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        try:
            transport, proto = await loop.create_datagram_endpoint(lambda: _Gateway(script), local_addr=(ip, 5351))
            break
        except OSError:
            continue
    else:
        pytest.skip("no free loopback address for port 5351")
    try:
        yield ip, proto
    finally:
        transport.close()


async def test_pcp_over_loopback_maps_and_deletes() -> None:
    changes: list = []
    async with fake_gateway(["ok", "ok", "garbage"]) as (ip, gw):
        m = PortMapper(40000, gateway=ip, local_ip="127.0.0.1", protocols=("pcp", "natpmp"), on_change=changes.append)
        ext = await m.start()
        assert ext == ("203.0.113.11", 40000) and m.protocol == "pcp" and m.external == ext
        await m.close()
    kinds = [(r[0], r[1]) for r in gw.requests]
    # probe: PCP ANNOUNCE + NAT-PMP external address; then PCP MAP; then the delete (a MAP)
    assert kinds[:2] == [(2, 0), (0, 0)] and kinds[2:] == [(2, 1), (2, 1)]
    assert gw.fake.lifetimes == [7200, 0]
    assert changes == [("203.0.113.11", 40000), None] and m.external is None


async def test_falls_back_to_natpmp_when_pcp_is_refused() -> None:
    async with fake_gateway(["refuse", "refuse", "refuse", "refuse"]) as (ip, gw):
        m = PortMapper(40001, gateway=ip, local_ip="127.0.0.1", protocols=("pcp", "natpmp"))
        assert await m.start() == ("203.0.113.11", 40001) and m.protocol == "natpmp"
        assert m.probe_result is not None and m.probe_result.natpmp and not m.probe_result.pcp
        await m.close()
    assert gw.fake.lifetimes == [7200, 0]


# ---------------------------------------------------------------- UPnP control on loopback
# A fake IGD control URL on 127.0.0.1 (an ephemeral TCP port): SOAP answers scripted per action.


def _soap(action: str, inner: str = "") -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            f'<u:{action}Response xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">{inner}'
            f"</u:{action}Response></s:Body></s:Envelope>").encode()


def _fault(code: int) -> bytes:
    return ('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
            "<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
            f'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode>'
            "<errorDescription>x</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>").encode()


@contextlib.asynccontextmanager
async def fake_igd(add_faults: list[int]):  # noqa: ANN201
    """Yields (service, calls): calls is a list of (action, body text)."""
    calls: list[tuple[str, str]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
        body = (await reader.readexactly(length)).decode()
        action = re.search(r'#(\w+)"', head.decode()).group(1)  # type: ignore[union-attr]
        calls.append((action, body))
        if action == "GetExternalIPAddress":
            status, out = 200, _soap(action, "<NewExternalIPAddress>203.0.113.11</NewExternalIPAddress>")
        elif action == "AddPortMapping" and add_faults:
            status, out = 500, _fault(add_faults.pop(0))
        else:
            status, out = 200, _soap(action)
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(out)}\r\nConnection: close\r\n\r\n".encode() + out)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield Service("urn:schemas-upnp-org:service:WANIPConnection:1", f"http://127.0.0.1:{port}/ctl/IPConn"), calls
    finally:
        server.close()
        await server.wait_closed()


def _arg(body: str, name: str) -> str:
    return re.search(f"<{name}>([^<]*)</{name}>", body).group(1)  # type: ignore[union-attr]


async def test_upnp_conflict_tries_another_port_and_close_deletes_it() -> None:
    async with fake_igd([718]) as (service, calls):
        m = PortMapper(40000, gateway="127.0.0.1", local_ip="127.0.0.1", lifetime=3600)
        assert await m._try_upnp(service)
        adds = [b for a, b in calls if a == "AddPortMapping"]
        assert len(adds) == 2 and _arg(adds[0], "NewExternalPort") == "40000"
        port = int(_arg(adds[1], "NewExternalPort"))
        assert m.external == ("203.0.113.11", port) and m.protocol == "upnp"
        assert _arg(adds[1], "NewInternalPort") == "40000" and _arg(adds[1], "NewInternalClient") == "127.0.0.1"
        assert _arg(adds[1], "NewLeaseDuration") == "3600" and _arg(adds[1], "NewProtocol") == "UDP"
        await m.close()
        (delete,) = [b for a, b in calls if a == "DeletePortMapping"]
        assert _arg(delete, "NewExternalPort") == str(port) and m.external is None


async def test_upnp_permanent_leases_only_and_refusal() -> None:
    async with fake_igd([725]) as (service, calls):
        m = PortMapper(40000, gateway="127.0.0.1", local_ip="127.0.0.1")
        assert await m._try_upnp(service)
        leases = [_arg(b, "NewLeaseDuration") for a, b in calls if a == "AddPortMapping"]
        assert leases == ["7200", "0"] and m._upnp_task is None  # nothing to renew
        await m.close()
    async with fake_igd([606]) as (service, calls):
        m = PortMapper(40000, gateway="127.0.0.1", local_ip="127.0.0.1")
        assert not await m._try_upnp(service)
        assert m.external is None and m.protocol is None
