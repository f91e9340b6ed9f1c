"""The server's side of ESD's wire format (`cloud.esd.wire`, the one description the client
reads too): request bodies in, envelopes, error bodies and items out.

Request bodies are validated strictly against the `cloud.esd.wire` models and refused the way
API Gateway's body validator does (its messages are those of the JSON-schema validator it
runs); answers are built here only, as `cloud.esd.wire` models: the Lambda envelope
`{"statusCode", "debug", "data"?, "message"?}` with `x-api-version`, API Gateway's own
`{"message", "requestId"}` errors, and the job / endpoint / checkpoint items of esd-api.md §4;
S3's XML errors too. Nothing else in the package writes JSON keys.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from xml.sax.saxutils import escape

from aiohttp import web
from pydantic import ValidationError

from cloud.esd.wire import (
    INFERENCE_TYPES,
    CheckpointItem,
    CheckpointParams,
    CreateInference,
    Debug,
    DeleteInferences,
    EndpointItem,
    Envelope,
    InferenceItem,
    JobParams,
    Started,
    StartedInference,
    Wire,
    esd_time,
)
from cloud.esd_server.state import INTERROGATE_TASKS, LambdaError

if TYPE_CHECKING:
    from cloud.esd_server.state import Checkpoint, EndpointRecord, JobRecord
    from cloud.esd_server.storage import PresignedStorage

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
}
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Headers": "*",
    "Access-Control-Allow-Methods": "*",
}


# -- Requests --------------------------------------------------------------------------------


class BodyInvalidError(Exception):
    """The body fails API Gateway's validator; answered 400 with the validator's message."""


M = TypeVar("M", bound=Wire)


def parse_json_body(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BodyInvalidError("[Invalid request body]") from None


def parse_create(raw: bytes) -> CreateInference:
    """`POST /inferences`; ESD treats an empty optional string as absent."""
    body = _validated(CreateInference, parse_json_body(raw))
    return body.model_copy(
        update={
            "sagemaker_endpoint_name": body.sagemaker_endpoint_name or None,
            "payload_string": body.payload_string or None,
            "workflow": body.workflow or None,
        }
    )


def parse_delete(raw: bytes) -> list[str]:
    """`DELETE /inferences` body: `{"inference_id_list": [1..100 ids]}`."""
    return _validated(DeleteInferences, parse_json_body(raw)).inference_id_list


def _validated(model: type[M], value: object) -> M:
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as exc:
        raise _refusal(exc) from None


# The JSON-schema type names API Gateway's validator reports, by pydantic's error type.
_EXPECTED = {
    "string_type": "string",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "int_type": "integer",
    "bool_type": "boolean",
}


def _refusal(exc: ValidationError) -> Exception:
    """What API Gateway answers for the first problem its validator finds: missing required
    properties before anything else, then fields in the schema's order."""
    errors = exc.errors(include_url=False)
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing" and len(e["loc"]) == 1]
    if missing:
        listed = ",".join(f'"{key}"' for key in missing)
        return BodyInvalidError(f"[object has missing required properties ([{listed}])]")
    error = errors[0]
    kind, loc, value, context = error["type"], error["loc"], error["input"], error.get("ctx", {})
    if kind == "literal_error":
        allowed = json.dumps(list(INFERENCE_TYPES), separators=(",", ":"))
        return BodyInvalidError(
            f"[instance value ({json.dumps(value)}) not found in enum (possible values: {allowed})]"
        )
    if kind == "too_short":
        return BodyInvalidError(
            f"[array is too short: must have at least {context['min_length']} elements but "
            f"instance has {context['actual_length']} elements]"
        )
    if kind == "too_long":
        return BodyInvalidError(
            f"[array is too long: must have at most {context['max_length']} elements but "
            f"instance has {context['actual_length']} elements]"
        )
    if loc[:1] == ("models",) and len(loc) > 1:
        # The schema says only "object"; past the validator, ESD's Lambda fails with a 400.
        return LambdaError(400, f"models[{loc[1]!r}] must be a list of file names")
    return BodyInvalidError(_type_message(value, _EXPECTED.get(kind, "object")))


def _type_message(value: object, expected: str) -> str:
    found = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(type(value), "unknown")
    return (
        f"[instance type ({found}) does not match any allowed primitive type "
        f'(allowed: ["{expected}"])]'
    )


