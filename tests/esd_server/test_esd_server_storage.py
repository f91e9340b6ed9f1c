"""Presigned storage: uploads and downloads on the same server, signatures, expiry, refusals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from cloud.esd_server import ServerConfig
from cloud.esd_server.storage import PresignedStorage, StorageError
from tests.esd_server.esd_server_kit import Api, img2img_payload

if TYPE_CHECKING:
    from tests.esd_server.esd_server_kit import MakeApi


class StoppedClock:
    """A clock that stays where a test puts it."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def assert_s3_error(status: int, body: str, expected_status: int, code: str) -> None:
    assert status == expected_status
    assert body.startswith("<?xml")
    assert f"<Code>{code}</Code>" in body


async def finished_job(api: Api) -> dict[str, Any]:
    job_id = await api.submit()
    await api.state.finish(job_id)
    return await api.job(job_id)


async def test_uploads_and_downloads_need_no_api_headers(api: Api) -> None:
    job = await finished_job(api)
    (url,) = job["img_presigned_urls"]
    reply = await api.raw("GET", url)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "image/png"


async def test_api_headers_on_presigned_urls_are_refused(api: Api) -> None:
    inference = await api.create()
    reply = await api.raw(
        "PUT", inference["api_params_s3_upload_url"], json={}, headers={"x-api-key": api.key}
    )
    assert_s3_error(reply.status, reply.body, 400, "InvalidRequest")
    assert "x-api-key" in reply.body


async def test_a_tampered_url_does_not_match_its_signature(api: Api) -> None:
    inference = await api.create()
    url = inference["api_params_s3_upload_url"]
    other = (await api.create())["id"]
    for forged in (
        with_query(url, **{"X-Amz-Signature": "0" * 64}),
        with_query(url, **{"X-Amz-Expires": "999999"}),
        url.replace(inference["id"], other),
    ):
        reply = await api.raw("PUT", forged, data=b"{}")
        assert_s3_error(reply.status, reply.body, 403, "SignatureDoesNotMatch")
    # A URL signed for PUT does not read the object either.
    reply = await api.raw("GET", url)
    assert_s3_error(reply.status, reply.body, 403, "SignatureDoesNotMatch")
    unsigned = urlunsplit(urlsplit(url)._replace(query=""))
    reply = await api.raw("PUT", unsigned, data=b"{}")
    assert_s3_error(reply.status, reply.body, 403, "AccessDenied")


async def test_presigned_urls_expire_after_the_ttl(make_api: MakeApi) -> None:
    api = await make_api(ServerConfig(job_seconds=(60, 60), url_ttl=0.01))
    inference = await api.create()
    assert "X-Amz-Expires=0.01" in inference["api_params_s3_upload_url"]
    # S3 dates are whole seconds, rounded up: the URL lives at least 0.01 s, less than 1.01 s.
    await asyncio.sleep(1.05)
    reply = await api.raw("PUT", inference["api_params_s3_upload_url"], json=img2img_payload())
    assert_s3_error(reply.status, reply.body, 403, "AccessDenied")
    assert "<Message>Request has expired</Message>" in reply.body


async def test_expired_result_urls_come_back_fresh_from_the_job(api: Api) -> None:
    job = await finished_job(api)
    (stale,) = job["img_presigned_urls"]
    later = StoppedClock(datetime.now(UTC) + timedelta(hours=2))
    api.state.clock = later
    reply = await api.raw("GET", stale)
    assert_s3_error(reply.status, reply.body, 403, "AccessDenied")
    (fresh,) = (await api.job(job["InferenceJobId"]))["img_presigned_urls"]
    assert fresh != stale
    assert (await api.raw("GET", fresh)).status == 200


async def test_missing_objects_and_foreign_keys(api: Api) -> None:
    inference = await api.create()
    job = await api.job(inference["id"])
    # ESD always hands out the _param.json URL, even before the file exists.
    reply = await api.raw("GET", job["output_presigned_urls"][0])
    assert_s3_error(reply.status, reply.body, 404, "NoSuchKey")
    await api.call("DELETE", "inferences", json={"inference_id_list": [inference["id"]]})
    reply = await api.raw("PUT", inference["api_params_s3_upload_url"], json={})
    assert_s3_error(reply.status, reply.body, 403, "AccessDenied")
    base = api.base.removesuffix("/prod/")
    reply = await api.raw("GET", f"{base}/s3/other-bucket/key")
    assert_s3_error(reply.status, reply.body, 404, "NoSuchBucket")


def test_signatures_cover_method_path_and_parameters() -> None:
    clock = [1_000_000.25]
    storage = PresignedStorage(ttl=60, now=lambda: clock[0])
    url = storage.url("http://h", "GET", "out/x/result/image_0.png")
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    assert parts.path == "/s3/sdbot-local-backend/out/x/result/image_0.png"
    assert query["X-Amz-Date"] == "19700112T134641Z"  # 1_000_001 s: rounded up
    storage.check("GET", parts.path, query)
    clock[0] = 1_000_061.0
    storage.check("GET", parts.path, query)  # the last second of its life
    clock[0] = 1_000_061.5
    with pytest.raises(StorageError) as caught:
        storage.check("GET", parts.path, query)
    assert (caught.value.status, caught.value.code) == (403, "AccessDenied")
    assert caught.value.message == "Request has expired"
