"""Alembic migrations of the server's store, run programmatically by `shoal.server.store.Store.open`.

`env.py` uses the connection the store hands over in `config.attributes["connection"]`;
revisions live in `versions/` (one file per schema change, never edited once released).
"""
