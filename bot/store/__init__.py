"""The SQLite job store: `SqliteJobStore` implements every store port of `bot.ports`.

The package, one concern a module:

- `schema`: the versioned migrations (`PRAGMA user_version`), transactions, the connection
  (WAL, pragmas) and the checks that the file is still the one opened.
- `rows`: the mapping between a `Job` and its row (the one place stored forms are decided).
- `worker`: the one thread that talks to SQLite, with its group commit of new-job inserts.
- `jobs` (`JobRepo`), `images` (`ImageStore`), `settings` (`SettingsStore`), `claims`
  (`ClaimStore`), `operators` (`OperatorQueries`), `leases` (`JobLeases`, `LeaderLeases`,
  `Replicas`), `shared_reads` (`SharedReads`): each port's SQL and the functions that run
  it on the worker thread.
- `sqlite`: `SqliteJobStore`, the asyncio face that queues those functions on the worker.
"""

from bot.store.sqlite import SqliteJobStore

__all__ = ["SqliteJobStore"]
