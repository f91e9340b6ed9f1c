"""`ImageStore` on SQLite: a job's inputs and results as blobs in the `images` table.

Functions here run on the store's worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from bot.ports import LeaseLost, StoredImage
from bot.store.rows import encode_time
from bot.store.schema import transaction

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from bot.store.schema import Database

SQL_IMAGES: Final = "SELECT slot, name, data FROM images WHERE job_id = ? ORDER BY slot, idx"
SQL_IMAGES_OF_SLOT: Final = (
    "SELECT slot, name, data FROM images WHERE job_id = ? AND slot = ? ORDER BY idx"
)
# Jobs old enough for retention that still hold images: the age index bounds the scan to old
# jobs, and the images key (job_id first) answers EXISTS without reading blobs.
SQL_EXPIRABLE: Final = (
    "SELECT id FROM jobs WHERE created_at < ?"
    " AND EXISTS (SELECT 1 FROM images WHERE images.job_id = jobs.id) LIMIT ?"
)


def write_images(db: Database, job_id: str, images: Sequence[StoredImage]) -> None:
    """Replace the job's images of the given slots (inside the caller's transaction)."""
    for slot in dict.fromkeys(image.slot for image in images):
        db.conn.execute("DELETE FROM images WHERE job_id = ? AND slot = ?", (job_id, slot))
    next_idx: dict[str, int] = {}
    rows = []
    for image in images:
        idx = next_idx.get(image.slot, 0)
        next_idx[image.slot] = idx + 1
        rows.append((job_id, image.slot, idx, image.name, image.data))
    db.conn.executemany(
        "INSERT INTO images (job_id, slot, idx, name, data) VALUES (?, ?, ?, ?, ?)", rows
    )


def put_images(
    db: Database, job_id: str, images: Sequence[StoredImage], fence: int | None = None
) -> None:
    db.check_file()
    with transaction(db.conn):
        found = db.conn.execute("SELECT fence FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if found is None:
            raise KeyError(job_id)
        if fence is not None and found[0] != fence:
            raise LeaseLost(job_id)
        write_images(db, job_id, images)


def images(db: Database, job_id: str, slot: str | None) -> list[StoredImage]:
    if slot is None:
        rows = db.conn.execute(SQL_IMAGES, (job_id,))
    else:
        rows = db.conn.execute(SQL_IMAGES_OF_SLOT, (job_id, slot))
    return [StoredImage(row["slot"], row["name"], row["data"]) for row in rows]


def delete_images(db: Database, job_id: str) -> None:
    with transaction(db.conn):
        db.conn.execute("DELETE FROM images WHERE job_id = ?", (job_id,))


def expire_images(db: Database, before: datetime, limit: int) -> list[str]:
    with transaction(db.conn):
        ids = [row["id"] for row in db.conn.execute(SQL_EXPIRABLE, (encode_time(before), limit))]
        for job_id in ids:
            db.conn.execute("DELETE FROM images WHERE job_id = ?", (job_id,))
            db.conn.execute(
                "UPDATE jobs SET results_expired = 1, version = version + 1"
                " WHERE id = ? AND result_count > 0",
                (job_id,),
            )
    return ids
