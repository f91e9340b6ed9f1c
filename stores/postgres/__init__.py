"""The PostgreSQL job store (asyncpg): every store port of `bot.ports` on a shared database,
for several replicas (README "Store jobs in PostgreSQL", "Run several replicas").

- `schema`: the versioned migrations and the connection pool.
- `store`: `PostgresJobStore`, the ports' SQL.
- `settings`: `PostgresSettings`, the `database_url` setting that selects this store.
"""

from stores.postgres.settings import PostgresSettings, redact_url
from stores.postgres.store import PostgresJobStore

__all__ = ["PostgresJobStore", "PostgresSettings", "redact_url"]
