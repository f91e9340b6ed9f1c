"""The REST routes of the ESD-compatible server: envelope, auth, job life, errors and deletes."""

from __future__ import annotations

import io
import json
import re
from typing import TYPE_CHECKING

import pytest
from PIL import Image

from cloud.esd_server import EndpointSpec, ServerConfig
from cloud.local.preview import caption
from tests.esd_server.esd_server_kit import (
    CHECKPOINT,
    INTERROGATING,
    SLOW,
    Api,
    Reply,
    data_url,
    img2img_payload,
    png,
)

if TYPE_CHECKING:
    from pathlib import Path

    from tests.esd_server.esd_server_kit import MakeApi

ESD_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")  # ISO without timezone


def assert_envelope(reply: Reply, status: int, message: str | None = None) -> None:
    assert reply.status == status
    assert reply.body["statusCode"] == status
    assert set(reply.body["debug"]) == {"function_url", "log_url", "trace_url"}
    assert reply.headers["x-api-version"] == "1.7.0"
    assert reply.headers["Content-Type"].startswith("application/json")
    if message is not None:
        assert reply.body["message"] == message


def assert_gateway(reply: Reply, status: int, message: str) -> None:
    assert reply.status == status
    assert reply.body["message"] == message
    assert isinstance(reply.body["requestId"], str)
    assert "x-api-version" not in reply.headers
    assert "debug" not in reply.body


# -- Ping, keys and users --------------------------------------------------------------------


async def test_ping_answers_pong_and_advertises_nothing_like_esd(api: Api) -> None:
    # ESD's ping Lambda is `ok(message='pong')` (middleware_api/service/ping.py): no data.
    reply = await api.call("GET", "ping", headers=api.headers(user=False))
    assert_envelope(reply, 200, "pong")
    assert "data" not in reply.body


async def test_ping_advertises_interrogate_only_with_the_flag(make_api: MakeApi) -> None:
    api = await make_api(INTERROGATING)
    reply = await api.call("GET", "ping", headers=api.headers(user=False))
    assert_envelope(reply, 200, "pong")
    assert reply.data["sdbot_local_backend"] is True
    assert reply.data["interrogate"] is True
    assert {"interrogate_clip", "interrogate_deepbooru"} <= set(reply.data["task_types"])
    assert api.base.endswith("/prod/")
    assert api.state.requests["ping"] == 1


@pytest.mark.parametrize("path", ["ping", "endpoints", "inferences/whatever"])
@pytest.mark.parametrize("key", [None, "wrong-key"])
async def test_a_missing_or_wrong_key_is_api_gateways_403(
    api: Api, path: str, key: str | None
) -> None:
    headers = {"username": "api"} if key is None else {"x-api-key": key, "username": "api"}
    reply = await api.call("GET", path, headers=headers)
    assert_gateway(reply, 403, "Forbidden")


async def test_an_unknown_route_or_method_is_missing_authentication_token(api: Api) -> None:
    assert_gateway(await api.call("GET", "nothing-here"), 403, "Missing Authentication Token")
    assert_gateway(await api.call("POST", "ping"), 403, "Missing Authentication Token")


@pytest.mark.parametrize(
    "headers",
    [
        {"x-api-key": "local-backend-key"},
        {"x-api-key": "local-backend-key", "username": "mallory"},
        # ESD reads a plain dict of headers: `Username` does not count as `username`.
        {"x-api-key": "local-backend-key", "Username": "api"},
    ],
)
async def test_routes_that_check_permissions_need_a_known_lower_case_user(
    api: Api, headers: dict[str, str]
) -> None:
    for method, path in [
        ("GET", "endpoints"),
        ("GET", "checkpoints"),
        ("POST", "inferences"),
        ("PUT", "inferences/some-id/start"),
    ]:
        body = {"task_type": "img2img", "inference_type": "Async", "models": {}}
        reply = await api.call(method, path, headers=headers, json=body)
        assert_envelope(reply, 401, "Unauthorized")


