"""`WebUiClient`: the AUTOMATIC1111 / Forge WebUI API (`--api`) over one aiohttp session.

It owns the session and the optional HTTP basic auth (`--api-auth user:password`), reads every
answer with a size cap, and turns each failure into `bot.errors` with a message users can act
on: 401 (credentials), 404 on `/sdapi/…` (the WebUI was started without `--api`), FastAPI's
422 validation details, the WebUI's own error body (`{"error", "detail", "body", "errors"}`
from `api_middleware.handle_exception`, modules/api/api.py) for 4xx and 500 — with CUDA
out-of-memory recognised —, refused connections (`WebUiUnreachableError`) and requests cut
while the WebUI was working (`RequestCutError`, after a restart or a crash of the WebUI).
Messages name the host and the route, never the credentials.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from bot.errors import BackendError, BackendUnavailableError, ConfigError
from bot.logs import redact

if TYPE_CHECKING:
    from collections.abc import Sequence
from transport.download import TooLargeError, read_capped

# A batch of 8 PNGs at 1024² in base64 is ~20 MB; catalogue answers are far smaller.
_MAX_ANSWER_BYTES = 256_000_000
_MESSAGE_MAX = 300
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_WEBP = b"RIFF"


class WebUiUnreachableError(BackendUnavailableError):
    """No connection could be made: the request certainly did not reach the WebUI."""


class RequestCutError(BackendUnavailableError):
    """The connection broke after the request was sent: the WebUI may have been working on it."""


@dataclass(frozen=True)
class Progress:
    """`GET /sdapi/v1/progress` (`ProgressResponse`, modules/api/models.py)."""

    progress: float  # 0..1
    eta: float  # seconds, the WebUI's estimate
    job_count: int  # 0 = idle
    task: str | None  # `current_task` (1.7+): the `force_task_id` of the running request
    image: bytes | None  # the live preview, when the WebUI makes one


def _short(text: str, secrets: tuple[str, ...]) -> str:
    line = " ".join(redact(text, secrets).split())
    return line if len(line) <= _MESSAGE_MAX else line[: _MESSAGE_MAX - 1] + "…"


def _validation_text(detail: object) -> str | None:
    """FastAPI's 422 `detail`: `[{"loc": ["body", "steps"], "msg": "…", "type": "…"}, …]`."""
    if not isinstance(detail, list):
        return None
    parts = []
    for item in detail[:5]:
        if not isinstance(item, dict):
            continue
        loc = item.get("loc")
        where = ".".join(str(p) for p in loc if p != "body") if isinstance(loc, list) else "request"
        parts.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or None


def is_out_of_memory(text: str) -> bool:
    lowered = text.lower()
    return "out of memory" in lowered or "outofmemoryerror" in lowered


def decode_image(value: object) -> bytes | None:
    """A base64 image from the WebUI (bare or as a data URI); None when it is not one."""
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith((_PNG, _JPEG, _WEBP)) else None