def decode_start_key(text: str) -> dict[str, Any]:
    """The DynamoDB key inside an `exclusive_start_key` (base64 of JSON), or 400."""
    try:
        value = json.loads(base64.b64decode(text.encode(), validate=True).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise LambdaError(400, f"exclusive_start_key is not valid: {exc}") from None
    if not isinstance(value, dict):
        raise LambdaError(400, "exclusive_start_key is not valid: not a key object")
    return value


def encode_start_key(key: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(key).encode()).decode()


def query_int(value: str | None, default: int) -> int:
    """A numeric query parameter the way ESD's `int(get_query_param(...))` reads it."""
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise LambdaError(400, f"invalid literal for int() with base 10: {value!r}") from None


# -- Answers ---------------------------------------------------------------------------------


def envelope(
    status: int,
    route: str,
    version: str,
    *,
    data: Wire | None = None,
    message: str | None = None,
) -> web.Response:
    """A Lambda answer: ESD's envelope, HTTP status = `statusCode`, with `x-api-version`."""
    headers = {"x-api-version": version, **_CORS}
    if status == 204:
        # HTTP forbids a body here; ESD's envelope is lost on the way in any case.
        return web.Response(status=204, headers=headers)
    fields: dict[str, Any] = {"statusCode": status, "debug": _debug(route)}
    if data is not None:
        fields["data"] = data.dump()
    text = message if message is not None else _STATUS_TEXT.get(status, "")
    if text:
        fields["message"] = text
    return web.json_response(Envelope(**fields).dump(), status=status, headers=headers)


def gateway_error(
    status: int,
    message: str,
    error_type: str,
    headers: dict[str, str] | None = None,
    *,
    validation: bool = False,
) -> web.Response:
    """API Gateway's own answer (`DEFAULT_4XX` / `DEFAULT_5XX`, or `BAD_REQUEST_BODY`)."""
    request_id = str(uuid.uuid4())
    answer = (
        Envelope(statusCode=status, message=message, requestId=request_id)
        if validation
        else Envelope(message=message, requestId=request_id)
    )
    return web.json_response(
        answer.dump(),
        status=status,
        headers={"x-amzn-RequestId": request_id, "x-amzn-ErrorType": error_type, **(headers or {})},
    )


def s3_error(status: int, code: str, message: str) -> web.Response:
    request_id = uuid.uuid4().hex[:16].upper()
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{request_id}</RequestId></Error>"
    )
    return web.Response(status=status, text=xml, content_type="application/xml")


def _debug(route: str) -> Debug:
    # ESD points at the Lambda's console pages; there is no console here, so say what ran.
    return Debug(
        function_url=f"local://sdbot-local-backend/{route}",
        log_url="local://sdbot-local-backend/stderr",
        trace_url=None,
    )


# -- Items -----------------------------------------------------------------------------------


def job_params(job: JobRecord) -> JobParams:
    params: dict[str, Any] = {
        "input_body_s3": job.input_s3,
        "input_body_presign_url": job.upload_url,
        "sagemaker_inference_endpoint_id": job.endpoint.id,
        "sagemaker_inference_instance_type": job.endpoint.instance_type,
        "sagemaker_inference_endpoint_name": job.endpoint.name,
    }
    if job.task_type not in INTERROGATE_TASKS:
        params["used_models"] = job.used_models
    if job.output_path is not None:
        params["output_path"] = job.output_path
    return JobParams(**params)


def job_detail(job: JobRecord, storage: PresignedStorage, origin: str) -> InferenceItem:
    """`GET /inferences/{id}` data: the whole row plus fresh presigned GET URLs."""
    item: dict[str, Any] = {
        "img_presigned_urls": [
            storage.url(origin, "GET", f"{job.result_prefix}{name}") for name in job.image_names
        ],
        # Always one URL, even before the file exists, as ESD does.
        "output_presigned_urls": [storage.url(origin, "GET", job.param_key)],
        "InferenceJobId": job.id,
        "status": job.status.value,
        "taskType": job.task_type,
        "inference_type": job.inference_type,
        "createTime": esd_time(job.created),
        "owner_group_or_role": [job.owner],
        "params": job_params(job),
        "image_names": list(job.image_names),
        "completeTime": esd_time(job.completed),
    }
    if job.started is not None:
        item["startTime"] = esd_time(job.started)
    if job.caption is not None:
        item["caption"] = job.caption
    if job.sagemaker_raw is not None:
        item["sagemakerRaw"] = job.sagemaker_raw
    if job.payload_string is not None:
        item["payload_string"] = job.payload_string
    if job.workflow is not None:
        item["workflow"] = job.workflow
    return InferenceItem(**item)


