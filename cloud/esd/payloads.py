"""ESD's answers converted once into the dataclasses the backend uses (`EsdJob`, pages, …).

Every `parse_*` function reads the JSON through the one description of ESD's wire format
(`cloud.esd.wire`), because it comes from the network, and raises `BackendError` naming the
field on a shape it cannot use. Nothing outside this module and `cloud.esd.wire` knows ESD's
keys; `readable_reason` turns `sagemakerRaw` (usually Python's `str(dict)`) into one line.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import ValidationError

from bot.errors import BackendError
from bot.logs import redact
from bot.model import CloudJob, Endpoint, EndpointType, JobState, Model
from cloud.esd.config import EsdSettings
from cloud.esd.wire import (
    CheckpointList,
    EndpointItem,
    EndpointList,
    Envelope,
    InferenceItem,
    InferenceList,
    JobParams,
    Ping,
    Started,
    Wire,
)
from cloud.esd.wire import Created as CreatedAnswer

# -- Converted values -------------------------------------------------------------------------

# ESD's status strings; "failure" is what v1.0–v1.3 wrote on a submit error (§5.1).
_STATES: dict[str, JobState] = {
    "created": JobState.CREATED,
    "inprogress": JobState.INPROGRESS,
    "succeed": JobState.SUCCEED,
    "failed": JobState.FAILED,
    "failure": JobState.FAILED,
}
NO_REASON = "the backend gave no reason"
# ESD fails a job without any `sagemakerRaw` when the container's output has no images (an
# A1111 error body, or `null` after the container swallowed an exception): its result parser
# trips over the missing `images` (inferences/inference_libs.py, inference_async_events.py).
NO_IMAGES = "the endpoint returned no images"
NO_CAPTION = "the endpoint returned no caption"
# What ESD's Real-time start answers (400) when the container gave nothing to parse: `'error'
# in None` for a `null` output, the KeyError of a missing `images` (start_inference_job.py).
_EMPTY_OUTPUT_MESSAGES = ("argument of type 'NoneType' is not iterable", "'images'", "'caption'")
_REASON_KEYS = (
    "failureReason",
    "FailureReason",
    "errors",
    "detail",
    "error",
    "errorMessage",
    "message",
    "reason",
)
_REASON_MAX = 300
# `sagemakerRaw` is parsed as a Python literal only up to this size (`ast` is not free).
_LITERAL_MAX = 100_000


@dataclass(frozen=True)
class EsdJob:
    """One ESD job as the backend needs it (what a row does not say is None or empty)."""

    id: str
    task_type: str
    status: str  # as ESD wrote it
    state: JobState | None  # None: a status string this client does not know
    inference_type: EndpointType | None = None  # None: ESD's row names none this client knows
    created_at: datetime | None = None
    started_at: datetime | None = None  # set by the container when it begins (§2.4)
    endpoint: str | None = None
    model: str | None = None
    owner: str | None = None
    reason: str | None = None  # readable `sagemakerRaw`, None when ESD gave none
    image_urls: tuple[str, ...] = ()
    param_urls: tuple[str, ...] = ()
    caption: str | None = None

    @classmethod
    def failed(cls, job_id: str, reason: str, task_type: str = "") -> EsdJob:
        """A job the bot knows has failed without a row to read (deleted, unreadable)."""
        return cls(job_id, task_type, "failed", JobState.FAILED, reason=reason)

    def cloud_job(self) -> CloudJob:
        return CloudJob(
            backend_id=self.id,
            task_type=self.task_type,
            state=self.status,
            created_at=self.created_at,
            endpoint=self.endpoint,
            model=self.model,
            owner=self.owner,
            reason=self.reason,
        )


@dataclass(frozen=True)
class InferencePage:
    jobs: tuple[EsdJob, ...]
    next_key: str | None


@dataclass(frozen=True)
class EndpointPage:
    endpoints: tuple[Endpoint, ...]  # only `sd` endpoints
    next_key: str | None


@dataclass(frozen=True)
class CheckpointPage:
    models: tuple[Model, ...]
    page: int
    pages: int


@dataclass(frozen=True)
class Created:
    id: str
    upload_url: str


@dataclass(frozen=True)
class PingInfo:
    version: str | None  # the `x-api-version` header, None when absent
    interrogate: bool  # the server runs interrogate_* task types over REST


# -- Parsing ----------------------------------------------------------------------------------


def _endpoint_type(item: EndpointItem) -> EndpointType:
    """ESD's two endpoint types (esd-api.md §4); a row without one reads as Async, as it did."""
    if item.endpoint_type in (None, ""):
        return EndpointType.ASYNC
    known = _endpoint_type_named(item.endpoint_type)
    if known is not None:
        return known
    raise _shape_error(f"endpoint `{item.endpoint_name}` has endpoint_type {item.endpoint_type!r}")


