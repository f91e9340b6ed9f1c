"""`LeasedConnector`: an aiohttp connector whose requests leave only under a held job lease.

A chat adapter's session is built on it. When the task making a request is a job driver (it
posts under its job's lease, `bot.leases.JobOwnership.posting`), the lease is checked twice:
before a connection is taken (`check_before_post`: renewed on the spot when a third or less is
left, `NotHeld` when another replica took the job) and again once the connection is in hand,
right before the request is written (`check_at_send`: more than a margin left, with no wait in
between). Waiting for a pooled connection, a slow renewal or a frozen process all happen before
the last check, so a replica woken from a pause past its lease never sends what the job's new
owner has sent meanwhile. Requests made outside a driver (acks, listings) are not affected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from bot.leases import check_at_send, check_before_post

if TYPE_CHECKING:
    from aiohttp.client_reqrep import ClientRequest
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace


class LeasedConnector(aiohttp.TCPConnector):
    """`aiohttp.TCPConnector` checking the posting task's job lease (module docstring)."""

    async def connect(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature
    ) -> Connection:
        await check_before_post()
        conn = await super().connect(req, traces, timeout)
        try:
            check_at_send()
        except BaseException:
            conn.release()  # nothing was written on it: back to the pool
            raise
        return conn
