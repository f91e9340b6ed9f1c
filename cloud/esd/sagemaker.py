"""Interrogate on a real ESD deployment: SageMaker asynchronous inference driven with boto3.

ESD v1.4+ has no interrogate route, but its inference container still captions on Async
endpoints (`reference/esd-api.md` §7.3, §8.2, §8.4). `SageMakerInterrogator` does what ESD's
start Lambda would: it writes the job row in `SDInferenceJobTable` (the container's start-time
update and ESD's result Lambda both need it), puts the InvocationRequest JSON in the ESD bucket
under `<taskType>/infer_v2/<id>/invocation.json`, and calls `invoke_endpoint_async` with the job
id as `InferenceId`; the returned output (and failure) location goes on the row. It also reads
its jobs back (`read`): the row, where ESD's result Lambda sets `status` and `caption`, and,
usually sooner, the async output object (`{"caption": …}`, or `null` when the container swallowed
an error) or the failure object. boto3 runs only in worker threads; the three clients are made
once and reused. Every AWS failure becomes a `bot.errors.BackendError` whose `user_message`
names what is needed: AWS credentials, `AWS_REGION`, `ESD_BUCKET`, or the IAM
action that was refused. `SageMakerConfig` holds the settings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypedDict, cast
from urllib.parse import urlsplit

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from pydantic import ValidationError

from bot.errors import BackendError, BackendUnavailableError, ConfigError
from bot.model import EndpointType, JobState, Submitted
from bot.ports import LOST_JOB
from bot.recent import Recent
from cloud.esd.a1111 import INTERROGATE_MODELS
from cloud.esd.interrogate import NEEDS_SAGEMAKER, task_type
from cloud.esd.payloads import EsdJob, parse_job, readable_reason
from cloud.esd.wire import InferenceItem, JobParams, esd_time

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sagemaker_runtime import SageMakerRuntimeClient

    from bot.model import Endpoint, InterrogateParams
    from cloud.esd.config import EsdSettings

_LOGGER = logging.getLogger(__name__)

# ESD's job table: its container and Lambdas hard-code the name (scripts/api.py,
# infrastructure/src/shared/resource-provider-on-event.ts), so it is no setting here either.
JOB_TABLE = "SDInferenceJobTable"
NEEDS_CREDENTIALS = (
    "interrogate on ESD needs AWS credentials: give the bot an identity through the standard "
    "AWS chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or an IAM role)"
)
NEEDS_REGION = (
    "interrogate on ESD needs the AWS region of the ESD stack: set AWS_REGION "
    "(or AWS_DEFAULT_REGION)"
)
NEEDS_BUCKET = "interrogate on ESD needs ESD_BUCKET: the S3BucketName output of the ESD stack"
# The container's output when it swallowed an exception (§8.2 item 8).
SWALLOWED = (
    "the endpoint gave no caption: ESD's container hides its errors from the caller "
    "(see the endpoint's CloudWatch log)"
)
# Direct reads of jobs run this many at a time (each is one worker thread).
_READ_CONCURRENCY = 8
# Launched jobs whose output locations are kept in memory; older ones are read from the row.
_MAX_REMEMBERED = 1000
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# `https://{api id}.execute-api.{region}.amazonaws.com/prod/` (`reference/esd-api.md` §1.2).
_API_REGION = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")
_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AuthorizationError"}
)
_BAD_CREDENTIALS = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
_TRANSIENT = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
        "ServiceUnavailable",
        "InternalServerError",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
    }
)
_MISSING_OBJECT = frozenset({"NoSuchKey", "404", "NotFound"})


# -- Settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SageMakerConfig:
    """Settings of the SageMaker path; `from_config` fills them from `EsdSettings`."""

    bucket: str | None  # ESD_BUCKET; None: interrogate is refused with a message naming it
    username: str = "api"  # the ESD user the rows belong to (ESD_USERNAME)
    # None: boto3's own chain (AWS_DEFAULT_REGION, the profile), then `fallback_region`.
    region: str | None = None
    fallback_region: str | None = None  # the region in ESD_API_URL's execute-api host
    invocation_timeout: int = 3600  # InvocationTimeoutSeconds: SageMaker's maximum, as ESD's
    max_output_bytes: int = 1_000_000  # a caption object is a few hundred bytes
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    max_attempts: int = 3  # botocore's own retries of throttling and 5xx ("standard" mode)

    def __post_init__(self) -> None:
        if self.bucket is not None:
            bucket = self.bucket.strip().removeprefix("s3://").rstrip("/")
            if not _BUCKET_NAME.match(bucket):
                raise ConfigError(
                    f"ESD_BUCKET must be an S3 bucket name (the S3BucketName output of the ESD "
                    f"stack), got {self.bucket!r}"
                )
            object.__setattr__(self, "bucket", bucket)
        if not 1 <= self.invocation_timeout <= 3600:
            raise ConfigError("invocation_timeout must be 1-3600 seconds (SageMaker's range)")
        for name in ("max_output_bytes", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SageMaker setting {name} must be at least 1")
        for name in ("connect_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"SageMaker setting {name} must be a positive number of seconds")

    @classmethod
    def from_config(
        cls, config: EsdSettings, environ: Mapping[str, str] | None = None
    ) -> SageMakerConfig:
        """`esd_bucket` and `esd_username` of the ESD settings.

        The region is `AWS_REGION` when set (boto3 itself reads only `AWS_DEFAULT_REGION` and
        the profile), else boto3's chain, else the region of the ESD API URL.
        """
        env = os.environ if environ is None else environ
        return cls(
            bucket=config.esd_bucket or None,
            username=config.esd_username,
            region=env.get("AWS_REGION") or None,
            fallback_region=region_of_api(config.esd_api_url),
        )


def region_of_api(url: str | None) -> str | None:
    """The region of an ESD API Gateway URL (`…execute-api.<region>.amazonaws.com`), if any."""
    if not url:
        return None
    found = _API_REGION.search(urlsplit(url.strip()).hostname or "")
    return found.group(1) if found else None


# -- Wire shapes ------------------------------------------------------------------------------


class InterrogatePayload(TypedDict):
    """A1111's `InterrogateRequest`: `image` is base64 PNG, `model` `clip` | `deepdanbooru`."""

    image: str
    model: str


