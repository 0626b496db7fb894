"""The interface's latency keeper: keeps a quiet tunnel's packet path hot while data flows.

Owns when the runner wakes up with no packet to handle, and what it touches then.

Why: on a virtual machine whose vCPUs sleep between packets, the first pass over the
per-packet code after ~10 ms asleep runs 10-30x slower than the next one: the caches were
refilled by others in the meantime (BENCHMARKS.md, "where a ping's time goes"). A packet
every 10 ms (a game tick, a ping, keystrokes) then pays that on every hop. Python touches
far more memory per packet than compiled code, so it pays more than wireguard-go, whose
runtime keeps its own threads spinning.

What: while data moved in the last `WARM_HOLD` seconds, the runner wakes every
`WARM_INTERVAL`. If no packet woke it in that interval it polls its interface and socket
(and handles anything already waiting, so a packet can be picked up before its own wake-up
arrives) and runs a `Rehearsal`: one 64-byte packet through `Device.send` of a scratch
engine and `Device.receive` of another, the very code (routing, sealing, opening, replay
check, source check) a real packet runs, on objects of the same kinds. A tick that follows real traffic within the
interval does nothing. Once data stops the ticks stop after `WARM_HOLD`: an idle interface
does not wake up for this at all. Keepalives and handshakes are not data and do not start it.

Cost: a few per cent of one core per interface while data flows (measured in
BENCHMARKS.md); `shoal wg up --no-warm` and `shoal daemon --no-warm` turn it off.

The rehearsal's two engines live in memory only, with their own random keys, a session
made between them in memory, and a clock that never moves (so their session never ages or
needs a timer): nothing of theirs reaches a socket, and the interface's own peers and
sessions are never touched. Their packet uses TEST-NET-1 addresses (RFC 5737).
"""

from __future__ import annotations

import enum
import ipaddress

from shoal.constants import WARM_HOLD, WARM_INTERVAL
from shoal.wireguard.device import Device
from shoal.wireguard.keys import PrivateKey
from shoal.wireguard.peer import PeerConfig

_A = ("192.0.2.1", 51820)  # in-memory only (TEST-NET-1): these engines have no socket
_B = ("192.0.2.2", 51820)
_CLOCK = 0.0  # the rehearsal engines' time never moves


class Tick(enum.Enum):
    SKIP = "skip"  # real traffic ran within the interval: it is hot already
    WARM = "warm"  # poll and touch
    STOP = "stop"  # no data for WARM_HOLD: no more ticks until data moves again


class WarmSchedule:
    """When to tick and what a tick does; time is passed in (sans-IO).

    The runner calls `data(now)` whenever data moves (cheap: one store), arms one timer
    for `start(now)` when `armed` is False, and on each timer calls `tick(now)`, re-arming for
    `next_at` unless it returned STOP."""

    __slots__ = ("interval", "hold", "last_data", "armed", "next_at")

    def __init__(self, interval: float = WARM_INTERVAL, hold: float = WARM_HOLD) -> None:
        if not 0 < interval < hold:
            raise ValueError("need 0 < interval < hold")
        self.interval = interval
        self.hold = hold
        self.last_data = float("-inf")
        self.armed = False
        self.next_at: float | None = None

    def data(self, now: float) -> None:
        self.last_data = now

    def start(self, now: float) -> float:
        """Arm: the first tick is due one interval from now."""
        self.armed = True
        self.next_at = now + self.interval
        return self.next_at

    def tick(self, now: float) -> Tick:
        quiet = now - self.last_data
        if quiet >= self.hold:
            self.armed = False
            self.next_at = None
            return Tick.STOP
        self.next_at = now + self.interval
        return Tick.SKIP if quiet < self.interval else Tick.WARM


def _ipv4_packet(src: str, dst: str, size: int) -> bytes:
    """A UDP-in-IPv4 packet of `size` bytes (header checksum left zero: nothing checks it)."""
    header = bytes([0x45, 0, size >> 8, size & 0xFF, 0, 0, 0x40, 0, 64, 17, 0, 0])
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + bytes(size - 20)


class Rehearsal:
    """Two in-memory engines with a session between them; `run()` moves one packet A -> B."""

    def __init__(self, size: int = 64) -> None:
        key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
        self.a = Device(key_a)
        self.b = Device(key_b)
        self.a.add_peer(PeerConfig(key_b.public_key(), allowed_ips=[ipaddress.ip_network(_B[0] + "/32")],
                                   endpoint=_B), _CLOCK)
        self.b.add_peer(PeerConfig(key_a.public_key(), allowed_ips=[ipaddress.ip_network(_A[0] + "/32")],
                                   endpoint=_A), _CLOCK)
        self.packet = _ipv4_packet(_A[0], _B[0], size)
        # the handshake, in memory: initiation (the packet waits), response, then the packet
        self.a.send([self.packet], _CLOCK)
        for _ in range(3):
            self.b.receive([(d, _A) for d, _ in self.a.take_outbox()], _CLOCK)
            self.a.receive([(d, _B) for d, _ in self.b.take_outbox()], _CLOCK)
        self.b.take_to_tun()  # the packet that waited for the session
        if self.run() != 1:
            raise RuntimeError("the rehearsal engines did not make a session")  # a bug, not input

    def run(self) -> int:
        """Move the packet through both engines; returns how many packets B delivered."""
        a, b = self.a, self.b
        a.send((self.packet,), _CLOCK)
        b.receive([(d, _A) for d, _ in a.take_outbox()], _CLOCK)
        b.take_outbox()
        return len(b.take_to_tun())