async def test_routes_without_a_permission_check_need_only_the_key(api: Api) -> None:
    headers = api.headers(user=False)
    assert (await api.call("GET", "inferences", headers=headers)).status == 200
    assert (await api.call("GET", "inferences/nope", headers=headers)).status == 404
    reply = await api.call(
        "DELETE", "inferences", headers=headers, json={"inference_id_list": ["x"]}
    )
    assert reply.status == 204


async def test_the_authorization_bearer_fallback_of_v1_4_is_not_a_username(api: Api) -> None:
    # v1.5+ still reads it after `username`; this server keeps to the `username` header only.
    headers = {"x-api-key": api.key, "Authorization": "Bearer " + b"api".hex().upper()}
    assert (await api.call("GET", "endpoints", headers=headers)).status == 401


# -- Async job life --------------------------------------------------------------------------


async def test_async_job_from_creation_to_downloaded_results(api: Api) -> None:
    inference = await api.create(models={"Stable-diffusion": [CHECKPOINT], "VAE": ["Automatic"]})
    job_id = inference["id"]
    assert inference["type"] == "img2img"
    assert inference["api_params_s3_location"].startswith("s3://")
    assert inference["api_params_s3_location"].endswith(
        f"/img2img/infer_v2/{job_id}/api_param.json"
    )
    upload = inference["api_params_s3_upload_url"]
    assert upload.startswith(api.base.removesuffix("/prod/") + "/s3/")
    assert "X-Amz-Signature=" in upload and "X-Amz-Expires=3600" in upload
    assert {model["type"]: model["name"] for model in inference["models"]} == {
        "Stable-diffusion": [CHECKPOINT],
        "VAE": ["Automatic"],
    }

    created = await api.job(job_id)
    assert created["status"] == "created"
    assert "startTime" not in created
    assert created["completeTime"] is None
    assert created["img_presigned_urls"] == []
    assert len(created["output_presigned_urls"]) == 1
    assert ESD_TIME.match(created["createTime"])
    assert created["params"]["sagemaker_inference_endpoint_name"] == "sd-async-local"
    used = created["params"]["used_models"]
    assert used["Stable-diffusion"][0]["model_name"] == CHECKPOINT
    assert created["owner_group_or_role"] == ["api"]

    await api.upload(inference, img2img_payload(batch_size=2, width=56, height=40))
    started = await api.start(job_id)
    assert_envelope(started, 202, "Accepted")
    assert started.data["InferenceJobId"] == job_id
    assert started.data["status"] == "inprogress"
    assert started.data["inference"]["endpoint_name"] == "sd-async-local"

    running = await api.job(job_id)
    assert running["status"] == "inprogress"
    assert ESD_TIME.match(running["startTime"])
    assert running["params"]["output_path"].startswith("s3://")

    await api.state.finish(job_id)
    done = await api.job(job_id)
    assert done["status"] == "succeed"
    assert ESD_TIME.match(done["completeTime"])
    assert done["image_names"] == ["image_0.png", "image_1.png"]
    assert "sagemakerRaw" not in done
    for url in done["img_presigned_urls"]:
        with Image.open(io.BytesIO(await api.download(url))) as image:
            assert image.size == (56, 40)
    params_file = json.loads(await api.download(done["output_presigned_urls"][0]))
    assert params_file["parameters"]["prompt"] == "a red boat"
    assert params_file["parameters"]["init_images"] is None  # A1111 does not echo the images
    info = json.loads(params_file["info"])
    assert len(info["infotexts"]) == 2
    assert "Seed: 1234" in info["infotexts"][0] and "Seed: 1235" in info["infotexts"][1]
    assert "Denoising strength: 0.6" in info["infotexts"][0]


