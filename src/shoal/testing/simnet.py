"""The fake network on the simulated event loop: one clock, and `Bind`s on fake hosts.

Owns: the join between `shoal.testing.fakenet` (hosts, NAT routers, lossy links) and
`shoal.testing.simloop.SimLoop` (asyncio in virtual time), so the real glue (the interface
runtime, NAT traversal, the daemon) runs over a simulated internet in one process:

- `LoopScheduler`: fakenet's scheduler interface (`clock.now()`, `call_at`, `call_later`)
  over a `shoal.clock.Scheduler` (the SimLoop). Datagram deliveries become loop timers, so
  there is one clock for the network and the glue, and the network keeps its determinism
  (deliveries due at one instant run in the order they were scheduled; all randomness is
  the network's seeded `rng`). The loop runs time; `run_for`/`run_until_idle` refuse.
- `sim_network(loop, seed=, trace=)`: a `FakeNetwork` driven that way.
- `SimBind`: a `shoal.udp.bind.Bind` on a fakenet `FakeSocket` (level-triggered reader as
  the seam requires; send errors are counted in `errors`, never raised).
- `bind_factory(node, sched)`: a `shoal.udp.bind.BindFactory` for one fake host. `host="::"`
  (or "0.0.0.0") binds all of the host's addresses, so the bind follows the host when it
  changes address or roams; another address (also v4-mapped, "::ffff:192.0.2.1") binds just that one (OSError if the host has
  no such address or the port is taken, as socket.bind).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shoal.clock import Cancellable, Scheduler
from shoal.endpoint import Endpoint
from shoal.testing.channel import _Queue
from shoal.testing.fakenet import FakeNetwork, FakeSocket, Host

__all__ = ["LoopScheduler", "SimBind", "bind_factory", "sim_network"]

_ANY = ("::", "0.0.0.0", "")


class _LoopClock:
    """fakenet's `clock.now()` read from the loop."""

    def __init__(self, sched: Scheduler) -> None:
        self._sched = sched

    def now(self) -> float:
        return self._sched.time()

    __call__ = now


class LoopScheduler:
    """fakenet's scheduler interface over a `shoal.clock.Scheduler` (module docstring)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.clock = _LoopClock(sched)

    def now(self) -> float:
        return self.sched.time()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> Cancellable:
        return self.sched.call_at(max(when, self.sched.time()), callback, *args)

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Cancellable:
        return self.call_at(self.sched.time() + delay, callback, *args)

    def _refuse(self, *args: Any, **kw: Any) -> int:
        raise RuntimeError("a simulated network runs in its event loop's time; run the loop instead")

    run_for = run_until = run_until_idle = step = _refuse


def sim_network(sched: Scheduler, *, seed: int = 0, trace: bool = False) -> FakeNetwork:
    """A fake network whose deliveries are timers of `sched` (a SimLoop)."""
    return FakeNetwork(LoopScheduler(sched), seed=seed, trace=trace)  # type: ignore[arg-type]


class SimBind:
    """A `shoal.udp.bind.Bind` on a fake socket (module docstring)."""

    def __init__(self, sock: FakeSocket, sched: Scheduler) -> None:
        self.sock = sock
        self.port = sock.port
        self.errors = 0
        self._in = _Queue(sched)
        sock.on_datagram = self._arrive

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def _arrive(self, data: bytes, src: Endpoint) -> None:
        self._in.push([(data, src)])

    def set_reader(self, callback: Callable[[], None] | None) -> None:
        self._in.set_reader(None if self.closed else callback)

    def recv_batch(self, max_datagrams: int = 128) -> list[tuple[bytes, Endpoint]]:
        return self._in.pop(max_datagrams)

    def send_batch(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        for data, dst in datagrams:
            try:
                self.sock.sendto(data, (dst[0], dst[1]))
            except (OSError, ValueError):
                self.errors += 1

    def close(self) -> None:
        if not self.closed:
            self._in.set_reader(None)
            self.sock.close()


def bind_factory(node: Host, sched: Scheduler) -> Callable[..., SimBind]:
    """A `BindFactory` opening `SimBind`s on the fake host `node` (module docstring)."""

    def bind(port: int = 0, *, host: str = "::") -> SimBind:
        if host.startswith("::ffff:"):  # an IPv4 address in the dual-stack socket's form
            host = host[len("::ffff:"):]
        return SimBind(node.socket(port, address=None if host in _ANY else host), sched)

    return bind
