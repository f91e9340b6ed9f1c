"""`LeasedConnector` and `LeasedRequest`: aiohttp requests that leave only under a held job lease.

A chat adapter's session is built on both. When the task making a
request is a job driver (it posts under its job's lease, `bot.leases.JobOwnership.posting`), the
lease is checked before a connection is taken (`check_before_post`: renewed on the spot when a
third or less is left, `NotHeld` when another replica took the job), again once the connection
is in hand, and a last time in the step that writes the request (`check_at_send`: more than a
margin left, with no wait between the check and the write; aiohttp writes a request with a body
in a task of its own, a turn of the event loop after the connection is in hand, and a process
frozen in that turn would otherwise send, once woken, what the job's new owner has sent
meanwhile). Requests made outside a driver (acks, listings) are not affected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from bot.leases import NotHeld, check_at_send, check_before_post

if TYPE_CHECKING:
    from aiohttp.abc import AbstractStreamWriter
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


class LeasedRequest(aiohttp.ClientRequest):
    """`aiohttp.ClientRequest` whose body is written only after a last lease check, in the
    same step as the write (the headers wait for the body, so nothing has left before it)."""

    async def write_bytes(
        self,
        writer: AbstractStreamWriter,
        conn: Connection,
        content_length: int | None = None,
    ) -> None:
        try:
            check_at_send()
        except NotHeld as lost:
            # The caller, waiting for the answer, gets `NotHeld`; nothing was written.
            if conn.protocol is not None:
                conn.protocol.set_exception(lost)
            conn.close()
            return
        await super().write_bytes(writer, conn, content_length)
