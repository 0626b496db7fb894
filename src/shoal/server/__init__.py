"""The coordination server (`shoal server`).

`core`: the sans-IO coordination state and rules (nodes, networks, presence, views).
`passwords`: salted scrypt hashes of network passwords.
`store`: SQLite persistence (SQLAlchemy async + aiosqlite), Alembic migrations in `migrations/`.
`app`: the Litestar/uvicorn glue: `GET /v1/server-key`, WebSocket `/control`.
`cli`: the `shoal server` command. `viewmirror`: a node-side view mirror for tests and benchmarks.
"""