async def test_an_inpaint_payload_runs_with_its_mask(api: Api) -> None:
    mask = png((255, 255, 255), (40, 30), mode="L")
    job_id = await api.submit(
        img2img_payload(mask=data_url(mask), inpainting_fill=2, inpaint_full_res=True, mask_blur=0)
    )
    await api.state.finish(job_id)
    info = json.loads(
        json.loads(await api.download((await api.job(job_id))["output_presigned_urls"][0]))["info"]
    )
    assert "Masked content: latent noise" in info["infotexts"][0]
    assert "Inpaint area: Only masked" in info["infotexts"][0]


async def test_start_has_no_guards_esd_lacks(api: Api) -> None:
    # ESD's start Lambda checks only that the row exists (inferences/start_inference_job.py):
    # no upload check, no second-start check. A job without its payload runs and fails the
    # way the container fails (a `null` output: failed, no reason); a second start runs again.
    assert_envelope(await api.start("no-such-id"), 400, "InferenceJobId no-such-id not found")
    inference = await api.create()
    assert (await api.start(inference["id"])).status == 202
    await api.state.finish(inference["id"])
    job = await api.job(inference["id"])
    assert job["status"] == "failed"
    assert "sagemakerRaw" not in job
    await api.upload(inference, img2img_payload())
    assert (await api.start(inference["id"])).status == 202
    await api.state.finish(inference["id"])
    assert (await api.job(inference["id"]))["status"] == "succeed"
    assert api.state.jobs[inference["id"]].starts == 2


async def test_an_unknown_job_is_404_with_esds_message(api: Api) -> None:
    reply = await api.call("GET", "inferences/abc")
    assert_envelope(reply, 404, "inference with id abc not found")
    assert "data" not in reply.body


async def test_a_payload_a1111_refuses_fails_async_jobs_without_a_reason(api: Api) -> None:
    # The container passes A1111's error body on; ESD's result parser then looks for `images`,
    # fails with a KeyError and stores no `sagemakerRaw` (inferences/inference_libs.py).
    job_id = await api.submit(img2img_payload(steps="many"))
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "failed"
    assert "sagemakerRaw" not in job
    assert job["img_presigned_urls"] == []


async def test_a_payload_a1111_refuses_is_a_real_time_400_with_a_python_repr(
    make_api: MakeApi,
) -> None:
    # `real_time_inference` stores `str(sagemaker_out)` and raises it: the row stays `created`.
    api = await make_api(ServerConfig(job_seconds=(0.0, 0.0)))
    inference = await api.create(inference_type="Real-time")
    await api.upload(inference, img2img_payload(steps="many"))
    reply = await api.start(inference["id"])
    assert_envelope(reply, 400)
    job = await api.job(inference["id"])
    assert job["status"] == "created"
    assert reply.body["message"] == job["sagemakerRaw"]
    assert job["sagemakerRaw"].startswith("{'error': 'PayloadError'")
    assert "steps must be an integer" in job["sagemakerRaw"]


async def test_invalid_json_uploaded_fails_the_job(api: Api) -> None:
    # The container's `json.loads` raises inside its own `except`: a `null` output.
    inference = await api.create()
    assert (
        await api.raw("PUT", inference["api_params_s3_upload_url"], data=b"{nope")
    ).status == 200
    await api.start(inference["id"])
    await api.state.finish(inference["id"])
    job = await api.job(inference["id"])
    assert job["status"] == "failed"
    assert "sagemakerRaw" not in job


# -- Create: validation and choices ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"inference_type": "Async", "models": {}},
            '[object has missing required properties (["task_type"])]',
        ),
        (
            {"task_type": "img2img", "inference_type": "Sync", "models": {}},
            '[instance value ("Sync") not found in enum (possible values: ["Async","Real-time"])]',
        ),
        (
            {"task_type": "img2img", "inference_type": "Async", "models": []},
            "[instance type (array) does not match any allowed primitive type "
            '(allowed: ["object"])]',
        ),
    ],
)
async def test_api_gateway_validates_the_create_body(
    api: Api, body: dict[str, object], message: str
) -> None:
    reply = await api.call("POST", "inferences", json=body)
    assert_gateway(reply, 400, message)
    assert reply.body["statusCode"] == 400


