"""`shoal.dataplane.api`: the runtime, the in-memory plane, the LAN plane and the runtime's LAN
port have every member of the protocols they stand for (a member removed or renamed on one
side fails here)."""

from __future__ import annotations

import typing

import pytest

from shoal.dataplane.api import DataPlane, LanHooks, LanPort
from shoal.dataplane.config import InterfaceConfig, WgConfig
from shoal.dataplane.lanio import LanIO
from shoal.dataplane.runtime import WgInterface
from shoal.lan.plane import LanPlane
from shoal.testing.channel import ChannelHost
from shoal.testing.clock import FakeClock
from shoal.testing.plane import MemoryPlane
from shoal.wireguard.keys import PrivateKey


def _members(proto: type) -> set[str]:
    names = set(typing.get_type_hints(proto)) if proto.__annotations__ else set()
    names |= {n for n, v in vars(proto).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    return names


def _config() -> WgConfig:
    return WgConfig("shoaltest0", InterfaceConfig(private_key=PrivateKey.from_seed(b"api")), [])


@pytest.mark.parametrize("make", [lambda: WgInterface(_config()), lambda: MemoryPlane(_config())],
                         ids=["runtime", "memory"])
def test_planes_have_every_member_of_dataplane(make) -> None:  # noqa: ANN001
    plane = make()
    want = _members(DataPlane)
    assert {"device", "ready", "lan", "side_channel", "inject", "run"} <= want
    missing = sorted(n for n in want if not hasattr(plane, n))
    assert not missing, f"{type(plane).__name__} lacks {missing}"


def test_lan_plane_has_every_lan_hook() -> None:
    lan = LanPlane()
    want = _members(LanHooks)
    assert {"prepare", "start", "from_interface", "deliver", "from_peers", "from_l2", "close"} == want
    assert all(callable(getattr(lan, n, None)) for n in want)


def test_the_runtimes_lan_io_is_a_lan_port() -> None:
    want = _members(LanPort)
    assert {"host", "open_l2", "close_l2"} == want
    host = ChannelHost()
    lanio = LanIO(LanPlane(), host, WgInterface(_config()).device, host.open("shoaltest0"), FakeClock(), lambda: None)
    assert all(hasattr(lanio, n) for n in want) and lanio.host is host
