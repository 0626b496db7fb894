"""The daemon's seams: `sleep` waits on the given Scheduler's clock; `resolve_udp`; the defaults."""

from __future__ import annotations

import asyncio

from shoal.daemon import env


class StepSched:
    """A Scheduler whose clock moves only when told; timers fire on `advance`."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object, tuple]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, cb, *args):  # noqa: ANN001, ANN201
        entry = (when, cb, args)
        self.timers.append(entry)
        sched = self

        class Handle:
            def cancel(self) -> None:
                if entry in sched.timers:
                    sched.timers.remove(entry)

        return Handle()

    def advance(self, dt: float) -> None:
        self.now += dt
        for entry in sorted(t for t in self.timers if t[0] <= self.now):
            self.timers.remove(entry)
            entry[1](*entry[2])


async def test_sleep_follows_the_scheduler_clock_not_the_loop():
    sched = StepSched()
    task = asyncio.create_task(env.sleep(sched, 30.0))
    await asyncio.sleep(0.01)
    assert not task.done() and sched.timers[0][0] == 130.0
    sched.advance(29.0)
    await asyncio.sleep(0)
    assert not task.done()
    sched.advance(1.0)
    await asyncio.wait_for(task, 1)


async def test_a_cancelled_sleep_leaves_no_timer():
    sched = StepSched()
    task = asyncio.create_task(env.sleep(sched, 5.0))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert sched.timers == []


async def test_resolve_udp_of_a_literal():
    assert await env.resolve_udp("127.0.0.1") == "127.0.0.1"


def test_production_defaults():
    from shoal.control import transport
    from shoal.daemon.icmp import Pinger

    e = env.DaemonEnv()
    assert e.sched is None and e.make_plane is env.wg_plane and e.connect is transport.connect
    assert e.fetch_server_key is transport.fetch_server_key and isinstance(e.pinger, Pinger)
    assert e.resolve is env.resolve_udp and e.local_api is True
    import websockets

    from shoal.udp.bind import open_udp

    assert e.birthday_bind is open_udp and e.relay_ws_connect is websockets.connect
    e.pinger.close()