def job_list_item(job: JobRecord, *, full: bool) -> InferenceItem:
    """A `GET /inferences` row: no URLs; without `username` the reduced set of fields."""
    if job.caption is not None:
        # ESD builds every listed row as its `InferenceJob` dataclass, which has no `caption`
        # field (middleware_api/libs/data_types.py, inferences/list_inferences.py): a page
        # with a captioned interrogate row fails as a whole.
        raise LambdaError(
            400, "InferenceJob.__init__() got an unexpected keyword argument 'caption'"
        )
    return InferenceItem(**_row_fields(job, full=full))


def stored_item(job: JobRecord) -> InferenceItem:
    """The job's row as the table holds it: what a DynamoDB read of it counts (`stored_size`)."""
    fields = _row_fields(job, full=True)
    if job.caption is not None:
        fields["caption"] = job.caption
    return InferenceItem(**fields)


def _row_fields(job: JobRecord, *, full: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "InferenceJobId": job.id,
        "status": job.status.value,
        "taskType": job.task_type,
        "owner_group_or_role": [job.owner],
        "startTime": esd_time(job.started) or "",
        "createTime": esd_time(job.created),
        "image_names": list(job.image_names),
        "sagemakerRaw": job.sagemaker_raw if job.sagemaker_raw is not None else {},
        "completeTime": esd_time(job.completed),
        "params": job_params(job),
        "inference_type": job.inference_type,
        "payload_string": job.payload_string or "{}",
    }
    if full:
        item["inference_info_name"] = ""
        item["workflow"] = job.workflow
    return item


def stored_size(item: Wire) -> int:
    """About the bytes DynamoDB counts for `item`, the whole row as stored (the list Lambda reads
    every attribute before it drops some). DynamoDB's size is the UTF-8 length of each attribute
    name plus its value, with 1 to 3 bytes of overhead per number, list, map and element ("DynamoDB
    item sizes and formats", Amazon DynamoDB Developer Guide); the length of the item's compact
    JSON counts names and values alike, its quotes and separators standing in for that overhead."""
    return len(json.dumps(item.dump(), separators=(",", ":")).encode())


def job_key(job: JobRecord) -> dict[str, Any]:
    """The `LastEvaluatedKey` of a row on `taskType-createTime-index`."""
    return {
        "InferenceJobId": job.id,
        "taskType": job.task_type,
        "createTime": esd_time(job.created),
    }


def endpoint_item(endpoint: EndpointRecord) -> EndpointItem:
    """A `GET /endpoints` row (ESD's `Endpoint` dataclass; counts are strings)."""
    return EndpointItem(
        EndpointDeploymentJobId=endpoint.id,
        autoscaling=True,
        max_instance_number=str(endpoint.max_instances),
        startTime=esd_time(endpoint.start_time),
        status=None,
        instance_type=endpoint.instance_type,
        current_instance_count=str(endpoint.instance_count),
        endTime=esd_time(endpoint.end_time),
        endpoint_status=endpoint.status,
        endpoint_name=endpoint.name,
        error=endpoint.error,
        endpoint_type=endpoint.type,
        owner_group_or_role=list(endpoint.owners),
        min_instance_number=str(endpoint.min_instances),
        custom_extensions="",
        service_type=endpoint.service_type,
    )


def checkpoint_item(checkpoint: Checkpoint, creator: str) -> CheckpointItem:
    """A `GET /checkpoints` row (§4.8): `name` is a list whose first entry is the file name."""
    return CheckpointItem(
        id=checkpoint.id,
        s3Location=checkpoint.s3_location,
        type=checkpoint.type,
        status="Active",
        name=[checkpoint.name],
        # A DynamoDB number, which ESD's `DecimalEncoder` writes as a string.
        created=str(checkpoint.created),
        params=CheckpointParams(
            creator=creator,
            message="placed on the local backend",
            created=esd_time(datetime.fromtimestamp(checkpoint.created, UTC)),
        ),
        allowed_roles_or_users=list(checkpoint.allowed),
        source_path=None,
        target_path=None,
    )


def start_answer(job: JobRecord) -> Started:
    """The 202 data of an Async start (the `inference` copy is ESD's, kept for old clients)."""
    return Started(
        InferenceJobId=job.id,
        status=job.status.value,
        inference=StartedInference(
            inference_id=job.id,
            status=job.status.value,
            endpoint_name=job.endpoint.name,
            output_path=job.output_path,
        ),
    )


def failed_realtime_message(job: JobRecord) -> str:
    """What ESD's start Lambda answers when a Real-time job fails."""
    if job.sagemaker_raw is not None:
        return job.sagemaker_raw
    # A container that swallowed its exception returns `null`; ESD then trips over it.
    return "argument of type 'NoneType' is not iterable"
