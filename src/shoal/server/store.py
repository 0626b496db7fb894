"""The server's persistent store: a data directory with the server key and an SQLite file.

Owns: DATA_DIR layout, the schema (tables below; changed only through the Alembic revisions
in `shoal/server/migrations/versions`, which `Store.open` runs up to head on every start),
loading the core's records, and applying the core's write intents (`shoal.server.core.Persist`)
one batch per transaction, in order.

    DATA_DIR/            mode 0700, made on first start; an existing one that group/others can
                         reach, not ours or a symlink is refused at start (`shoal.securefile`)
      server.key         the server's X25519 private key, base64, mode 0600 (refused if
                         group/other can reach it); made on first start, atomically
      shoal.db           SQLite (WAL journal, synchronous=NORMAL: a committed batch survives
                         a crash of the server process; a power cut may lose the last ones);
                         created 0600 before SQLite opens it (-wal/-shm take its mode); an
                         existing one (or -wal/-shm) group/others can reach is refused

    nodes        node_id PK, public_key UNIQUE, nickname, ipv4 UNIQUE, ipv6 UNIQUE,
                 endpoints (JSON list), present, created_at, last_seen (unix time; 0003),
                 last_prefix (source prefix of the last Login, NULL: loopback/unknown; 0003)
    networks     network_id PK, name, name_key UNIQUE (casefolded name), owner_id -> nodes,
                 password_hash (see shoal.server.passwords), locked, approval, kind ("ip" | "l2"),
                 created_at, broadcast (0002)
    memberships  (network_id -> networks ON DELETE CASCADE, node_id -> nodes) PK, role,
                 pending, online, joined_at, note (why a pending request waits; 0003)
    bans         (network_id -> networks ON DELETE CASCADE, node_id -> nodes) PK, created_at,
                 prefix (the banned node's last source prefix, NULL: none known; 0003)
    settings     key PK, value: "ula_prefix" (the server's IPv6 /48, chosen once)
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shoal.server.core import (
    BanRec, DeleteMember, DeleteNetwork, DeleteNode, MemberRec, NetworkRec, NodeRec, Persist, PutBan,
    PutMember, PutNetwork, PutNode, make_ula_prefix,
)
from shoal.securefile import check_private_file, create_private_empty, ensure_private_dir, write_private
from shoal.wireguard.keys import PrivateKey, PublicKey

__all__ = ["Store", "Loaded", "load_or_create_server_key", "DB_NAME", "KEY_NAME"]

DB_NAME = "shoal.db"
KEY_NAME = "server.key"
MIGRATIONS = Path(__file__).with_name("migrations")

metadata = sa.MetaData()
nodes_t = sa.Table(
    "nodes", metadata,
    sa.Column("node_id", sa.String(16), primary_key=True),
    sa.Column("public_key", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column("nickname", sa.String(64), nullable=False),
    sa.Column("ipv4", sa.String(15), nullable=False, unique=True),
    sa.Column("ipv6", sa.String(39), nullable=False, unique=True),
    sa.Column("endpoints", sa.Text, nullable=False, server_default="[]"),
    sa.Column("present", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False, server_default="0"),
    sa.Column("last_prefix", sa.String(43), nullable=True),
)
networks_t = sa.Table(
    "networks", metadata,
    sa.Column("network_id", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("name_key", sa.String(256), nullable=False, unique=True),
    sa.Column("owner_id", sa.String(16), sa.ForeignKey("nodes.node_id"), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("locked", sa.Boolean, nullable=False),
    sa.Column("approval", sa.String(8), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("broadcast", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.Float, nullable=False),
)
memberships_t = sa.Table(
    "memberships", metadata,
    sa.Column("network_id", sa.String(16), sa.ForeignKey("networks.network_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("node_id", sa.String(16), sa.ForeignKey("nodes.node_id"), primary_key=True),
    sa.Column("role", sa.String(8), nullable=False),
    sa.Column("pending", sa.Boolean, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False),
    sa.Column("joined_at", sa.Float, nullable=False),
    sa.Column("note", sa.String(32), nullable=False, server_default=""),
    sa.Index("ix_memberships_node", "node_id"),
)
bans_t = sa.Table(
    "bans", metadata,
    sa.Column("network_id", sa.String(16), sa.ForeignKey("networks.network_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("node_id", sa.String(16), sa.ForeignKey("nodes.node_id"), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("prefix", sa.String(43), nullable=True),
)
settings_t = sa.Table(
    "settings", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def load_or_create_server_key(data_dir: Path) -> PrivateKey:
    """DATA_DIR/server.key (made with mode 0600 on first use); refuses a data dir or key file
    that group/others can reach, or a symlink (`shoal.securefile`)."""
    ensure_private_dir(data_dir)
    path = data_dir / KEY_NAME
    if check_private_file(path):
        return PrivateKey.from_base64(path.read_text())
    key = PrivateKey.generate()
    write_private(path, (key.to_base64() + "\n").encode())
    return key


@dataclass(frozen=True)
class Loaded:
    ula_prefix: ipaddress.IPv6Network
    nodes: list[NodeRec]
    networks: list[NetworkRec]
    members: list[MemberRec]
    bans: list[BanRec]


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _upgrade(sync_conn: sa.Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _upsert(table: sa.Table, row: dict[str, Any], keys: Sequence[str]) -> sa.Executable:
    stmt = sqlite_insert(table).values(**row)
    return stmt.on_conflict_do_update(index_elements=list(keys), set_={k: v for k, v in row.items() if k not in keys})


class Store:
    """Async access to DATA_DIR/shoal.db; `open` migrates, `load` reads, `apply` writes."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.batches = 0

    @classmethod
    async def open(cls, data_dir: Path) -> Store:
        ensure_private_dir(data_dir)
        create_private_empty(data_dir / DB_NAME)  # SQLite would make it 0644; its -wal/-shm copy its mode
        for side in ("-wal", "-shm", "-journal"):
            check_private_file(data_dir / (DB_NAME + side))
        engine = create_async_engine(f"sqlite+aiosqlite:///{data_dir / DB_NAME}")
        sa.event.listen(engine.sync_engine, "connect", _pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def get_setting(self, key: str) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(settings_t.c.value).where(settings_t.c.key == key))).scalar()

    async def set_setting(self, key: str, value: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(_upsert(settings_t, {"key": key, "value": value}, ["key"]))

    async def ula_prefix(self) -> ipaddress.IPv6Network:
        """The server's ULA /48, chosen at random and stored on first use."""
        text = await self.get_setting("ula_prefix")
        if text is None:
            prefix = make_ula_prefix()
            await self.set_setting("ula_prefix", str(prefix))
            return prefix
        return ipaddress.IPv6Network(text)

    async def load(self) -> Loaded:
        prefix = await self.ula_prefix()
        async with self.engine.connect() as conn:
            nodes = [
                NodeRec(
                    node_id=r.node_id, public_key=PublicKey(r.public_key), nickname=r.nickname,
                    ipv4=r.ipv4, ipv6=r.ipv6, endpoints=tuple(json.loads(r.endpoints)),
                    present=bool(r.present), created_at=r.created_at, last_seen=r.last_seen,
                    last_prefix=r.last_prefix,
                )
                for r in await conn.execute(sa.select(nodes_t))
            ]
            networks = [
                NetworkRec(
                    network_id=r.network_id, name=r.name, owner_id=r.owner_id, password_hash=r.password_hash,
                    locked=bool(r.locked), approval=r.approval, kind=r.kind, created_at=r.created_at,
                    broadcast=bool(r.broadcast),
                )
                for r in await conn.execute(sa.select(networks_t))
            ]
            members = [
                MemberRec(
                    network_id=r.network_id, node_id=r.node_id, role=r.role, pending=bool(r.pending),
                    online=bool(r.online), joined_at=r.joined_at, note=r.note,
                )
                for r in await conn.execute(sa.select(memberships_t))
            ]
            bans = [
                BanRec(network_id=r.network_id, node_id=r.node_id, created_at=r.created_at, prefix=r.prefix)
                for r in await conn.execute(sa.select(bans_t))
            ]
        return Loaded(prefix, nodes, networks, members, bans)

    async def apply(self, intents: Sequence[Persist]) -> None:
        """Write a batch of the core's intents in one transaction, in order."""
        if not intents:
            return
        async with self.engine.begin() as conn:
            for it in intents:
                await conn.execute(_statement(it))
        self.batches += 1


def _statement(it: Persist) -> sa.Executable:
    if isinstance(it, PutNode):
        n = it.node
        return _upsert(nodes_t, {
            "node_id": n.node_id, "public_key": bytes(n.public_key), "nickname": n.nickname,
            "ipv4": n.ipv4, "ipv6": n.ipv6, "endpoints": json.dumps(list(n.endpoints)),
            "present": n.present, "created_at": n.created_at, "last_seen": n.last_seen,
            "last_prefix": n.last_prefix,
        }, ["node_id"])
    if isinstance(it, DeleteNode):  # an expired node: its memberships were deleted before it
        return sa.delete(nodes_t).where(nodes_t.c.node_id == it.node_id)
    if isinstance(it, PutNetwork):
        w = it.network
        return _upsert(networks_t, {
            "network_id": w.network_id, "name": w.name, "name_key": w.name.casefold(), "owner_id": w.owner_id,
            "password_hash": w.password_hash, "locked": w.locked, "approval": w.approval, "kind": w.kind,
            "created_at": w.created_at, "broadcast": w.broadcast,
        }, ["network_id"])
    if isinstance(it, DeleteNetwork):
        return sa.delete(networks_t).where(networks_t.c.network_id == it.network_id)  # cascades
    if isinstance(it, PutMember):
        x = it.member
        return _upsert(memberships_t, {
            "network_id": x.network_id, "node_id": x.node_id, "role": x.role, "pending": x.pending,
            "online": x.online, "joined_at": x.joined_at, "note": x.note,
        }, ["network_id", "node_id"])
    if isinstance(it, DeleteMember):
        return sa.delete(memberships_t).where(
            (memberships_t.c.network_id == it.network_id) & (memberships_t.c.node_id == it.node_id)
        )
    if isinstance(it, PutBan):
        b = it.ban
        return _upsert(bans_t, {"network_id": b.network_id, "node_id": b.node_id, "created_at": b.created_at,
                                "prefix": b.prefix}, ["network_id", "node_id"])
    raise TypeError(f"unknown write intent {it!r}")
