"""Listing and paging: `GET /inferences`, `/endpoints` and `/checkpoints` as ESD does them."""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import pytest

from cloud.esd_server import ServerConfig
from cloud.esd_server.config import UserSpec
from tests.esd_server.esd_server_kit import CHECKPOINT, INTERROGATING, Api, data_url, png

if TYPE_CHECKING:
    from pathlib import Path

    from tests.esd_server.esd_server_kit import MakeApi


async def all_pages(
    api: Api, path: str, key: str, params: dict[str, Any], headers: dict[str, str] | None = None
) -> list[list[dict[str, Any]]]:
    """Every page of a DynamoDB-paged list, following `last_evaluated_key` to its end."""
    pages = []
    start: str | None = None
    for _ in range(50):
        sent = dict(params) if start is None else {**params, "exclusive_start_key": start}
        reply = await api.call("GET", path, params=sent, headers=headers)
        assert reply.status == 200, reply.body
        pages.append(reply.data[key])
        start = reply.data["last_evaluated_key"]
        if start is None:
            return pages
    raise AssertionError("paging did not end")


# -- Inferences ------------------------------------------------------------------------------


async def test_inferences_are_listed_newest_first_one_task_type_per_call(
    make_api: MakeApi,
) -> None:
    api = await make_api(INTERROGATING)
    created = [(await api.create())["id"] for _ in range(5)]
    api.models = {}
    interrogate = (await api.create("interrogate_clip"))["id"]

    pages = await all_pages(api, "inferences", "inferences", {"type": "img2img", "limit": 2})
    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [row["InferenceJobId"] for page in pages for row in page]
    assert listed == created[::-1]
    times = [row["createTime"] for page in pages for row in page]
    assert times == sorted(times, reverse=True)

    others = await all_pages(api, "inferences", "inferences", {"type": "interrogate_clip"})
    assert [row["InferenceJobId"] for page in others for row in page] == [interrogate]
    # The task type defaults to txt2img, which this server never runs.
    assert await all_pages(api, "inferences", "inferences", {}) == [[]]


async def test_a_full_last_page_still_carries_a_key_like_dynamodb(api: Api) -> None:
    for _ in range(2):
        await api.create()
    pages = await all_pages(api, "inferences", "inferences", {"type": "img2img", "limit": 2})
    assert [len(page) for page in pages] == [2, 0]


async def test_a_page_stops_at_1_mb_of_items_and_carries_a_key_like_dynamodb(api: Api) -> None:
    # A Query reads at most 1 MB of items, then hands back LastEvaluatedKey (Amazon DynamoDB
    # Developer Guide, "Paginating table query results"). `payload_string` is stored in the row
    # and echoed by the list (esd-api.md §10.2): five rows of ~300 KB make two pages of 10.
    payload = json.dumps({"prompt": "x" * 300_000})
    created = []
    for _ in range(5):
        body = {"task_type": "img2img", "inference_type": "Async", "models": api.models}
        reply = await api.call("POST", "inferences", json={**body, "payload_string": payload})
        assert reply.status == 202, reply.body
        created.append(reply.data["InferenceJobId"])
    params = {"type": "img2img", "limit": 10, "username": "api"}
    first = await api.call("GET", "inferences", params=params)
    assert len(first.data["inferences"]) == 3
    assert first.data["last_evaluated_key"] is not None
    rest = await all_pages(
        api,
        "inferences",
        "inferences",
        {**params, "exclusive_start_key": first.data["last_evaluated_key"]},
    )
    assert [len(page) for page in rest] == [2]
    listed = [row["InferenceJobId"] for page in (first.data["inferences"], *rest) for row in page]
    assert listed == created[::-1]


async def test_a_listed_row_keeps_its_upload_url_with_the_session_token_so_500_pass_1_mb(
    api: Api,
) -> None:
    # ESD's Lambdas presign with their role's temporary credentials: the URL carries the
    # session token, and the row keeps the URL in `params.input_body_presign_url` (esd-api.md
    # §4.4, §4.5). A job made as the bot makes them is then ~2.5 KB listed, so a 1 MB page holds
    # about 400 of them, not the 500 the bot asks for.
    job = await api.create()
    url = job["api_params_s3_upload_url"]
    assert len(parse_qs(urlsplit(url).query)["X-Amz-Security-Token"][0]) >= 1000
    reply = await api.call("GET", "inferences", params={"type": "img2img", "username": "api"})
    (row,) = reply.data["inferences"]
    assert row["params"]["input_body_presign_url"] == url
    assert 500 * len(json.dumps(row)) > 1024 * 1024
    tampered = url.replace("X-Amz-Security-Token=", "X-Amz-Security-Token=x")
    assert (await api.raw("PUT", tampered, json={})).status == 403


