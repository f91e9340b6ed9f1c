"""Interrogate through SageMaker with boto3 (`cloud.esd.sagemaker`), against moto in-process.

moto plays DynamoDB, S3 and the SageMaker runtime: `invoke_endpoint_async` answers with a
generated `OutputLocation` and writes the output queued through moto's results API, so each
test queues the container's answer first, runs the bot, and reads back what the bot wrote to
DynamoDB and S3. The ESD REST side is the ESD-compatible server on loopback with its interrogate
advertisement switched off, as real ESD has none. Credentials are dummies set per test; every
other AWS variable is removed, so nothing can reach a real account.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.moto_api._internal.models import moto_api_backend
from scenario_kit import (
    FastSettings,
    RecordingAdapter,
    RecordingResponder,
    chat_caller,
    fast_config,
    job_ids,
    make_app,
    png,
)

from adapters.cli import SECTIONS, load_config
from adapters.console import ConsoleAdapter, run_console
from bot.errors import BackendError, BackendUnavailableError, ConfigError, JobFailedError
from bot.model import Endpoint, EndpointType, InterrogateParams, JobState
from bot.ports import LOST_JOB
from bot.views import ActionKind
from cloud.esd import EsdBackend
from cloud.esd import sagemaker as sm
from cloud.esd.config import EsdSettings
from cloud.esd.interrogate import NEEDS_SAGEMAKER, UnsupportedInterrogator
from cloud.esd.sagemaker import (
    NEEDS_CREDENTIALS,
    NEEDS_REGION,
    SWALLOWED,
    SageMakerConfig,
    SageMakerInterrogator,
    caption_of,
    check_interrogate,
    region_of_api,
)
from cloud.esd_server import app as server_app
from cloud.esd_server import running_server
from commands.spec import Method
from tests.esd.esd_kit import (
    ASYNC,
    KEY,
    REALTIME,
    esd_config,
    params,
    server_config,
    settle,
    state_of,
    target,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    # botocore-stubs' own name for what `ClientError` takes (there is no public alias).
    from botocore.exceptions import _ResponseMetadataTypeDef as ResponseMetadataTypeDef

REGION: Final = "eu-west-1"
BUCKET = "esd-stack-bucket"
TABLE = "SDInferenceJobTable"
ENDPOINTS = {
    "sd-async-a": Endpoint("sd-async-a", "InService", EndpointType.ASYNC, "ml.g5.xlarge", 1),
    "sd-async-cold": Endpoint("sd-async-cold", "InService", EndpointType.ASYNC, "ml.g5.xlarge", 0),
    "sd-real-time-a": Endpoint(
        "sd-real-time-a", "InService", EndpointType.REAL_TIME, "ml.g5.xlarge", 1
    ),
    "sd-async-updating": Endpoint(
        "sd-async-updating", "Updating", EndpointType.ASYNC, "ml.g5.xlarge", 1
    ),
}


def _metadata(status: int) -> ResponseMetadataTypeDef:
    """An AWS answer's metadata, as botocore hands it to a `ClientError`."""
    return {
        "HTTPStatusCode": status,
        "RequestId": "r",
        "HostId": "h",
        "HTTPHeaders": {},
        "RetryAttempts": 0,
    }


# -- The AWS side ----------------------------------------------------------------------------


@dataclass
class Aws:
    """moto's DynamoDB and S3 as the test reads them, and the queue of SageMaker answers."""

    dynamodb: Any
    s3: Any
    calls: list[dict[str, Any]] = field(default_factory=list)  # invoke_endpoint_async params
    clients_made: int = 0

    def answer(self, data: object, *, failure: bool = False) -> None:
        """Queue what the next `invoke_endpoint_async` writes (output, or failure object)."""
        text = data if isinstance(data, str) else json.dumps(data)
        moto_api_backend.set_sagemaker_async_result(failure, text, DEFAULT_ACCOUNT_ID, REGION)

    def caption(self, text: str) -> None:
        self.answer(
            {
                "caption": text,
                "start_time": "2026-01-01 00:00:00",
                "endpoint_name": "sd-async-a",
                "endpoint_instance_id": "i-1",
            }
        )

    def row(self, job_id: str) -> dict[str, Any]:
        item = self.dynamodb.get_item(TableName=TABLE, Key={"InferenceJobId": {"S": job_id}})
        deserializer = TypeDeserializer()
        return {k: deserializer.deserialize(v) for k, v in item["Item"].items()}

    def rows(self) -> list[dict[str, Any]]:
        items = self.dynamodb.scan(TableName=TABLE)["Items"]
        deserializer = TypeDeserializer()
        return [{k: deserializer.deserialize(v) for k, v in i.items()} for i in items]

    def object(self, uri: str) -> bytes:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def delete(self, uri: str) -> None:
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        self.s3.delete_object(Bucket=bucket, Key=key)


