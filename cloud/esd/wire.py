"""ESD's wire format, described once (`reference/esd-api.md` §2–§4), as pydantic models.

The client (`cloud.esd.client`, `cloud.esd.payloads`) builds its request bodies with these models
and reads every answer through them; `sdbot local-backend` (`cloud.esd_server`) validates request
bodies against the same models, the way API Gateway's body validator does, and builds its
answers with them. So the fake cannot drift from what the client reads.

The models describe ESD as it is, quirks included: `sagemakerRaw` is whatever ESD stored
(usually Python's `str(dict)`, not JSON; `{}` on list rows), checkpoints' `created` is a string
(ESD's `DecimalEncoder`), instance counts are strings (`N/A` on old rows), `name` is a list.
Answers are read leniently (ESD varies between versions): numbers are accepted where strings are
described, unknown keys are ignored, and fields the client does not depend on are `Tolerant`
(an unusable value reads as absent). A shape the client cannot use is a `ValidationError`, which
`cloud.esd.payloads` turns into a `BackendError` naming the field. Requests are validated
strictly (`model_validate(..., strict=True)`), as API Gateway's JSON schema does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, overload

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

from bot.model import EndpointType

T = TypeVar("T")

# `inference_type` as the wire spells it (the server validates the literal strictly, as API
# Gateway's schema does); the bot's own type is `bot.model.EndpointType`.
InferenceType = Literal["Async", "Real-time"]
INFERENCE_TYPES: tuple[InferenceType, ...] = ("Async", "Real-time")


def inference_type(kind: EndpointType) -> InferenceType:
    """`kind` as `CreateInference.inference_type`."""
    return "Real-time" if kind is EndpointType.REAL_TIME else "Async"


def _none_if_invalid(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    try:
        return handler(value)
    except ValidationError:
        return None


# A field whose unusable value reads as absent: what the client can do without.
Tolerant = Annotated[T | None, WrapValidator(_none_if_invalid)]


class Wire(BaseModel):
    """A JSON object of ESD's API; `dump()` is its JSON form (the keys set, and only those)."""

    model_config = ConfigDict(frozen=True, extra="ignore", coerce_numbers_to_str=True)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


