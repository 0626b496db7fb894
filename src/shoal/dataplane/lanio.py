"""LAN mode's I/O, owned by the interface runtime: what the LAN plane decides, carried out.

Owns: the layer-2 TAPs (one per layer-2 network the LAN plane asks for through `open_l2`:
created through the host seam, MTU set, up, read on the loop into `LanHooks.from_l2`,
closed by `close_l2`), and `apply(out, now)`, which carries out a `LanOutput` in the order
shoal.dataplane.api gives: extension plaintexts sealed per peer (`Device.send_extension`),
frames written to the interface's own TAP, frames written to layer-2 TAPs. The LAN plane
(`shoal.lan.plane`) only decides; this object is the `LanPort` the runtime hands it, so it
also carries the runtime's `host` seam for the plane's own host changes (routes, MAC).
"""

from __future__ import annotations

from collections.abc import Callable

from shoal.clock import Scheduler
from shoal.dataplane.api import LanHooks, LanOutput
from shoal.tun.host import Host, Tun
from shoal.wireguard.device import Device

__all__ = ["LanIO"]

L2_BATCH = 128


class LanIO:
    """See the module docstring. `flush` is the runtime's (moves what the engine produced)."""

    def __init__(self, lan: LanHooks, host: Host, device: Device, tun: Tun, sched: Scheduler,
                 flush: Callable[[], None]) -> None:
        self.lan = lan
        self.host = host
        self.device = device
        self.tun = tun
        self.sched = sched
        self.flush = flush
        self.l2: dict[str, Tun] = {}

    async def open_l2(self, network_id: str, name: str, mtu: int) -> None:
        tap = self.host.open(name, tap=True, offload=False)
        try:
            async with self.host.link(name) as link:
                await link.set_mtu(mtu)
                await link.set_up()
        except BaseException:
            tap.close()
            raise
        old = self.l2.pop(network_id, None)
        if old is not None:
            old.close()
        self.l2[network_id] = tap
        tap.set_reader(lambda: self._on_l2(network_id))

    def close_l2(self, network_id: str) -> None:
        tap = self.l2.pop(network_id, None)
        if tap is not None:
            tap.close()  # the kernel removes a non-persistent TAP with its last fd

    def close(self) -> None:
        for network_id in list(self.l2):
            self.close_l2(network_id)

    def apply(self, out: LanOutput, now: float) -> None:
        if out.to_peers:
            send = self.device.send_extension
            for key, plaintexts in out.to_peers:
                send(key, plaintexts, now)
        if out.to_interface:
            self.tun.write_batch(out.to_interface)
        for network_id, frames in out.to_l2:
            tap = self.l2.get(network_id)
            if tap is not None:
                tap.write_batch(frames)

    def _on_l2(self, network_id: str) -> None:
        tap = self.l2.get(network_id)
        if tap is None:
            return
        now = self.sched.time()
        out = self.lan.from_l2(network_id, tap.read_batch(L2_BATCH), now)
        if out.to_peers:
            self.apply(out, now)
            self.flush()
