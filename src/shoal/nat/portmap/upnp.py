"""UPnP IGD (Internet Gateway Device) messages: SSDP search, device description, SOAP. Sans-IO.

Owns: the bytes we send to an IGD and the parsing of everything it answers. Pure functions,
no sockets; the asyncio glue is `shoal.nat.portmap.client`. Every parser raises only
`UpnpError` (a SOAP fault is `UpnpFault`, a subclass) on bad input, of whatever shape, and
reads at most SSDP_MAX_SIZE / UPNP_MAX_DESCRIPTION bytes (`tests/nat/portmap/test_upnp.py`
fuzzes them). XML is parsed with defusedxml: DTDs, entity declarations and external
references are refused (an "XML bomb" from the LAN cannot blow up the daemon).

SSDP (UPnP Device Architecture 1.1 section 1.3): an HTTP-shaped request over UDP to
239.255.255.250:1900 (or unicast to the gateway's port 1900):

    M-SEARCH * HTTP/1.1
    HOST: 239.255.255.250:1900
    MAN: "ssdp:discover"
    MX: 1                          seconds the device may wait before answering
    ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1   (search target)

Each device answers unicast `HTTP/1.1 200 OK` with headers LOCATION (URL of its device
description), ST and USN.

Device description (section 2): XML, namespace urn:schemas-upnp-org:device-1-0; devices nest
(root device > deviceList > device ...), each with a serviceList of service elements holding
serviceType and controlURL (relative to URLBase, else to the description's URL). The port
mapping service is WANIPConnection:2 or :1, or WANPPPConnection:1 (PPP links).

SOAP control (section 3): `POST <controlURL>` with SOAPAction: "<serviceType>#<Action>" and an
envelope whose body holds `<u:Action xmlns:u="<serviceType>">` with one element per argument.
The answer is 200 with `<u:ActionResponse>` holding the out-arguments, or 500 with a
`s:Fault` whose detail/UPnPError holds errorCode and errorDescription. Actions used:
GetExternalIPAddress -> NewExternalIPAddress; AddPortMapping(NewRemoteHost "", NewExternalPort,
NewProtocol "UDP", NewInternalPort, NewInternalClient, NewEnabled 1,
NewPortMappingDescription, NewLeaseDuration); DeletePortMapping(NewRemoteHost,
NewExternalPort, NewProtocol). Fault codes that matter: 718 ConflictInMappingEntry (port
taken), 725 OnlyPermanentLeasesSupported (ask again with lease 0), 606 Action not authorized.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET

from shoal.constants import SSDP_ADDR, SSDP_MAX_SIZE, SSDP_MX, SSDP_PORT, UPNP_MAX_DESCRIPTION

__all__ = [
    "UpnpError", "UpnpFault", "SsdpAnswer", "Service", "IGD_DEVICES", "WAN_SERVICES",
    "msearch", "parse_ssdp", "parse_description", "pick_service", "soap_request",
    "parse_http_response", "parse_soap_response",
]

IGD_DEVICES = ("urn:schemas-upnp-org:device:InternetGatewayDevice:2",
               "urn:schemas-upnp-org:device:InternetGatewayDevice:1")
WAN_SERVICES = ("urn:schemas-upnp-org:service:WANIPConnection:2",
                "urn:schemas-upnp-org:service:WANIPConnection:1",
                "urn:schemas-upnp-org:service:WANPPPConnection:1")
_SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
_MAX_ELEMENTS = 4096


class UpnpError(ValueError):
    """An answer that does not parse or makes no sense (the device's fault)."""


class UpnpFault(UpnpError):
    """A well-formed SOAP fault: the device refused the action."""

    def __init__(self, code: int | None, description: str) -> None:
        super().__init__(f"UPnP error {code}: {description}")
        self.code = code
        self.description = description


@dataclasses.dataclass(frozen=True, slots=True)
class SsdpAnswer:
    location: str  # http URL of the device description
    st: str
    usn: str
    server: str


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    service_type: str
    control_url: str  # absolute http URL


def msearch(st: str, host: str = SSDP_ADDR) -> bytes:
    return (f"M-SEARCH * HTTP/1.1\r\nHOST: {host}:{SSDP_PORT}\r\nMAN: \"ssdp:discover\"\r\n"
            f"MX: {SSDP_MX}\r\nST: {st}\r\n\r\n").encode()


def _headers(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            continue
        out.setdefault(name.strip().lower(), value.strip())
    return out


def _http_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UpnpError(f"bad URL {url[:80]!r}: {e}") from None
    if parts.scheme != "http" or not parts.hostname:
        raise UpnpError(f"not an http URL: {url[:80]!r}")
    if port is not None and not 0 < port < 65536:
        raise UpnpError(f"bad port in {url[:80]!r}")
    return url


def parse_ssdp(data: bytes) -> SsdpAnswer:
    """One SSDP answer (an M-SEARCH response or a NOTIFY) -> where its description is."""
    if len(data) > SSDP_MAX_SIZE:
        raise UpnpError(f"SSDP answer of {len(data)} bytes")
    text = bytes(data).decode("latin-1")
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    first = lines[0].strip().upper()
    if not (first.startswith("HTTP/1.") and first[8:].strip().startswith("200")) and not first.startswith("NOTIFY "):
        raise UpnpError(f"not an SSDP answer: {lines[0][:60]!r}")
    h = _headers(lines[1:])
    location = h.get("location", "")
    if not location:
        raise UpnpError("no LOCATION")
    return SsdpAnswer(_http_url(location), h.get("st", h.get("nt", "")), h.get("usn", ""), h.get("server", ""))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _xml(body: bytes) -> Element:
    if len(body) > UPNP_MAX_DESCRIPTION:
        raise UpnpError(f"XML of {len(body)} bytes")
    try:
        root = SafeET.fromstring(bytes(body), forbid_dtd=True)
    except Exception as e:  # ParseError, defusedxml's refusals, expat oddities: all the device's fault
        raise UpnpError(f"bad XML: {type(e).__name__}: {str(e)[:100]}") from None
    if sum(1 for _ in root.iter()) > _MAX_ELEMENTS:
        raise UpnpError("too many XML elements")
    return root


def _child_text(el: Element, name: str) -> str:
    for c in el:
        if _local(c.tag) == name:
            return (c.text or "").strip()
    return ""


def parse_description(body: bytes, location: str) -> list[Service]:
    """Every service in a device description, with absolute control URLs (on the device's
    own host: a control URL pointing elsewhere is dropped)."""
    root = _xml(body)
    if _local(root.tag) != "root":
        raise UpnpError(f"description root is <{_local(root.tag)}>")
    base = _child_text(root, "URLBase") or location
    try:
        _http_url(base)
        host = urlsplit(location).hostname
    except (UpnpError, ValueError):
        base, host = location, urlsplit(location).hostname
    out: list[Service] = []
    for el in root.iter():
        if _local(el.tag) != "service":
            continue
        stype, ctl = _child_text(el, "serviceType"), _child_text(el, "controlURL")
        if not stype or not ctl:
            continue
        try:
            url = _http_url(urljoin(base, ctl))
            if urlsplit(url).hostname != host:
                continue
        except (UpnpError, ValueError):
            continue
        out.append(Service(stype, url))
    return out


def pick_service(services: list[Service]) -> Service | None:
    """The best port-mapping service: WANIPConnection:2, then :1, then WANPPPConnection:1."""
    for want in WAN_SERVICES:
        for s in services:
            if s.service_type == want:
                return s
    return None


def soap_request(control_url: str, service_type: str, action: str, args: list[tuple[str, str]]) -> bytes:
    """The whole HTTP/1.1 request (Connection: close) for one SOAP action."""
    parts = urlsplit(control_url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http URL: {control_url!r}")
    host = parts.netloc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    inner = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in args)
    body = (f'<?xml version="1.0"?>\r\n<s:Envelope xmlns:s="{_SOAP_ENV}" '
            f's:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
            f'<u:{action} xmlns:u="{escape(service_type)}">{inner}</u:{action}></s:Body></s:Envelope>\r\n').encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/xml; charset=\"utf-8\"\r\n"
            f"SOAPAction: \"{service_type}#{action}\"\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head + body


def get_request(url: str) -> bytes:
    parts = urlsplit(_http_url(url))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()


def _dechunk(body: bytes) -> bytes:
    out, pos = bytearray(), 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            raise UpnpError("truncated chunked body")
        size_text = body[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise UpnpError(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0 or size > UPNP_MAX_DESCRIPTION:
            raise UpnpError("chunk too large")
        if size == 0:
            return bytes(out)
        start = end + 2
        if start + size > len(body):
            raise UpnpError("truncated chunk")
        out += body[start:start + size]
        if len(out) > UPNP_MAX_DESCRIPTION:
            raise UpnpError("chunked body too large")
        pos = start + size + 2


def parse_http_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """A whole HTTP/1.x response read until the server closed -> (status, headers, body)."""
    if len(data) > UPNP_MAX_DESCRIPTION + 8192:
        raise UpnpError(f"HTTP response of {len(data)} bytes")
    data = bytes(data)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise UpnpError("no end of HTTP headers")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("HTTP/1.") or not status[1].isdigit() or len(status[1]) != 3:
        raise UpnpError(f"bad status line {lines[0][:60]!r}")
    h = _headers(lines[1:])
    if "chunked" in h.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    elif "content-length" in h:
        try:
            n = int(h["content-length"])
        except ValueError:
            raise UpnpError("bad Content-Length") from None
        if n < 0 or n > len(body):
            raise UpnpError("body shorter than its Content-Length")
        body = body[:n]
    return int(status[1]), h, body


def parse_soap_response(status: int, body: bytes, action: str) -> dict[str, str]:
    """The out-arguments of `action`, or UpnpFault when the device refused it."""
    root = _xml(body)
    if _local(root.tag) != "Envelope":
        raise UpnpError(f"SOAP root is <{_local(root.tag)}>")
    soap_body = next((c for c in root if _local(c.tag) == "Body"), None)
    if soap_body is None:
        raise UpnpError("no SOAP Body")
    for el in soap_body:
        name = _local(el.tag)
        if name == "Fault":
            code: int | None = None
            desc = _child_text(el, "faultstring")
            for d in el.iter():
                if _local(d.tag) == "errorCode":
                    text = (d.text or "").strip()
                    code = int(text) if text.isdigit() and len(text) < 6 else None
                elif _local(d.tag) == "errorDescription":
                    desc = (d.text or "").strip()
            raise UpnpFault(code, desc[:200])
        if name == f"{action}Response":
            if status != 200:
                raise UpnpError(f"HTTP {status} with a {name}")
            return {_local(c.tag): (c.text or "").strip() for c in el}
    raise UpnpError(f"HTTP {status} without {action}Response or Fault")


def parse_external_ip(args: dict[str, str]) -> str:
    """NewExternalIPAddress of GetExternalIPAddress, checked to be an IPv4 address."""
    text = args.get("NewExternalIPAddress", "")
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise UpnpError(f"bad NewExternalIPAddress {text[:40]!r}") from None
    if ip.is_unspecified:
        raise UpnpError("the gateway has no external address (0.0.0.0)")
    return str(ip)
