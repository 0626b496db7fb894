"""`shoal.dataplane.lanio`: a LanOutput carried out (sealed per peer key, written to the TAPs),
layer-2 TAPs opened configured and read into the plane, closed again, and a TAP whose link
cannot be configured not left behind."""

from __future__ import annotations

import asyncio

import pytest

from shoal.dataplane.api import LanOutput
from shoal.dataplane.lanio import LanIO
from shoal.testing.channel import ChannelHost, ChannelLink
from shoal.tun.link import LinkError
from shoal.wireguard.keys import PrivateKey


class Device:
    def __init__(self) -> None:
        self.sealed: list[tuple[object, list[bytes], float]] = []

    def send_extension(self, key, plaintexts, now) -> None:  # noqa: ANN001
        self.sealed.append((key, list(plaintexts), now))


class Plane:
    """Sends every layer-2 frame to one peer key."""

    def __init__(self, key: object) -> None:
        self.key, self.read = key, []

    def from_l2(self, network_id: str, frames: list[bytes], now: float) -> LanOutput:
        self.read.append((network_id, frames))
        return LanOutput([], [(self.key, frames)], [], [])


def make() -> tuple[LanIO, ChannelHost, Device, Plane, list[int]]:
    host, device, key = ChannelHost(), Device(), PrivateKey.generate().public_key()
    plane, flushes = Plane(key), []
    lanio = LanIO(plane, host, device, host.open("shoal0", tap=True), asyncio.get_running_loop(),  # type: ignore[arg-type]
                  lambda: flushes.append(1))
    return lanio, host, device, plane, flushes


async def test_an_output_is_carried_out_and_layer2_taps_are_read_into_the_plane() -> None:
    lanio, host, device, plane, flushes = make()
    await lanio.open_l2("l", "shoal-l", 1500)
    tap = host.tuns["shoal-l"]
    assert tap.tap and tap.link.mtu == 1500 and tap.link.up
    lanio.apply(LanOutput([b"ignored"], [(plane.key, [b"x"])], [b"frame"], [("l", [b"l2"]), ("gone", [b"y"])]), 3.0)
    assert device.sealed == [(plane.key, [b"x"], 3.0)]
    assert host.tuns["shoal0"].take() == [b"frame"] and tap.take() == [b"l2"]
    tap.inject([b"from-a-host"])
    await asyncio.sleep(0.01)
    assert plane.read == [("l", [b"from-a-host"])] and device.sealed[-1][1] == [b"from-a-host"] and flushes == [1]
    lanio.close_l2("l")
    assert tap.closed and lanio.l2 == {}


async def test_a_tap_whose_link_fails_is_closed_and_the_error_raised(monkeypatch) -> None:  # noqa: ANN001
    lanio, host, *_ = make()

    async def fail(self, mtu: int) -> None:  # noqa: ANN001
        raise LinkError("shoal-l: set mtu failed")

    monkeypatch.setattr(ChannelLink, "set_mtu", fail)
    with pytest.raises(LinkError):
        await lanio.open_l2("l", "shoal-l", 1500)
    assert host.tuns["shoal-l"].closed and lanio.l2 == {}
