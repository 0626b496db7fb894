"""UdpBind: the real Bind over UdpSocket and the loop's readiness callbacks."""

from __future__ import annotations

import asyncio

from shoal.udp.bind import open_udp


async def _exchange() -> tuple[list, list]:
    a, b = open_udp(0), open_udp(0)
    got: list = []
    woke = asyncio.Event()

    def on_readable() -> None:
        got.extend(b.recv_batch(16))
        woke.set()

    b.set_reader(on_readable)
    a.send_batch([(b"one", ("127.0.0.1", b.port)), (b"two", ("127.0.0.1", b.port))])
    while len(got) < 2:
        woke.clear()
        await asyncio.wait_for(woke.wait(), 2)
    b.set_reader(None)
    a.send_batch([(b"three", ("127.0.0.1", b.port))])
    await asyncio.sleep(0.05)
    later = list(got)
    left = b.recv_batch(16)  # the reader was removed: the datagram waits in the socket
    a.close()
    b.close()
    b.close()  # idempotent
    return later, left


def test_reader_delivers_then_stops() -> None:
    got, left = asyncio.run(_exchange())
    assert [d for d, _ in got] == [b"one", b"two"]
    assert got[0][1][0] == "127.0.0.1"
    assert [d for d, _ in left] == [b"three"]