class InvocationRequest(TypedDict):
    """The container's request body for a direct interrogate (§8.2, §8.4 item 6)."""

    id: str
    task: str
    username: str
    models: dict[str, object]
    # The container parses it before it looks at the task; without it the call fails (§7.3).
    payload_string: str
    interrogate_payload: InterrogatePayload


class InterrogateOutput(TypedDict, total=False):
    """The container's answer: A1111's caption plus ESD's bookkeeping (§5.3)."""

    caption: str
    start_time: str
    endpoint_name: str
    endpoint_instance_id: str


def invocation_request(
    job_id: str, method: str, image_png: bytes, username: str
) -> InvocationRequest:
    """The InvocationRequest of one interrogate job."""
    return {
        "id": job_id,
        "task": task_type(method),
        "username": username,
        "models": {},
        "payload_string": "{}",
        "interrogate_payload": {
            "image": base64.b64encode(image_png).decode("ascii"),
            "model": INTERROGATE_MODELS[method],
        },
    }


def input_key(task: str, job_id: str) -> str:
    """Where the InvocationRequest goes in the ESD bucket, beside ESD's own job inputs (§8.3)."""
    return f"{task}/infer_v2/{job_id}/invocation.json"


def job_row(
    job_id: str, task: str, endpoint: Endpoint, input_uri: str, username: str, now: datetime
) -> InferenceItem:
    """The `SDInferenceJobTable` item the bot writes, as ESD's create Lambda would (§4.1)."""
    params = JobParams(
        input_body_s3=input_uri, sagemaker_inference_endpoint_name=endpoint.name, used_models={}
    )
    if endpoint.instance_type:
        params = params.model_copy(
            update={"sagemaker_inference_instance_type": endpoint.instance_type}
        )
    return InferenceItem(
        InferenceJobId=job_id,
        status="created",
        taskType=task,
        inference_type="Async",
        createTime=esd_time(now),
        owner_group_or_role=[username],
        params=params,
    )


