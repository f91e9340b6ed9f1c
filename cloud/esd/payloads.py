"""ESD's wire formats (`reference/esd-api.md` §2–§4) and their one conversion into dataclasses.

The `TypedDict`s describe what ESD sends; nothing outside this module indexes into them. Every
`parse_*` function checks types as it reads, because the JSON comes from the network, and raises
`BackendError` on a shape it cannot use. The dataclasses (`EsdJob`, `InferencePage`, …) are
what the client hands to the backend.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict

from bot.errors import BackendError
from bot.logs import redact
from bot.model import CloudJob, Endpoint, JobState, Model

if TYPE_CHECKING:
    from collections.abc import Mapping

# -- Wire shapes ------------------------------------------------------------------------------


class Envelope(TypedDict, total=False):
    """Every Lambda answer (§2.1); API Gateway's own errors have only `message`, `requestId`."""

    statusCode: int
    message: str
    data: object
    requestId: str


class CreatedInference(TypedDict, total=False):
    """`POST /inferences` → 201 `data.inference` (§4.1)."""

    id: str
    type: str
    api_params_s3_location: str
    api_params_s3_upload_url: str


class UsedModel(TypedDict, total=False):
    id: str
    model_name: str
    s3: str
    type: str


class JobParams(TypedDict, total=False):
    sagemaker_inference_endpoint_name: str
    sagemaker_inference_instance_type: str
    used_models: dict[str, list[UsedModel]]
    output_path: str


class InferenceItem(TypedDict, total=False):
    """A job row: `GET /inferences/{id}` (with presigned URLs) or a `GET /inferences` item."""

    InferenceJobId: str
    status: str
    taskType: str
    inference_type: str
    createTime: str
    startTime: str
    completeTime: str
    owner_group_or_role: list[str]
    params: JobParams
    image_names: list[str]
    img_presigned_urls: list[str]
    output_presigned_urls: list[str]
    caption: str
    sagemakerRaw: object


class InferenceList(TypedDict, total=False):
    inferences: list[InferenceItem]
    last_evaluated_key: str | None


class EndpointItem(TypedDict, total=False):
    """A `GET /endpoints` item (§4.7); counts are strings, `N/A` on old rows."""

    EndpointDeploymentJobId: str
    endpoint_name: str
    endpoint_status: str
    endpoint_type: str
    service_type: str
    instance_type: str
    current_instance_count: str
    min_instance_number: str
    max_instance_number: str


class EndpointList(TypedDict, total=False):
    endpoints: list[EndpointItem]
    last_evaluated_key: str | None


class CheckpointItem(TypedDict, total=False):
    """A `GET /checkpoints` item (§4.8); `name[0]` is the file name inference uses."""

    id: str
    name: list[str]
    type: str
    status: str


class CheckpointList(TypedDict, total=False):
    page: int
    per_page: int
    pages: int
    total: int
    checkpoints: list[CheckpointItem]