def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, credentials: bool) -> None:
    """No AWS setting of the machine leaks in: no profile, no config file, no instance role."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@contextmanager
def _moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    # moto would otherwise put its own dummy keys in the environment.
    with mock_aws(config={"core": {"mock_credentials": False}}):
        dynamodb = boto3.client(
            "dynamodb",
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3 = boto3.client(
            "s3", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "InferenceJobId", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "InferenceJobId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        aws = Aws(dynamodb, s3)
        real = sm._make_clients

        def make_clients(config: SageMakerConfig) -> Any:
            aws.clients_made += 1
            clients = real(config)

            def record(params: dict[str, Any], **_: Any) -> None:
                aws.calls.append(dict(params))

            clients.runtime.meta.events.register(
                "provide-client-params.sagemaker-runtime.InvokeEndpointAsync", record
            )
            return clients

        monkeypatch.setattr(sm, "_make_clients", make_clients)
        yield aws


def deny(monkeypatch: pytest.MonkeyPatch, event: str) -> None:
    """Make every client made from now on answer `event` (e.g. `s3.PutObject`) AccessDenied."""
    real = sm._make_clients  # the recording wrapper of `_moto`
    service, operation = event.split(".")

    def refuse(**_: Any) -> None:
        raise ClientError(
            {
                "Error": {
                    "Code": "AccessDenied",
                    "Message": "User: arn:aws:iam::123456789012:user/bot is not authorized",
                },
                "ResponseMetadata": _metadata(403),
            },
            operation,
        )

    def make_clients(config: SageMakerConfig) -> Any:
        clients = real(config)
        client = clients.s3 if service == "s3" else clients.dynamodb
        client.meta.events.register(f"before-call.{service}.{operation}", refuse)
        return clients

    monkeypatch.setattr(sm, "_make_clients", make_clients)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Aws]:
    _clean_env(monkeypatch, tmp_path, credentials=True)
    with _moto(monkeypatch) as moto_aws:
        yield moto_aws


async def _lookup(name: str) -> Endpoint | None:
    return ENDPOINTS.get(name)


@pytest.fixture
async def interrogator(aws: Aws) -> AsyncIterator[SageMakerInterrogator]:
    made = SageMakerInterrogator(SageMakerConfig(BUCKET, username="bob"), endpoint=_lookup)
    try:
        yield made
    finally:
        await made.aclose()


# -- The interrogator on its own -------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "task", "model"),
    [("clip", "interrogate_clip", "clip"), ("deepbooru", "interrogate_deepbooru", "deepdanbooru")],
)
async def test_a_job_is_row_input_and_async_invocation_then_a_caption(
    aws: Aws, interrogator: SageMakerInterrogator, method: str, task: str, model: str
) -> None:
    image = png(64, 48)
    aws.caption("a red fox in the snow" if method == "clip" else "fox, snow, outdoors")
    submitted = await interrogator.interrogate(
        "bot-1", InterrogateParams(Method(method), "sd-async-a"), image
    )
    job_id = submitted.backend_id
    assert (submitted.endpoint, submitted.cold_start) == ("sd-async-a", False)

    row = aws.row(job_id)
    assert row["InferenceJobId"] == job_id
    assert (row["taskType"], row["inference_type"], row["owner_group_or_role"]) == (
        task,
        "Async",
        ["bob"],
    )
    # The start update moved it on, as ESD's start Lambda does for Async jobs.
    assert row["status"] == "inprogress"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", row["createTime"])
    assert datetime.fromisoformat(row["createTime"]).tzinfo is None
    params = row["params"]
    assert params["sagemaker_inference_endpoint_name"] == "sd-async-a"
    assert params["sagemaker_inference_instance_type"] == "ml.g5.xlarge"
    key = f"{task}/infer_v2/{job_id}/invocation.json"
    assert params["input_body_s3"] == f"s3://{BUCKET}/{key}"

    request = json.loads(aws.object(params["input_body_s3"]))
    assert {k: v for k, v in request.items() if k != "interrogate_payload"} == {
        "id": job_id,
        "task": task,
        "username": "bob",
        "models": {},
        "payload_string": "{}",
    }
    assert request["interrogate_payload"]["model"] == model
    assert base64.b64decode(request["interrogate_payload"]["image"]) == image

    [call] = aws.calls
    assert call == {
        "EndpointName": "sd-async-a",
        "InputLocation": f"s3://{BUCKET}/{key}",
        "ContentType": "application/json",
        "InferenceId": job_id,
        "InvocationTimeoutSeconds": 3600,
    }
    assert params["output_path"].startswith("s3://") and params["output_path"].endswith(".json")

    found = await interrogator.read([job_id])
    job = found[job_id]
    assert job.state is JobState.SUCCEED
    assert job.caption == ("a red fox in the snow" if method == "clip" else "fox, snow, outdoors")
    assert job.task_type == task and job.endpoint == "sd-async-a"


async def test_the_row_caption_from_esds_result_handler_counts_too(
    aws: Aws, interrogator: SageMakerInterrogator
) -> None:
    aws.caption("from the output")
    submitted = await interrogator.interrogate(
        "b", InterrogateParams(Method.CLIP, "sd-async-a"), png()
    )
    job_id = submitted.backend_id
    aws.delete(aws.row(job_id)["params"]["output_path"])  # SageMaker has not written it yet
    waiting = (await interrogator.read([job_id]))[job_id]
    assert waiting.state is JobState.INPROGRESS and waiting.caption is None
    # ESD's result Lambda stores the caption and `succeed` on the row.
    aws.dynamodb.update_item(
        TableName=TABLE,
        Key={"InferenceJobId": {"S": job_id}},
        UpdateExpression="SET #s = :s, caption = :c",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":s": {"S": "succeed"}, ":c": {"S": "from the row"}},
    )
    done = (await interrogator.read([job_id]))[job_id]
    assert (done.state, done.caption) == (JobState.SUCCEED, "from the row")


async def test_a_restarted_bot_finds_the_output_through_the_row(
    aws: Aws, interrogator: SageMakerInterrogator
) -> None:
    aws.caption("remembered by the row")
    submitted = await interrogator.interrogate(
        "b", InterrogateParams(Method.CLIP, "sd-async-a"), png()
    )
    fresh = SageMakerInterrogator(SageMakerConfig(BUCKET), endpoint=_lookup)
    try:
        job = (await fresh.read([submitted.backend_id]))[submitted.backend_id]
    finally:
        await fresh.aclose()
    assert job.caption == "remembered by the row"


async def test_failures_are_failed_jobs_with_a_reason(
    aws: Aws, interrogator: SageMakerInterrogator
) -> None:
    params = InterrogateParams(Method.CLIP, "sd-async-a")
    aws.answer("CUDA out of memory. Tried to allocate 2.00 GiB", failure=True)
    failed = (await interrogator.interrogate("b1", params, png())).backend_id
    aws.answer("null")  # the container swallowed an exception (esd-api.md §8.2 item 8)
    swallowed = (await interrogator.interrogate("b2", params, png())).backend_id
    aws.answer({"default": "response"})
    captionless = (await interrogator.interrogate("b3", params, png())).backend_id
    found = await interrogator.read([failed, swallowed, captionless])
    assert {j.state for j in found.values()} == {JobState.FAILED}
    assert found[failed].reason == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert found[swallowed].reason == SWALLOWED
    assert found[captionless].reason == "the endpoint answered without a caption"
    # A row ESD no longer has (deleted from the WebUI) is a failure too, not a wait forever.
    aws.dynamodb.delete_item(TableName=TABLE, Key={"InferenceJobId": {"S": failed}})
    gone = (await interrogator.read([failed]))[failed]
    assert gone.state is JobState.FAILED and gone.reason == LOST_JOB


def test_output_documents() -> None:
    assert caption_of(b'{"caption": " a cat "}') == ("a cat", None)
    assert caption_of(b"null") == (None, SWALLOWED)
    assert caption_of(b"<html>") == (None, "the endpoint's output is not JSON")
    assert caption_of(b'{"error": "Model not loaded"}') == (None, "Model not loaded")
    assert caption_of(b'{"caption": ""}') == (None, "the endpoint answered without a caption")


async def test_a_real_time_endpoint_is_refused_before_anything_is_written(
    aws: Aws, interrogator: SageMakerInterrogator
) -> None:
    with pytest.raises(BackendError) as caught:
        await interrogator.interrogate("b", InterrogateParams(Method.CLIP, "sd-real-time-a"), png())
    message = caught.value.user_message or ""
    assert "Async endpoint" in message and "`sd-real-time-a` is Real-time" in message
    for name, expected in (
        ("sd-async-updating", "`sd-async-updating` is Updating, not InService"),
        ("sd-missing", "endpoint not found on ESD: `sd-missing`"),
    ):
        with pytest.raises(BackendError) as other:
            await interrogator.interrogate("b", InterrogateParams(Method.CLIP, name), png())
        assert expected in (other.value.user_message or "")
    assert aws.rows() == [] and aws.calls == []


async def test_a_cold_endpoint_is_reported(aws: Aws, interrogator: SageMakerInterrogator) -> None:
    aws.caption("x")
    submitted = await interrogator.interrogate(
        "b", InterrogateParams(Method.DEEPBOORU, "sd-async-cold"), png()
    )
    assert submitted.cold_start


async def test_missing_credentials_name_what_is_needed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _clean_env(monkeypatch, tmp_path, credentials=False)
    with _moto(monkeypatch) as aws:
        made = SageMakerInterrogator(SageMakerConfig(BUCKET), endpoint=_lookup)
        try:
            with pytest.raises(BackendError) as caught:
                await made.interrogate("b", InterrogateParams(Method.CLIP, "sd-async-a"), png())
        finally:
            await made.aclose()
        assert caught.value.user_message == NEEDS_CREDENTIALS
        assert aws.rows() == [] and aws.calls == []
    assert "AWS credentials" in NEEDS_CREDENTIALS and "AWS_ACCESS_KEY_ID" in NEEDS_CREDENTIALS


async def test_a_refused_iam_action_is_named_and_the_row_says_failed(
    aws: Aws, interrogator: SageMakerInterrogator, monkeypatch: pytest.MonkeyPatch
) -> None:
    deny(monkeypatch, "s3.PutObject")
    with pytest.raises(BackendError) as caught:
        await interrogator.interrogate("b", InterrogateParams(Method.CLIP, "sd-async-a"), png())
    message = caught.value.user_message or ""
    assert "s3:PutObject" in message and BUCKET in message
    assert "arn:aws" not in message  # the identity is logged, not shown
    [row] = aws.rows()
    assert row["status"] == "failed" and "s3:PutObject" in row["sagemakerRaw"]
    assert aws.calls == []


async def test_an_unreadable_job_fails_with_the_action_and_hides_no_other_job(
    aws: Aws, no_rest_interrogate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deny(monkeypatch, "dynamodb.GetItem")
    async with EsdBackend(
        esd_config(no_rest_interrogate), sagemaker=SageMakerConfig(BUCKET)
    ) as esd:
        aws.caption("never read")
        caption = await esd.interrogate("bot-i", InterrogateParams(Method.CLIP, ASYNC), png())
        picture = await esd.submit("bot-p", params(), png(), None)
        answer = await esd.statuses(
            [target(picture.backend_id), target(caption.backend_id, interrogate=True)]
        )
    assert answer[picture.backend_id].state is JobState.INPROGRESS
    failed = answer[caption.backend_id]
    assert failed.state is JobState.FAILED and "dynamodb:GetItem" in (failed.reason or "")


async def test_sdbot_check_line(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await check_interrogate(SageMakerConfig(BUCKET)) == (
        True,
        f"interrogate: through SageMaker (bucket {BUCKET}, table {TABLE}, region {REGION})",
    )
    usable, line = await check_interrogate(SageMakerConfig(None))
    assert usable and "ESD_BUCKET" in line
    aws.dynamodb.delete_table(TableName=TABLE)
    usable, line = await check_interrogate(SageMakerConfig(BUCKET))
    assert not usable and f"table {TABLE} does not exist" in line and "AWS_REGION" in line
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert await check_interrogate(SageMakerConfig(BUCKET)) == (
        False,
        f"error: interrogate through SageMaker: {NEEDS_CREDENTIALS}",
    )


def test_aws_errors_name_settings_and_actions() -> None:
    config = SageMakerConfig(BUCKET)

    def error(code: str, iam: str, status: int = 400) -> BackendError:
        exc = ClientError(
            {
                "Error": {"Code": code, "Message": "m"},
                "ResponseMetadata": _metadata(status),
            },
            "Op",
        )
        return sm.aws_error(exc, sm.AwsAction(iam, "x"), config)

    assert "dynamodb:GetItem" in (
        error("AccessDeniedException", "dynamodb:GetItem").user_message or ""
    )
    assert "SDInferenceJobTable does not exist in this region" in (
        error("ResourceNotFoundException", "dynamodb:PutItem").user_message or ""
    )
    assert "ESD_BUCKET" in (error("NoSuchBucket", "s3:PutObject", 404).user_message or "")
    assert "credentials" in (error("ExpiredTokenException", "s3:GetObject").user_message or "")
    assert isinstance(error("ThrottlingException", "dynamodb:GetItem"), BackendUnavailableError)
    assert isinstance(
        error("InternalFailure", "sagemaker:InvokeEndpointAsync", 500), BackendUnavailableError
    )


async def test_a_missing_table_names_esds_table_and_the_region(
    aws: Aws, interrogator: SageMakerInterrogator
) -> None:
    aws.dynamodb.delete_table(TableName=TABLE)
    with pytest.raises(BackendError) as caught:
        await interrogator.interrogate("b", InterrogateParams(Method.CLIP, "sd-async-a"), png())
    assert "SDInferenceJobTable does not exist" in (caught.value.user_message or "")


async def test_clients_are_made_once_and_closed(
    aws: Aws, interrogator: SageMakerInterrogator
) -> None:
    for n in range(3):
        aws.caption(f"caption {n}")
        submitted = await interrogator.interrogate(
            f"b{n}", InterrogateParams(Method.CLIP, "sd-async-a"), png()
        )
        await interrogator.read([submitted.backend_id])
    assert aws.clients_made == 1
    await interrogator.aclose()
    await interrogator.aclose()  # twice is harmless


# -- Settings -------------------------------------------------------------------------------


def test_settings_from_the_bot_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    config = EsdSettings(
        esd_api_url="https://abc123.execute-api.ap-northeast-1.amazonaws.com/prod/",
        esd_bucket=" s3://my-bucket/ ",
        esd_username="ops",
    )
    settings = SageMakerConfig.from_config(config, {"AWS_REGION": "us-west-2"})
    assert (settings.bucket, settings.username, settings.region) == (
        "my-bucket",
        "ops",
        "us-west-2",
    )
    assert settings.fallback_region == "ap-northeast-1"
    assert SageMakerConfig.from_config(EsdSettings(), {}).bucket is None
    assert region_of_api("http://127.0.0.1:8765/prod/") is None
    with pytest.raises(ConfigError, match="ESD_BUCKET"):
        SageMakerConfig("Not A Bucket")
    with pytest.raises(ConfigError, match="ESD_BUCKET"):
        SageMakerInterrogator(SageMakerConfig(None), endpoint=_lookup)


def test_clients_follow_the_standard_aws_settings(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    settings = SageMakerConfig.from_config(EsdSettings(esd_bucket=BUCKET))
    clients = sm._make_clients(settings)  # only built: nothing is sent
    try:
        assert clients.region == "ap-south-1"
        assert {c.meta.endpoint_url for c in (clients.dynamodb, clients.s3, clients.runtime)} == {
            "http://127.0.0.1:4566"
        }
    finally:
        clients.close()


async def test_no_region_anywhere_names_aws_region(
    monkeypatch: pytest.MonkeyPatch, aws: Aws
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    made = SageMakerInterrogator(SageMakerConfig(BUCKET), endpoint=_lookup)
    try:
        with pytest.raises(BackendError) as caught:
            await made.interrogate("b", InterrogateParams(Method.CLIP, "sd-async-a"), png())
    finally:
        await made.aclose()
    assert caught.value.user_message == NEEDS_REGION
    # The ESD API URL's region is the fallback.
    aws.caption("found by the API's region")
    made = SageMakerInterrogator(SageMakerConfig(BUCKET, fallback_region=REGION), endpoint=_lookup)
    try:
        submitted = await made.interrogate("b", InterrogateParams(Method.CLIP, "sd-async-a"), png())
        assert (await made.read([submitted.backend_id]))[submitted.backend_id].caption
    finally:
        await made.aclose()


# -- Through `EsdBackend`, with the ESD-compatible server for the REST side -------------------


@pytest.fixture
async def no_rest_interrogate(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The loopback server without its interrogate advertisement, like real ESD.

    `ServerConfig` has no switch for the advertisement, so the module's dict is patched.
    """
    silent = server_app._ADVERTISEMENT.model_copy(update={"interrogate": False})
    monkeypatch.setattr(server_app, "_ADVERTISEMENT", silent)
    async with running_server(server_config()) as url:
        yield url


