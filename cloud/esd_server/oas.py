"""`GET /prod/api`: the OpenAPI 3 document of the routes this server serves, in ESD's shape.

ESD answers `GetApiOAS` with API Gateway's `oas30` export of its stage, supplemented by
`middleware_api/service/oas.py`: `paths` sorted by path, each operation with its `operationId`
and one response per status code its CDK construct declares
(`infrastructure/src/api/**/*.ts`, `methodResponses`), each pointing with `$ref` at a model
under `components.schemas`; the shared error models are `infrastructure/src/shared/schema.ts`'s.
ESD's own API tests validate every answer against the model this document names for its
operation and status (`test/utils/api.py`), so the models below describe what this server
answers and nothing kinder. Only routes served here are listed.
"""

from __future__ import annotations

from typing import Any

_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_DEBUG = {
    "type": "object",
    "description": "Debugging information for Lambda Function",
    "properties": {"function_url": _STRING, "log_url": _STRING, "trace_url": _NULLABLE_STRING},
    "required": ["function_url", "log_url", "trace_url"],
}
_LAST_KEY = {"type": ["string", "null"], "description": "Last Key for Pagination"}


def _envelope(status: int, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Lambda answer (`common/response.py`): statusCode, debug, message and maybe data."""
    properties: dict[str, Any] = {
        "statusCode": {"type": "integer", "enum": [status]},
        "debug": _DEBUG,
        "message": _STRING,
    }
    required = ["statusCode", "debug", "message"]
    if data is not None:
        properties["data"] = data
        required.append("data")
    return {"type": "object", "properties": properties, "required": required}


def _object(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
    }


_INFERENCE_ITEM = _object(
    {
        "InferenceJobId": _STRING,
        "status": {"type": "string", "enum": ["created", "inprogress", "succeed", "failed"]},
        "taskType": _STRING,
        "params": {"type": "object"},
    },
    {
        "createTime": _NULLABLE_STRING,
        "startTime": _NULLABLE_STRING,
        "completeTime": _NULLABLE_STRING,
        "inference_type": _STRING,
        "owner_group_or_role": {"type": "array", "items": _STRING},
        "image_names": {"type": "array", "items": _STRING},
        "img_presigned_urls": {"type": "array", "items": _STRING},
        "output_presigned_urls": {"type": "array", "items": _STRING},
        "sagemakerRaw": {"type": ["string", "object"]},
        "payload_string": _STRING,
        "workflow": _NULLABLE_STRING,
    },
)

# Models shared by every operation (infrastructure/src/shared/schema.ts).
_SHARED: dict[str, dict[str, Any]] = {
    "ResponseModel202": _envelope(202),
    "ResponseModel204": {"type": "object", "properties": {}, "additionalProperties": False},
    "ResponseModel400": _object(
        {"statusCode": {"type": "integer", "enum": [400]}, "message": _STRING},
        {"requestId": _STRING, "debug": _DEBUG},
    ),
    "ResponseModel401": _object(
        {
            "statusCode": {"type": "integer", "enum": [401]},
            "debug": _DEBUG,
            "message": {"type": "string", "enum": ["Unauthorized"]},
        }
    ),
    "ResponseModel403": _object({"requestId": _STRING, "message": _STRING}),
    "ResponseModel404": _object(
        {"statusCode": {"type": "integer", "enum": [404]}, "debug": _DEBUG, "message": _STRING}
    ),
    "ResponseModel504": _object({"message": _STRING, "requestId": _STRING}),
}

# operationId, method, path, {status: model name}, the operation's own models.
_OPERATIONS: tuple[tuple[str, str, str, dict[str, str], dict[str, dict[str, Any]]], ...] = (
    (
        "Ping",
        "get",
        "/ping",
        {"200": "PingResponse", "400": "", "401": "", "403": ""},
        {"PingResponse": _envelope(200)},
    ),
    (
        "GetApiOAS",
        "get",
        "/api",
        {"200": "GetApiOASResponse", "401": "", "403": ""},
        {"GetApiOASResponse": _object({"openapi": _STRING, "paths": {"type": "object"}})},
    ),
    (
        "CreateInferenceJob",
        "post",
        "/inferences",
        {
            "200": "InferenceJobResponse",
            "201": "CreateInferenceJobResponse",
            "202": "StartAsyncInferenceResponse",
            "400": "",
            "401": "",
            "403": "",
            "504": "",
        },
        {
            "CreateInferenceJobResponse": _envelope(
                201,
                _object(
                    {
                        "inference": _object(
                            {
                                "id": _STRING,
                                "type": _STRING,
                                "api_params_s3_location": _STRING,
                                "api_params_s3_upload_url": _NULLABLE_STRING,
                            },
                            {"models": {"type": "array"}},
                        )
                    }
                ),
            )
        },
    ),
    (
        "ListInferences",
        "get",
        "/inferences",
        {"200": "ListInferencesResponse", "401": "", "403": "", "404": ""},
        {
            "ListInferencesResponse": _envelope(
                200,
                _object(
                    {
                        "inferences": {"type": "array", "items": _INFERENCE_ITEM},
                        "last_evaluated_key": _LAST_KEY,
                    }
                ),
            )
        },
    ),
    (
        "DeleteInferenceJobs",
        "delete",
        "/inferences",
        {"204": "", "400": "", "401": "", "403": ""},
        {},
    ),
    (
        "GetInferenceJob",
        "get",
        "/inferences/{id}",
        {"200": "InferenceJobResponse", "401": "", "403": "", "404": ""},
        {"InferenceJobResponse": _envelope(200, _INFERENCE_ITEM)},
    ),
    (
        "StartInferences",
        "put",
        "/inferences/{id}/start",
        {
            "200": "InferenceJobResponse",
            "202": "StartAsyncInferenceResponse",
            "400": "",
            "401": "",
            "403": "",
            "504": "",
        },
        {
            "StartAsyncInferenceResponse": _envelope(
                202,
                _object(
                    {"InferenceJobId": _STRING, "status": _STRING},
                    {"inference": {"type": "object"}},
                ),
            )
        },
    ),
    (
        "ListEndpoints",
        "get",
        "/endpoints",
        {"200": "ListEndpointsResponse", "400": "", "401": "", "403": ""},
        {
            "ListEndpointsResponse": _envelope(
                200,
                _object(
                    {
                        "endpoints": {
                            "type": "array",
                            "items": _object(
                                {
                                    "EndpointDeploymentJobId": _STRING,
                                    "endpoint_name": _STRING,
                                    "endpoint_status": _STRING,
                                    "endpoint_type": _STRING,
                                },
                                {
                                    "current_instance_count": _STRING,
                                    "min_instance_number": _STRING,
                                    "max_instance_number": _STRING,
                                    "owner_group_or_role": {"type": "array", "items": _STRING},
                                    "service_type": _STRING,
                                },
                            ),
                        },
                        "last_evaluated_key": _LAST_KEY,
                    }
                ),
            )
        },
    ),
    (
        "ListCheckpoints",
        "get",
        "/checkpoints",
        {"200": "ListCheckpointsResponse", "401": "", "403": "", "504": ""},
        {
            "ListCheckpointsResponse": _envelope(
                200,
                _object(
                    {
                        "page": {"type": "integer"},
                        "per_page": {"type": "integer"},
                        "pages": {"type": "integer"},
                        "total": {"type": "integer"},
                        "checkpoints": {
                            "type": "array",
                            "items": _object(
                                {
                                    "id": _STRING,
                                    "name": {"type": "array", "items": _STRING},
                                    "type": _STRING,
                                    "status": _STRING,
                                    "s3Location": _STRING,
                                    # A DynamoDB number through ESD's `DecimalEncoder`.
                                    "created": _STRING,
                                    "allowed_roles_or_users": {
                                        "type": "array",
                                        "items": _STRING,
                                    },
                                }
                            ),
                        },
                    }
                ),
            )
        },
    ),
)


def openapi_document(version: str, origin: str) -> dict[str, Any]:
    """The document for a server of ESD `version` reached at `origin`."""
    schemas: dict[str, Any] = dict(_SHARED)
    paths: dict[str, dict[str, Any]] = {}
    for operation_id, method, path, statuses, own in _OPERATIONS:
        schemas.update(own)
        responses = {}
        for status, model in statuses.items():
            name = model or f"ResponseModel{status}"
            responses[status] = {
                "description": f"{status} response",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                },
            }
        parameters = [
            {"name": "username", "in": "header", "required": False, "schema": {"type": "string"}}
        ]
        if "{id}" in path:
            parameters.append(
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            )
        paths.setdefault(path, {})[method] = {
            "operationId": operation_id,
            "parameters": parameters,
            "responses": responses,
            "security": [{"api_key": []}],
        }
    return {
        "openapi": "3.0.1",
        "info": {
            "title": "Extension for Stable Diffusion on AWS API (sdbot local-backend)",
            "version": version,
            "description": "The ESD routes served by sdbot's local backend.",
        },
        "servers": [{"url": f"{origin}/prod/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": schemas,
            "securitySchemes": {"api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}},
        },
    }
