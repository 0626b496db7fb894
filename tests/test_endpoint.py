"""shoal.endpoint: the strict endpoint parser (fuzzed) and the scope table."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import endpoint as E


@pytest.mark.parametrize("text,want", [
    ("1.2.3.4:5", ("1.2.3.4", 5)),
    ("203.0.113.7:65535", ("203.0.113.7", 65535)),
    ("[2001:db8::1]:41641", ("2001:db8::1", 41641)),
    ("[::ffff:198.51.100.3]:7", ("198.51.100.3", 7)),  # v4-mapped reads as IPv4
])
def test_parse_accepts_strict_forms(text: str, want: tuple[str, int]) -> None:
    ip, port = E.parse(text)
    assert (str(ip), port) == want


@pytest.mark.parametrize("text", [
    "1.2.3.4:²", "1.2.3.4:٣", "1.2.3.4:1²", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:080",
    "1.2.3.4:+80", "1.2.3.4: 80", "1.2.3.4:80 ", "1.2.3.4", "example.com:80", "localhost:80",
    "[1.2.3.4]:80", "2001:db8::1:80", "[2001:db8::1]80", "[2001:db8::1]", "[fe80::1%eth0]:80",
    "01.2.3.4:80", "1.2.3.4.5:80", "１.2.3.4:80", "", ":", "[]:1", "1.2.3.4:99999999999999999999",
    "1.2.3.4:" + "1" * 100,
])
def test_parse_refuses_everything_else(text: str) -> None:
    with pytest.raises(E.EndpointError):
        E.parse(text)


@settings(max_examples=2000, deadline=None)
@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_endpoint_error(text: str) -> None:
    try:
        ip, port = E.parse(text)
    except E.EndpointError:
        return
    assert 1 <= port <= 65535 and text.isascii()
    assert E.parse(E.format(ip, port)) == (ip, port)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_format_then_parse_round_trips(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    assert E.parse(E.format(ip, port)) == (ip, port)
    E.classify(ip)  # every address has a scope


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="0123456789.:[]abcdef%²", max_size=30))
def test_parse_fuzz_near_valid(text: str) -> None:
    try:
        E.parse(text)
    except E.EndpointError:
        pass


@pytest.mark.parametrize("ip,scope", [
    ("0.0.0.0", E.Scope.UNSPECIFIED), ("::", E.Scope.UNSPECIFIED),
    ("127.0.0.1", E.Scope.LOOPBACK), ("::1", E.Scope.LOOPBACK),
    ("169.254.1.1", E.Scope.LINK_LOCAL), ("fe80::1", E.Scope.LINK_LOCAL),
    ("224.0.0.1", E.Scope.MULTICAST), ("ff02::1", E.Scope.MULTICAST),
    ("255.255.255.255", E.Scope.RESERVED), ("100::1", E.Scope.RESERVED),
    ("100.64.0.5", E.Scope.OVERLAY),
    ("10.1.2.3", E.Scope.PRIVATE), ("172.16.0.1", E.Scope.PRIVATE), ("192.168.1.1", E.Scope.PRIVATE),
    ("198.18.1.2", E.Scope.PRIVATE), ("198.19.255.1", E.Scope.PRIVATE), ("fd12::5", E.Scope.PRIVATE),
    # the lab's simulated internet: TEST-NETs and the IPv6 documentation prefix are public
    ("192.0.2.1", E.Scope.PUBLIC), ("198.51.100.10", E.Scope.PUBLIC), ("203.0.113.10", E.Scope.PUBLIC),
    ("2001:db8::1", E.Scope.PUBLIC), ("8.8.8.8", E.Scope.PUBLIC), ("2a00::1", E.Scope.PUBLIC),
    ("::ffff:10.0.0.1", E.Scope.PRIVATE), ("not an ip", E.Scope.RESERVED),
])
def test_classify(ip: str, scope: E.Scope) -> None:
    assert E.classify(ip) is scope


def test_usable_and_sprayable() -> None:
    assert E.usable("192.168.1.1") and not E.sprayable("192.168.1.1")
    assert E.usable("203.0.113.7") and E.sprayable("203.0.113.7")
    for bad in ("127.0.0.1", "0.0.0.0", "224.0.0.1", "169.254.0.1", "100.64.0.1", "100::5", "fd00::1"):
        assert not E.sprayable(bad)
    for bad in ("127.0.0.1", "0.0.0.0", "224.0.0.1", "169.254.0.1", "100.64.0.1", "100::5"):
        assert not E.usable(bad)


def test_same_ip() -> None:
    assert E.same_ip("::ffff:203.0.113.5", "203.0.113.5")
    assert not E.same_ip("203.0.113.5", "203.0.113.6")
    assert not E.same_ip(None, "203.0.113.5") and not E.same_ip("x", "x")


@pytest.mark.parametrize(("text", "want"), [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)), (":443", ("0.0.0.0", 443)), ("[::1]:0", ("::1", 0)),
    ("0.0.0.0:65535", ("0.0.0.0", 65535)),
])
def test_parse_listen_accepts(text: str, want: tuple[str, int]) -> None:
    assert E.parse_listen(text) == want


@pytest.mark.parametrize("text", ["8080", "host:80", "1.2.3.4:", "1.2.3.4:٣", "1.2.3.4:65536", "1.2.3.4:-1",
                                  "1.2.3.4:0000080", "[::1]:x"])
def test_parse_listen_refuses_with_a_clear_error(text: str) -> None:
    with pytest.raises(E.EndpointError, match="--listen wants"):
        E.parse_listen(text)