async def test_the_backend_picks_sagemaker_and_follows_its_jobs(
    aws: Aws, no_rest_interrogate: str
) -> None:
    url = no_rest_interrogate
    sagemaker = SageMakerConfig(BUCKET)
    async with EsdBackend(esd_config(url), sagemaker=sagemaker) as esd:
        assert isinstance(esd.interrogator, SageMakerInterrogator)
        for method, caption in (("clip", "a cat"), ("deepbooru", "cat, solo, whiskers")):
            aws.caption(caption)
            submitted = await esd.interrogate(
                f"bot-{method}", InterrogateParams(Method(method), ASYNC), png()
            )
            status = await settle(esd, submitted.backend_id, interrogate=True)
            assert status.state is JobState.SUCCEED
            assert (await esd.results(submitted.backend_id)).caption == caption
            # `results` again (a restart between poll and delivery) reads the job back.
            assert (await esd.results(submitted.backend_id)).caption == caption
        aws.answer("null")
        failed = await esd.interrogate("bot-f", InterrogateParams(Method.CLIP, ASYNC), png())
        status = await settle(esd, failed.backend_id, interrogate=True)
        assert (status.state, status.reason) == (JobState.FAILED, SWALLOWED)
        with pytest.raises(JobFailedError):
            await esd.results(failed.backend_id)
        # The core refuses Real-time endpoints for interrogate; the backend does too.
        with pytest.raises(BackendError) as caught:
            await esd.interrogate("bot-r", InterrogateParams(Method.CLIP, REALTIME), png())
        assert "Async endpoint" in (caught.value.user_message or "")
        await esd.cancel(failed.backend_id)
    state = state_of(url)
    assert state.requests["create_inference"] == 0 and not state.jobs
    assert sorted(r["taskType"] for r in aws.rows()) == [
        "interrogate_clip",
        "interrogate_clip",
        "interrogate_deepbooru",
    ]
    assert aws.clients_made == 1