@overload
def esd_time(moment: datetime) -> str: ...
@overload
def esd_time(moment: None) -> None: ...
def esd_time(moment: datetime | None) -> str | None:
    """A time as ESD's Lambdas write it: `datetime.now().isoformat()` in a UTC Lambda, so ISO
    without a zone (§2.4)."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


# -- Envelopes (§2.1, §2.2) ------------------------------------------------------------------


class Debug(Wire):
    function_url: str
    log_url: str
    trace_url: str | None = None


class Envelope(Wire):
    """Every Lambda answer; API Gateway's own errors carry only `message` and `requestId`
    (plus `statusCode` for the body validator's)."""

    statusCode: Tolerant[int] = None
    debug: Tolerant[Debug] = None
    data: JsonValue = None
    message: Tolerant[str] = None
    requestId: Tolerant[str] = None


# -- Requests (§4.1, §4.6) -------------------------------------------------------------------


class CreateInference(Wire):
    """`POST /inferences`: API Gateway requires `task_type`, `inference_type`, `models`."""

    task_type: str
    inference_type: InferenceType
    models: dict[str, list[str]]
    sagemaker_endpoint_name: str | None = None
    payload_string: str | None = None  # the A1111 payload inline: no presigned upload
    workflow: str | None = None


class DeleteInferences(Wire):
    """`DELETE /inferences`."""

    inference_id_list: Annotated[list[str], Field(min_length=1, max_length=100)]


# -- Jobs (§4.1, §4.3–§4.5) ------------------------------------------------------------------


class UsedModel(Wire):
    id: Tolerant[str] = None
    model_name: Tolerant[str] = None
    s3: Tolerant[str] = None
    type: Tolerant[str] = None


class JobParams(Wire):
    input_body_s3: Tolerant[str] = None
    input_body_presign_url: Tolerant[str] = None
    sagemaker_inference_endpoint_id: Tolerant[str] = None
    sagemaker_inference_instance_type: Tolerant[str] = None
    sagemaker_inference_endpoint_name: Tolerant[str] = None
    used_models: Tolerant[dict[str, list[UsedModel]]] = None
    output_path: Tolerant[str] = None  # Async jobs, once started
    # Not ESD's: SageMaker's FailureLocation, which the bot adds to the rows it writes itself
    # for interrogate jobs on SageMaker (cloud/esd/sagemaker.py).
    failure_path: Tolerant[str] = None


class InferenceItem(Wire):
    """A job row: `GET /inferences/{id}` (with presigned URLs), a `GET /inferences` row (without
    them), or a Real-time start's answer. Times are naive ISO strings, UTC (§2.4)."""

    InferenceJobId: str
    status: str | None = None
    taskType: str | None = None
    inference_type: str | None = None
    createTime: str | None = None
    startTime: str | None = None
    completeTime: str | None = None
    owner_group_or_role: Tolerant[list[str]] = None
    params: Tolerant[JobParams] = None
    image_names: Tolerant[list[str]] = None
    img_presigned_urls: list[str] | None = None
    output_presigned_urls: list[str] | None = None
    caption: Tolerant[str] = None  # interrogate jobs only
    sagemakerRaw: JsonValue = None  # Python's `str(dict)` of the error, or `{}` on list rows
    payload_string: Tolerant[str] = None
    workflow: Tolerant[str] = None
    inference_info_name: Tolerant[str] = None


class InferenceList(Wire):
    """`GET /inferences` data; `last_evaluated_key` is base64 of a DynamoDB key, or null."""

    inferences: list[InferenceItem] | None = None
    last_evaluated_key: JsonValue = None


class CheckpointRef(Wire):
    id: Tolerant[str] = None
    name: Tolerant[list[str]] = None
    type: Tolerant[str] = None


class CreatedInference(Wire):
    id: str
    type: Tolerant[str] = None
    api_params_s3_location: Tolerant[str] = None
    api_params_s3_upload_url: str
    models: Tolerant[list[CheckpointRef]] = None  # txt2img / img2img only


class Created(Wire):
    """`POST /inferences` → 201 data."""

    inference: CreatedInference


class StartedInference(Wire):
    inference_id: str
    status: str
    endpoint_name: Tolerant[str] = None
    output_path: Tolerant[str] = None


class Started(Wire):
    """`PUT /inferences/{id}/start` → 202 data (Async); `inference` is kept for old clients."""

    InferenceJobId: str
    status: str
    inference: Tolerant[StartedInference] = None


# -- Endpoints and checkpoints (§4.7, §4.8) --------------------------------------------------


class EndpointItem(Wire):
    """A `GET /endpoints` row (ESD's `Endpoint` dataclass); counts are strings."""

    EndpointDeploymentJobId: Tolerant[str] = None
    endpoint_name: str
    endpoint_status: str | None = None
    status: Tolerant[str] = None  # deprecated; old rows may hold `deleted`
    endpoint_type: str | None = None
    service_type: str | None = None  # `sd` | `comfy`: ComfyUI endpoints share the table
    instance_type: str | None = None
    current_instance_count: Tolerant[str] = None
    min_instance_number: Tolerant[str] = None
    max_instance_number: Tolerant[str] = None
    autoscaling: Tolerant[bool] = None
    startTime: Tolerant[str] = None
    endTime: Tolerant[str] = None
    owner_group_or_role: Tolerant[list[str]] = None
    custom_extensions: Tolerant[str] = None
    error: Tolerant[str] = None


class EndpointList(Wire):
    endpoints: list[EndpointItem] | None = None
    last_evaluated_key: JsonValue = None


class CheckpointParams(Wire):
    creator: Tolerant[str] = None
    message: Tolerant[str] = None
    created: Tolerant[str] = None


class CheckpointItem(Wire):
    """A `GET /checkpoints` row: `name[0]` is the file name inference uses."""

    id: Tolerant[str] = None
    s3Location: Tolerant[str] = None
    type: str | None = None
    status: Tolerant[str] = None
    name: list[str] | None = None
    created: Tolerant[str] = None  # a DynamoDB number, which ESD's DecimalEncoder writes as text
    params: Tolerant[CheckpointParams] = None
    allowed_roles_or_users: Tolerant[list[str]] = None
    source_path: Tolerant[str] = None
    target_path: Tolerant[str] = None


class CheckpointList(Wire):
    page: Tolerant[int] = None
    per_page: Tolerant[int] = None
    pages: Tolerant[int] = None
    total: Tolerant[int] = None
    checkpoints: list[CheckpointItem] | None = None


class Ping(Wire):
    """`GET /ping` data: real ESD sends none; `sdbot local-backend` advertises what it runs
    over REST beyond ESD (interrogate task types)."""

    sdbot_local_backend: Tolerant[StrictBool] = None
    interrogate: Tolerant[StrictBool] = None
    task_types: Tolerant[list[str]] = None
