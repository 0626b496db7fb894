"""Tests of shoal.nat.portmap.upnp: SSDP, device descriptions, SOAP requests and answers,
HTTP framing, refusal of XML bombs and oversized input, and fuzz tests that every parser
raises only UpnpError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.nat.portmap import upnp
from shoal.nat.portmap.upnp import Service, UpnpError, UpnpFault
from shoal.constants import UPNP_MAX_DESCRIPTION

LOC = "http://198.18.1.1:5000/rootDesc.xml"
SSDP = (b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
        b"USN: uuid:1234::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\n"
        b"SERVER: Debian/12 UPnP/1.1 MiniUPnPd/2.3.1\r\nLOCATION: " + LOC.encode() + b"\r\n\r\n")


def description(services: str, urlbase: str = "") -> bytes:
    return f"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">{urlbase}
 <device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType>
  <serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType>
   <controlURL>/ctl/L3F</controlURL></service></serviceList>
  <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType>
   <deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType>
    <serviceList>{services}</serviceList></device></deviceList></device></deviceList>
 </device></root>""".encode()


def svc(kind: str, url: str) -> str:
    return f"<service><serviceType>urn:schemas-upnp-org:service:{kind}</serviceType><controlURL>{url}</controlURL></service>"


def soap_ok(action: str, inner: str = "") -> bytes:
    return (f'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body>'
            f'<u:{action}Response xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">{inner}'
            f"</u:{action}Response></s:Body></s:Envelope>").encode()


def soap_fault(code: str, desc: str) -> bytes:
    return ('<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>'
            "<faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail>"
            '<UPnPError xmlns="urn:schemas-upnp-org:control-1-0">'
            f"<errorCode>{code}</errorCode><errorDescription>{desc}</errorDescription></UPnPError>"
            "</detail></s:Fault></s:Body></s:Envelope>").encode()


def test_msearch() -> None:
    m = upnp.msearch("urn:schemas-upnp-org:device:InternetGatewayDevice:1").decode()
    assert m.startswith("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n")
    assert 'MAN: "ssdp:discover"\r\n' in m and "MX: 1\r\n" in m and m.endswith("\r\n\r\n")
    assert "HOST: 198.18.1.1:1900" in upnp.msearch("x", "198.18.1.1").decode()


def test_parse_ssdp() -> None:
    a = upnp.parse_ssdp(SSDP)
    assert a.location == LOC and a.st.endswith("InternetGatewayDevice:1") and "MiniUPnPd" in a.server
    notify = b"NOTIFY * HTTP/1.1\nHOST: 239.255.255.250:1900\nNT: upnp:rootdevice\nLocation: " + LOC.encode() + b"\n\n"
    assert upnp.parse_ssdp(notify).st == "upnp:rootdevice"


@pytest.mark.parametrize("data", [
    b"", b"garbage", SSDP.replace(b"200 OK", b"404 Not Found"), SSDP.replace(b"LOCATION", b"X-LOC"),
    SSDP.replace(LOC.encode(), b"ftp://198.18.1.1/x"), SSDP.replace(LOC.encode(), b"http://198.18.1.1:99999/x"),
    SSDP + b"X" * 3000,
])
def test_parse_ssdp_rejects(data: bytes) -> None:
    with pytest.raises(UpnpError):
        upnp.parse_ssdp(data)


def test_description_finds_nested_services_and_prefers_wanip2() -> None:
    body = description(svc("WANPPPConnection:1", "/ctl/PPP") + svc("WANIPConnection:1", "/ctl/IP1")
                       + svc("WANIPConnection:2", "ctl/IP2"))
    services = upnp.parse_description(body, LOC)
    assert Service("urn:schemas-upnp-org:service:Layer3Forwarding:1", "http://198.18.1.1:5000/ctl/L3F") in services
    best = upnp.pick_service(services)
    assert best == Service("urn:schemas-upnp-org:service:WANIPConnection:2", "http://198.18.1.1:5000/ctl/IP2")
    only_ppp = upnp.parse_description(description(svc("WANPPPConnection:1", "/ctl/PPP")), LOC)
    assert upnp.pick_service(only_ppp).service_type.endswith("WANPPPConnection:1")  # type: ignore[union-attr]
    assert upnp.pick_service(upnp.parse_description(description(""), LOC)) is None


def test_description_urlbase_and_foreign_hosts() -> None:
    body = description(svc("WANIPConnection:1", "/ctl/IP"), "<URLBase>http://198.18.1.1:6000/</URLBase>")
    assert upnp.pick_service(upnp.parse_description(body, LOC)).control_url == "http://198.18.1.1:6000/ctl/IP"  # type: ignore[union-attr]
    evil = description(svc("WANIPConnection:1", "http://192.0.2.1/ctl"))
    assert upnp.pick_service(upnp.parse_description(evil, LOC)) is None  # control URL on another host