async def test_jobs_in_flight_resume_after_a_restart(aws: Aws, no_rest_interrogate: str) -> None:
    config = esd_config(no_rest_interrogate)
    aws.caption("picked up again")
    async with EsdBackend(config, sagemaker=SageMakerConfig(BUCKET)) as before:
        submitted = await before.interrogate("bot-1", InterrogateParams(Method.CLIP, ASYNC), png())
    # A new process knows only what the core stored: the backend id, and that it captions.
    async with EsdBackend(config, sagemaker=SageMakerConfig(BUCKET)) as after:
        status = await settle(after, submitted.backend_id, interrogate=True)
        assert status.state is JobState.SUCCEED
        assert (await after.results(submitted.backend_id)).caption == "picked up again"
    assert state_of(no_rest_interrogate).requests["get_inference"] == 0


async def test_without_esd_bucket_the_refusal_names_it(aws: Aws, no_rest_interrogate: str) -> None:
    async with EsdBackend(esd_config(no_rest_interrogate), sagemaker=SageMakerConfig(None)) as esd:
        assert isinstance(esd.interrogator, UnsupportedInterrogator)
        with pytest.raises(BackendError) as caught:
            await esd.interrogate("bot", InterrogateParams(Method.CLIP, ASYNC), png())
    assert caught.value.user_message == NEEDS_SAGEMAKER and "ESD_BUCKET" in NEEDS_SAGEMAKER
    assert aws.rows() == [] and aws.clients_made == 0


