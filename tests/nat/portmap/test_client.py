"""Unit tests of shoal.nat.portmap.client that need no network: gateway discovery from a
/proc/net/route text, the probe report, and PortMapper's argument checks. (Mapping itself is
tested against miniupnpd in test_client_lab.py.)"""

from __future__ import annotations

import pytest

from shoal.nat.portmap.client import PortMapper, ProbeResult, default_gateway, route_gateway

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
