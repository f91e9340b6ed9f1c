"""The aiohttp application: ESD's REST routes under `/prod/`, presigned storage under `/s3/`.

`make_app` wires the routes to one `ServerState`; a middleware plays API Gateway in front of
them (unknown routes, the `x-api-key` check, added latency, throttling, 5xx and hangs from the
fault settings, the 10 MB body limit) and turns `LambdaError` / `GatewayError` into the shapes of
esd-api.md §2.2. Handlers play the Lambdas of §4, each checking the lower-case `username` header
where ESD's permission check does. `running_server` runs the app on a loopback port for tests
and for `sdbot local-backend`, and cleans up every connection and job task on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
from typing import TYPE_CHECKING

from aiohttp import web

from bot.model import JobState
from cloud.esd.wire import (
    CheckpointList,
    CheckpointRef,
    Created,
    CreatedInference,
    EndpointList,
    InferenceList,
    Ping,
    Wire,
)
from cloud.esd_server.oas import openapi_document
from cloud.esd_server.state import (
    ESD_TASK_TYPES,
    IMG2IMG,
    INTERROGATE_TASKS,
    ApiFault,
    Checkpoint,
    GatewayError,
    JobRecord,
    LambdaError,
    ServerState,
    read_page,
)
from cloud.esd_server.storage import StorageError
from cloud.esd_server.wire import (
    BodyInvalidError,
    checkpoint_item,
    decode_start_key,
    encode_start_key,
    endpoint_item,
    envelope,
    gateway_error,
    job_detail,
    job_key,
    job_list_item,
    parse_create,
    parse_delete,
    query_int,
    s3_error,
    start_answer,
    stored_item,
    stored_size,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from cloud.esd_server.config import ServerConfig

API_PREFIX = "/prod/"
# Storage takes whole images; API Gateway refuses API bodies above 10 MB (esd-api.md §10.2).
MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_API_BODY_BYTES = 10 * 1024 * 1024
_SHUTDOWN_SECONDS = 5.0
# What `/ping` advertises with `rest_interrogate` only; real ESD's ping says just "pong"
# (middleware_api/service/ping.py).
_ADVERTISEMENT = Ping(
    sdbot_local_backend=True, interrogate=True, task_types=[IMG2IMG, *INTERROGATE_TASKS]
)
# ESD's permission strings (middleware_api/common/const.py), as each Lambda asks for them.
_CREATE = ["inference:all", "inference:create"]
_START = ["inference:all"]
_LIST_ENDPOINTS = ["sagemaker_endpoint:all", "sagemaker_endpoint:list"]
_LIST_CHECKPOINTS = ["checkpoint:all", "checkpoint:list"]
_GATEWAY_5XX = {
    500: ("Internal server error", "InternalServerErrorException"),
    502: ("Internal server error", "BadGatewayException"),
    503: ("Service Unavailable", "ServiceUnavailableException"),
}
_API_HEADERS = ("x-api-key", "username")

STATE_KEY = web.AppKey("esd_server_state", ServerState)


def make_app(config: ServerConfig) -> web.Application:
    """The server's application; its live state is `server_state(app)`."""
    app = web.Application(middlewares=[_api_gateway], client_max_size=MAX_BODY_BYTES)
    state = ServerState(config)
    app[STATE_KEY] = state

    async def start(_: web.Application) -> None:
        await state.start()

    async def stop(_: web.Application) -> None:
        # On shutdown, before aiohttp waits for open requests: hangs and Real-time waits end.
        await state.aclose()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    router = app.router
    router.add_get("/prod/ping", _ping, name="ping")
    router.add_get("/prod/api", _api_document, name="api")
    router.add_post("/prod/inferences", _create_inference, name="create_inference")
    router.add_get("/prod/inferences", _list_inferences, name="list_inferences")
    router.add_delete("/prod/inferences", _delete_inferences, name="delete_inferences")
    router.add_put("/prod/inferences/{id}/start", _start_inference, name="start_inference")
    router.add_get("/prod/inferences/{id}", _get_inference, name="get_inference")
    router.add_get("/prod/endpoints", _list_endpoints, name="list_endpoints")
    router.add_get("/prod/checkpoints", _list_checkpoints, name="list_checkpoints")
    router.add_put("/s3/{bucket}/{key:.+}", _s3_put, name="s3_put")
    router.add_get("/s3/{bucket}/{key:.+}", _s3_get, name="s3_get", allow_head=False)
    return app


def server_state(app: web.Application) -> ServerState:
    """The live state of an app made by `make_app`."""
    return app[STATE_KEY]