@pytest.mark.parametrize("body", [
    b"<notroot/>", b"<root", b"",
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><root>&b;</root>',
    b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><root>&x;</root>',
    b"<root>" + b"<a/>" * 5000 + b"</root>",
    b"<root>" + b" " * UPNP_MAX_DESCRIPTION + b"</root>",
])
def test_description_refuses_bad_or_dangerous_xml(body: bytes) -> None:
    with pytest.raises(UpnpError):
        upnp.parse_description(body, LOC)


def test_soap_request_bytes() -> None:
    req = upnp.soap_request("http://198.18.1.1:5000/ctl/IP", "urn:schemas-upnp-org:service:WANIPConnection:1",
                            "AddPortMapping", [("NewExternalPort", "40000"), ("NewPortMappingDescription", "a<b&c")])
    head, _, body = req.partition(b"\r\n\r\n")
    text = head.decode()
    assert text.startswith("POST /ctl/IP HTTP/1.1\r\nHost: 198.18.1.1:5000\r\n")
    assert 'SOAPAction: "urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"' in text
    assert f"Content-Length: {len(body)}" in text
    assert b"<NewExternalPort>40000</NewExternalPort>" in body and b"a&lt;b&amp;c" in body
    with pytest.raises(ValueError):
        upnp.soap_request("https://x/", "t", "A", [])


def test_http_framing() -> None:
    assert upnp.parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef") == (200, {"content-length": "3"}, b"abc")
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"
    assert upnp.parse_http_response(chunked)[2] == b"abcde"
    assert upnp.parse_http_response(b"HTTP/1.0 500 Internal\r\n\r\nbody")[0:3:2] == (500, b"body")
    for bad in (b"HTTP/1.1 200 OK\r\n", b"SIP/2.0 200 OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc"):
        with pytest.raises(UpnpError):
            upnp.parse_http_response(bad)


def test_soap_answers() -> None:
    args = upnp.parse_soap_response(200, soap_ok("GetExternalIPAddress", "<NewExternalIPAddress>203.0.113.11</NewExternalIPAddress>"),
                                    "GetExternalIPAddress")
    assert args == {"NewExternalIPAddress": "203.0.113.11"} and upnp.parse_external_ip(args) == "203.0.113.11"
    assert upnp.parse_soap_response(200, soap_ok("AddPortMapping"), "AddPortMapping") == {}
    with pytest.raises(UpnpFault) as e:
        upnp.parse_soap_response(500, soap_fault("718", "ConflictInMappingEntry"), "AddPortMapping")
    assert e.value.code == 718 and e.value.description == "ConflictInMappingEntry"
    with pytest.raises(UpnpFault) as e:
        upnp.parse_soap_response(500, soap_fault("x", "odd"), "AddPortMapping")
    assert e.value.code is None
    for status, body in ((200, soap_ok("Other")), (500, soap_ok("AddPortMapping")), (200, b"<Envelope/>"), (200, b"<x/>")):
        with pytest.raises(UpnpError):
            upnp.parse_soap_response(status, body, "AddPortMapping")
    for bad in ("", "0.0.0.0", "::1", "300.1.1.1"):
        with pytest.raises(UpnpError):
            upnp.parse_external_ip({"NewExternalIPAddress": bad})


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_parsers_raise_only_upnp_error(data: bytes) -> None:
    for fn in (upnp.parse_ssdp, lambda d: upnp.parse_description(d, LOC), upnp.parse_http_response,
               lambda d: upnp.parse_soap_response(200, d, "AddPortMapping")):
        try:
            fn(data)
        except UpnpError:
            pass


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([SSDP, description(svc("WANIPConnection:1", "/ctl/IP")), soap_fault("718", "x"),
                        soap_ok("AddPortMapping", "<A>1</A>")]),
       st.integers(0, 2000), st.binary(min_size=0, max_size=8))
def test_fuzz_mutated_documents(doc: bytes, pos: int, junk: bytes) -> None:
    pos %= len(doc) + 1
    data = doc[:pos] + junk + doc[pos + len(junk):]
    for fn in (upnp.parse_ssdp, lambda d: upnp.parse_description(d, LOC),
               lambda d: upnp.parse_soap_response(500, d, "AddPortMapping"),
               lambda d: upnp.parse_http_response(b"HTTP/1.1 200 OK\r\n\r\n" + d)):
        try:
            fn(data)
        except UpnpError:
            pass
