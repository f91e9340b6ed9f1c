"""`cloud.esd.wire`: one description of ESD's wire format, read by the client and written and
checked by `sdbot local-backend` (esd-api.md §2–§4)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.errors import BackendError
from bot.model import JobState
from cloud.esd.payloads import (
    parse_checkpoint_page,
    parse_created,
    parse_endpoint_page,
    parse_envelope,
    parse_inference_page,
    parse_job,
    parse_time,
    started_endpoint,
)
from cloud.esd.wire import (
    CheckpointItem,
    CheckpointList,
    Created,
    CreatedInference,
    CreateInference,
    EndpointItem,
    EndpointList,
    InferenceItem,
    InferenceList,
    Started,
    StartedInference,
    esd_time,
)
from cloud.esd_server.state import LambdaError
from cloud.esd_server.wire import BodyInvalidError, parse_create, parse_delete

# Python's `str(dict)` of a container error, as ESD's Lambdas store it in `sagemakerRaw`
# (inference_async_events.py): single quotes, not JSON.
RAW = "{'error': 'OutOfMemoryError', 'errors': 'CUDA out of memory'}"


def test_what_the_server_writes_the_client_reads() -> None:
    item = InferenceItem(
        InferenceJobId="j1",
        status="failed",
        taskType="img2img",
        inference_type="Async",
        createTime="2024-07-30T07:30:40.123456",
        completeTime=None,
        owner_group_or_role=["api"],
        img_presigned_urls=["http://127.0.0.1:1/out/j1/result/image_0.png?sig=x"],
        sagemakerRaw=RAW,
    )
    page = InferenceList(inferences=[item], last_evaluated_key=None).dump()
    # Keys set to None are written (ESD's rows carry nulls), keys never set are not.
    assert page["last_evaluated_key"] is None and "completeTime" in page["inferences"][0]
    assert "caption" not in page["inferences"][0]
    [job] = parse_inference_page(json.loads(json.dumps(page))).jobs
    assert (job.id, job.state, job.owner) == ("j1", JobState.FAILED, "api")
    assert job.reason == "OutOfMemoryError: CUDA out of memory"
    assert job.created_at == datetime(2024, 7, 30, 7, 30, 40, 123456, tzinfo=UTC)
    assert job.image_urls == ("http://127.0.0.1:1/out/j1/result/image_0.png?sig=x",)


def test_checkpoints_keep_esds_string_created_and_list_name() -> None:
    item = CheckpointItem(type="Lora", name=["a.safetensors", "alias"], created="1717000000.5")
    data = CheckpointList(page=1, pages=2, total=1, checkpoints=[item]).dump()
    assert data["checkpoints"][0]["created"] == "1717000000.5"
    page = parse_checkpoint_page(data)
    assert [(m.name, m.type) for m in page.models] == [("a.safetensors", "Lora")]
    # ESD's own number form reads the same (a `DecimalEncoder` may write either).
    assert CheckpointItem.model_validate({"created": 1717000000.5}).created == "1717000000.5"


def test_endpoints_counts_are_strings_and_other_services_are_skipped() -> None:
    data = EndpointList(
        endpoints=[
            EndpointItem(
                endpoint_name="sd-async-a",
                endpoint_status="InService",
                endpoint_type="Async",
                service_type="sd",
                current_instance_count="0",
                min_instance_number="0",
                max_instance_number="N/A",
                autoscaling=True,
            ),
            EndpointItem(endpoint_name="comfy-a", service_type="comfy"),
        ],
        last_evaluated_key="abc",
    ).dump()
    page = parse_endpoint_page(data)
    [endpoint] = page.endpoints
    assert (endpoint.instance_count, endpoint.min_instances, endpoint.max_instances) == (0, 0, None)
    assert page.next_key == "abc"


def test_created_and_started_answers() -> None:
    created = Created(
        inference=CreatedInference(id="j1", type="img2img", api_params_s3_upload_url="http://u/")
    )
    assert parse_created(created.dump()).upload_url == "http://u/"
    started = Started(
        InferenceJobId="j1",
        status="inprogress",
        inference=StartedInference(inference_id="j1", status="inprogress", endpoint_name="sd-a"),
    )
    assert started_endpoint(started.dump()) == "sd-a"
    assert started_endpoint({"InferenceJobId": "j1", "status": "inprogress"}) is None
    assert started_endpoint("junk") is None


def test_what_the_client_sends_the_server_accepts() -> None:
    body = CreateInference(
        task_type="img2img",
        inference_type="Real-time",
        models={"Stable-diffusion": ["v1-5.safetensors"]},
        sagemaker_endpoint_name="sd-real-time-a",
    )
    sent = json.dumps(body.dump()).encode()
    assert parse_create(sent) == body
    assert parse_delete(b'{"inference_id_list": ["a", "b"]}') == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            [],
            "[instance type (array) does not match any allowed primitive type "
            '(allowed: ["object"])]',
        ),
        (
            {"task_type": "img2img"},
            '[object has missing required properties (["inference_type","models"])]',
        ),
        (
            {"task_type": 5, "inference_type": "Async", "models": {}},
            "[instance type (integer) does not match any allowed primitive type "
            '(allowed: ["string"])]',
        ),
        (
            {"task_type": "img2img", "inference_type": 5, "models": {}},
            '[instance value (5) not found in enum (possible values: ["Async","Real-time"])]',
        ),
        (
            {"task_type": "img2img", "inference_type": "Async", "models": {}, "workflow": 1},
            "[instance type (integer) does not match any allowed primitive type "
            '(allowed: ["string"])]',
        ),
    ],
)
def test_request_bodies_are_refused_as_api_gateway_does(body: object, message: str) -> None:
    with pytest.raises(BodyInvalidError) as caught:
        parse_create(json.dumps(body).encode())
    assert str(caught.value) == message


def test_models_past_the_validator_are_the_lambdas_400() -> None:
    body = {"task_type": "img2img", "inference_type": "Async", "models": {"Lora": "x"}}
    with pytest.raises(LambdaError, match=r"models\['Lora'\] must be a list of file names"):
        parse_create(json.dumps(body).encode())
    with pytest.raises(BodyInvalidError, match="must have at most 100 elements"):
        parse_delete(json.dumps({"inference_id_list": ["x"] * 101}).encode())


def test_unusable_answers_name_the_field_and_never_the_value() -> None:
    secret = "http://bucket/x.png?X-Amz-Signature=abc"
    with pytest.raises(BackendError) as caught:
        parse_job({"InferenceJobId": "j", "img_presigned_urls": secret})
    assert "img_presigned_urls" in str(caught.value) and "Signature" not in str(caught.value)
    assert caught.value.user_message == "the backend answered something this bot cannot read"
    with pytest.raises(BackendError, match=r"`inferences\.0\.InferenceJobId`"):
        parse_inference_page({"inferences": [{"status": "succeed"}]})


def test_fields_the_client_can_do_without_read_as_absent() -> None:
    job = parse_job(
        {
            "InferenceJobId": "j",
            "status": "succeed",
            "params": "not an object",
            "owner_group_or_role": "api",
            "caption": 7.5,
        }
    )
    assert (job.endpoint, job.model, job.owner) == (None, None, None)
    assert job.caption == "7.5"  # numbers are read where ESD writes strings


def test_envelopes_of_the_lambda_and_of_api_gateway() -> None:
    lam = parse_envelope(b'{"statusCode": 200, "debug": {}, "data": {"a": 1}, "message": "OK"}')
    assert lam is not None and (lam.data, lam.message) == ({"a": 1}, "OK")
    gateway = parse_envelope(b'{"message": "Forbidden", "requestId": "r"}')
    assert gateway is not None and gateway.message == "Forbidden" and gateway.data is None
    assert parse_envelope(b"<html>bad gateway</html>") is None
    odd = parse_envelope(b'{"message": ["not", "text"]}')
    assert odd is not None and odd.message is None


def test_times_as_esds_lambdas_write_them_read_back() -> None:
    moment = datetime(2024, 7, 30, 9, 30, 40, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert esd_time(moment) == "2024-07-30T07:30:40.123456"  # UTC, no zone (§2.4)
    assert parse_time(esd_time(moment)) == moment
    assert esd_time(None) is None
