"""`shoal.dataplane.setup`: the routes wg-quick would add, hooks with %i, test timers from the
environment (malformed values named)."""

from __future__ import annotations

import ipaddress

import pytest

from shoal.dataplane.config import InterfaceConfig, WgConfig
from shoal.dataplane.setup import SetupError, routes_for, run_hooks, timers_from_env
from shoal.wireguard.keys import PrivateKey
from shoal.wireguard.peer import PeerConfig


def _config(*allowed: list[str]) -> WgConfig:
    peers = [PeerConfig(public_key=PrivateKey.generate().public_key(), allowed_ips=[ipaddress.ip_network(a) for a in ips])
             for ips in allowed]
    return WgConfig("t0", InterfaceConfig(private_key=PrivateKey.generate(),
                                          addresses=[ipaddress.ip_interface("10.0.0.1/24")]), peers)


def test_routes_are_the_allowed_ips_not_connected_once_each() -> None:
    cfg = _config(["10.0.0.0/24", "10.9.0.0/16"], ["10.9.0.0/16", "fd00::/64"])
    assert routes_for(cfg) == [ipaddress.ip_network("10.9.0.0/16"), ipaddress.ip_network("fd00::/64")]
    with pytest.raises(SetupError, match="Table = off"):
        routes_for(_config(["0.0.0.0/0"]))


def test_hooks_get_the_interface_name_and_a_failure_names_the_stage(tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    run_hooks([f"echo %i > {out}"], "wg7", "PostUp")
    assert out.read_text() == "wg7\n"
    with pytest.raises(SetupError, match=r"PreUp hook failed \(exit 3\): exit 3"):
        run_hooks(["exit 3"], "wg7", "PreUp")


def test_timers_from_the_environment() -> None:
    assert timers_from_env({}) is None
    assert timers_from_env({"SHOAL_WG_TEST_TIMERS": "rekey_after_time=5"}).rekey_after_time == 5.0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="not name=seconds"):
        timers_from_env({"SHOAL_WG_TEST_TIMERS": "rekey_after_time=soon"})
    with pytest.raises(ValueError, match="SHOAL_WG_TEST_TIMERS"):
        timers_from_env({"SHOAL_WG_TEST_TIMERS": "no_such_timer=1"})
