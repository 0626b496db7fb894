"""The coordination server (`shoal server`).

`core`: the sans-IO coordination state and rules (nodes, networks, presence, views).
`passwords`: salted scrypt hashes of network passwords.
`store`: SQLite persistence (SQLAlchemy async + aiosqlite), Alembic migrations in `migrations/`.
`app`: the Litestar/uvicorn glue: `GET /v1/server-key`, WebSocket `/control`.
`cli`: the `shoal server` command. (Its test client and view mirror live in `shoal.testing`.)
"""
