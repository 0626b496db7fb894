"""UdpSocket on loopback: GSO sends and GRO receives round-trip in order, mixed sizes, IPv4 and
IPv6 peers with normalised endpoints, and network errors counted, never raised."""

from __future__ import annotations

import errno
import select
import socket

import pytest

from shoal.udp.socket import GSO_MAX_SEGMENTS, UdpSocket

pytestmark = pytest.mark.timeout(10)


def recv_all(s: UdpSocket, count: int, timeout: float = 2.0) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    while len(got) < count:
        r, _, _ = select.select([s], [], [], timeout)
        if not r:
            break
        got += s.recv_batch(256)
    return got


def payloads() -> list[bytes]:
    sizes = [1200] * 70 + [700] + [1200] * 3 + [50, 60, 60, 60] + [1] + [1452] * 5 + [1000]
    return [bytes([i & 0xFF]) * n for i, n in enumerate(sizes)]


@pytest.mark.parametrize("gso", [True, False])
@pytest.mark.parametrize("gro", [True, False])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_round_trip_in_order(gso: bool, gro: bool, host: str) -> None:
    a = UdpSocket(0, host="::", gso=gso)
    b = UdpSocket(0, host="::", gro=gro)
    try:
        data = payloads()
        a.send_batch([(d, (host, b.port)) for d in data])
        got = recv_all(b, len(data))
        assert [g[0] for g in got] == data
        assert {g[1] for g in got} == {(host, a.port)}  # v4 peers appear as plain IPv4
        assert a.stats["tx_datagrams"] == len(data) and a.stats["tx_dropped"] == 0
        if gso:
            # 70 x 1200 is two runs (64 + 6+700), plus the other runs: far fewer calls
            assert a.stats["tx_gso_calls"] >= 3 and a.stats["tx_calls"] < len(data) // 3
        else:
            assert a.stats["tx_calls"] == len(data)
        if gro and gso:
            assert b.stats["rx_calls"] < len(data)  # runs arrived merged and were split
        # replies go back to the normalised endpoint
        b.send_batch([(b"pong", got[0][1])])
        back = recv_all(a, 1)
        assert back == [(b"pong", (host, b.port))]
    finally:
        a.close()
        b.close()


def test_runs_split_on_endpoint_and_limits() -> None:
    a = UdpSocket(0)
    b = UdpSocket(0)
    c = UdpSocket(0)
    try:
        batch = []
        for i in range(GSO_MAX_SEGMENTS * 2 + 3):
            batch.append((b"x" * 100, ("127.0.0.1", b.port)))
            if i % 50 == 0:
                batch.append((b"y" * 100, ("::1", c.port)))
        a.send_batch(batch)
        gb = recv_all(b, GSO_MAX_SEGMENTS * 2 + 3)
        gc = recv_all(c, 3)
        assert len(gb) == GSO_MAX_SEGMENTS * 2 + 3 and len(gc) == 3
        assert all(d == b"y" * 100 and ep == ("::1", a.port) for d, ep in gc)
    finally:
        for s in (a, b, c):
            s.close()


def test_errors_are_counted_not_raised() -> None:
    a = UdpSocket(0)
    try:
        # nobody listens on the discard port of loopback: ICMP port unreachable comes back
        closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        a.send_batch([(b"a" * 10, ("127.0.0.1", port))] * 5)
        a.send_batch([(b"b", ("::1", 0))])  # port 0: EINVAL
        assert a.recv_batch() == []  # an ICMP error is never raised out of recv either
        assert a.stats["tx_errors"] == 1 and a.stats["tx_datagrams"] == 5
    finally:
        a.close()


class FailingSock:
    """Stands in for the kernel socket to produce the errors loopback never gives."""

    def __init__(self, sendmsg_errno: int | None, sendto_exc: BaseException | None) -> None:
        self.sendmsg_errno = sendmsg_errno
        self.sendto_exc = sendto_exc
        self.sent: list[bytes] = []

    def sendmsg(self, bufs: list[bytes], anc: object, flags: int, addr: object) -> int:
        raise OSError(self.sendmsg_errno, "fake")

    def sendto(self, data: bytes, addr: object) -> int:
        if self.sendto_exc is not None:
            raise self.sendto_exc
        self.sent.append(data)
        return len(data)

    def close(self) -> None:
        pass


def test_full_buffer_drops_are_counted() -> None:
    a = UdpSocket(0)
    real = a._sock
    try:
        a._sock = FailingSock(errno.EAGAIN, BlockingIOError())  # type: ignore[assignment]
        a.send_batch([(b"z" * 1400, ("127.0.0.1", 9))] * 10 + [(b"q", ("::1", 9))])
        assert a.stats["tx_dropped"] == 11 and a.stats["tx_datagrams"] == 0
        a._sock = FailingSock(errno.ENOBUFS, OSError(errno.ENOBUFS, "fake"))  # type: ignore[assignment]
        a.send_batch([(b"z" * 1400, ("127.0.0.1", 9))] * 3 + [(b"q", ("::1", 9))])
        assert a.stats["tx_dropped"] == 15 and a.gso
    finally:
        real.close()


def test_gso_refused_falls_back_to_plain_sends() -> None:
    a = UdpSocket(0)
    real = a._sock
    try:
        fake = FailingSock(errno.EIO, None)
        a._sock = fake  # type: ignore[assignment]
        batch = [(bytes([i]) * 500, ("127.0.0.1", 9)) for i in range(5)]
        a.send_batch(batch)
        assert not a.gso and fake.sent == [d for d, _ in batch]
        assert a.stats["tx_datagrams"] == 5
    finally:
        real.close()
