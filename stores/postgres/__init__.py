"""The PostgreSQL job store (asyncpg): every store port of `bot.ports` on a shared database,
for several replicas (README "Store jobs in PostgreSQL", "Run several replicas").

- `schema`: the versioned migrations and the connection pool.
- `store`: `PostgresJobStore`, the ports' SQL.
- `settings`: `PostgresSettings`, the `database_url` setting that selects this store.

asyncpg is imported when the store is first used, not when the composition root reads
`PostgresSettings` for every run: a bot on SQLite never loads it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from stores.postgres.settings import PostgresSettings, redact_url

if TYPE_CHECKING:
    from stores.postgres.store import PostgresJobStore

_MODULES = {"PostgresJobStore": "stores.postgres.store"}

__all__ = ["PostgresJobStore", "PostgresSettings", "redact_url"]


def __getattr__(name: str) -> object:
    """The store, from its module on first use (PEP 562)."""
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name]), name)
