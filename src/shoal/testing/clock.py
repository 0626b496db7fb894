"""Fake clock and deterministic scheduler for driving sans-IO engines in simulation.

Owns: simulated time. `FakeClock` is a number that moves only when told. `Scheduler`
moves it: it keeps one-off callbacks (`call_at`/`call_later`, e.g. datagram deliveries of
`shoal.testing.fakenet`) and polls registered engines for their next deadline, and each
`step()` jumps the clock to the earliest of them and runs exactly that one thing.

Engine contract (the sans-IO rule of docs/architecture.md): an engine exposes
`next_deadline() -> float | None` (None: no timer armed) and a timer method taking `now`
(`handle_timer(now)` by default; any callable may be given instead). Whatever the timer
method returns is passed to the registration's optional `on_output` callback, so a test
can route the datagrams an engine emits into the fake network.

Determinism rules (same inputs, same run, always):

- the clock never moves backwards; a deadline already in the past fires at `now`;
- among things due at the same time, callbacks run first in the order they were
  scheduled, then engines in registration order;
- nothing here uses a random source or the real clock.

A misbehaving engine whose deadline does not move after its timer fired would spin
forever at one instant; the scheduler raises `RuntimeError` after `max_fires_per_instant`
firings at the same time instead.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["FakeClock", "Scheduler", "TimerEngine", "Handle", "EngineRegistration"]


class FakeClock:
    """Simulated monotonic time in seconds; starts at `start` and moves only forward."""

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    __call__ = now  # usable wherever a `() -> float` time source is expected

    def advance(self, dt: float) -> float:
        """Move forward by `dt` seconds (>= 0); returns the new time."""
        if not dt >= 0 or math.isinf(dt):  # also rejects NaN
            raise ValueError(f"cannot advance a clock by {dt!r}")
        self._now += dt
        return self._now

    def advance_to(self, t: float) -> float:
        """Move forward to `t`; a `t` in the past leaves the clock where it is."""
        if math.isnan(t) or math.isinf(t):
            raise ValueError(f"cannot advance a clock to {t!r}")
        if t > self._now:
            self._now = float(t)
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"


class TimerEngine(Protocol):
    """What the scheduler needs from an engine."""

    def next_deadline(self) -> float | None: ...


class Handle:
    """A scheduled callback; `cancel()` stops it from running."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class EngineRegistration:
    """An engine known to the scheduler; `remove()` forgets it."""

    __slots__ = ("engine", "fire", "on_output", "name", "_scheduler", "fired")

    def __init__(
        self,
        scheduler: Scheduler,
        engine: TimerEngine,
        fire: Callable[[float], Any],
        on_output: Callable[[Any], None] | None,
        name: str,
    ) -> None:
        self._scheduler = scheduler
        self.engine = engine
        self.fire = fire
        self.on_output = on_output
        self.name = name
        self.fired = 0

    def remove(self) -> None:
        self._scheduler._engines.remove(self)


class Scheduler:
    """Runs callbacks and engine timers in simulated time; see the module docstring."""

    def __init__(self, clock: FakeClock | None = None, *, max_fires_per_instant: int = 100_000) -> None:
        self.clock = clock if clock is not None else FakeClock()
        self._heap: list[tuple[float, int, Handle]] = []
        self._seq = itertools.count()
        self._engines: list[EngineRegistration] = []
        self._max_fires = max_fires_per_instant
        self._instant = -math.inf
        self._fires_at_instant = 0
        self.steps = 0

    def now(self) -> float:
        return self.clock.now()

    # --- scheduling -------------------------------------------------------------------------

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Handle:
        """Run `callback(*args)` at time `when` (at `now` if `when` is already past)."""
        if math.isnan(when):
            raise ValueError("cannot schedule at NaN")
        h = Handle(max(when, self.clock.now()), callback, args)
        heapq.heappush(self._heap, (h.when, next(self._seq), h))
        return h

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Handle:
        if delay < 0:
            raise ValueError(f"negative delay {delay!r}")
        return self.call_at(self.clock.now() + delay, callback, *args)

    def add_engine(
        self,
        engine: TimerEngine,
        *,
        fire: Callable[[float], Any] | None = None,
        on_output: Callable[[Any], None] | None = None,
        name: str | None = None,
    ) -> EngineRegistration:
        """Poll `engine.next_deadline()` and call `fire(now)` (default `engine.handle_timer`)."""
        if fire is None:
            fire = getattr(engine, "handle_timer", None)
            if fire is None:
                raise TypeError(f"{engine!r} has no handle_timer(now); pass fire=")
        reg = EngineRegistration(self, engine, fire, on_output, name or type(engine).__name__)
        self._engines.append(reg)
        return reg

    # --- running ----------------------------------------------------------------------------

    def _next(self) -> tuple[float, Handle | EngineRegistration] | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        best: tuple[float, Handle | EngineRegistration] | None = (heap[0][0], heap[0][2]) if heap else None
        for reg in self._engines:
            d = reg.engine.next_deadline()
            if d is None:
                continue
            if best is None or d < best[0]:  # ties: callbacks, then earlier registrations
                best = (d, reg)
        return best

    def next_time(self) -> float | None:
        """When the next step would run (never earlier than now), or None if idle."""
        nxt = self._next()
        return None if nxt is None else max(nxt[0], self.clock.now())

    def step(self, until: float | None = None) -> bool:
        """Run the single earliest due thing, if it is due no later than `until`."""
        nxt = self._next()
        if nxt is None:
            return False
        when, item = nxt
        now = self.clock.now()
        when = max(when, now)
        if until is not None and when > until:
            return False
        self.clock.advance_to(when)
        if when == self._instant:
            self._fires_at_instant += 1
            if self._fires_at_instant > self._max_fires:
                raise RuntimeError(
                    f"more than {self._max_fires} timers/callbacks at t={when}: "
                    f"an engine whose deadline does not move, or a zero-delay loop ({item!r})"
                )
        else:
            self._instant, self._fires_at_instant = when, 1
        self.steps += 1
        if isinstance(item, Handle):
            heapq.heappop(self._heap)
            item.callback(*item.args)
        else:
            item.fired += 1
            out = item.fire(when)
            if item.on_output is not None and out is not None:
                item.on_output(out)
        return True

    def run_until(self, t: float) -> int:
        """Run everything due up to and including `t`, then leave the clock at `t`."""
        n = 0
        while self.step(until=t):
            n += 1
        self.clock.advance_to(t)
        return n

    def run_for(self, dt: float) -> int:
        return self.run_until(self.clock.now() + dt)

    def run_until_idle(self, *, max_steps: int = 1_000_000, max_time: float | None = None) -> int:
        """Run until nothing is scheduled (or `max_time`); RuntimeError after `max_steps`."""
        n = 0
        while self.step(until=max_time):
            n += 1
            if n >= max_steps:
                raise RuntimeError(f"still busy after {max_steps} steps (t={self.clock.now()})")
        return n

    def run_until_true(self, predicate: Callable[[], bool], *, timeout: float) -> bool:
        """Step until `predicate()` holds (checked after each step) or `timeout` passes."""
        deadline = self.clock.now() + timeout
        if predicate():
            return True
        while self.step(until=deadline):
            if predicate():
                return True
        self.clock.advance_to(deadline)
        return predicate()