def caption_of(raw: bytes) -> tuple[str | None, str | None]:
    """(caption, failure reason) of an async output object; exactly one is set."""
    try:
        document: object = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None, "the endpoint's output is not JSON"
    if document is None:
        return None, SWALLOWED
    if isinstance(document, dict):
        output = cast("InterrogateOutput", document)
        caption = output.get("caption")
        if isinstance(caption, str) and caption.strip():
            return caption.strip(), None
        for key in ("error", "errorMessage", "message", "detail"):
            if key in document:
                return None, readable_reason(document[key]) or f"the endpoint answered {key}"
    return None, "the endpoint answered without a caption"


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key); a `BackendError` for anything else."""
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key:
        raise BackendError(
            f"SageMaker gave a location that is not an s3:// URI: {uri!r}",
            user_message="SageMaker answered with an unexpected output location",
        )
    return parts.netloc, key


def _plain(value: object) -> object:
    """A deserialised DynamoDB value with numbers as int / float, as ESD's API would send it."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_plain(v) for v in value]
    return value


# -- AWS failures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AwsAction:
    """One AWS call, for messages: the IAM action and what it acted on."""

    iam: str
    resource: str


def aws_error(exc: Exception, action: AwsAction, config: SageMakerConfig) -> BackendError:
    """A boto3 / botocore failure as a `BackendError` whose `user_message` says what to fix."""
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return BackendError(
            f"{action.iam}: no usable AWS credentials ({exc})", user_message=NEEDS_CREDENTIALS
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return BackendUnavailableError(
            f"{action.iam}: AWS could not be reached: {exc}",
            user_message=f"AWS could not be reached for {action.iam}; try again later",
        )
    if not isinstance(exc, ClientError):
        return BackendError(
            f"{action.iam} failed: {exc!r}", user_message=f"the AWS call {action.iam} failed"
        )
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    text = str(error.get("Message", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    detail = f"{action.iam} on {action.resource}: {code}: {text}"
    if code in _DENIED:
        return BackendError(
            detail,
            status=status,
            user_message=f"AWS refused {action.iam} on {action.resource}: give the bot's AWS "
            f"identity the IAM permission {action.iam}",
        )
    if code in _BAD_CREDENTIALS:
        return BackendError(
            detail,
            status=status,
            user_message=f"AWS did not accept the bot's credentials ({code}): check the "
            "credentials of the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, IAM role)",
        )
    if code in _TRANSIENT or (isinstance(status, int) and status >= 500):
        return BackendUnavailableError(
            detail,
            status=status,
            user_message=f"AWS is busy or failing ({code or status}); try again later",
        )
    if code == "ResourceNotFoundException" and action.iam.startswith("dynamodb:"):
        return BackendError(
            detail,
            status=status,
            user_message=f"ESD's DynamoDB table {JOB_TABLE} does not exist in this region: set "
            "AWS_REGION to the region of the ESD stack",
        )
    if code == "NoSuchBucket":
        return BackendError(
            detail,
            status=status,
            user_message=f"the S3 bucket {action.resource.removeprefix('bucket ')} does not "
            "exist: set ESD_BUCKET to the S3BucketName output of the ESD stack",
        )
    if action.iam.startswith("sagemaker:") and code in ("ValidationError", "ValidationException"):
        return BackendError(
            detail,
            status=status,
            user_message=f"SageMaker refused the invocation on {action.resource}: "
            f"{readable_reason(text) or code}",
        )
    return BackendError(
        detail,
        status=status,
        user_message=f"AWS refused {action.iam} on {action.resource} ({code})",
    )


# -- The interrogator ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clients:
    dynamodb: DynamoDBClient
    s3: S3Client
    runtime: SageMakerRuntimeClient
    region: str

    def close(self) -> None:
        for client in (self.dynamodb, self.s3, self.runtime):
            client.close()


@dataclass(frozen=True)
class _Locations:
    output: str | None
    failure: str | None


class SageMakerInterrogator:
    """Interrogate jobs on ESD's Async endpoints through DynamoDB, S3 and SageMaker.

    `endpoint` looks an endpoint up by name in ESD's own listing (the endpoint table knows its
    type, which SageMaker's runtime API does not tell). Implements `Interrogator` and
    `JobReader` of `cloud.esd.interrogate`; `aclose()` closes the boto3 clients.
    """

    def __init__(
        self,
        config: SageMakerConfig,
        *,
        endpoint: Callable[[str], Awaitable[Endpoint | None]],
    ) -> None:
        if config.bucket is None:
            raise ConfigError(NEEDS_BUCKET)
        self._config = config
        self._bucket: str = config.bucket
        self._lookup = endpoint
        self._clients_made: _Clients | None = None
        self._clients_lock = asyncio.Lock()
        self._read_gate = asyncio.Semaphore(_READ_CONCURRENCY)
        self._launched: Recent[str, _Locations] = Recent(_MAX_REMEMBERED)
        self._serializer = TypeSerializer()
        self._deserializer = TypeDeserializer()
        self._warned_unreadable = False

    @property
    def config(self) -> SageMakerConfig:
        return self._config

    async def aclose(self) -> None:
        clients, self._clients_made = self._clients_made, None
        if clients is not None:
            await asyncio.to_thread(clients.close)

    async def _clients(self) -> _Clients:
        """The three boto3 clients, made once (in a thread: botocore reads its data files)."""
        async with self._clients_lock:
            if self._clients_made is None:
                self._clients_made = await asyncio.to_thread(_make_clients, self._config)
            return self._clients_made

    async def probe(self) -> str:
        """Check region, credentials and the job table with one harmless `GetItem`.

        Returns a line for `sdbot check`; raises `BackendError` naming what is missing.
        """
        clients = await self._clients()
        config = self._config
        action = AwsAction("dynamodb:GetItem", f"table {JOB_TABLE}")

        def read() -> None:
            try:
                clients.dynamodb.get_item(
                    TableName=JOB_TABLE, Key={"InferenceJobId": {"S": "sdbot-check"}}
                )
            except (BotoCoreError, ClientError) as exc:
                raise aws_error(exc, action, config) from None

        await asyncio.to_thread(read)
        return (
            f"through SageMaker (bucket {self._bucket}, table {JOB_TABLE}, region {clients.region})"
        )

    # -- Launching -----------------------------------------------------------------------------

    async def interrogate(
        self,
        job_id: str,
        params: InterrogateParams,
        image_png: bytes,
        *,
        created: Callable[[str], Awaitable[None]] | None = None,
    ) -> Submitted:
        task = task_type(params.method)
        endpoint = await self._async_endpoint(params.endpoint)
        clients = await self._clients()
        backend_id = str(uuid.uuid4())  # ESD's ids are UUIDs (the Lambda request id)
        input_uri = await asyncio.to_thread(
            self._create, clients, backend_id, task, params.method, endpoint, image_png
        )
        try:
            if created is not None:
                await created(backend_id)
        except Exception as exc:
            # Never invoked, so nothing runs: say so on the row.
            failure = BackendError(f"the bot could not record the job: {exc}")
            await asyncio.to_thread(self._mark_failed, clients, backend_id, failure)
            raise
        locations = await asyncio.to_thread(self._start, clients, backend_id, endpoint, input_uri)
        self._launched[backend_id] = locations
        cold = endpoint.instance_count == 0
        _LOGGER.info(
            "bot job %s is ESD job %s on %s (%s through SageMaker%s)",
            job_id,
            backend_id,
            endpoint.name,
            task,
            ", cold start" if cold else "",
        )
        return Submitted(backend_id, endpoint.name, cold_start=cold)

    async def _async_endpoint(self, name: str) -> Endpoint:
        endpoint = await self._lookup(name)
        if endpoint is None:
            raise BackendError(
                f"endpoint {name!r} is not in ESD's endpoint list",
                user_message=f"endpoint not found on ESD: `{name}` (see `endpoints`)",
            )
        if endpoint.type is not EndpointType.ASYNC:
            raise BackendError(
                f"endpoint {name!r} is {endpoint.type}, interrogate needs Async",
                user_message=f"interrogate needs an Async endpoint: `{name}` is "
                f"{endpoint.type}, and ESD's container captions only through SageMaker "
                "asynchronous inference (pick an Async endpoint with `endpoint=`)",
            )
        if not endpoint.in_service:
            raise BackendError(
                f"endpoint {name!r} is {endpoint.status}",
                user_message=f"endpoint `{name}` is {endpoint.status}, not InService",
            )
        return endpoint

    def _create(
        self,
        clients: _Clients,
        job_id: str,
        task: str,
        method: str,
        endpoint: Endpoint,
        image_png: bytes,
    ) -> str:
        """The `created` row and the input object; returns the input's URI. In a worker thread."""
        config = self._config
        key = input_key(task, job_id)
        input_uri = f"s3://{self._bucket}/{key}"
        row = job_row(job_id, task, endpoint, input_uri, config.username, datetime.now(UTC))
        table = AwsAction("dynamodb:PutItem", f"table {JOB_TABLE}")
        try:
            clients.dynamodb.put_item(
                TableName=JOB_TABLE,
                Item={k: self._serializer.serialize(v) for k, v in row.dump().items()},
                ConditionExpression="attribute_not_exists(InferenceJobId)",
            )
        except (BotoCoreError, ClientError) as exc:
            raise aws_error(exc, table, config) from None
        try:
            body = json.dumps(invocation_request(job_id, method, image_png, config.username))
            put = AwsAction("s3:PutObject", f"bucket {self._bucket}")
            try:
                clients.s3.put_object(
                    Bucket=self._bucket,
                    Key=key,
                    Body=body.encode("utf-8"),
                    ContentType="application/json",
                )
            except (BotoCoreError, ClientError) as exc:
                raise aws_error(exc, put, config) from None
        except BackendError as exc:
            # Nothing will run: say so on the row, so ESD's history does not show it waiting.
            self._mark_failed(clients, job_id, exc)
            raise
        return input_uri

    def _start(
        self, clients: _Clients, job_id: str, endpoint: Endpoint, input_uri: str
    ) -> _Locations:
        """The invocation, then its locations on the row. Runs in a worker thread."""
        config = self._config
        try:
            invoke = AwsAction("sagemaker:InvokeEndpointAsync", f"endpoint {endpoint.name}")
            try:
                answer = clients.runtime.invoke_endpoint_async(
                    EndpointName=endpoint.name,
                    InputLocation=input_uri,
                    ContentType="application/json",
                    InferenceId=job_id,
                    InvocationTimeoutSeconds=config.invocation_timeout,
                )
            except (BotoCoreError, ClientError) as exc:
                raise aws_error(exc, invoke, config) from None
        except BackendError as exc:
            # Nothing will run: say so on the row, so ESD's history does not show it waiting.
            self._mark_failed(clients, job_id, exc)
            raise
        locations = _Locations(
            answer.get("OutputLocation") or None, answer.get("FailureLocation") or None
        )
        self._record(clients, job_id, locations)
        return locations

    def _mark_failed(self, clients: _Clients, job_id: str, exc: BackendError) -> None:
        try:
            clients.dynamodb.update_item(
                TableName=JOB_TABLE,
                Key={"InferenceJobId": {"S": job_id}},
                UpdateExpression="SET #s = :failed, completeTime = :now, sagemakerRaw = :why",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":failed": {"S": "failed"},
                    ":now": {"S": esd_time(datetime.now(UTC))},
                    ":why": {"S": exc.user_message or str(exc)},
                },
            )
        except (BotoCoreError, ClientError) as error:
            _LOGGER.warning("ESD job %s: could not mark the row failed: %s", job_id, error)

    def _record(self, clients: _Clients, job_id: str, locations: _Locations) -> None:
        """Put the async locations on the row (`params.output_path`, as ESD's start Lambda does).

        The status moves to `inprogress` only from `created`, so a result Lambda that was
        faster than this update is never overwritten. A failure here is logged, not raised:
        the job runs, and the in-memory locations serve this process.
        """
        sets = []
        values: dict[str, Any] = {}
        if locations.output:
            sets.append("params.output_path = :out")
            values[":out"] = {"S": locations.output}
        if locations.failure:
            sets.append("params.failure_path = :fail")
            values[":fail"] = {"S": locations.failure}
        update = clients.dynamodb.update_item
        key = {"InferenceJobId": {"S": job_id}}
        try:
            try:
                update(
                    TableName=JOB_TABLE,
                    Key=key,
                    UpdateExpression="SET " + ", ".join([*sets, "#s = :inprogress"]),
                    ConditionExpression="#s = :created",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={
                        **values,
                        ":inprogress": {"S": "inprogress"},
                        ":created": {"S": "created"},
                    },
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                if sets:
                    update(
                        TableName=JOB_TABLE,
                        Key=key,
                        UpdateExpression="SET " + ", ".join(sets),
                        ExpressionAttributeValues=values,
                    )
        except (BotoCoreError, ClientError) as exc:
            error = aws_error(
                exc, AwsAction("dynamodb:UpdateItem", f"table {JOB_TABLE}"), self._config
            )
            _LOGGER.warning("ESD job %s: the output location is not on the row: %s", job_id, error)

    def forget(self, backend_id: str) -> None:
        """Stop remembering a job (cancelled); its row still answers `read`."""
        self._launched.pop(backend_id, None)

    # -- Reading -------------------------------------------------------------------------------

    async def read(self, backend_ids: Sequence[str]) -> dict[str, EsdJob]:
        """The jobs as far as they are known; transient failures leave a job out.

        Raises the first `BackendUnavailableError` when no job could be read at all, so the
        poller backs off. A job that cannot be read for any other reason (a refused IAM
        action, credentials AWS rejects) is reported failed with that reason: waiting would
        not cure it, and the user learns what the bot needs.
        """
        if not backend_ids:
            return {}
        try:
            clients = await self._clients()
        except BackendUnavailableError:
            raise
        except BackendError as exc:
            return {i: _unreadable(i, exc) for i in backend_ids}

        async def one(job_id: str) -> EsdJob:
            async with self._read_gate:
                return await asyncio.to_thread(
                    self._read_one, clients, job_id, self._launched.get(job_id)
                )

        results = await asyncio.gather(*(one(i) for i in backend_ids), return_exceptions=True)
        found: dict[str, EsdJob] = {}
        unavailable: list[BackendUnavailableError] = []
        for job_id, result in zip(backend_ids, results, strict=True):
            if isinstance(result, BackendUnavailableError):
                unavailable.append(result)
                continue
            if isinstance(result, BackendError):
                result = _unreadable(job_id, result)
            elif isinstance(result, BaseException):
                raise result
            found[job_id] = result
            if result.state is not None and result.state.terminal:
                self._launched.pop(job_id, None)
        if not found and unavailable:
            raise unavailable[0]
        return found

    def _read_one(self, clients: _Clients, job_id: str, known: _Locations | None) -> EsdJob:
        """One job from its row and its output objects. Runs in a worker thread."""
        config = self._config
        try:
            answer = clients.dynamodb.get_item(
                TableName=JOB_TABLE,
                Key={"InferenceJobId": {"S": job_id}},
                ConsistentRead=True,
            )
        except (BotoCoreError, ClientError) as exc:
            raise aws_error(
                exc, AwsAction("dynamodb:GetItem", f"table {JOB_TABLE}"), config
            ) from None
        item = answer.get("Item")
        if not item:
            return _gone(job_id)
        row = _plain({k: self._deserializer.deserialize(v) for k, v in item.items()})
        job = parse_job(row)
        if job.state is JobState.SUCCEED and job.caption is not None:
            return job  # ESD's result Lambda has been
        if job.state is JobState.FAILED and job.reason is not None:
            return job
        locations = known or _locations_of(row)
        if locations.output is not None:
            raw = self._object(clients, locations.output)
            if raw is not None:
                caption, reason = caption_of(raw)
                if caption is not None:
                    return replace(job, status="succeed", state=JobState.SUCCEED, caption=caption)
                return replace(job, status="failed", state=JobState.FAILED, reason=reason)
        if locations.failure is not None:
            raw = self._object(clients, locations.failure)
            if raw is not None:
                text = raw.decode("utf-8", "replace")
                reason = readable_reason(text) or "SageMaker reported a failure without a reason"
                return replace(job, status="failed", state=JobState.FAILED, reason=reason)
        return job

    def _object(self, clients: _Clients, uri: str) -> bytes | None:
        """An output object's bytes (capped), or None while it does not exist yet."""
        bucket, key = split_s3_uri(uri)
        limit = self._config.max_output_bytes
        action = AwsAction("s3:GetObject", f"bucket {bucket}")
        try:
            answer = clients.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_OBJECT:
                return None
            if code in _DENIED:
                # Without s3:ListBucket, S3 answers a missing key with 403, not 404: the object
                # may simply not be there yet. The row still tells when ESD has the caption.
                if not self._warned_unreadable:
                    self._warned_unreadable = True
                    _LOGGER.warning(
                        "cannot read SageMaker output in bucket %s (AccessDenied): waiting for "
                        "ESD's result handler instead; grant s3:GetObject (and s3:ListBucket, "
                        "so that missing objects answer 404)",
                        bucket,
                    )
                return None
            raise aws_error(exc, action, self._config) from None
        except BotoCoreError as exc:
            raise aws_error(exc, action, self._config) from None
        stream = answer["Body"]
        try:
            data = stream.read(limit + 1)
        except BotoCoreError as exc:
            raise aws_error(exc, action, self._config) from None
        finally:
            stream.close()
        if len(data) > limit:
            raise BackendError(
                f"SageMaker output {bucket}/{key} is over {limit} bytes",
                user_message="the endpoint's output is too large to be a caption",
            )
        return data


async def check_interrogate(config: SageMakerConfig) -> tuple[bool, str]:
    """`sdbot check`'s interrogate line for a deployment without REST interrogate.

    (usable or merely not configured, the line): a missing `ESD_BUCKET` is reported but is not
    an error (the rest of the bot works); a bucket with unusable AWS access is.
    """
    if config.bucket is None:
        return True, f"interrogate: not available, {NEEDS_SAGEMAKER}"

    async def no_endpoint(_: str) -> Endpoint | None:
        return None

    interrogator = SageMakerInterrogator(config, endpoint=no_endpoint)
    try:
        return True, f"interrogate: {await interrogator.probe()}"
    except BackendError as exc:
        return False, f"error: interrogate through SageMaker: {exc.user_message or exc}"
    finally:
        await interrogator.aclose()


def _make_clients(config: SageMakerConfig) -> _Clients:
    """boto3's standard chain for credentials and `AWS_ENDPOINT_URL`; our region and timeouts."""
    session = boto3.session.Session(region_name=config.region)
    region = session.region_name or config.fallback_region
    if not region:
        raise BackendError("no AWS region configured", user_message=NEEDS_REGION)
    settings = BotoConfig(
        region_name=region,
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"mode": "standard", "max_attempts": config.max_attempts},
    )
    return _Clients(
        dynamodb=session.client("dynamodb", config=settings),
        s3=session.client("s3", config=settings),
        runtime=session.client("sagemaker-runtime", config=settings),
        region=region,
    )


def _locations_of(row: object) -> _Locations:
    """The async locations the bot put on a row (after a restart, memory has none)."""
    try:
        params = InferenceItem.model_validate(row).params
    except ValidationError:
        params = None
    if params is None:
        return _Locations(None, None)
    return _Locations(params.output_path or None, params.failure_path or None)


def _gone(job_id: str) -> EsdJob:
    return EsdJob.failed(job_id, LOST_JOB)


def _unreadable(job_id: str, exc: BackendError) -> EsdJob:
    _LOGGER.warning("ESD job %s cannot be read: %s", job_id, exc)
    return EsdJob.failed(job_id, exc.user_message or str(exc))