class WebUiClient:
    """The HTTP side of `A1111Backend`; `start()` opens the session, `aclose()` closes it."""

    def __init__(
        self,
        api_url: str,
        auth: str | None = None,
        *,
        timeout: float = 30.0,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """`trace_configs` observe every request (operators' metrics, `adapters.web`)."""
        parts = urlsplit(api_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"A1111_API_URL must be an http(s) URL, got {api_url!r}")
        if parts.username or parts.password:
            raise ConfigError("A1111_API_URL must not hold credentials; use A1111_API_AUTH")
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.host = parts.netloc
        self._headers: dict[str, str] = {}
        self._secrets: tuple[str, ...] = ()
        if auth:
            # RFC 7617 basic credentials, as FastAPI's HTTPBasic reads them (latin-1 decoded).
            token = base64.b64encode(auth.encode("latin-1", "replace")).decode("ascii")
            self._headers = {"Authorization": f"Basic {token}"}
            self._secrets = (auth.partition(":")[2], auth, token)
        self._timeout = timeout
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"WebUiClient({self.base!r}, auth={'set' if self._headers else 'none'})"

    async def start(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=self._trace_configs or None,
            )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> WebUiClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def redact(self, text: str) -> str:
        return _short(text, self._secrets)

    # -- Calls -----------------------------------------------------------------------------------

    async def get(self, route: str, **params: str) -> Any:
        return await self._call("GET", route, params=params, limit=self._timeout)

    async def post(self, route: str, body: object = None, *, held: bool = False) -> Any:
        """POST `body` as JSON; `held`: the WebUI answers only when the work is done, so the
        answer may take as long as the job (the runner's job timeout bounds it)."""
        return await self._call("POST", route, body=body, limit=None if held else self._timeout)

    async def _call(
        self,
        method: str,
        route: str,
        *,
        params: dict[str, str] | None = None,
        body: object = None,
        limit: float | None,
    ) -> Any:
        if self._session is None or self._session.closed:
            raise BackendUnavailableError("the WebUI client is not started")
        name = f"{method} {route}"
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            async with self._session.request(
                method,
                self.base + route,
                params=params or None,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=limit, connect=10.0),
            ) as response:
                raw = await _read_capped(response)
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            reason = _connect_reason(exc.os_error)
            raise WebUiUnreachableError(
                f"the WebUI at {self.host} is not reachable ({name}): {reason}",
                user_message=f"the WebUI at {self.host} is not reachable ({reason.lower()})",
            ) from None
        except aiohttp.ServerTimeoutError:
            # No read timeout is set, so this is the connect timeout: nothing was sent.
            raise WebUiUnreachableError(
                f"the WebUI at {self.host} did not accept a connection ({name})",
                user_message=f"the WebUI at {self.host} is not reachable (connection timed out)",
            ) from None
        except TimeoutError:
            raise BackendUnavailableError(
                f"the WebUI at {self.host} did not answer {name} in time",
                user_message=f"the WebUI at {self.host} did not answer in time",
            ) from None
        except aiohttp.ClientError as exc:
            # Connected, then the connection broke (disconnect, reset, truncated answer): the
            # WebUI may have been working on the request.
            raise RequestCutError(
                f"the WebUI at {self.host} closed the connection during {name}: "
                f"{self.redact(str(exc))}",
                user_message=f"the WebUI at {self.host} closed the connection (restarted?)",
            ) from None
        answer = _json(raw)
        if status == 200:
            if answer is _NOT_JSON:
                raise BackendError(
                    f"the WebUI answered {name} with something that is not JSON",
                    status=status,
                    user_message="the WebUI answered something this bot cannot read",
                )
            return answer
        raise self._failure(name, status, answer, raw)

    def _failure(self, name: str, status: int, answer: object, raw: bytes) -> BackendError:
        where = f"the WebUI at {self.host}"
        body = answer if isinstance(answer, dict) else {}
        if status == 401:
            return BackendError(
                f"{where} refused the credentials ({name} → 401)",
                status=status,
                user_message=f"{where} refused the bot's credentials (A1111_API_AUTH, --api-auth)",
            )
        if status == 404 and body.get("detail") == "Not Found":
            # Starlette's own 404 for an unknown route: the API is not enabled.
            return BackendError(
                f"{where} has no {name} route (started without --api?)",
                status=status,
                user_message=f"{where} has no API: start it with --api",
            )
        if status == 422:
            found = _validation_text(body.get("detail")) or _error_text(body)
            invalid = self.redact(found or "invalid request")
            return BackendError(
                f"{where} rejected {name} (422): {invalid}",
                status=status,
                user_message=f"the WebUI rejected the request: {invalid}",
            )
        found = _error_text(body)
        if found is None and answer is _NOT_JSON and status < 500:
            found = raw[:200].decode("utf-8", "replace")
        text = self.redact(found) if found else None
        if text and is_out_of_memory(text):
            return BackendError(
                f"{where} ran out of GPU memory ({name} → {status}): {text}",
                status=status,
                user_message="the WebUI's GPU ran out of memory: try a smaller size or count "
                f"({text})",
            )
        if status >= 500 and text is None:
            # A proxy's 502/503 page or a crash without the WebUI's error body: worth a retry.
            return BackendUnavailableError(f"{where} answered {name} with {status}", status=status)
        return BackendError(
            f"{where} answered {name} with {status}: {text}",
            status=status,
            user_message=f"the WebUI failed: {text or status}",
        )

    # -- Routes ----------------------------------------------------------------------------------

    async def progress(self, *, with_image: bool) -> Progress:
        answer = await self.get(
            "/sdapi/v1/progress", skip_current_image="false" if with_image else "true"
        )
        return parse_progress(answer)

    async def interrupt(self) -> None:
        await self.post("/sdapi/v1/interrupt")

    async def version(self) -> str | None:
        """The WebUI's version (`Version` of `/internal/sysinfo`, 1.6+), None if unknown.

        Only that one field is read; the rest of the system report is never logged or kept.
        """
        try:
            answer = await self.get("/internal/sysinfo")
        except BackendError as exc:
            if exc.status in (404, 405):
                return None
            raise
        if isinstance(answer, str):  # PlainTextResponse holding JSON text
            answer = _json(answer.encode())
        version = answer.get("Version") if isinstance(answer, dict) else None
        return version if isinstance(version, str) and version else None


_NOT_JSON = object()


def _connect_reason(error: OSError) -> str:
    """Why a connection failed, in words ("connection refused", "name not known", …)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if error.errno:
        return os.strerror(error.errno).lower()
    return " ".join(str(error).split()).lower()[:100] or "connection failed"


def _json(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return _NOT_JSON


def _error_text(body: dict[str, Any]) -> str | None:
    """The WebUI's error body: `error` (exception class), `detail`, `errors` (its str)."""
    error = body.get("error")
    detail = body.get("detail")
    errors = body.get("errors")
    pieces = [p for p in (detail, errors) if isinstance(p, str) and p.strip()]
    if isinstance(detail, str) and detail and isinstance(errors, str) and detail in errors:
        pieces = [detail]  # an HTTPException: `errors` is "400: <detail>"
    if isinstance(error, str) and error and error != "HTTPException":
        pieces.insert(0, error)
    return ": ".join(pieces) or None


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await read_capped(response, _MAX_ANSWER_BYTES, "a WebUI answer")
    except TooLargeError as exc:
        raise BackendError(
            str(exc), user_message="the WebUI sent more data than the bot accepts"
        ) from None


def _number(value: object, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def parse_progress(answer: object) -> Progress:
    data = answer if isinstance(answer, dict) else {}
    state = data.get("state") if isinstance(data.get("state"), dict) else {}
    assert isinstance(state, dict)
    task = data.get("current_task")
    return Progress(
        progress=min(1.0, max(0.0, _number(data.get("progress")))),
        eta=max(0.0, _number(data.get("eta_relative"))),
        job_count=int(_number(state.get("job_count"))),
        task=task if isinstance(task, str) and task else None,
        image=decode_image(data.get("current_image")),
    )
