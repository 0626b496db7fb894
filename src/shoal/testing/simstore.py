"""The server's real `Store` on a SimLoop: SQLite through SQLAlchemy, without aiosqlite's thread.

Owns: `open_store(data_dir)`, the simulation tier's way to open `shoal.server.store.Store`
(same schema, same Alembic migrations, same pragmas, same SQL) on a loop that has no threads.
aiosqlite runs every statement on a worker thread and wakes the loop from it, which a
`shoal.testing.simloop.SimLoop` cannot wait for (its time jumps instead of sleeping); here the
aiosqlite dialect gets an `InlineConnection` instead: aiosqlite's connection and cursor
interface with each coroutine running its sqlite3 call at once, on the loop, at the current
virtual instant (a local SQLite file is fast enough for that).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from shoal.securefile import create_private_empty, ensure_private_dir
from shoal.server.store import DB_NAME, Store, _pragmas, _upgrade

__all__ = ["InlineConnection", "InlineCursor", "open_store"]


class InlineCursor:
    """aiosqlite's Cursor interface over a sqlite3 cursor, run inline."""

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self._cur = cur

    @property
    def description(self) -> Any:
        return self._cur.description

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cur.lastrowid

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        self._cur.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        self._cur.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cur.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cur.fetchmany(size if size is not None else self._cur.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    async def close(self) -> None:
        self._cur.close()


class InlineConnection:
    """aiosqlite's Connection interface over a sqlite3 connection, run inline."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path)

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        return InlineCursor(self._conn.execute(sql, parameters))

    async def create_function(self, *args: Any, **kw: Any) -> None:
        self._conn.create_function(*args, **kw)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()


async def open_store(data_dir: Path) -> Store:
    """The server's `Store` on `data_dir/shoal.db`, migrated, for a SimLoop (module docstring)."""
    ensure_private_dir(data_dir)
    create_private_empty(data_dir / DB_NAME)  # the file rules of Store.open (0600, no symlink)
    path = str(data_dir / DB_NAME)

    async def connect() -> InlineConnection:
        return InlineConnection(path)

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", async_creator=connect)
    sa.event.listen(engine.sync_engine, "connect", _pragmas)
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
    return Store(engine)