async def test_an_earlier_key_sent_again_reads_from_its_position_like_dynamodb(
    api: Api,
) -> None:
    # ExclusiveStartKey names a position in the index, not a snapshot: jobs created since at
    # the head (newest first) do not move the rows after it.
    older = [(await api.create())["id"] for _ in range(5)]
    params = {"type": "img2img", "limit": 2, "username": "api"}
    first = await api.call("GET", "inferences", params=params)
    key = first.data["last_evaluated_key"]
    before = await api.call("GET", "inferences", params={**params, "exclusive_start_key": key})
    newer = [(await api.create())["id"] for _ in range(3)]
    head = await api.call("GET", "inferences", params=params)
    assert [row["InferenceJobId"] for row in head.data["inferences"]] == newer[:0:-1]
    again = await api.call("GET", "inferences", params={**params, "exclusive_start_key": key})
    assert again.data == before.data
    assert [row["InferenceJobId"] for row in again.data["inferences"]] == older[2:0:-1]


async def test_list_rows_without_username_are_reduced_and_carry_no_urls(api: Api) -> None:
    job_id = await api.submit(workflow="bot")
    await api.state.finish(job_id)
    reply = await api.call("GET", "inferences", params={"type": "img2img"})
    (row,) = reply.data["inferences"]
    assert set(row) == {
        "InferenceJobId",
        "status",
        "taskType",
        "owner_group_or_role",
        "startTime",
        "createTime",
        "image_names",
        "sagemakerRaw",
        "completeTime",
        "params",
        "inference_type",
        "payload_string",
    }
    assert row["status"] == "succeed"
    assert row["sagemakerRaw"] == {}
    assert row["payload_string"] == "{}"
    assert row["params"]["sagemaker_inference_endpoint_name"] == "sd-async-local"
    assert row["params"]["used_models"]["Stable-diffusion"][0]["model_name"] == CHECKPOINT

    full = await api.call("GET", "inferences", params={"type": "img2img", "username": "api"})
    (row,) = full.data["inferences"]
    assert row["workflow"] == "bot"
    assert "img_presigned_urls" not in row


async def test_the_username_filter_runs_after_the_limit(make_api: MakeApi) -> None:
    api = await make_api(ServerConfig(users=(UserSpec("api"), UserSpec("bob"))))
    mine = [(await api.create())["id"] for _ in range(2)]
    api.user = "bob"
    theirs = [(await api.create())["id"] for _ in range(2)]
    params = {"type": "img2img", "limit": 2, "username": "api"}
    pages = await all_pages(api, "inferences", "inferences", params)
    # bob's two jobs are newest: the first page is empty although more rows match later.
    assert [len(page) for page in pages] == [0, 2, 0]
    assert [row["InferenceJobId"] for row in pages[1]] == mine[::-1]
    assert theirs


async def test_a_page_with_a_captioned_interrogate_row_is_a_400_like_esd(
    make_api: MakeApi,
) -> None:
    # ESD's list Lambda builds each row as `InferenceJob(**row)`, which has no `caption` field
    # (middleware_api/inferences/list_inferences.py, libs/data_types.py).
    api = await make_api(INTERROGATING)
    api.models = {}
    payload = {"image": data_url(png()), "model": "clip"}
    job_id = await api.submit(payload, task_type="interrogate_clip")
    await api.state.finish(job_id)
    for params in ({"type": "interrogate_clip"}, {"type": "interrogate_clip", "username": "api"}):
        reply = await api.call("GET", "inferences", params=params)
        assert reply.status == 400
        assert "unexpected keyword argument 'caption'" in reply.body["message"]
    reply = await api.call("GET", f"inferences/{job_id}")
    assert reply.data["caption"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"username": "nobody"}, 'user: "nobody" not exist'),
        ({"limit": "ten"}, "invalid literal for int() with base 10: 'ten'"),
    ],
)
async def test_list_inferences_refusals(api: Api, params: dict[str, str], message: str) -> None:
    reply = await api.call("GET", "inferences", params=params)
    assert reply.status == 400
    assert reply.body["message"] == message


async def test_limit_below_one_and_bad_start_keys_are_400(api: Api) -> None:
    reply = await api.call("GET", "inferences", params={"limit": "0"})
    assert reply.status == 400
    assert "Member must have value greater than or equal to 1" in reply.body["message"]
    for key in ("%%%", base64.b64encode(b"[1]").decode(), base64.b64encode(b"{}").decode()):
        reply = await api.call("GET", "inferences", params={"exclusive_start_key": key})
        assert reply.status == 400
        assert reply.headers["x-api-version"] == "1.7.0"


async def test_the_start_key_is_base64_json_of_the_index_key(api: Api) -> None:
    for _ in range(2):
        await api.create()
    reply = await api.call("GET", "inferences", params={"type": "img2img", "limit": 1})
    key = json.loads(base64.b64decode(reply.data["last_evaluated_key"]))
    assert set(key) == {"InferenceJobId", "taskType", "createTime"}
    assert key["InferenceJobId"] == reply.data["inferences"][0]["InferenceJobId"]


# -- Endpoints -------------------------------------------------------------------------------


