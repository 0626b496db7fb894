"""Userspace delay element: a two-port Ethernet wire that holds every frame for a fixed time.

This kernel has no netem, so latency is added in userspace. `Lab.set_delay(host, ms)` takes
the host's bridge port p<k> out of the internet bridge, creates a veth pair d<k>/q<k> (q<k>
joins the bridge) and runs this program in the internet namespace:

    python -m shoal.lab.delay p<k> d<k> <ms>

It opens one AF_PACKET socket per interface and copies frames p<k> <-> d<k>, each released
`ms` milliseconds after it arrived (FIFO per direction, so order is kept). Sockets use
PACKET_VNET_HDR: every frame is read and re-sent with its 10-byte virtio-net header, so
partial checksums and GSO super-frames of the veth fast path pass through intact (without it
re-injected TCP/UDP frames would carry unfinished checksums). PACKET_IGNORE_OUTGOING keeps a
socket from reading back what it sent. It prints `ready` once both sockets are bound, exits on
SIGTERM, and also when its parent dies (so a SIGKILLed lab does not leave it running).

The element forwards every frame in a Python loop: fine for latency tests (tens of thousands
of packets per second), not meant for throughput benchmarks.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time
from collections import deque

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
ETH_P_ALL = 0x0003
MAX_FRAME = 65536 + 64


def _open(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.bind((ifname, ETH_P_ALL))
    ifindex = socket.if_nametoindex(ifname)
    # struct packet_mreq { int mr_ifindex; unsigned short mr_type, mr_alen; unsigned char mr_address[8]; }
    mreq = ifindex.to_bytes(4, sys.byteorder) + PACKET_MR_PROMISC.to_bytes(2, sys.byteorder) + bytes(10)
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
    return s


def run(a_if: str, b_if: str, delay_s: float) -> None:
    a, b = _open(a_if), _open(b_if)
    peer = {a.fileno(): b, b.fileno(): a}
    queue: deque[tuple[float, socket.socket, bytes]] = deque()
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, out, frame = queue.popleft()
            try:
                out.send(frame)
            except OSError:
                pass  # link down or frame refused: a lossy wire drops it
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        readable, _, _ = select.select([a, b], [], [], timeout)
        if os.getppid() != parent:
            return
        for s in readable:
            due = time.monotonic() + delay_s
            for _ in range(256):
                try:
                    frame = s.recv(MAX_FRAME)
                except BlockingIOError:
                    break
                except OSError:
                    break
                queue.append((due, peer[s.fileno()], frame))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m shoal.lab.delay IF_A IF_B DELAY_MS", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(argv[0], argv[1], float(argv[2]) / 1000.0)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
