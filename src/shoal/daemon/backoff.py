"""Reconnect delays for the control connection: exponential backoff with jitter (pure).

delay(n) for the n-th consecutive failure (n = 0, 1, ...) is drawn uniformly from
[d/2, d] with d = min(cap, base * 2**n) ("equal jitter"): never zero, so a fleet of nodes that
lost the server at the same instant spreads out instead of reconnecting in lock step, and never
more than `cap`. A success resets n to 0.
"""

from __future__ import annotations

import random
from collections.abc import Callable

BASE = 0.5
CAP = 15.0


class Backoff:
    def __init__(self, base: float = BASE, cap: float = CAP, uniform: Callable[[float, float], float] | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("need 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.failures = 0
        self._uniform = uniform or random.SystemRandom().uniform

    def next_delay(self) -> float:
        d = min(self.cap, self.base * 2 ** min(self.failures, 32))
        self.failures += 1
        return self._uniform(d / 2, d)

    def reset(self) -> None:
        self.failures = 0