# -- End to end ------------------------------------------------------------------------------


def _config(tmp_path: Path, url: str) -> FastSettings:
    return fast_config(
        tmp_path,
        backend="esd",
        esd_api_url=url,
        esd_bucket=BUCKET,
        esd_api_key=KEY,
        # A regression fails the test in seconds instead of waiting out the 20-minute default.
        job_timeout=10.0,
        created_timeout=10.0,
    )


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_console_interrogates_on_esd_through_sagemaker(
    aws: Aws, no_rest_interrogate: str, tmp_path: Path
) -> None:
    """console → core → `EsdBackend.from_config` → REST for endpoints, SageMaker for captions."""
    config = _config(tmp_path, no_rest_interrogate)
    out = io.StringIO()
    app = make_app(config, EsdBackend.from_config(config[EsdSettings], config.core))
    adapter = ConsoleAdapter(config.output_dir, out)
    app.add_adapter(adapter)
    image = tmp_path / "in.png"
    image.write_bytes(png(64, 64))
    async with app:
        # One run per job: moto hands out queued answers in invocation order.
        run = functools.partial(run_console, adapter, app.dispatcher, app.runner.wait_idle)
        aws.caption("a watercolor of a castle")
        await run(_lines(f"interrogate image={image}"))
        aws.caption("castle, sky, no humans")
        await run(_lines(f"interrogate image={image} method=deepbooru"))
        aws.answer("CUDA out of memory", failure=True)
        await run(_lines(f"interrogate image={image}"))
    lines = out.getvalue().splitlines()
    clip, booru, failed = job_ids(lines)
    assert f"caption {clip}: a watercolor of a castle" in lines
    assert f"caption {booru}: castle, sky, no humans" in lines
    [failure] = [line for line in lines if line.startswith(f"job {failed} failed")]
    assert "CUDA out of memory" in failure
    rows = sorted(aws.rows(), key=lambda r: r["createTime"])
    assert [r["taskType"] for r in rows] == [
        "interrogate_clip",
        "interrogate_deepbooru",
        "interrogate_clip",
    ]
    assert {r["params"]["sagemaker_inference_endpoint_name"] for r in rows} == {ASYNC}
    assert [
        json.loads(aws.object(r["params"]["input_body_s3"]))["interrogate_payload"]["model"]
        for r in rows
    ] == ["clip", "deepdanbooru", "clip"]
    assert state_of(no_rest_interrogate).requests["create_inference"] == 0


