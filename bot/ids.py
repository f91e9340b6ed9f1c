"""Job ids and display names (SPEC §2.4).

An id is 10 characters of lowercase base32 (50 random bits): short enough for Discord's
100-character `custom_id` with room for the action, and easy to type as a 4-character prefix.
"""

from __future__ import annotations

import base64
import secrets
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datetime import datetime

    from bot.model import Job

ID_LENGTH = 10
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def new_job_id() -> str:
    """A fresh random job id; the store refuses duplicates and the caller draws again."""
    return base64.b32encode(secrets.token_bytes(7)).decode("ascii").lower()[:ID_LENGTH]


def format_time(moment: datetime) -> str:
    """UTC time as the job list shows it: `2026-11-25 12:01:33`."""
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def display_name(job: Job) -> str:
    """`2026-11-25 12:01:33 → inpaint-sketch → succeed → k3x9q2m7ab` (time → type → status → id)."""
    return f"{format_time(job.created_at)} → {job.command} → {job.state.value} → {job.id}"
