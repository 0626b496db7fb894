"""The scheduler seam: what the asyncio glue may use of time and timers.

Owns: `Scheduler`, the one protocol every piece of glue (the interface runtime, NAT traversal,
the node daemon, the relay service) takes time and timers from, instead of `time.monotonic()`
and the loop's private API. Any asyncio event loop satisfies it, so production code passes
`asyncio.get_running_loop()` (the default everywhere); the whole-mesh simulation tier runs the
same glue on `shoal.testing.simloop.SimLoop`, an event loop whose clock is simulated and jumps
to the next timer when nothing is ready, so minutes of protocol time pass in milliseconds.

Rule: glue reads `now` from `sched.time()` (monotonic seconds) and arms timers with
`sched.call_at(when, callback, *args)`, keeping the returned handle to `cancel()` it. Wall
time (for humans and for records) is `time.time()`; it is never used to order protocol events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Cancellable", "Scheduler", "running"]


class Cancellable(Protocol):
    """A timer handle (asyncio.TimerHandle fits)."""

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """Monotonic time and one-off timers (asyncio.AbstractEventLoop fits)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Cancellable: ...


def running(sched: Scheduler | None = None) -> Scheduler:
    """`sched`, or the running event loop when None (call from inside the loop)."""
    return sched if sched is not None else asyncio.get_running_loop()
