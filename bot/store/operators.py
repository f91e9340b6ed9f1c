"""`OperatorQueries` on SQLite: the admin page's read-only figures and the readiness write.

Functions here run on the store's worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

from bot.model import Platform
from bot.ports import DayCount, Usage
from bot.store.rows import encode_time
from bot.store.schema import BUSY_TIMEOUT_MS, transaction

if TYPE_CHECKING:
    from datetime import datetime

    from bot.store.schema import Database

# Operators' queries (the admin page). Run time is the backend's: submitted → finished, to the
# millisecond (julianday arithmetic is exact to about 50 µs).
USAGE_LIMIT: Final = 50
_RUN_SECONDS: Final = (
    "ROUND(COALESCE(SUM(CASE WHEN started_at IS NOT NULL AND finished_at IS NOT NULL"
    " THEN (julianday(finished_at) - julianday(started_at)) * 86400.0 END), 0.0), 3)"
)
SQL_SERVERS: Final = (
    "SELECT platform, server FROM jobs GROUP BY platform, server ORDER BY MAX(created_at) DESC"
)
SQL_USAGE_BY_USER: Final = (
    # With MAX(), SQLite takes the bare `user_name` from the newest row: the current name.
    "SELECT user_id AS key, user_name AS name, MAX(created_at) AS newest, COUNT(*) AS jobs,"  # noqa: S608
    f" {_RUN_SECONDS} AS gpu"
    " FROM jobs WHERE platform = ? AND server = ? AND created_at >= ?"
    " GROUP BY user_id ORDER BY jobs DESC, key LIMIT ?"
)
SQL_USAGE_BY_CHANNEL: Final = (
    f"SELECT channel AS key, channel AS name, COUNT(*) AS jobs, {_RUN_SECONDS} AS gpu"  # noqa: S608
    " FROM jobs WHERE platform = ? AND server = ? AND created_at >= ?"
    " GROUP BY channel ORDER BY jobs DESC, key LIMIT ?"
)
SQL_FAILURES: Final = (
    "SELECT error, COUNT(*) AS jobs FROM jobs WHERE platform = ? AND server = ?"
    " AND state = 'failed' AND created_at >= ? GROUP BY error ORDER BY jobs DESC, error LIMIT ?"
)
SQL_DAILY: Final = (
    "SELECT substr(created_at, 1, 10) AS day, COUNT(*) AS jobs,"
    " SUM(state = 'failed') AS failed FROM jobs"
    " WHERE platform = ? AND server = ? AND created_at >= ? GROUP BY day ORDER BY day"
)
# Readiness writes this one claim row (replacing it) to prove the database takes commits.
PROBE_KEY: Final = "sdbot:ready-probe"
PROBE_BUSY_MS: Final = 200


def servers(db: Database) -> list[tuple[Platform, str]]:
    rows = db.conn.execute(SQL_SERVERS)
    return [(Platform(row["platform"]), row["server"]) for row in rows]


def usage(
    db: Database, platform: Platform, server: str, by: Literal["user", "channel"], since: datetime
) -> list[Usage]:
    sql = SQL_USAGE_BY_USER if by == "user" else SQL_USAGE_BY_CHANNEL
    rows = db.conn.execute(sql, (platform, server, encode_time(since), USAGE_LIMIT))
    return [Usage(row["key"], row["name"], row["jobs"], row["gpu"]) for row in rows]


def failures(
    db: Database, platform: Platform, server: str, since: datetime
) -> list[tuple[str, int]]:
    rows = db.conn.execute(SQL_FAILURES, (platform, server, encode_time(since), USAGE_LIMIT))
    return [(row["error"] or "", row["jobs"]) for row in rows]


def daily(db: Database, platform: Platform, server: str, since: datetime) -> list[DayCount]:
    rows = db.conn.execute(SQL_DAILY, (platform, server, encode_time(since)))
    return [DayCount(row["day"], row["jobs"], row["failed"]) for row in rows]


def probe_write(db: Database, now: datetime) -> None:
    """Commit one tiny write, waiting at most briefly for another process's lock."""
    db.check_file()
    db.conn.execute(f"PRAGMA busy_timeout = {PROBE_BUSY_MS:d}")
    try:
        with transaction(db.conn):
            db.conn.execute(
                "INSERT OR REPLACE INTO claims (key, created_at) VALUES (?, ?)",
                (PROBE_KEY, encode_time(now)),
            )
    finally:
        db.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
