"""`SettingsStore` on SQLite: per-server and per-channel settings. Runs on the worker thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.store.schema import transaction

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bot.model import Platform
    from bot.store.schema import Database


def settings(db: Database, platform: Platform, server: str, scope: str) -> dict[str, str]:
    rows = db.conn.execute(
        "SELECT key, value FROM settings WHERE platform = ? AND server = ? AND scope = ?",
        (platform, server, scope),
    )
    return {row["key"]: row["value"] for row in rows}


def put_settings(
    db: Database, platform: Platform, server: str, scope: str, values: Mapping[str, str | None]
) -> None:
    with transaction(db.conn):
        for key, value in values.items():
            if value is None:
                db.conn.execute(
                    "DELETE FROM settings WHERE platform = ? AND server = ? AND scope = ?"
                    " AND key = ?",
                    (platform, server, scope, key),
                )
            else:
                db.conn.execute(
                    "INSERT INTO settings (platform, server, scope, key, value)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET value = excluded.value",
                    (platform, server, scope, key, value),
                )