async def test_endpoints_page_like_a_scan_and_include_a_comfy_endpoint(api: Api) -> None:
    pages = await all_pages(api, "endpoints", "endpoints", {"limit": 1})
    assert [len(page) for page in pages] == [1, 1, 1, 0]
    rows = [row for page in pages for row in page]
    by_name = {row["endpoint_name"]: row for row in rows}
    assert set(by_name) == {"sd-async-local", "sd-real-time-local", "comfy-async-local"}
    assert by_name["comfy-async-local"]["service_type"] == "comfy"
    async_row = by_name["sd-async-local"]
    assert async_row["service_type"] == "sd"
    assert async_row["endpoint_type"] == "Async"
    assert async_row["endpoint_status"] == "InService"
    assert async_row["current_instance_count"] == "1"
    assert async_row["min_instance_number"] == "0"
    assert async_row["max_instance_number"] == "1"
    assert by_name["sd-real-time-local"]["endpoint_type"] == "Real-time"

    whole = await api.call("GET", "endpoints", params={"limit": 10})
    starts = [row["startTime"] for row in whole.data["endpoints"]]
    assert starts == sorted(starts, reverse=True)
    assert whole.data["last_evaluated_key"] is None


async def test_endpoint_states_are_listed_as_they_are(api: Api) -> None:
    api.state.set_endpoint_status("sd-real-time-local", "Failed")
    api.state.set_instance_count("sd-async-local", 0)
    reply = await api.call("GET", "endpoints")
    by_name = {row["endpoint_name"]: row for row in reply.data["endpoints"]}
    assert by_name["sd-real-time-local"]["endpoint_status"] == "Failed"
    assert by_name["sd-real-time-local"]["error"]
    assert by_name["sd-async-local"]["current_instance_count"] == "0"


# -- Checkpoints -----------------------------------------------------------------------------


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    for folder, names in {
        "Stable-diffusion": ["v1-5.safetensors"],
        "Lora": ["a.safetensors", "b.safetensors", "c.safetensors"],
        "VAE": ["vae.pt"],
        "embeddings": [".gitkeep", "easyneg.pt"],
    }.items():
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"weights")
    return tmp_path


async def test_checkpoints_filter_by_type_and_page_like_esd(
    make_api: MakeApi, models_dir: Path
) -> None:
    api = await make_api(ServerConfig(models_dir=models_dir))
    first = await api.call(
        "GET", "checkpoints", params={"types": "Lora", "status": "Active", "per_page": "2"}
    )
    assert first.status == 200
    assert (first.data["page"], first.data["per_page"], first.data["total"]) == (1, 2, 3)
    assert first.data["pages"] == 2
    second = await api.call(
        "GET", "checkpoints", params={"types": "Lora", "per_page": "2", "page": "2"}
    )
    names = [row["name"][0] for row in first.data["checkpoints"] + second.data["checkpoints"]]
    assert sorted(names) == ["a.safetensors", "b.safetensors", "c.safetensors"]
    row = first.data["checkpoints"][0]
    assert row["type"] == "Lora" and row["status"] == "Active"
    assert isinstance(row["name"], list)
    assert row["s3Location"].startswith("s3://")

    several = await api.call(
        "GET", "checkpoints", params=[("types", "Stable-diffusion"), ("types", "VAE")]
    )
    assert {row["name"][0] for row in several.data["checkpoints"]} == {
        CHECKPOINT,
        "v1-5.safetensors",
        "vae.pt",
    }
    embeddings = await api.call("GET", "checkpoints", params={"types": "embeddings"})
    assert [row["name"][0] for row in embeddings.data["checkpoints"]] == ["easyneg.pt"]


async def test_checkpoint_pages_count_like_esd_including_its_extra_page(
    make_api: MakeApi, models_dir: Path
) -> None:
    api = await make_api(ServerConfig(models_dir=models_dir))
    # ESD computes int(total / per_page) + 1: three rows at three per page make two pages.
    reply = await api.call("GET", "checkpoints", params={"types": "Lora", "per_page": "3"})
    assert reply.data["pages"] == 2
    extra = await api.call(
        "GET", "checkpoints", params={"types": "Lora", "per_page": "3", "page": "2"}
    )
    assert extra.data["checkpoints"] == []
    none = await api.call("GET", "checkpoints", params={"status": "Disabled"})
    assert (none.data["total"], none.data["pages"], none.data["checkpoints"]) == (0, 0, [])


async def test_checkpoint_paging_values_are_checked(api: Api) -> None:
    for params in ({"page": "0"}, {"per_page": "x"}):
        reply = await api.call("GET", "checkpoints", params=params)
        assert reply.status == 400


async def test_a_models_dir_that_is_not_a_folder_fails_at_start(tmp_path: Path) -> None:
    from bot.errors import ConfigError
    from cloud.esd_server import running_server

    with pytest.raises(ConfigError, match="models_dir"):
        async with running_server(ServerConfig(models_dir=tmp_path / "missing")):
            pass
