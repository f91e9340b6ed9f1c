"""`ClaimStore` on SQLite: platform events already acted on. Runs on the worker thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.store.rows import encode_time
from bot.store.schema import transaction

if TYPE_CHECKING:
    from datetime import datetime

    from bot.store.schema import Database


def claim(db: Database, key: str, now: datetime) -> bool:
    with transaction(db.conn):
        cursor = db.conn.execute(
            "INSERT OR IGNORE INTO claims (key, created_at) VALUES (?, ?)",
            (key, encode_time(now)),
        )
    return cursor.rowcount == 1


def expire_claims(db: Database, before: datetime) -> int:
    with transaction(db.conn):
        cursor = db.conn.execute("DELETE FROM claims WHERE created_at < ?", (encode_time(before),))
    return cursor.rowcount
