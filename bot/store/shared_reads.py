"""`SharedReads` on SQLite: the keys replicas ask about and what the reader posted for them.

One process owns a SQLite file, so it is always the reader (its leader leases are always
granted) and nobody asks or hands over events: the table stays empty in practice. It is here so
that every store keeps every port, and the contract tests run on each engine. Functions here run
on the store's worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.ports import Posted
from bot.store.rows import decode_time, dump, encode_time
from bot.store.schema import transaction

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from datetime import datetime

    from bot.store.schema import Database


def ask(db: Database, topic: str, keys: Collection[str], now: datetime) -> dict[str, Posted]:
    db.check_file()
    wanted = sorted(set(keys))
    with transaction(db.conn):
        db.conn.executemany(
            "INSERT INTO shared_reads (topic, key, asked_at) VALUES (?, ?, ?)"
            " ON CONFLICT (topic, key) DO UPDATE SET asked_at = excluded.asked_at",
            [(topic, key, encode_time(now)) for key in wanted],
        )
        rows = db.conn.execute(
            "SELECT key, value, read_at FROM shared_reads WHERE topic = ? AND read_at IS NOT NULL"
            " AND key IN (SELECT value FROM json_each(?))",
            (topic, dump(wanted)),
        ).fetchall()
    return {row["key"]: Posted(row["value"], decode_time(row["read_at"])) for row in rows}


def wanted(db: Database, topic: str, since: datetime) -> set[str]:
    db.check_file()
    with transaction(db.conn):
        db.conn.execute(
            "DELETE FROM shared_reads WHERE topic = ? AND asked_at < ?",
            (topic, encode_time(since)),
        )
        rows = db.conn.execute("SELECT key FROM shared_reads WHERE topic = ?", (topic,))
        return {row["key"] for row in rows}


def post(db: Database, topic: str, values: Mapping[str, str | None], now: datetime) -> None:
    db.check_file()
    with transaction(db.conn):
        db.conn.executemany(
            "UPDATE shared_reads SET value = ?, read_at = ? WHERE topic = ? AND key = ?",
            [(value, encode_time(now), topic, key) for key, value in values.items()],
        )


def unask(db: Database, topic: str, keys: Collection[str]) -> None:
    db.check_file()
    with transaction(db.conn):
        db.conn.executemany(
            "DELETE FROM shared_reads WHERE topic = ? AND key = ?",
            [(topic, key) for key in keys],
        )


def recent(db: Database, topic: str, since: datetime) -> dict[str, Posted]:
    db.check_file()
    rows = db.conn.execute(
        "SELECT key, value, read_at FROM shared_reads WHERE topic = ? AND read_at >= ?",
        (topic, encode_time(since)),
    ).fetchall()
    return {row["key"]: Posted(row["value"], decode_time(row["read_at"])) for row in rows}