class PingData(TypedDict, total=False):
    """`GET /ping` data; `interrogate` is the ESD-compatible server's own advertisement."""

    interrogate: bool


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
    """One ESD job as the backend needs it."""

    id: str
    task_type: str
    status: str  # as ESD wrote it
    state: JobState | None  # None: a status string this client does not know
    inference_type: str | None
    created_at: datetime | None
    started_at: datetime | None  # set by the container when it begins (§2.4)
    endpoint: str | None
    model: str | None
    owner: str | None
    reason: str | None  # readable `sagemakerRaw`, None when ESD gave none
    image_urls: tuple[str, ...] = ()
    param_urls: tuple[str, ...] = ()
    caption: str | None = None

    @classmethod
    def failed(cls, job_id: str, reason: str, task_type: str = "") -> EsdJob:
        """A job the bot knows has failed without a row to read (deleted, unreadable)."""
        return cls(
            id=job_id,
            task_type=task_type,
            status="failed",
            state=JobState.FAILED,
            inference_type=None,
            created_at=None,
            started_at=None,
            endpoint=None,
            model=None,
            owner=None,
            reason=reason,
        )

    def cloud_job(self) -> CloudJob:
        return CloudJob(
            backend_id=self.id,
            task_type=self.task_type,
            state=self.status,
            created_at=self.created_at,
            endpoint=self.endpoint,
            model=self.model,
            owner=self.owner,
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


def _shape_error(what: str) -> BackendError:
    return BackendError(
        f"ESD answered with an unexpected shape: {what}",
        user_message="the backend answered something this bot cannot read",
    )


def _mapping(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _shape_error(f"{what} is not an object")
    return value


def _opt_str(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _shape_error(f"`{key}` is not a string")


def _req_str(item: Mapping[str, Any], key: str, what: str) -> str:
    value = _opt_str(item, key)
    if value is None:
        raise _shape_error(f"{what} has no `{key}`")
    return value


def _str_list(item: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = item.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _shape_error(f"`{key}` is not a list of strings")
    return tuple(value)


def _next_key(data: Mapping[str, Any]) -> str | None:
    key = data.get("last_evaluated_key")
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
    line = " ".join(redact(text).split())
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 1] + "…"


def _first_model(params: Mapping[str, Any]) -> str | None:
    used = params.get("used_models")
    if not isinstance(used, dict):
        return None
    checkpoints = used.get("Stable-diffusion")
    if isinstance(checkpoints, list) and checkpoints and isinstance(checkpoints[0], dict):
        name = checkpoints[0].get("model_name")
        return name if isinstance(name, str) and name else None
    return None


def parse_job(value: object) -> EsdJob:
    """A job row from `GET /inferences/{id}`, a list item, or a Real-time start answer."""
    item = _mapping(value, "job")
    job_id = _req_str(item, "InferenceJobId", "job")
    status = _opt_str(item, "status") or ""
    raw_params = item.get("params")
    params: Mapping[str, Any] = raw_params if isinstance(raw_params, dict) else {}
    endpoint = params.get("sagemaker_inference_endpoint_name")
    owners = item.get("owner_group_or_role")
    owner = (
        owners[0] if isinstance(owners, list) and owners and isinstance(owners[0], str) else None
    )
    state = _STATES.get(status)
    inference_type = _opt_str(item, "inference_type")
    reason = readable_reason(item.get("sagemakerRaw"))
    if state is JobState.CREATED and inference_type == "Real-time":
        # ESD never moves a Real-time row on from `created`: its start Lambda sets
        # `startTime`, waits for the endpoint, and on an error stores `sagemakerRaw` and answers
        # 400 (inferences/start_inference_job.py).
        if reason is not None:
            state = JobState.FAILED
        elif item.get("startTime"):
            state = JobState.INPROGRESS
    task = _opt_str(item, "taskType") or ""
    if state is JobState.FAILED and reason is None:
        reason = NO_CAPTION if task.startswith("interrogate") else NO_IMAGES
    caption = item.get("caption")
    return EsdJob(
        id=job_id,
        task_type=task,
        status=status,
        state=state,
        inference_type=inference_type,
        created_at=parse_time(_opt_str(item, "createTime")),
        started_at=parse_time(_opt_str(item, "startTime")),
        endpoint=endpoint if isinstance(endpoint, str) and endpoint else None,
        model=_first_model(params),
        owner=owner,
        reason=reason if state is JobState.FAILED else None,
        image_urls=_str_list(item, "img_presigned_urls"),
        param_urls=_str_list(item, "output_presigned_urls"),
        caption=caption if isinstance(caption, str) and caption.strip() else None,
    )


def parse_inference_page(value: object) -> InferencePage:
    data = _mapping(value, "inference list")
    items = data.get("inferences") or []
    if not isinstance(items, list):
        raise _shape_error("`inferences` is not a list")
    return InferencePage(tuple(parse_job(i) for i in items), _next_key(data))


def parse_endpoint(value: object) -> Endpoint | None:
    """An `sd` endpoint, or None for other services (ComfyUI shares the table)."""
    item = _mapping(value, "endpoint")
    service = _opt_str(item, "service_type")
    if service not in (None, "sd"):
        return None
    return Endpoint(
        name=_req_str(item, "endpoint_name", "endpoint"),
        status=_opt_str(item, "endpoint_status") or _opt_str(item, "status") or "unknown",
        type=_opt_str(item, "endpoint_type") or "Async",
        instance_type=_opt_str(item, "instance_type") or "",
        instance_count=parse_count(item.get("current_instance_count")),
        min_instances=parse_count(item.get("min_instance_number")),
        max_instances=parse_count(item.get("max_instance_number")),
    )


def parse_endpoint_page(value: object) -> EndpointPage:
    data = _mapping(value, "endpoint list")
    items = data.get("endpoints") or []
    if not isinstance(items, list):
        raise _shape_error("`endpoints` is not a list")
    found = (parse_endpoint(i) for i in items)
    return EndpointPage(tuple(e for e in found if e is not None), _next_key(data))


def parse_checkpoint_page(value: object) -> CheckpointPage:
    data = _mapping(value, "checkpoint list")
    items = data.get("checkpoints") or []
    if not isinstance(items, list):
        raise _shape_error("`checkpoints` is not a list")
    models = []
    for raw in items:
        item = _mapping(raw, "checkpoint")
        names = _str_list(item, "name")
        kind = _opt_str(item, "type")
        if names and kind:
            models.append(Model(name=names[0], type=kind))
    page = data.get("page", 1)
    pages = data.get("pages", 1)
    return CheckpointPage(
        tuple(models),
        page if isinstance(page, int) else 1,
        pages if isinstance(pages, int) else 1,
    )


def parse_created(value: object) -> Created:
    data = _mapping(value, "create answer")
    inference = _mapping(data.get("inference"), "create answer `inference`")
    return Created(
        id=_req_str(inference, "id", "created job"),
        upload_url=_req_str(inference, "api_params_s3_upload_url", "created job"),
    )


def parse_ping(value: object, version: str | None) -> PingInfo:
    data = value if isinstance(value, dict) else {}
    return PingInfo(version=version, interrogate=data.get("interrogate") is True)


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
