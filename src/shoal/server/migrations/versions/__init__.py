"""Alembic revisions of the server store (see the package docstring)."""
