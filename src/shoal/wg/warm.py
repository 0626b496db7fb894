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
arrives) and seals and opens one scratch packet (`touch`): the same code and the same
kind of cipher object a real packet uses. A tick that follows real traffic within the
interval does nothing. Once data stops the ticks stop after `WARM_HOLD`: an idle interface
does not wake up for this at all. Keepalives and handshakes are not data and do not start it.

Cost: a few per cent of one core per interface while data flows (measured in
BENCHMARKS.md); `shoal wg up --no-warm` and `shoal daemon --no-warm` turn it off.

The scratch key is random per process and never a session key: nothing sealed here is sent.
"""

from __future__ import annotations

import enum
import os

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from shoal.constants import KEY_LEN, WARM_HOLD, WARM_INTERVAL

_SCRATCH = ChaCha20Poly1305(os.urandom(KEY_LEN))
_SCRATCH_NONCE = bytes(12)
_SCRATCH_PACKET = bytes(64)


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


def touch() -> None:
    """Seal and open one scratch packet: the per-packet cipher code, warm in the caches."""
    _SCRATCH.decrypt(_SCRATCH_NONCE, _SCRATCH.encrypt(_SCRATCH_NONCE, _SCRATCH_PACKET, None), None)
