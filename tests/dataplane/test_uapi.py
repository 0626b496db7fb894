"""The UAPI text protocol against a Device: what `wg show`/`wg set` exchange."""

from __future__ import annotations

from shoal.dataplane import uapi
from shoal.wireguard.device import Device
from shoal.wireguard.keys import PresharedKey, PrivateKey

KEY = PrivateKey.generate()


def test_set_then_get_round_trip():
    device = Device(KEY, seed=1)
    peer = PrivateKey.generate().public_key()
    psk = PresharedKey.generate()
    request = (
        "set=1\n"
        f"public_key={peer.hex()}\npreshared_key={psk.hex()}\nendpoint=192.0.2.9:51820\n"
        "persistent_keepalive_interval=0\nreplace_allowed_ips=true\nallowed_ip=100.64.0.9/32\nallowed_ip=fd00::9/128\n\n"
    )
    response, applied = uapi.handle(device, request, 51820, 0.0)
    assert response == "errno=0\n\n" and applied is not None
    text, _ = uapi.handle(device, "get=1\n\n", 51820, 0.0)
    lines = text.splitlines()
    assert lines[0] == f"private_key={KEY.hex()}" and lines[1] == "listen_port=51820"
    assert f"public_key={peer.hex()}" in lines and f"preshared_key={psk.hex()}" in lines
    assert "endpoint=192.0.2.9:51820" in lines
    assert "allowed_ip=100.64.0.9/32" in lines and "allowed_ip=fd00::9/128" in lines
    assert text.endswith("errno=0\n\n")
    response, _ = uapi.handle(device, f"set=1\npublic_key={peer.hex()}\nremove=true\n\n", 1, 0.0)
    assert response == "errno=0\n\n" and not device.peers


def test_bad_requests_change_nothing():
    device = Device(KEY, seed=1)
    peer = PrivateKey.generate().public_key()
    for request in (
        "set=1\nfrobnicate=1\n\n",
        f"set=1\npublic_key={peer.hex()}\nallowed_ip=300.1.1.1/32\n\n",
        "set=1\nlisten_port=99999\n\n",
        "set=1\npublic_key=zz\n\n",
        "bogus\n\n",
        "\n\n",
    ):
        response, applied = uapi.handle(device, request, 1, 0.0)
        assert response.startswith("errno=") and response != "errno=0\n\n", request
        assert applied is None and not device.peers


def test_stats_extension():
    device = Device(KEY, seed=1)
    device.receive([(b"\x09junk", ("192.0.2.1", 1))], 0.0)
    text, _ = uapi.handle(device, "get=stats\n\n", 1, 0.0)
    assert "stat_rx_malformed=1\n" in text and text.endswith("errno=0\n\n")