async def test_a_body_that_is_not_json_is_refused_by_the_gateway(api: Api) -> None:
    reply = await api.call("POST", "inferences", data=b"not json")
    assert_gateway(reply, 400, "[Invalid request body]")


async def test_txt2img_and_other_task_types_are_refused(api: Api) -> None:
    for task_type in ("whatever", "interrogate_clip", "interrogate_deepbooru"):
        body: dict[str, object] = {"task_type": task_type, "inference_type": "Async", "models": {}}
        reply = await api.call("POST", "inferences", json=body)
        # ESD's own message (inferences/create_inference_job.py).
        assert_envelope(
            reply,
            400,
            f"task type {task_type} should be in ['extra-single-image', 'extra-batch-images', "
            "'rembg'] or ['txt2img', 'img2img']",
        )
    for task_type in ("txt2img", "rembg"):
        body = {"task_type": task_type, "inference_type": "Async", "models": {}}
        reply = await api.call("POST", "inferences", json=body)
        assert_envelope(reply, 400)
        assert "runs img2img only" in reply.body["message"]


async def test_unknown_models_are_named_in_one_400(api: Api) -> None:
    body = {
        "task_type": "img2img",
        "inference_type": "Async",
        "models": {"Stable-diffusion": ["nope.safetensors"], "Lora": ["style.safetensors"]},
    }
    reply = await api.call("POST", "inferences", json=body)
    assert_envelope(
        reply,
        400,
        "checkpoint with name nope.safetensors, type Stable-diffusion is not found "
        "checkpoint with name style.safetensors, type Lora is not found",
    )


async def test_models_from_the_models_dir_are_resolved(make_api: MakeApi, tmp_path: Path) -> None:
    (tmp_path / "Lora").mkdir()
    (tmp_path / "Lora" / "style.safetensors").write_bytes(b"x")
    api = await make_api(ServerConfig(job_seconds=(60, 60), models_dir=tmp_path))
    api.models = {"Stable-diffusion": [CHECKPOINT], "Lora": ["style.safetensors"]}
    inference = await api.create()
    used = (await api.job(inference["id"]))["params"]["used_models"]
    assert used["Lora"][0]["model_name"] == "style.safetensors"
    assert used["Lora"][0]["s3"].startswith("s3://")


async def test_a_job_without_a_checkpoint_fails_like_the_container(api: Api) -> None:
    api.models = {}
    job_id = await api.submit()
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "failed"
    assert "sagemakerRaw" not in job


async def test_a_named_endpoint_must_exist_and_be_in_service(api: Api) -> None:
    api.state.set_endpoint_status("sd-async-local", "Creating")
    body = {
        "task_type": "img2img",
        "inference_type": "Async",
        "models": api.models,
        "sagemaker_endpoint_name": "sd-async-local",
    }
    reply = await api.call("POST", "inferences", json=body)
    assert_envelope(reply, 400, "sagemaker endpoint is not ready with status: Creating")
    body["sagemaker_endpoint_name"] = "nope"
    reply = await api.call("POST", "inferences", json=body)
    # ESD indexes an empty scan before its own check (create_inference_job.py).
    assert_envelope(reply, 400, "list index out of range")
    api.state.set_endpoint_status("sd-async-local", "InService")
    body["sagemaker_endpoint_name"] = "sd-async-local"
    assert (await api.call("POST", "inferences", json=body)).status == 201


