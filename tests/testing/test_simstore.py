"""`shoal.testing.simstore`: the server's real Store runs on a SimLoop (no thread, no stall),
and what it writes the production Store (aiosqlite, a real loop) reads back: same file, same
schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.server.store import Store
from shoal.testing import simloop
from shoal.testing.simstore import open_store


def test_the_store_runs_in_virtual_time_and_the_production_store_reads_it(tmp_path: Path) -> None:
    async def sim() -> tuple[str, str | None, float]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        store = await open_store(tmp_path)
        loaded = await store.load()  # picks and stores the ULA prefix on first use
        await store.set_setting("sim", "written in virtual time")
        again = await store.get_setting("sim")
        await store.close()
        assert loaded.nodes == [] and loaded.networks == []
        return str(loaded.ula_prefix), again, loop.time() - t0

    prefix, value, took = simloop.run(sim(), threads="refuse")  # a worker thread would raise
    assert value == "written in virtual time" and took == 0.0

    async def real() -> tuple[str, str | None]:
        store = await Store.open(tmp_path)
        try:
            return str(await store.ula_prefix()), await store.get_setting("sim")
        finally:
            await store.close()

    assert asyncio.run(real()) == (prefix, "written in virtual time")
