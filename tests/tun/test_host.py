"""`shoal.tun.host`: the real `Tun` seam (`LoopTun`) over a device fd, here one end of a
SOCK_SEQPACKET socket pair standing in for /dev/net/tun (one packet per read/write, no root):
the loop reader fires while packets wait, batches pass through unchanged, close stops it."""

from __future__ import annotations

import asyncio
import os
import socket

from shoal.tun.device import Tun as TunDevice
from shoal.tun.host import KernelHost, LoopTun
from shoal.tun.link import AsyncLink


async def test_loop_tun_reads_through_the_loop_and_writes_batches() -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    os.set_blocking(ours.fileno(), False)
    tun = LoopTun(TunDevice(os.dup(ours.fileno()), "fake0", tap=False, offload=False, offload_flags=0))
    ours.close()
    got: list[list[bytes]] = []
    tun.set_reader(lambda: got.append(tun.read_batch(128)))
    kernel.send(b"\x45packet-one")
    kernel.send(b"\x45packet-two")
    for _ in range(100):
        if sum(map(len, got)) == 2:
            break
        await asyncio.sleep(0.01)
    assert [p for batch in got for p in batch] == [b"\x45packet-one", b"\x45packet-two"]
    tun.write_batch([b"\x45reply"])
    assert kernel.recv(100) == b"\x45reply" and tun.name == "fake0"
    tun.close()
    tun.close()  # idempotent
    assert tun.device.fileno() == -1
    kernel.close()


def test_kernel_host_links_are_async_links() -> None:
    link = KernelHost().link("shoal0", broadcast=True)
    assert isinstance(link, AsyncLink) and link.broadcast and link.name == "shoal0"
