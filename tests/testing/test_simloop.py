"""SimLoop: ordinary asyncio code in virtual time, fast and the same twice; stalls, threads
and real I/O refused with clear errors."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

from shoal.testing import simloop
from shoal.testing.simloop import SimIOError, SimLoop, SimStall, SimTimeLimit


async def _ten_minutes(trace: list[tuple[float, str]]) -> str:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[int] = asyncio.Queue()
    ev = asyncio.Event()

    async def producer() -> None:
        for i in range(600):
            await asyncio.sleep(1.0)
            q.put_nowait(i)
        ev.set()

    async def consumer() -> None:
        while not (ev.is_set() and q.empty()):
            try:
                i = await asyncio.wait_for(q.get(), 0.7)
                if i % 100 == 0:
                    trace.append((loop.time(), f"got {i}"))
            except TimeoutError:
                trace.append((loop.time(), "timeout"))

    async def timers() -> None:
        fut = loop.create_future()
        loop.call_at(loop.time() + 30, fut.set_result, "called")
        said = await fut
        trace.append((loop.time(), said))
        async with asyncio.timeout(5):
            await asyncio.sleep(2)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(60)
        trace.append((loop.time(), "timed out"))

    await asyncio.gather(producer(), consumer(), timers())
    return "done"


def test_ten_minutes_in_virtual_time_fast_and_deterministic() -> None:
    traces = []
    for _ in range(2):
        trace: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        assert simloop.run(_ten_minutes(trace), start=0.0) == "done"
        assert time.perf_counter() - t0 < 1.0
        traces.append(trace)
    assert traces[0] == traces[1]
    assert (30.0, "called") in traces[0]
    assert (37.0, "timed out") in traces[0]  # 30 + 2 + 5 (the second timeout), exactly
    assert traces[0][-1][0] > 599.0  # the consumer waited through all ten minutes
    assert sum(1 for _, what in traces[0] if what == "timeout") > 0


def test_equal_deadlines_run_in_scheduling_order() -> None:
    loop = SimLoop()
    order: list[int] = []
    when = loop.time() + 5
    for i in range(50):
        loop.call_at(when, order.append, i)
    loop.run_until_complete(asyncio.sleep(10))
    loop.close()
    assert order == list(range(50))


def test_time_starts_at_start_and_jumps() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(3600)
        return t0, loop.time()

    assert simloop.run(main(), start=50.0) == (50.0, 3650.0)


def test_stall_raises() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()  # nobody will ever set it

    with pytest.raises(SimStall, match="stalled"):
        simloop.run(main())


def test_max_time_horizon() -> None:
    with pytest.raises(SimTimeLimit):
        simloop.run(asyncio.sleep(100), start=0.0, max_time=50.0)


def test_executor_runs_inline_or_is_refused() -> None:
    pool = concurrent.futures.ThreadPoolExecutor(1)

    async def main() -> tuple[float, float, int, int]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        a = await loop.run_in_executor(pool, lambda: 6 * 7)
        b = await asyncio.to_thread(sum, [1, 2, 3])
        with pytest.raises(ZeroDivisionError):
            await loop.run_in_executor(None, lambda: 1 // 0)
        return t0, loop.time(), a, b

    t0, t1, a, b = simloop.run(main())
    assert (a, b, t1) == (42, 6, t0)
    assert pool._threads == set()  # no thread was started
    with pytest.raises(SimIOError, match="thread"):
        simloop.run(asyncio.to_thread(sum, [1]), threads="refuse")


def test_real_io_refused() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(SimIOError):
            await loop.getaddrinfo("localhost", 80)
        with pytest.raises(SimIOError):
            loop.add_reader(0, lambda: None)
        with pytest.raises(SimIOError):
            await asyncio.open_connection("127.0.0.1", 9)

    simloop.run(main())