async def test_without_a_name_esd_picks_an_endpoint_of_the_type_in_service_or_updating(
    api: Api,
) -> None:
    inference = await api.create()
    job = await api.job(inference["id"])
    assert job["params"]["sagemaker_inference_endpoint_name"] == "sd-async-local"
    api.state.set_endpoint_status("sd-async-local", "Updating")
    assert (await api.create())["id"]
    api.state.set_endpoint_status("sd-async-local", "Failed")
    body = {"task_type": "img2img", "inference_type": "Async", "models": api.models}
    reply = await api.call("POST", "inferences", json=body)
    # The ComfyUI endpoint is Async and InService, but never picked for sd jobs.
    assert_envelope(reply, 400, 'no available Async endpoints for user "api"')


async def test_payload_string_starts_the_job_at_once(api: Api) -> None:
    body = {
        "task_type": "img2img",
        "inference_type": "Async",
        "models": api.models,
        "payload_string": json.dumps(img2img_payload()),
    }
    reply = await api.call("POST", "inferences", json=body)
    assert_envelope(reply, 202)
    job_id = reply.data["InferenceJobId"]
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "succeed"
    assert job["params"]["input_body_presign_url"] is None
    body["payload_string"] = "{not json"
    assert_envelope(
        await api.call("POST", "inferences", json=body),
        400,
        "payload_string must be valid json string",
    )


# -- Real-time -------------------------------------------------------------------------------


async def test_real_time_start_answers_200_with_the_finished_job(make_api: MakeApi) -> None:
    api = await make_api(ServerConfig(job_seconds=(0.0, 0.0)))
    inference = await api.create(inference_type="Real-time")
    await api.upload(inference, img2img_payload())
    reply = await api.start(inference["id"])
    assert_envelope(reply, 200, "OK")
    assert reply.data["status"] == "succeed"
    assert reply.data["inference_type"] == "Real-time"
    assert reply.data["params"]["sagemaker_inference_endpoint_name"] == "sd-real-time-local"
    assert len(reply.data["img_presigned_urls"]) == 1
    assert "output_path" not in reply.data["params"]


async def test_real_time_past_the_gateway_timeout_is_504_and_the_job_goes_on(
    make_api: MakeApi,
) -> None:
    api = await make_api(ServerConfig(job_seconds=(60.0, 60.0), realtime_gateway_timeout=0.05))
    inference = await api.create(inference_type="Real-time")
    await api.upload(inference, img2img_payload())
    reply = await api.start(inference["id"])
    assert_gateway(reply, 504, "Endpoint request timed out")
    running = await api.job(inference["id"])
    assert running["status"] == "created"  # Real-time jobs never pass through inprogress
    assert "startTime" in running
    await api.state.finish(inference["id"])
    assert (await api.job(inference["id"]))["status"] == "succeed"


async def test_a_failed_real_time_job_is_a_400_with_the_reason(make_api: MakeApi) -> None:
    from cloud.esd_server import Faults

    api = await make_api(ServerConfig(job_seconds=(0.0, 0.0), faults=Faults(fail_rate=1.0)))
    inference = await api.create(inference_type="Real-time")
    await api.upload(inference, img2img_payload())
    reply = await api.start(inference["id"])
    assert_envelope(reply, 400)
    job = await api.job(inference["id"])
    # ESD never marks a failed Real-time job `failed` (inferences/start_inference_job.py).
    assert job["status"] == "created"
    assert reply.body["message"] == job["sagemakerRaw"]
    assert job["sagemakerRaw"].startswith("{'error': ")


async def test_a_real_time_job_with_a_null_output_is_a_400_and_stays_created(
    make_api: MakeApi,
) -> None:
    from cloud.esd_server import Faults

    config = ServerConfig(job_seconds=(0.0, 0.0), faults=Faults(fail_silent_rate=1.0))
    api = await make_api(config)
    inference = await api.create(inference_type="Real-time")
    await api.upload(inference, img2img_payload())
    reply = await api.start(inference["id"])
    assert_envelope(reply, 400, "argument of type 'NoneType' is not iterable")
    job = await api.job(inference["id"])
    assert job["status"] == "created"
    assert "sagemakerRaw" not in job


