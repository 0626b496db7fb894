"""Store: data dir and key file, migrations vs table definitions, write-through round trip."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shoal.control import messages as m
from shoal.server.core import Core
from shoal.server.store import DB_NAME, KEY_NAME, Store, load_or_create_server_key, metadata

from .helpers import FAST_HASHER, Harness


def test_server_key_made_once_with_mode_0600(tmp_path: Path) -> None:
    d = tmp_path / "data"
    k1 = load_or_create_server_key(d)
    assert stat.S_IMODE((d / KEY_NAME).stat().st_mode) == 0o600
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert load_or_create_server_key(d) == k1
    os.chmod(d / KEY_NAME, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_server_key(d)


def test_existing_open_data_dir_is_refused(tmp_path: Path) -> None:
    """F20: a data dir group/others can reach is refused at start, not used."""
    d = tmp_path / "data"
    d.mkdir()
    os.chmod(d, 0o755)
    with pytest.raises(PermissionError, match="chmod 700"):
        load_or_create_server_key(d)
    assert not (d / KEY_NAME).exists()


async def test_db_is_made_0600_and_an_open_existing_db_is_refused(tmp_path: Path) -> None:
    """F20: SQLite alone would make shoal.db 0644 (umask 022); an existing readable db is refused."""
    d = tmp_path / "data"
    old = os.umask(0o022)
    try:
        store = await Store.open(d)
        await store.close()
    finally:
        os.umask(old)
    for name in os.listdir(d):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    os.chmod(d / DB_NAME, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        await Store.open(d)


async def test_migrations_create_exactly_the_declared_schema(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
            version = (await conn.execute(sa.text("select version_num from alembic_version"))).scalar()
        assert diff == [] and version == "0003_node_expiry"
    finally:
        await store.close()
    store = await Store.open(tmp_path)  # a second start: migrations are a no-op
    await store.close()
    assert (tmp_path / DB_NAME).exists()


async def test_ula_prefix_chosen_once(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    p1 = await store.ula_prefix()
    await store.close()
    store = await Store.open(tmp_path)
    assert await store.ula_prefix() == p1 and p1.prefixlen == 48 and str(p1).startswith("fd")
    await store.close()


async def test_write_through_round_trip_loses_nothing(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    prefix = await store.ula_prefix()
    h = Harness(core=Core(prefix, now=50.0, hasher=FAST_HASHER), now=50.0)
    for n in ("alice", "bob", "carol", "dave"):
        h.login(n, remote_ip="192.0.2.9", listen_port=4000 + len(n))
    net = h.create("alice", "lan", password="secret-123")
    club = h.create("bob", "club", approval="manual")
    assert h.join("bob", "lan", password="secret-123").ok
    assert h.join("carol", "lan", password="secret-123").ok
    h.join("dave", "club")
    assert h.req("alice", m.Evict, network_id=net, node_id=h.nid("carol"), ban=True).ok
    assert h.req("alice", m.SetAccess, network_id=net, locked=True, broadcast=False).ok
    h.login("erin", features=[m.FEATURE_LAN])
    assert h.req("erin", m.CreateNetwork, name="ipx", password="pw-lan-123", kind="l2").ok
    h.send("erin", m.Logout(req_id=8))
    assert h.req("bob", m.SetOnline, network_id=net, online=False).ok
    assert h.req("dave", m.SetNickname, nickname="Dave").ok
    doomed = h.create("carol", "doomed")
    assert h.req("carol", m.DeleteNetwork, network_id=doomed).ok
    h.create("carol", "doomed")  # same name again after the delete, in the same batch
    h.send("dave", m.Logout(req_id=9))
    # write every intent, a few batches as the glue would
    batch: list[object] = []
    for i, p in enumerate(h.persisted):
        batch.append(p)
        if i % 3 == 0:
            await store.apply(batch)  # type: ignore[arg-type]
            batch = []
    await store.apply(batch)  # type: ignore[arg-type]
    await store.close()

    store = await Store.open(tmp_path)
    loaded = await store.load()
    await store.close()
    assert loaded.ula_prefix == prefix
    again = Core.from_state(loaded.ula_prefix, loaded.nodes, loaded.networks, loaded.members, loaded.bans,
                            now=1000.0, hasher=FAST_HASHER)
    old = h.core
    assert again.nodes == old.nodes
    assert again.networks == old.networks
    assert again.members == {k: v for k, v in old.members.items()}
    assert again.bans == {k: v for k, v in old.bans.items() if v}
    assert {n for n in old.nodes if again.is_present(n)} == {h.nid(x) for x in ("alice", "bob", "carol")}
    # and the reloaded core enforces the stored rules (ban, lock, password)
    h2 = Harness(core=again, now=1000.0)
    h2.login("carol")
    assert h2.join("carol", "lan", password="secret-123").code == "banned"
    h2.login("dave")
    assert h2.join("dave", "lan", password="secret-123").code == "locked"
    h2.login("bob")
    assert h2.req("bob", m.Approve, network_id=club, node_id=h.nid("dave")).ok  # the pending join was kept
    assert h2.peers("dave") == {h.nid("bob")}
    assert h2.core.nodes[h.nid("dave")].nickname == "Dave"


async def test_migration_0003_applies_on_an_existing_db(tmp_path: Path) -> None:
    """F5/F6: a store made before node expiry upgrades in place; its rows load with the new
    fields (nodes seen at the upgrade, bans without a prefix, no notes) and nothing is lost."""
    import time

    from alembic import command
    from alembic.config import Config

    from shoal.server.store import MIGRATIONS
    from shoal.securefile import create_private_empty, ensure_private_dir

    ensure_private_dir(tmp_path)
    create_private_empty(tmp_path / DB_NAME)
    engine = sa.create_engine(f"sqlite:///{tmp_path / DB_NAME}")
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002_lan_broadcast")
        conn.execute(sa.text("INSERT INTO nodes VALUES ('aaaaaa', :k, 'old', '100.64.1.1', 'fd00::6440:101', "
                             "'[]', 0, 5.0)"), {"k": bytes(32)})
        conn.execute(sa.text("INSERT INTO nodes VALUES ('bbbbbb', :k, 'bad', '100.64.1.2', 'fd00::6440:102', "
                             "'[]', 0, 6.0)"), {"k": bytes([1]) * 32})
        conn.execute(sa.text("INSERT INTO networks VALUES ('n1', 'lan', 'lan', 'aaaaaa', 'x', 0, 'auto', 'ip', "
                             "7.0, 1)"))
        conn.execute(sa.text("INSERT INTO memberships VALUES ('n1', 'aaaaaa', 'owner', 0, 1, 7.0)"))
        conn.execute(sa.text("INSERT INTO bans VALUES ('n1', 'bbbbbb', 8.0)"))
    engine.dispose()
    before = time.time()
    store = await Store.open(tmp_path)
    try:
        async with store.engine.connect() as conn:
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), metadata))
        assert diff == []
        loaded = await store.load()
    finally:
        await store.close()
    nodes = {n.node_id: n for n in loaded.nodes}
    assert set(nodes) == {"aaaaaa", "bbbbbb"} and nodes["aaaaaa"].created_at == 5.0
    assert all(before - 1 <= n.last_seen <= time.time() + 1 and n.last_prefix is None for n in nodes.values())
    assert [(b.node_id, b.prefix) for b in loaded.bans] == [("bbbbbb", None)]
    assert [(x.node_id, x.note) for x in loaded.members] == [("aaaaaa", "")]


async def test_round_trip_keeps_expiry_and_ban_prefix_fields(tmp_path: Path) -> None:
    """last_seen, last_prefix, ban prefixes and held-join notes survive a restart; an expired
    node's deletion (after its pending request) commits and stays deleted."""
    from shoal.constants import NODE_EXPIRY

    store = await Store.open(tmp_path)
    prefix = await store.ula_prefix()
    h = Harness(core=Core(prefix, now=50.0, hasher=FAST_HASHER), now=50.0)
    h.login("alice", remote_ip="203.0.113.5")
    h.login("bob", remote_ip="198.51.100.7")
    net = h.create("alice", "lan")
    assert h.join("bob", "lan").ok
    assert h.req("alice", m.Evict, network_id=net, node_id=h.nid("bob"), ban=True).ok
    h.login("bob2", remote_ip="198.51.100.8")
    assert h.join("bob2", "lan").code == "pending_approval"
    h.login("ghost", remote_ip="192.0.2.1")
    assert h.req("alice", m.SetAccess, network_id=net, approval="manual").ok
    assert h.join("ghost", "lan").code == "pending_approval"
    h.send("ghost", m.Logout(req_id=1))
    h.advance(NODE_EXPIRY + 1)
    ghost = h.nid("ghost")
    assert ghost not in h.core.nodes
    await store.apply(h.persisted)  # type: ignore[arg-type]
    await store.close()

    store = await Store.open(tmp_path)
    loaded = await store.load()
    await store.close()
    again = Core.from_state(loaded.ula_prefix, loaded.nodes, loaded.networks, loaded.members, loaded.bans,
                            now=50.0 + NODE_EXPIRY + 1, hasher=FAST_HASHER)
    assert again.nodes == h.core.nodes and ghost not in again.nodes
    assert again.members == h.core.members and again.members[net][h.nid("bob2")].note == "banned_prefix"
    assert again.bans == h.core.bans and again.bans[net][h.nid("bob")].prefix == "198.51.100.0/24"
    assert again.nodes[h.nid("alice")].last_prefix == "203.0.113.0/24"
