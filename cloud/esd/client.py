"""`EsdClient`: ESD's REST API over one aiohttp session, and the presigned storage URLs.

It owns the HTTP session, the headers (`x-api-key`, lower-case `username`,
`Content-Type: application/json` on API calls; none at all on presigned URLs, whose signatures
break on extra headers), retries under the configuration's `bot.retry.RetryPolicy` (downloads
through `transport.download`, the one capped download), and the translation of
every failure into `bot.errors`: API Gateway's 403 (key), ESD's 401 (user) and 403 (permission),
400 messages passed through for users, 5xx / timeouts / 429 / network failures as
`BackendUnavailableError` once retries are spent. Messages name the host and the route, never
the key or a presigned query string. The route methods return `cloud.esd.payloads` dataclasses.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import aiohttp

from bot.errors import BackendError, BackendUnavailableError
from bot.logs import redact
from bot.retry import parse_retry_after
from cloud.esd.config import EsdSettings
from cloud.esd.payloads import (
    CheckpointPage,
    Created,
    EndpointPage,
    EsdJob,
    InferencePage,
    PingInfo,
    parse_checkpoint_page,
    parse_created,
    parse_endpoint_page,
    parse_envelope,
    parse_inference_page,
    parse_job,
    parse_ping,
)
from cloud.esd.wire import CreateInference, DeleteInferences
from transport.download import TooLargeError, UnavailableError, bare_url, download, read_capped

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from cloud.esd.config import EsdConfig

_LOGGER = logging.getLogger(__name__)

# API answers are JSON envelopes; a list page of 100 jobs is far below this.
_MAX_API_BYTES = 32_000_000


class Retry(enum.Enum):
    """Which failures a call may be repeated after."""

    # Repeating the call is harmless: reads, deletes, uploads to the same key, and job creation
    # (a duplicate only leaves an orphan `created` row that nobody starts).
    ALWAYS = "always"
    # Repeat only when ESD cannot have acted: no connection made, throttled (429) or 503.
    UNSENT = "unsent"


class OutcomeUnknownError(BackendUnavailableError):
    """The request may have reached ESD and done its work (timeout, 5xx after sending)."""


@dataclass(frozen=True)
class Answer:
    """An API answer whose status the caller accepted."""

    status: int
    data: object
    message: str
    version: str | None  # the `x-api-version` header


class _Failure(Exception):
    """One failed attempt, kept to decide whether to retry and what to raise."""

    def __init__(
        self, error: BackendError, retry_after: float | None = None, *, unsent: bool = False
    ) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
        self.unsent = unsent  # ESD certainly did not act on it


class EsdClient:
    """The HTTP side of `EsdBackend`; `start()` opens the session, `aclose()` closes it."""

    def __init__(
        self, config: EsdConfig, trace_configs: Sequence[aiohttp.TraceConfig] = ()
    ) -> None:
        self._config = config
        self._trace_configs = list(trace_configs)  # request metrics (adapters.web)
        self._session: aiohttp.ClientSession | None = None

    @property
    def config(self) -> EsdConfig:
        return self._config

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(
                total=self._config.timeout, connect=self._config.connect_timeout
            ),
            # Presigned URLs and the API must not share cookies; ESD sets none anyway.
            cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=self._trace_configs or None,
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> EsdClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _redact(self, text: str) -> str:
        return redact(text, (self._config.api_key,), EsdSettings.secret_patterns)

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise BackendUnavailableError(
                "the ESD client is not started", user_message="the ESD backend is not running"
            )
        return self._session

    # -- API calls -----------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] = (),
        body: object = None,
        ok: Collection[int] = (200,),
        retry: Retry = Retry.ALWAYS,
    ) -> Answer:
        """Call one API route (path without a leading slash) and return the accepted answer.

        Statuses in `ok` come back as an `Answer`; others raise. Transient failures are retried
        as `retry` allows, then raised as `BackendUnavailableError` (`OutcomeUnknownError` when
        ESD may have acted).
        """
        route = f"{method} {path.split('?', 1)[0]}"
        url = self._config.api_url + path
        headers = {
            "x-api-key": self._config.api_key,
            # ESD looks the header up in a plain dict: it must be lower-case (§1.1).
            "username": self._config.username,
            "Content-Type": "application/json",
        }
        data = None if body is None else json.dumps(body, separators=(",", ":"))

        async def once() -> Answer:
            outcome = await self._attempt(method, url, route, headers, list(params), data, ok)
            if isinstance(outcome, _Failure):
                raise outcome
            return outcome

        def retryable(exc: Exception) -> bool:
            return (
                isinstance(exc, _Failure)
                and isinstance(exc.error, BackendUnavailableError)
                and (retry is Retry.ALWAYS or exc.unsent)
            )

        try:
            return await self._config.retry.run(once, retry_if=retryable, what=f"ESD {route}")
        except _Failure as failure:
            # A Retry-After longer than the policy's leaves the waiting to the poller's back-off.
            raise failure.error from None

    async def _attempt(
        self,
        method: str,
        url: str,
        route: str,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        data: str | None,
        ok: Collection[int],
    ) -> Answer | _Failure:
        started = time.monotonic()
        try:
            async with self._http.request(
                method, url, params=params or None, data=data, headers=headers
            ) as response:
                raw = await self._read_answer(response, _MAX_API_BYTES)
                status = response.status
                version = response.headers.get("x-api-version")
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except aiohttp.ClientError as exc:
            return self._network_failure(route, self._config.host, exc)
        except TimeoutError:
            return _Failure(
                OutcomeUnknownError(
                    f"ESD at {self._config.host} did not answer {route} within "
                    f"{self._config.timeout:g} s",
                    user_message=f"ESD at {self._config.host} timed out",
                )
            )
        _LOGGER.debug("ESD %s → %d (%.0f ms)", route, status, (time.monotonic() - started) * 1000)
        envelope = parse_envelope(raw)
        message = self._redact(envelope.message) if envelope and envelope.message else ""
        if status in ok:
            return Answer(status, envelope.data if envelope else None, message, version)
        if envelope is None and raw:
            _LOGGER.warning(
                "ESD %s → %d with a non-JSON body: %s",
                route,
                status,
                self._redact(raw[:200].decode("utf-8", "replace")),
            )
        return self._http_failure(route, status, message, retry_after)

    def _network_failure(self, route: str, host: str, exc: aiohttp.ClientError) -> _Failure:
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return _Failure(
                BackendUnavailableError(
                    f"cannot reach ESD at {host} for {route}: {reason}",
                    user_message=f"cannot reach ESD at {host} ({reason})",
                ),
                unsent=True,
            )
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return _Failure(
                BackendUnavailableError(
                    f"connecting to ESD at {host} timed out ({route})",
                    user_message=f"cannot reach ESD at {host} (connection timed out)",
                ),
                unsent=True,
            )
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return _Failure(
                OutcomeUnknownError(
                    f"ESD at {host} stopped answering {route}",
                    user_message=f"ESD at {host} timed out",
                )
            )
        detail = self._redact(str(exc)) or type(exc).__name__
        return _Failure(
            OutcomeUnknownError(
                f"the connection to ESD at {host} failed during {route}: {detail}",
                user_message=f"the connection to ESD at {host} failed",
            )
        )

    def _http_failure(
        self, route: str, status: int, message: str, retry_after: float | None
    ) -> _Failure:
        username = self._config.username
        said = f": {message}" if message else ""
        text = f"ESD answered {status} to {route}{said}"
        if status == 401:
            return _Failure(
                BackendError(
                    text,
                    status=status,
                    user_message=f"ESD does not know the user `{username}` (check ESD_USERNAME)",
                )
            )
        if status == 403:
            lowered = message.lower()
            if "permission" in lowered:
                user = f"the ESD user `{username}` is not allowed to do this: {message}"
            elif "missing authentication token" in lowered:
                user = (
                    f"ESD at {self._config.host} has no such route (check ESD_API_URL: it is "
                    "the stack's ApiGatewayUrl, ending in /prod/)"
                )
            else:
                user = "the ESD API key was refused (check ESD_API_KEY)"
            return _Failure(BackendError(text, status=status, user_message=user))
        if status == 429:
            return _Failure(
                BackendUnavailableError(
                    text, status=status, user_message="ESD is throttling requests right now"
                ),
                retry_after=retry_after,
                unsent=True,
            )
        if status == 504:
            return _Failure(
                OutcomeUnknownError(
                    text,
                    status=status,
                    user_message=f"ESD timed out (504 from API Gateway) on {route}",
                ),
                retry_after=retry_after,
            )
        if status == 503:
            return _Failure(
                BackendUnavailableError(
                    text, status=status, user_message=f"ESD is unavailable (503) on {route}"
                ),
                retry_after=retry_after,
                unsent=True,
            )
        if status >= 500:
            return _Failure(
                OutcomeUnknownError(
                    text, status=status, user_message=f"ESD failed ({status}) on {route}{said}"
                ),
                retry_after=retry_after,
            )
        # 400 carries ESD's own readable message (model not found, endpoint not ready, …).
        user = message or f"ESD refused {route} ({status})"
        return _Failure(BackendError(text, status=status, user_message=user))

    # -- Routes (reference/esd-api.md §3) ------------------------------------------------------

    async def ping(self) -> PingInfo:
        answer = await self.call("GET", "ping")
        return parse_ping(answer.data, answer.version)

    async def create_inference(self, body: CreateInference) -> Created:
        answer = await self.call("POST", "inferences", body=body.dump(), ok=(200, 201))
        return parse_created(answer.data)

    async def start_inference(self, job_id: str) -> Answer:
        """`PUT inferences/{id}/start` once, retried only where ESD cannot have acted.

        The caller decides what 200 (Real-time: the finished job), 202 (Async) and an
        `OutcomeUnknownError` (504, timeout) mean.
        """
        return await self.call(
            "PUT", f"inferences/{quote(job_id, safe='')}/start", ok=(200, 202), retry=Retry.UNSENT
        )

    async def get_inference(self, job_id: str) -> EsdJob:
        answer = await self.call("GET", f"inferences/{quote(job_id, safe='')}")
        return parse_job(answer.data)

    async def list_inferences(
        self,
        task_type: str,
        *,
        limit: int,
        start_key: str | None = None,
        username: str | None = None,
    ) -> InferencePage:
        params = [("type", task_type), ("limit", str(limit))]
        if start_key is not None:
            params.append(("exclusive_start_key", start_key))
        if username is not None:
            params.append(("username", username))
        answer = await self.call("GET", "inferences", params=params)
        return parse_inference_page(answer.data)

    async def delete_inferences(self, job_ids: Sequence[str]) -> None:
        await self.call(
            "DELETE",
            "inferences",
            body=DeleteInferences(inference_id_list=list(job_ids)).dump(),
            ok=(200, 204),
        )

    async def list_endpoints(
        self, *, limit: int = 50, start_key: str | None = None
    ) -> EndpointPage:
        # ESD shows a user holding only `sagemaker_endpoint:list` the endpoints of the
        # `username` query user's roles, and nothing without it (endpoints/list_endpoints.py).
        params = [("limit", str(limit)), ("username", self._config.username)]
        if start_key is not None:
            params.append(("exclusive_start_key", start_key))
        answer = await self.call("GET", "endpoints", params=params)
        return parse_endpoint_page(answer.data)

    async def list_checkpoints(
        self, types: Sequence[str], *, page: int = 1, per_page: int = 100
    ) -> CheckpointPage:
        params = [("types", t) for t in types]
        params += [("status", "Active"), ("page", str(page)), ("per_page", str(per_page))]
        # Likewise `checkpoint:list` sees only what the query user's roles may use
        # (checkpoints/list_checkpoints.py).
        params.append(("username", self._config.username))
        answer = await self.call("GET", "checkpoints", params=params)
        return parse_checkpoint_page(answer.data)

    # -- Presigned storage URLs ----------------------------------------------------------------

    async def upload(self, url: str, text: str) -> None:
        """`PUT` the payload to a presigned URL with no headers of ours (§4.2)."""
        where = bare_url(url)
        host = urlsplit(url).netloc
        body = text.encode()

        async def once() -> None:
            error = await self._upload_once(url, where, host, body)
            if error is not None:
                raise _Failure(error)

        try:
            # The same bytes to the same key: repeating is always harmless.
            await self._config.retry.run(
                once,
                retry_if=lambda exc: (
                    isinstance(exc, _Failure) and isinstance(exc.error, BackendUnavailableError)
                ),
                what="ESD payload upload",
            )
        except _Failure as failure:
            raise failure.error from None

    async def _upload_once(
        self, url: str, where: str, host: str, body: bytes
    ) -> BackendError | None:
        try:
            async with self._http.put(
                # Signed URLs break on headers they were not signed with; aiohttp would add a
                # Content-Type for a bytes body.
                url,
                data=body,
                skip_auto_headers=("Content-Type",),
            ) as response:
                await self._read_answer(response, 1_000_000, where)
                status = response.status
        except aiohttp.ClientError as exc:
            return self._network_failure("PUT (payload upload)", host, exc).error
        except TimeoutError:
            return BackendUnavailableError(
                f"uploading the payload to {where} timed out",
                user_message="uploading the job's payload to ESD's storage timed out",
            )
        if 200 <= status < 300:
            return None
        if status == 429 or status >= 500:
            return BackendUnavailableError(
                f"payload upload to {where} answered {status}",
                status=status,
                user_message=f"ESD's storage refused the job's payload for now ({status})",
            )
        return BackendError(
            f"payload upload to {where} answered {status}",
            status=status,
            user_message=f"ESD's storage refused the job's payload ({status})",
        )

    async def download(self, url: str, max_bytes: int) -> tuple[int, bytes]:
        """`GET` a presigned URL with no headers of ours: (status, body up to `max_bytes`).

        Raises `BackendError` when the body is larger, `BackendUnavailableError` on 429, 5xx,
        network failures and timeouts (after retries), and returns other answers (a 403 of an
        expired URL) for the caller to judge.
        """
        try:
            fetched = await download(
                self._http,
                url,
                max_bytes=max_bytes,
                policy=self._config.retry,
                timeouts=aiohttp.ClientTimeout(
                    total=self._config.timeout * 4, connect=self._config.connect_timeout
                ),
            )
        except TooLargeError as exc:
            raise BackendError(
                str(exc), user_message="a result file from ESD is larger than the bot accepts"
            ) from None
        except UnavailableError as exc:
            raise BackendUnavailableError(
                str(exc),
                status=exc.status,
                user_message=f"ESD's storage failed while sending the results ({exc.what})",
            ) from None
        return fetched.status, fetched.body

    @staticmethod
    async def _read_answer(
        response: aiohttp.ClientResponse, limit: int, where: str | None = None
    ) -> bytes:
        try:
            return await read_capped(response, limit, where or "an ESD answer")
        except TooLargeError as exc:
            raise BackendError(
                str(exc), user_message="ESD sent more data than the bot accepts"
            ) from None