async def test_a_failed_async_job_carries_the_notification_as_a_python_repr(
    make_api: MakeApi,
) -> None:
    # inference_async_events.py: `str(message)` of SageMaker's failure notification.
    from cloud.esd_server import Faults

    api = await make_api(ServerConfig(job_seconds=(0.0, 0.0), faults=Faults(fail_rate=1.0)))
    job_id = await api.submit()
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "failed"
    assert job["sagemakerRaw"].startswith("{'awsRegion': ")
    assert "'failureReason': 'ClientError: " in job["sagemakerRaw"]


# -- Interrogate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "model", "method"),
    [("interrogate_clip", "clip", "clip"), ("interrogate_deepbooru", "deepdanbooru", "deepbooru")],
)
async def test_interrogate_both_methods(
    make_api: MakeApi, task_type: str, model: str, method: str
) -> None:
    api = await make_api(INTERROGATING)
    picture = png((30, 90, 200), (64, 32))
    api.models = {}
    inference = await api.create(task_type)
    assert "models" not in inference
    await api.upload(inference, {"image": data_url(picture), "model": model})
    await api.start(inference["id"])
    await api.state.finish(inference["id"])
    job = await api.job(inference["id"])
    assert job["status"] == "succeed"
    assert job["taskType"] == task_type
    assert job["caption"] == caption(picture, method)
    assert job["img_presigned_urls"] == []


async def test_an_interrogate_payload_without_an_image_fails(make_api: MakeApi) -> None:
    api = await make_api(INTERROGATING)
    api.models = {}
    job_id = await api.submit({"model": "clip"}, task_type="interrogate_clip")
    await api.state.finish(job_id)
    job = await api.job(job_id)
    assert job["status"] == "failed"
    assert "sagemakerRaw" not in job


# -- Delete ----------------------------------------------------------------------------------


async def test_delete_removes_jobs_stops_running_ones_and_skips_unknown_ids(api: Api) -> None:
    running = await api.submit()
    waiting = (await api.create())["id"]
    task = api.state.jobs[running].task
    assert task is not None
    reply = await api.call(
        "DELETE", "inferences", json={"inference_id_list": [running, waiting, "unknown"]}
    )
    assert reply.status == 204
    assert reply.body is None
    assert reply.headers["x-api-version"] == "1.7.0"
    assert task.cancelled()
    for job_id in (running, waiting):
        assert (await api.call("GET", f"inferences/{job_id}")).status == 404
    assert not any(running in key or waiting in key for key in api.state.storage.objects)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, '[object has missing required properties (["inference_id_list"])]'),
        (
            {"inference_id_list": []},
            "[array is too short: must have at least 1 elements but instance has 0 elements]",
        ),
        (
            {"inference_id_list": ["x"] * 101},
            "[array is too long: must have at most 100 elements but instance has 101 elements]",
        ),
    ],
)
async def test_delete_validates_its_body(api: Api, body: dict[str, object], message: str) -> None:
    assert_gateway(await api.call("DELETE", "inferences", json=body), 400, message)


async def test_an_api_body_above_ten_megabytes_is_refused_by_the_gateway(api: Api) -> None:
    body = io.BytesIO(b"x" * (10 * 1024 * 1024 + 1))
    reply = await api.call("POST", "inferences", data=body)
    assert_gateway(reply, 413, "Request Too Long")


async def test_endpoint_specs_are_listed_as_configured(make_api: MakeApi) -> None:
    api = await make_api(
        ServerConfig(
            endpoints=(EndpointSpec("sd-async-big", "Async", instance_type="ml.g5.2xlarge"),)
        )
    )
    reply = await api.call("GET", "endpoints")
    names = {row["endpoint_name"]: row for row in reply.data["endpoints"]}
    assert names["sd-async-big"]["instance_type"] == "ml.g5.2xlarge"
    assert SLOW.endpoints != api.state.config.endpoints
