"""wg-quick config parsing: every field, and one-line errors that name the line."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.dataplane.config import ConfigError, load, parse, parse_endpoint
from shoal.wireguard.keys import PresharedKey, PrivateKey

KEY = PrivateKey.generate()
PEER = PrivateKey.generate().public_key()
PSK = PresharedKey.generate()

GOOD = f"""
# a comment
[Interface]
PrivateKey = {KEY.to_base64()}
ListenPort = 51820
Address = 100.64.0.1/24, fd7a:115c:a1e0::1/64
MTU = 1420
PostUp = echo up %i

[Peer]
PublicKey = {PEER.to_base64()}   # trailing comment
PresharedKey = {PSK.to_base64()}
AllowedIPs = 100.64.0.2/32, fd7a:115c:a1e0::2/128
AllowedIPs = 198.51.100.0/24
Endpoint = 192.0.2.2:51820
PersistentKeepalive = 25
"""


def test_parses_every_field():
    cfg = parse(GOOD, name="shoal0")
    assert cfg.interface.private_key == KEY
    assert cfg.interface.listen_port == 51820
    assert cfg.interface.addresses == [ipaddress.ip_interface("100.64.0.1/24"), ipaddress.ip_interface("fd7a:115c:a1e0::1/64")]
    assert cfg.interface.post_up == ["echo up %i"]
    (peer,) = cfg.peers
    assert peer.public_key == PEER and peer.preshared_key == PSK
    assert [str(n) for n in peer.allowed_ips] == ["100.64.0.2/32", "fd7a:115c:a1e0::2/128", "198.51.100.0/24"]
    assert peer.endpoint == ("192.0.2.2", 51820)
    assert peer.persistent_keepalive == 25


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ("PrivateKey = notbase64!!", "bad key"),
        ("Frobnicate = 1", "unknown key 'Frobnicate'"),
        ("Address = 100.64.0.300/24", "bad address"),
        ("MTU = 10", "MTU 10 out of range"),
        ("ListenPort = seven", "not a number"),
        ("DNS = 1.1.1.1", "not supported"),
        ("this is not a key value line", "expected 'Key = Value'"),
    ],
)
def test_interface_errors_name_the_line(bad_line, fragment):
    text = GOOD.replace("MTU = 1420", bad_line)
    lineno = text.splitlines().index(bad_line) + 1
    with pytest.raises(ConfigError) as e:
        parse(text, source="wg0.conf")
    assert str(e.value).startswith(f"wg0.conf:{lineno}: ")
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ("AllowedIPs = 100.64.0.0/33", "bad CIDR"),
        ("Endpoint = 192.0.2.2", "bad endpoint"),
        ("Endpoint = 192.0.2.2:70000", "out of range"),
        ("PublicKey = AAAA", "bad key"),
        ("PersistentKeepalive = -1", "out of range"),
    ],
)
def test_peer_errors_name_the_line(bad_line, fragment):
    text = GOOD.replace("PersistentKeepalive = 25", bad_line)
    lineno = text.splitlines().index(bad_line) + 1
    with pytest.raises(ConfigError, match=f"^x:{lineno}: .*{fragment}"):
        parse(text, source="x")


def test_structural_errors():
    with pytest.raises(ConfigError, match="no \\[Interface\\]"):
        parse(f"[Peer]\nPublicKey = {PEER.to_base64()}\n")
    with pytest.raises(ConfigError, match="no PrivateKey"):
        parse("[Interface]\nListenPort = 1\n")
    with pytest.raises(ConfigError, match="unknown section"):
        parse("[Interfaces]\n")
    with pytest.raises(ConfigError, match="has no PublicKey"):
        parse(f"[Interface]\nPrivateKey = {KEY.to_base64()}\n[Peer]\nAllowedIPs = 1.2.3.4/32\n")
    with pytest.raises(ConfigError, match="duplicate peer"):
        parse(f"[Interface]\nPrivateKey = {KEY.to_base64()}\n[Peer]\nPublicKey = {PEER.to_base64()}\n[Peer]\nPublicKey = {PEER.to_base64()}\n")
    with pytest.raises(ConfigError, match="own public key"):
        parse(f"[Interface]\nPrivateKey = {KEY.to_base64()}\n[Peer]\nPublicKey = {KEY.public_key().to_base64()}\n")


def test_endpoints():
    assert parse_endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)
    assert parse_endpoint("[::ffff:192.0.2.1]:1") == ("192.0.2.1", 1)
    assert parse_endpoint("localhost:5") in (("127.0.0.1", 5), ("::1", 5))
    with pytest.raises(ValueError):
        parse_endpoint("2001:db8::1:51820")


def test_load_names_interface_after_file(tmp_path):
    path = tmp_path / "shoal7.conf"
    path.write_text(GOOD)
    assert load(path).name == "shoal7"
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.conf")
    bad = tmp_path / "much-too-long-interface-name.conf"
    bad.write_text(GOOD)
    with pytest.raises(ConfigError, match="not a valid interface name"):
        load(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_arbitrary_text_is_a_config_or_a_config_error(text):
    try:
        parse(text)
    except ConfigError as e:
        assert "\n" not in str(e)