async def test_chat_delivers_the_caption_with_use_as_prompt(
    aws: Aws, no_rest_interrogate: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, no_rest_interrogate)
    app = make_app(config, EsdBackend.from_config(config[EsdSettings], config.core))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    async with app:
        aws.caption("a lighthouse at dusk")
        responder = RecordingResponder()
        ref = adapter.attach("photo.png", png(80, 60))
        job = await app.dispatcher.handle_text(chat_caller(), "interrogate", [ref], responder)
        await app.runner.wait_idle()
    assert job is not None and responder.accepted_ids == [job.id]
    [result] = adapter.results()
    assert result.state is JobState.SUCCEED and result.caption == "a lighthouse at dusk"
    assert ActionKind.USE_AS_PROMPT in [a.kind for a in result.actions]


def test_the_job_table_is_no_setting(tmp_path: Path) -> None:
    # ESD hard-codes SDInferenceJobTable (scripts/api.py, its Lambdas' INFERENCE_JOB_TABLE).
    path = tmp_path / "sdbot.toml"
    path.write_text('esd_job_table = "OtherTable"\n')
    with pytest.raises(ConfigError, match="ESD hard-codes its job table SDInferenceJobTable"):
        load_config({}, path)
    assert not any("esd_job_table" in kind.model_fields for kind in SECTIONS)
