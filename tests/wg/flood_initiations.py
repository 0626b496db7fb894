"""Lab tool: flood a WireGuard port with junk and with initiations that carry a valid mac1.

usage: flood_initiations.py IP PORT TARGET_PUBLIC_HEX COUNT SECONDS
Sends at most COUNT datagrams within at most SECONDS, then prints how many it sent.
Only ever aimed at a lab host (a network namespace the test created).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from shoal.wireguard.cookie import CookieGenerator
from shoal.wireguard.keys import PresharedKey, PrivateKey, PublicKey
from shoal.wireguard.noise import Handshake
from shoal.wireguard.tai64n import stamp


def main() -> None:
    ip, port, target_hex, count, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    target = PublicKey.from_hex(target_hex)
    packets = []
    for i in range(256):
        hs = Handshake(PrivateKey.generate(), target, PresharedKey.ZERO)
        msg = hs.create_initiation(i + 1, stamp(time.time()))
        packets.append(CookieGenerator(target).add_macs(msg, 0.0))  # valid mac1, no cookie
        packets.append(b"\x01\x00\x00\x00" + os.urandom(144))  # right size, bad mac1
        packets.append(os.urandom(64))  # junk
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    dest = (ip, port)
    sent = 0
    end = time.monotonic() + seconds
    n = len(packets)
    while sent < count and time.monotonic() < end:
        for _ in range(64):
            try:
                s.sendto(packets[sent % n], dest)
            except BlockingIOError:
                time.sleep(0.001)
            sent += 1
        time.sleep(0.0005)  # bounded rate (~100k/s at most)
    print(sent)


if __name__ == "__main__":
    main()