class ServerURL(str):
    """The base URL `running_server` yields; a `str`, which also carries the app and its state."""

    __slots__ = ("app", "state")

    app: web.Application
    state: ServerState

    def __new__(cls, url: str, app: web.Application) -> ServerURL:
        self = super().__new__(cls, url)
        self.app = app
        self.state = server_state(app)
        return self


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[ServerURL]:
    """Serve `config` on `host:port` (0 = an ephemeral port); yield the base URL `…/prod/`.

    The URL is a `str` that also carries `.app` and `.state` (the live `ServerState`).
    """
    app = make_app(config)
    runner = web.AppRunner(app, shutdown_timeout=_SHUTDOWN_SECONDS, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield ServerURL(f"http://{shown}:{bound}{API_PREFIX}", app)
    finally:
        await runner.cleanup()


# -- API Gateway -----------------------------------------------------------------------------


@web.middleware
async def _api_gateway(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = server_state(request.app)
    route = request.match_info.route.name
    if route is not None:
        state.requests[route] += 1
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    await state.pause_answer(state.faults.latency)
    if route is None:
        # API Gateway's answer to a resource or method it does not have.
        return gateway_error(
            403, "Missing Authentication Token", "MissingAuthenticationTokenException"
        )
    key = request.headers.get("x-api-key", "")
    if not hmac.compare_digest(key.encode(), state.config.api_key.encode()):
        return gateway_error(403, "Forbidden", "ForbiddenException")
    draw = state.draw_api_fault()
    if draw.kind is ApiFault.THROTTLE:
        return gateway_error(
            429, "Too Many Requests", "TooManyRequestsException", {"Retry-After": "1"}
        )
    if draw.kind is ApiFault.ERROR:
        message, error_type = _GATEWAY_5XX[draw.status]
        return gateway_error(draw.status, message, error_type)
    if draw.kind is ApiFault.HANG:
        await state.pause_answer(state.faults.hang_seconds)
    if state.closing:
        # A hang or a slow answer outlived the server: it ends without touching the jobs.
        return gateway_error(503, "Service Unavailable", "ServiceUnavailableException")
    if request.content_length is not None and request.content_length > MAX_API_BODY_BYTES:
        return gateway_error(413, "Request Too Long", "RequestTooLongException")
    try:
        return await handler(request)
    except LambdaError as exc:
        return envelope(exc.status, route, state.config.version, message=exc.message)
    except BodyInvalidError as exc:
        return gateway_error(400, str(exc), "BadRequestException", validation=True)
    except GatewayError as exc:
        return gateway_error(exc.status, exc.message, exc.error_type, exc.headers)


async def _api_body(request: web.Request) -> bytes:
    """The body, within API Gateway's limit (a chunked body has no length up front)."""
    too_long = GatewayError(413, "Request Too Long", "RequestTooLongException")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_long from None
    if len(raw) > MAX_API_BODY_BYTES:
        raise too_long
    return raw


def _user(request: web.Request, needed: list[str]) -> str:
    """ESD's `permissions_check`: the `username` header, spelt in lower case, of a known user
    holding one of the `needed` permissions (401 / 403 otherwise)."""
    state = server_state(request.app)
    user = None
    for name, value in request.raw_headers:
        # ESD reads a plain dict: `Username` is not `username` there, so it is not here either.
        if name == b"username":
            user = value.decode("utf-8", "replace")
            break
    if not user:
        raise LambdaError(401, "Unauthorized")
    state.check_permissions(user, needed)
    return user


def _query_user(request: web.Request) -> str | None:
    """The optional `username` query parameter; unknown users are a 400, as in ESD."""
    username = request.query.get("username") or None
    if username is not None:
        server_state(request.app).user_roles(username)
    return username


def _origin(request: web.Request) -> str:
    """Where presigned URLs point: this server, as the client reached it."""
    return f"{request.scheme}://{request.host}"


def _ok(
    request: web.Request,
    status: int,
    *,
    data: Wire | None = None,
    message: str | None = None,
) -> web.Response:
    state = server_state(request.app)
    route = request.match_info.route.name or "unknown"
    return envelope(status, route, state.config.version, data=data, message=message)


# -- Lambdas ---------------------------------------------------------------------------------


async def _ping(request: web.Request) -> web.Response:
    state = server_state(request.app)
    data = _ADVERTISEMENT if state.config.rest_interrogate else None
    return _ok(request, 200, message="pong", data=data)


async def _api_document(request: web.Request) -> web.Response:
    # ESD's `GetApiOAS` answers the document itself, not in an envelope (service/oas.py).
    state = server_state(request.app)
    return web.json_response(openapi_document(state.config.version, _origin(request)))


async def _create_inference(request: web.Request) -> web.Response:
    state = server_state(request.app)
    body = parse_create(await _api_body(request))
    if body.payload_string is not None:
        try:
            json.loads(body.payload_string)
        except json.JSONDecodeError:
            raise LambdaError(400, "payload_string must be valid json string") from None
    user = _user(request, _CREATE)
    _check_task_type(state, body.task_type)
    endpoint = state.pick_endpoint(body.sagemaker_endpoint_name, body.inference_type, user)
    used_models: dict[str, list[dict[str, str]]] = {}
    checkpoints: list[Checkpoint] = []
    if body.task_type == IMG2IMG:
        used_models, checkpoints = await state.resolve_models(body.models)
    job = state.create_job(
        task_type=body.task_type,
        inference_type=body.inference_type,
        endpoint=endpoint,
        owner=user,
        used_models=used_models,
        origin=_origin(request),
        payload_string=body.payload_string,
        workflow=body.workflow,
    )
    if body.payload_string is not None:
        return await _start(request, job)  # ESD starts at once, and answers like the start
    assert job.upload_url is not None  # no inline payload: the client uploads it
    inference = CreatedInference(
        id=job.id,
        type=job.task_type,
        api_params_s3_location=state.storage.s3_uri(job.input_key),
        api_params_s3_upload_url=job.upload_url,
    )
    if body.task_type == IMG2IMG:
        refs = [
            CheckpointRef(id=checkpoint.id, name=[checkpoint.name], type=checkpoint.type)
            for checkpoint in checkpoints
        ]
        inference = inference.model_copy(update={"models": refs})
    return _ok(request, 201, data=Created(inference=inference))


def _check_task_type(state: ServerState, task_type: str) -> None:
    if task_type in INTERROGATE_TASKS and state.config.rest_interrogate:
        return
    extra, simple = ESD_TASK_TYPES
    if task_type not in extra and task_type not in simple:
        # ESD's own refusal, which is also what every `interrogate_*` type gets there.
        raise LambdaError(400, f"task type {task_type} should be in {extra} or {simple}")
    if task_type != IMG2IMG:
        raise LambdaError(400, f"task type {task_type}: sdbot local-backend runs img2img only")


async def _start_inference(request: web.Request) -> web.Response:
    state = server_state(request.app)
    _user(request, _START)
    job_id = request.match_info["id"]
    job = state.jobs.get(job_id)
    if job is None:
        raise LambdaError(400, f"InferenceJobId {job_id} not found")
    return await _start(request, job)


async def _start(request: web.Request, job: JobRecord) -> web.Response:
    state = server_state(request.app)
    state.start_job(job)
    if job.inference_type == "Async":
        return _ok(request, 202, data=start_answer(job))
    assert job.task is not None  # start_job always sets it
    # Real-time: the Lambda waits for the endpoint; API Gateway gives up first on long jobs.
    done, _ = await asyncio.wait([job.task], timeout=state.config.realtime_gateway_timeout)
    if not done:
        raise GatewayError(504, "Endpoint request timed out", "IntegrationTimeout")
    if state.jobs.get(job.id) is not job:
        raise LambdaError(400, f"InferenceJobId {job.id} not found")
    if job.realtime_error is not None:
        raise LambdaError(400, job.realtime_error)
    if job.status is not JobState.SUCCEED:
        raise LambdaError(400, f"inference {job.id} was stopped before it finished")
    return _ok(request, 200, data=job_detail(job, state.storage, _origin(request)))


async def _get_inference(request: web.Request) -> web.Response:
    state = server_state(request.app)
    job_id = request.match_info["id"]
    job = state.jobs.get(job_id)
    if job is None:
        raise LambdaError(404, f"inference with id {job_id} not found")
    return _ok(request, 200, data=job_detail(job, state.storage, _origin(request)))


async def _list_inferences(request: web.Request) -> web.Response:
    state = server_state(request.app)
    query = request.query
    task_type = query.get("type") or "txt2img"
    limit = _limit(query.get("limit"), "Query")
    rows = state.jobs_of_type(task_type)
    start_key = query.get("exclusive_start_key")
    if start_key:
        key = decode_start_key(start_key)
        created, job_id = key.get("createTime"), key.get("InferenceJobId")
        if not (isinstance(created, str) and isinstance(job_id, str)):
            raise LambdaError(400, "The provided starting key is invalid")
        rows = [row for row in rows if (job_key(row)["createTime"], row.id) < (created, job_id)]
    # At most `limit` rows and 1 MB of them, so a page may come back short with a key.
    page, stopped = read_page(rows, limit, lambda row: stored_size(stored_item(row)))
    last_key = encode_start_key(job_key(page[-1])) if stopped else None
    username = _query_user(request)
    # ESD builds every row of the page before it filters (a captioned row fails them all); the
    # filter runs after the limit, as a DynamoDB filter does: pages may come back short.
    built = {row.id: job_list_item(row, full=username is not None) for row in page}
    shown = state.visible_jobs(page, username) if username is not None else page
    items = [built[row.id] for row in shown]
    return _ok(request, 200, data=InferenceList(inferences=items, last_evaluated_key=last_key))


async def _delete_inferences(request: web.Request) -> web.Response:
    state = server_state(request.app)
    job_ids = parse_delete(await _api_body(request))
    await state.delete_jobs(job_ids)
    return _ok(request, 204, message="inferences deleted")


async def _list_endpoints(request: web.Request) -> web.Response:
    state = server_state(request.app)
    requestor = _user(request, _LIST_ENDPOINTS)
    limit = _limit(request.query.get("limit"), "Scan")
    rows = state.endpoint_rows()
    start_key = request.query.get("exclusive_start_key")
    if start_key:
        after = decode_start_key(start_key).get("EndpointDeploymentJobId")
        if not isinstance(after, str):
            raise LambdaError(400, "The provided starting key is invalid")
        rows = [row for row in rows if row.id > after]
    page, stopped = read_page(rows, limit, lambda row: stored_size(endpoint_item(row)))
    last_key = encode_start_key({"EndpointDeploymentJobId": page[-1].id}) if stopped else None
    username = _query_user(request)
    visible = state.visible_endpoints(page, requestor, username)
    visible.sort(key=lambda row: row.start_time, reverse=True)
    items = [endpoint_item(row) for row in visible]
    return _ok(request, 200, data=EndpointList(endpoints=items, last_evaluated_key=last_key))


async def _list_checkpoints(request: web.Request) -> web.Response:
    state = server_state(request.app)
    requestor = _user(request, _LIST_CHECKPOINTS)
    query = request.query
    page = query_int(query.get("page"), 1)
    per_page = query_int(query.get("per_page"), 10)
    if page < 1 or per_page < 1:
        raise LambdaError(400, f"page and per_page must be >= 1, got {page} and {per_page}")
    types = query.getall("types", [])
    statuses = query.getall("status", [])
    username = _query_user(request)
    scanned = [
        checkpoint
        for checkpoint in await state.checkpoints()
        if (not types or checkpoint.type in types) and (not statuses or "Active" in statuses)
    ]
    rows = state.visible_checkpoints(scanned, requestor, username, query.getall("roles", []))
    rows.sort(key=lambda checkpoint: checkpoint.created, reverse=True)  # stable: type, name
    # ESD's arithmetic, quirks included: 20 rows at 10 per page make 3 pages, the last empty;
    # an empty scan makes 0 pages, a scan whose rows are all hidden 1.
    pages = len(rows) // per_page + 1 if scanned else 0
    chosen = rows[(page - 1) * per_page : page * per_page]
    data = CheckpointList(
        page=page,
        per_page=per_page,
        pages=pages,
        total=len(rows),
        checkpoints=[checkpoint_item(checkpoint, requestor) for checkpoint in chosen],
    )
    return _ok(request, 200, data=data)


def _limit(value: str | None, operation: str) -> int:
    limit = query_int(value, 10)
    if limit < 1:
        raise LambdaError(
            400,
            f"An error occurred (ValidationException) when calling the {operation} operation: "
            f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy "
            "constraint: Member must have value greater than or equal to 1",
        )
    return limit


# -- Storage ---------------------------------------------------------------------------------


async def _s3_put(request: web.Request) -> web.Response:
    state = server_state(request.app)
    try:
        key = _checked_key(request, "PUT")
        if state.upload_owner(key) is None:
            raise StorageError(403, "AccessDenied", "Access Denied")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise StorageError(
                400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size"
            ) from None
        job = state.upload_owner(key)
        if job is None:  # deleted while the body was on its way
            raise StorageError(403, "AccessDenied", "Access Denied")
    except StorageError as exc:
        return s3_error(exc.status, exc.code, exc.message)
    state.store(key, body, job)
    etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
    return web.Response(status=200, headers={"ETag": f'"{etag}"'})


async def _s3_get(request: web.Request) -> web.Response:
    state = server_state(request.app)
    try:
        key = _checked_key(request, "GET")
        body = state.storage.objects.get(key)
        if body is None:
            raise StorageError(404, "NoSuchKey", "The specified key does not exist.")
    except StorageError as exc:
        return s3_error(exc.status, exc.code, exc.message)
    content_type = "image/png" if key.endswith(".png") else "application/json"
    return web.Response(body=body, content_type=content_type)


def _checked_key(request: web.Request, method: str) -> str:
    state = server_state(request.app)
    present = [name for name in _API_HEADERS if name in request.headers]
    if present:
        # S3 would ignore them; refusing makes a client that leaks its API key to storage fail.
        raise StorageError(
            400,
            "InvalidRequest",
            f"presigned storage URLs take no API headers; got {', '.join(present)}",
        )
    key = state.storage.key_of(request.path)
    if key is None:
        raise StorageError(404, "NoSuchBucket", "The specified bucket does not exist")
    state.storage.check(method, request.path, request.query)
    return key
