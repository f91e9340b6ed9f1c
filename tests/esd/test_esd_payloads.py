"""The ESD wire conversions, the A1111 payload and the settings, without a server."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from bot.config import Config
from bot.errors import BackendError, ConfigError
from bot.model import JobState
from cloud.esd import EsdConfig
from cloud.esd.a1111 import (
    hypernet_names,
    img2img_payload,
    interrogate_payload,
    lora_names,
    resolve_file,
)
from cloud.esd.config import EsdSettings
from cloud.esd.payloads import (
    parse_checkpoint_page,
    parse_count,
    parse_endpoint_page,
    parse_job,
    parse_time,
    parse_version,
    readable_reason,
)
from commands.spec import Area, Fill, Resize
from tests.esd.esd_kit import params


def test_job_row_becomes_a_dataclass() -> None:
    job = parse_job(
        {
            "InferenceJobId": "j1",
            "status": "failed",
            "taskType": "img2img",
            "createTime": "2024-07-30T07:30:40.123456",
            "startTime": "",
            "owner_group_or_role": ["api"],
            "params": {
                "sagemaker_inference_endpoint_name": "sd-async-x",
                "used_models": {"Stable-diffusion": [{"model_name": "v1-5.safetensors"}]},
            },
            "sagemakerRaw": '{"failureReason": "CUDA out of memory"}',
            "img_presigned_urls": [],
        }
    )
    assert job.state is JobState.FAILED
    assert job.created_at == datetime(2024, 7, 30, 7, 30, 40, 123456, tzinfo=UTC)
    assert job.started_at is None
    assert (job.endpoint, job.model, job.owner) == ("sd-async-x", "v1-5.safetensors", "api")
    assert job.reason == "CUDA out of memory"
    cloud = job.cloud_job()
    assert (cloud.backend_id, cloud.state, cloud.endpoint) == ("j1", "failed", "sd-async-x")


def test_unknown_status_and_v1_3_failure_strings() -> None:
    assert parse_job({"InferenceJobId": "a", "status": "queued"}).state is None
    assert parse_job({"InferenceJobId": "a", "status": "failure"}).state is JobState.FAILED


@pytest.mark.parametrize(
    "value",
    [
        None,
        7,
        {"status": "succeed"},
        {"InferenceJobId": ["x"]},
        {"InferenceJobId": "x", "img_presigned_urls": "u"},
    ],
)
def test_bad_shapes_are_backend_errors(value: object) -> None:
    with pytest.raises(BackendError) as caught:
        parse_job(value)
    assert caught.value.user_message == "the backend answered something this bot cannot read"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, None),
        ({}, None),
        ("", None),
        ("Model load failed", "Model load failed"),
        ({"error": "no images"}, "no images"),
        (
            '{"invocationStatus": "Failed", "failureReason": "ClientError: boom"}',
            "ClientError: boom",
        ),
        ({"a": 1}, '{"a":1}'),
        (
            "see https://bucket.s3.amazonaws.com/x.out?X-Amz-Signature=abc",
            "see https://bucket.s3.amazonaws.com/x.out?[redacted]",
        ),
    ],
)
def test_sagemaker_raw_becomes_one_readable_line(raw: object, reason: str | None) -> None:
    assert readable_reason(raw) == reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # `str(message)` of SageMaker's async failure notification (inference_async_events.py).
        (
            "{'awsRegion': 'us-east-1', 'eventTime': '2024-07-30T07:30:40.123Z', "
            "'invocationStatus': 'Failed', 'failureReason': 'ClientError: Received server error "
            "(500) from primary', 'requestParameters': {'endpointName': 'sd-async-x'}, "
            "'inferenceId': 'abc'}",
            "ClientError: Received server error (500) from primary",
        ),
        # `str(sagemaker_out)` of a Real-time A1111 error body (start_inference_job.py).
        (
            "{'error': 'OutOfMemoryError', 'detail': '', 'body': '', 'errors': 'CUDA out of "
            "memory', 'start_time': '2024-07-30T07:30:40', 'endpoint_name': 'sd-real-time-x'}",
            "OutOfMemoryError: CUDA out of memory",
        ),
        # What the Real-time start answers for an output with nothing to parse.
        ("argument of type 'NoneType' is not iterable", "the endpoint returned no images"),
        ("'images'", "the endpoint returned no images"),
        # Not a literal: shown as text, never evaluated.
        ("{'a': __import__('os').getcwd()}", "{'a': __import__('os').getcwd()}"),
    ],
)
def test_sagemaker_raw_is_a_python_repr_parsed_safely(raw: str, reason: str) -> None:
    assert readable_reason(raw) == reason


def test_a_failed_row_without_a_reason_says_the_endpoint_returned_no_output() -> None:
    row = {"InferenceJobId": "j", "status": "failed", "taskType": "img2img", "sagemakerRaw": {}}
    assert parse_job(row).reason == "the endpoint returned no images"
    row = {**row, "taskType": "interrogate_clip"}
    assert parse_job(row).reason == "the endpoint returned no caption"


def test_a_real_time_row_left_created_is_running_or_failed() -> None:
    row = {"InferenceJobId": "j", "status": "created", "inference_type": "Real-time"}
    assert parse_job(row).state is JobState.CREATED
    started = {**row, "startTime": "2024-07-30T07:30:40.123456"}
    assert parse_job(started).state is JobState.INPROGRESS
    failed = {**started, "sagemakerRaw": "{'error': 'RuntimeError', 'errors': 'boom'}"}
    job = parse_job(failed)
    assert (job.state, job.reason) == (JobState.FAILED, "RuntimeError: boom")
    # An Async row at `created` is simply not started yet.
    assert parse_job({**started, "inference_type": "Async"}).state is JobState.CREATED


def test_long_reasons_are_cut() -> None:
    reason = readable_reason("x " * 500)
    assert reason is not None and len(reason) == 300 and reason.endswith("…")


def test_times_counts_versions() -> None:
    assert parse_time("2024-03-22 17:39:27.123456") == datetime(
        2024, 3, 22, 17, 39, 27, 123456, tzinfo=UTC
    )
    assert parse_time("junk") is None
    assert [parse_count(v) for v in ("3", "0", "N/A", "", None, 2)] == [3, 0, None, None, None, 2]
    assert parse_version("1.7.0") == (1, 7, 0)
    assert parse_version("v1.4.0-beta") == (1, 4, 0)
    assert parse_version(None) is None and parse_version("next") is None


def test_endpoint_pages_keep_only_sd() -> None:
    page = parse_endpoint_page(
        {
            "endpoints": [
                {
                    "endpoint_name": "sd-a",
                    "endpoint_status": "Updating",
                    "endpoint_type": "Async",
                    "service_type": "sd",
                    "current_instance_count": "N/A",
                    "min_instance_number": "0",
                },
                {
                    "endpoint_name": "comfy-a",
                    "endpoint_status": "InService",
                    "service_type": "comfy",
                },
            ],
            "last_evaluated_key": "abc",
        }
    )
    [endpoint] = page.endpoints
    assert (endpoint.name, endpoint.status, endpoint.instance_count, endpoint.min_instances) == (
        "sd-a",
        "Updating",
        None,
        0,
    )
    assert page.next_key == "abc"


def test_endpoint_types_are_esds_two() -> None:
    def endpoint_type(value: object) -> str:
        row = {"endpoint_name": "sd-x", "endpoint_status": "InService", "service_type": "sd"}
        [endpoint] = parse_endpoint_page({"endpoints": [{**row, "endpoint_type": value}]}).endpoints
        return endpoint.type

    assert [endpoint_type(v) for v in ("Async", "Real-time", None, "")] == [
        "Async",
        "Real-time",
        "Async",
        "Async",
    ]
    with pytest.raises(BackendError, match="endpoint `sd-x` has endpoint_type 'Serverless'"):
        endpoint_type("Serverless")


def test_checkpoint_names_are_the_first_name() -> None:
    page = parse_checkpoint_page(
        {
            "page": 1,
            "pages": 2,
            "checkpoints": [{"name": ["a.safetensors", "alias"], "type": "Lora"}],
        }
    )
    assert [(m.name, m.type) for m in page.models] == [("a.safetensors", "Lora")]
    assert (page.page, page.pages) == (1, 2)


def _image(uri: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    return base64.b64decode(uri[len(prefix) :])


def test_img2img_payload_follows_a1111() -> None:
    p = params(
        resize=Resize.FILL,
        fill=Fill.LATENT_NOISE,
        area=Area.MASKED,
        invert=True,
        count=3,
        mask_blur=9,
        padding=40,
    )
    payload = img2img_payload(p, b"INIT", b"MASK")
    json.dumps(payload, allow_nan=False)  # plain JSON: no Infinity tokens
    assert _image(payload["init_images"][0]) == b"INIT"
    assert _image(payload["mask"]) == b"MASK"
    assert payload["resize_mode"] == 2
    assert payload["inpainting_fill"] == 2
    assert payload["inpaint_full_res"] is True
    assert payload["inpainting_mask_invert"] == 1
    assert payload["inpaint_full_res_padding"] == 40
    assert payload["mask_blur"] == payload["mask_blur_x"] == payload["mask_blur_y"] == 9
    assert (payload["batch_size"], payload["n_iter"]) == (3, 1)
    assert payload["sampler_name"] == payload["sampler_index"] == "Euler a"
    assert payload["seed"] == 1234 and payload["denoising_strength"] == 0.6
    assert (payload["width"], payload["height"], payload["steps"], payload["cfg_scale"]) == (
        96,
        64,
        12,
        6.5,
    )
    assert (payload["prompt"], payload["negative_prompt"]) == ("a red fox", "blurry")
    # The checkpoint travels in `models` of POST /inferences, never in override_settings;
    # clip skip is the one setting sent there, always, as A1111's API takes it.
    assert payload["override_settings"] == {"CLIP_stop_at_last_layers": 1}
    assert p.model not in json.dumps(payload)


def test_plain_img2img_has_no_mask_and_defaults() -> None:
    payload = img2img_payload(params(), b"INIT", None)
    assert payload["mask"] is None
    assert (payload["resize_mode"], payload["inpainting_fill"], payload["inpaint_full_res"]) == (
        0,
        1,
        False,
    )
    assert payload["inpainting_mask_invert"] == 0


def test_interrogate_payload_names_the_container_models() -> None:
    assert interrogate_payload(b"IMG", "deepbooru")["model"] == "deepdanbooru"
    clip = interrogate_payload(b"IMG", "clip")
    assert clip["model"] == "clip" and _image(clip["image"]) == b"IMG"


def test_prompt_networks() -> None:
    prompt = "a fox <lora:ink:0.8> <lora:ink:0.2> <lora:soft light> <hypernet:grain:1>"
    assert lora_names(prompt) == ("ink", "soft light")
    assert hypernet_names(prompt) == ("grain",)
    files = ("ink.safetensors", "soft light.pt", "other.ckpt")
    assert resolve_file("ink", files) == "ink.safetensors"
    assert resolve_file("soft light", files) == "soft light.pt"
    assert resolve_file("other.ckpt", files) == "other.ckpt"
    assert resolve_file("missing", files) is None


def test_config_normalises_and_hides_the_key() -> None:
    config = EsdConfig(
        api_url="https://abc.execute-api.eu-west-1.amazonaws.com/prod", api_key="s3cr3tk3y"
    )
    assert config.api_url.endswith("/prod/")
    assert config.host == "abc.execute-api.eu-west-1.amazonaws.com"
    assert "s3cr3tk3y" not in repr(config)


@pytest.mark.parametrize(
    ("url", "key", "needle"),
    [
        (None, "k", "ESD_API_URL is not set"),
        ("ftp://host/prod/", "k", "http(s) URL"),
        ("https:///prod/", "k", "http(s) URL"),
        ("https://host/prod/?x=1", "k", "query string"),
        ("https://host/prod/", None, "ESD_API_KEY is not set"),
    ],
)
def test_from_config_names_the_bad_setting(url: str | None, key: str | None, needle: str) -> None:
    esd = EsdSettings(esd_api_url=url, esd_api_key=key)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        EsdConfig.from_config(esd, Config())


def test_from_config_carries_the_settings() -> None:
    settings = EsdSettings(
        esd_api_url="http://127.0.0.1:9/prod",
        esd_username="bot",
        esd_timeout=12.0,
        realtime_max_in_flight=3,
        esd_api_key="key123",
    )
    esd = EsdConfig.from_config(settings, Config.model_validate({"inference_type": "Real-time"}))
    assert (esd.api_url, esd.username, esd.inference_type) == (
        "http://127.0.0.1:9/prod/",
        "bot",
        "Real-time",
    )
    assert (esd.timeout, esd.realtime_max_in_flight, esd.api_key) == (12.0, 3, "key123")


@pytest.mark.parametrize(
    "change",
    [
        {"direct_threshold": -1},
        {"page_size": 0},
        {"timeout": 0},
        {"username": " "},
    ],
)
def test_bad_settings_fail_early(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        # Values of the wrong type on purpose: they come from TOML and the environment.
        EsdConfig(**{"api_url": "http://h/prod/", "api_key": "k", **change})  # type: ignore[arg-type]
