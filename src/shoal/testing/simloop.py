"""`SimLoop`: an asyncio event loop in simulated time, for the whole-mesh simulation tier.

Owns: virtual time for ordinary asyncio code. `SimLoop.time()` is a number that moves only
when the loop has nothing ready to run: it then jumps straight to the earliest timer (where
a real loop would sleep in `select`), so minutes of protocol time pass in milliseconds and
the glue (`shoal.clock.Scheduler`: `sched.time()`, `sched.call_at`) runs unchanged on it.
Tasks, `asyncio.sleep`, `wait_for`, `timeout`, `Queue`, `Event`, futures all work.

Contract (what a simulation may rely on):

- Determinism: same program, same run. Ready callbacks run FIFO; timers due at the same
  instant run in the order they were scheduled (a sequence number breaks ties in the timer
  heap, which plain asyncio leaves to heap order); nothing reads the real clock.
- Time starts at `start` (default SIM_START, not 0, so code that treats 0 as "never" is not
  fooled) and never moves backwards.
- Stall: awaiting with nothing ready and no timer armed can never end in a simulation (no
  thread, no fd can wake the loop): `run_until_complete` raises `SimStall` at once.
- Threads: none. `run_in_executor` (hence `asyncio.to_thread` and every glue's pool) runs
  the function inline, on the loop, at the current virtual instant, whatever executor is
  passed (`threads="inline"`, default), or raises `SimIOError` (`threads="refuse"`).
  `call_soon_threadsafe` works from the loop's own thread only (no self-pipe to wake it).
- Real I/O: none. `add_reader`/`add_writer`, sockets, `getaddrinfo`, subprocesses and signal
  handlers raise `SimIOError`: simulated glue reaches the network through the seams
  (`shoal.udp.bind.Bind` -> `shoal.testing.simnet.SimBind`, the in-memory WebSocket of
  `shoal.testing.simcontrol`).
- `max_time`: optional horizon; jumping past it raises `SimTimeLimit` (a runaway test ends
  instead of simulating years).

Use: `simloop.run(main(), start=..., max_time=...)`, or `SimLoop()` with
`run_until_complete` like any loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["SimLoop", "SimStall", "SimIOError", "SimTimeLimit", "run", "SIM_START"]

T = TypeVar("T")

SIM_START = 1000.0


class SimStall(RuntimeError):
    """Nothing is ready and no timer is armed while the program still waits: a deadlock."""


class SimIOError(RuntimeError):
    """Real I/O or a thread was asked of a simulated loop."""


class SimTimeLimit(RuntimeError):
    """The simulation reached its `max_time` horizon."""


class _SeqTimer(asyncio.TimerHandle):
    """A TimerHandle ordered by (when, scheduling order): FIFO among equal deadlines."""

    __slots__ = ("_seq",)

    def __init__(self, seq: int, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._seq = seq

    def __lt__(self, other: Any) -> bool:
        if isinstance(other, _SeqTimer):
            return (self._when, self._seq) < (other._when, other._seq)
        return super().__lt__(other)


class _SimSelector(selectors.BaseSelector):
    """The loop's "sleep": advancing virtual time instead of waiting on fds (it has none)."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        raise SimIOError(f"SimLoop has no real I/O: cannot watch {fileobj!r}")

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        raise KeyError(fileobj)

    def select(self, timeout: float | None = None) -> list[Any]:
        self._loop._sleep(timeout)
        return []

    def get_map(self) -> dict[Any, selectors.SelectorKey]:
        return {}

    def close(self) -> None:
        pass


def _no_io(name: str) -> Callable[..., Any]:
    def refuse(self: SimLoop, *args: Any, **kw: Any) -> Any:
        raise SimIOError(f"SimLoop has no real I/O ({name}); use the simulated seams "
                         "(shoal.testing.simnet.SimBind, shoal.testing.simcontrol)")

    refuse.__name__ = name
    return refuse


class SimLoop(asyncio.BaseEventLoop):
    """An event loop whose clock is simulated (module docstring)."""

    def __init__(self, *, start: float = SIM_START, max_time: float | None = None,
                 threads: str = "inline") -> None:
        if threads not in ("inline", "refuse"):
            raise ValueError(f"threads must be 'inline' or 'refuse', not {threads!r}")
        super().__init__()
        self._now = float(start)
        self.max_time = max_time
        self._threads = threads
        self._selector = _SimSelector(self)
        self._clock_resolution = 1e-9
        self._timer_seq = itertools.count()
        self.jumps = 0  # how often virtual time jumped (the loop would have slept)

    # ------------------------------------------------------------------ time
    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any,
                context: Any = None) -> asyncio.TimerHandle:
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        timer = _SeqTimer(next(self._timer_seq), when, callback, args, self, context)
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer

    def _sleep(self, timeout: float | None) -> None:
        """What select(timeout) would have waited for: jump to the next timer."""
        if timeout is None:
            raise SimStall(f"simulation stalled at t={self._now:.6f}: nothing ready, no timer armed, "
                           "and something still waits (a deadlock, or I/O that is not simulated)")
        if timeout <= 0:
            return
        target = self._now + timeout
        if self._scheduled:  # land exactly on the deadline, not on a rounded sum
            head = self._scheduled[0]._when
            if head <= target + self._clock_resolution:
                target = max(self._now, head)
        if self.max_time is not None and target > self.max_time:
            raise SimTimeLimit(f"simulation reached its horizon max_time={self.max_time} (next event at t={target})")
        self._now = target
        self.jumps += 1

    def advance(self, dt: float) -> None:
        """Move time forward by `dt` now (for a test between runs; timers due fire on the next run)."""
        if not dt >= 0:
            raise ValueError(f"cannot advance by {dt!r}")
        self._now += dt

    # ------------------------------------------------------------------ no threads
    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        self._check_closed()
        if self._threads == "refuse":
            raise SimIOError(f"SimLoop(threads='refuse'): {func!r} asked for a thread")
        fut: asyncio.Future[T] = self.create_future()
        try:
            fut.set_result(func(*args))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        return fut

    def _write_to_self(self) -> None:
        pass  # call_soon_threadsafe from the loop's own thread needs no wake-up

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    # ------------------------------------------------------------------ no real I/O (the _NO_IO methods below)
    def remove_reader(self, fd: Any) -> bool:
        return False

    def remove_writer(self, fd: Any) -> bool:
        return False

    def remove_signal_handler(self, sig: int) -> bool:
        return False


_NO_IO = ("add_reader", "add_writer", "getaddrinfo", "getnameinfo", "create_connection", "create_server",
          "create_datagram_endpoint", "create_unix_connection", "create_unix_server", "connect_accepted_socket",
          "sock_recv", "sock_recv_into", "sock_recvfrom", "sock_sendall", "sock_sendto", "sock_connect",
          "sock_accept", "subprocess_exec", "subprocess_shell", "add_signal_handler", "connect_read_pipe",
          "connect_write_pipe", "sendfile")
for _name in _NO_IO:
    setattr(SimLoop, _name, _no_io(_name))
del _name


def run(main: Coroutine[Any, Any, T], *, start: float = SIM_START, max_time: float | None = None,
        threads: str = "inline") -> T:
    """`asyncio.run(main)` on a fresh SimLoop (closed afterwards, pending tasks cancelled)."""
    with asyncio.Runner(loop_factory=lambda: SimLoop(start=start, max_time=max_time, threads=threads)) as runner:
        return runner.run(main)