def _endpoint_type_named(name: str | None) -> EndpointType | None:
    try:
        return None if name is None else EndpointType(name)
    except ValueError:
        return None


def _shape_error(what: str) -> BackendError:
    return BackendError(
        f"ESD answered with an unexpected shape: {what}",
        user_message="the backend answered something this bot cannot read",
    )


M = TypeVar("M", bound=Wire)


def _read(model: type[M], value: object, what: str) -> M:
    """`value` as `model`, or a `BackendError` naming the first field it cannot use (never the
    value itself: it may be a presigned URL)."""
    if not isinstance(value, dict):
        raise _shape_error(f"{what} is not an object")
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        error = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        raise _shape_error(f"{what}: `{where}`: {error['msg']}") from None


def _next_key(key: object) -> str | None:
    if key in (None, ""):
        return None
    if not isinstance(key, str):
        # DynamoDB keys travel base64-encoded; anything else is sent back as compact JSON.
        return json.dumps(key, separators=(",", ":"))
    return key


def parse_time(value: str | None) -> datetime | None:
    """ESD times: naive ISO (`2024-07-30T07:30:40.123`) or `str(datetime)`, both UTC (§2.4)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_count(value: object) -> int | None:
    """Instance counts arrive as strings; `N/A`, empty or junk mean unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _structured(text: str) -> object:
    """`text` as JSON or, failing that, as a Python literal: ESD stores `str(dict)` in
    `sagemakerRaw` (inference_async_events.py, start_inference_job.py), never JSON. Only
    `ast.literal_eval`, which builds literals and runs nothing."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    if len(text) > _LITERAL_MAX or not text.startswith(("{", "[")):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def readable_reason(raw: object) -> str | None:
    """`sagemakerRaw` (a Python repr, JSON text or an object) as one short line, or None."""
    if raw is None or raw in ("", {}, []):
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if text in _EMPTY_OUTPUT_MESSAGES:
            return NO_IMAGES
        decoded = _structured(text)
        if isinstance(decoded, dict | list):
            return readable_reason(decoded)
        return _short(text) if text else None
    if isinstance(raw, dict):
        error, errors = raw.get("error"), raw.get("errors") or raw.get("detail")
        if isinstance(error, str) and isinstance(errors, str) and error and errors.strip():
            # A1111's error body, as the container passes it on: the type and the text.
            return _short(f"{error}: {errors}")
        for key in _REASON_KEYS:
            value = raw.get(key)
            if isinstance(value, str) and value.strip():
                return _short(value)
            if isinstance(value, dict) and value:
                nested = readable_reason(value)
                if nested:
                    return nested
        return _short(json.dumps(raw, separators=(",", ":"), sort_keys=True))
    return _short(json.dumps(raw, separators=(",", ":")) if isinstance(raw, list) else str(raw))


def is_unlistable(exc: BackendError) -> bool:
    """ESD's `GET /inferences` answer when a page holds a row with `caption` (an interrogate
    job): its list handler builds every row as `InferenceJob(**row)`, which has no such field
    (inferences/list_inferences.py, libs/data_types.py)."""
    return exc.status == 400 and "unexpected keyword argument" in (exc.user_message or "")


def _short(text: str) -> str:
    line = " ".join(redact(text, (), EsdSettings.secret_patterns).split())
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 1] + "…"


def _first_model(params: JobParams | None) -> str | None:
    used = params.used_models if params is not None else None
    checkpoints = (used or {}).get("Stable-diffusion")
    return (checkpoints[0].model_name or None) if checkpoints else None


def parse_job(value: object) -> EsdJob:
    """A job row from `GET /inferences/{id}`, a list item, or a Real-time start answer."""
    return _job(_read(InferenceItem, value, "job"))


def _job(item: InferenceItem) -> EsdJob:
    if not item.InferenceJobId:
        raise _shape_error("job has no `InferenceJobId`")
    status = item.status or ""
    state = _STATES.get(status)
    inference_type = _endpoint_type_named(item.inference_type)
    reason = readable_reason(item.sagemakerRaw)
    if state is JobState.CREATED and inference_type is EndpointType.REAL_TIME:
        # ESD never moves a Real-time row on from `created`: its start Lambda sets
        # `startTime`, waits for the endpoint, and on an error stores `sagemakerRaw` and answers
        # 400 (inferences/start_inference_job.py).
        if reason is not None:
            state = JobState.FAILED
        elif item.startTime:
            state = JobState.INPROGRESS
    task = item.taskType or ""
    if state is JobState.FAILED and reason is None:
        reason = NO_CAPTION if task.startswith("interrogate") else NO_IMAGES
    owners = item.owner_group_or_role
    endpoint = item.params.sagemaker_inference_endpoint_name if item.params else None
    caption = item.caption
    return EsdJob(
        id=item.InferenceJobId,
        task_type=task,
        status=status,
        state=state,
        inference_type=inference_type,
        created_at=parse_time(item.createTime),
        started_at=parse_time(item.startTime),
        endpoint=endpoint or None,
        model=_first_model(item.params),
        owner=(owners[0] or None) if owners else None,
        reason=reason if state is JobState.FAILED else None,
        image_urls=tuple(item.img_presigned_urls or ()),
        param_urls=tuple(item.output_presigned_urls or ()),
        caption=caption if caption and caption.strip() else None,
    )


def parse_inference_page(value: object) -> InferencePage:
    data = _read(InferenceList, value, "inference list")
    return InferencePage(
        tuple(_job(item) for item in data.inferences or ()), _next_key(data.last_evaluated_key)
    )


def _endpoint(item: EndpointItem) -> Endpoint | None:
    """An `sd` endpoint, or None for other services (ComfyUI shares the table)."""
    if item.service_type not in (None, "", "sd"):
        return None
    if not item.endpoint_name:
        raise _shape_error("endpoint has no `endpoint_name`")
    return Endpoint(
        name=item.endpoint_name,
        status=item.endpoint_status or item.status or "unknown",
        type=_endpoint_type(item),
        instance_type=item.instance_type or "",
        instance_count=parse_count(item.current_instance_count),
        min_instances=parse_count(item.min_instance_number),
        max_instances=parse_count(item.max_instance_number),
    )


def parse_endpoint(value: object) -> Endpoint | None:
    """An `sd` endpoint row, or None for other services (ComfyUI shares the table)."""
    return _endpoint(_read(EndpointItem, value, "endpoint"))


def parse_endpoint_page(value: object) -> EndpointPage:
    data = _read(EndpointList, value, "endpoint list")
    found = (_endpoint(item) for item in data.endpoints or ())
    return EndpointPage(
        tuple(e for e in found if e is not None), _next_key(data.last_evaluated_key)
    )


def parse_checkpoint_page(value: object) -> CheckpointPage:
    data = _read(CheckpointList, value, "checkpoint list")
    models = tuple(
        Model(name=item.name[0], type=item.type)
        for item in data.checkpoints or ()
        if item.name and item.type
    )
    return CheckpointPage(models, data.page or 1, data.pages or 1)


def parse_created(value: object) -> Created:
    inference = _read(CreatedAnswer, value, "create answer").inference
    if not inference.id or not inference.api_params_s3_upload_url:
        raise _shape_error("created job has no `id` or `api_params_s3_upload_url`")
    return Created(id=inference.id, upload_url=inference.api_params_s3_upload_url)


def parse_envelope(raw: bytes) -> Envelope | None:
    """An API answer's envelope; None when the body is not JSON (a proxy's HTML page)."""
    if not raw:
        return Envelope()
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return Envelope.model_validate(value) if isinstance(value, dict) else Envelope()


def started_endpoint(value: object) -> str | None:
    """The endpoint an Async start answer names (`data.inference.endpoint_name`), or None."""
    if not isinstance(value, dict):
        return None
    try:
        started = Started.model_validate(value)
    except ValidationError:
        return None
    return (started.inference.endpoint_name or None) if started.inference else None


def started_state(value: object) -> str | None:
    """The job status an Async start answer gives (`data.status`: `inprogress`, §4.3), or
    None."""
    if not isinstance(value, dict):
        return None
    try:
        return Started.model_validate(value).status
    except ValidationError:
        return None


def parse_ping(value: object, version: str | None) -> PingInfo:
    data = Ping.model_validate(value) if isinstance(value, dict) else Ping()
    return PingInfo(version=version, interrogate=data.interrogate is True)


def parse_version(text: str | None) -> tuple[int, ...] | None:
    """`1.7.0` → (1, 7, 0); None for missing or unreadable versions."""
    if not text:
        return None
    parts = []
    for piece in text.strip().lstrip("v").split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if len(digits) != len(piece):
            break  # `0-beta` and the like: the number part counts, the rest does not
    return tuple(parts) or None
