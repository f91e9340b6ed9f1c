"""Results from presigned URLs: images, infotext, expiry and refresh, and what is refused."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from PIL import Image
from scenario_kit import png

from bot.errors import BackendError, ResultsExpiredError
from bot.model import JobState
from cloud.esd import EsdBackend
from cloud.esd_server import running_server
from tests.esd.esd_kit import REALTIME, esd_config, params, server_config, settle, state_of


class _LaterClock:
    """The server's clock, `offset` ahead: its presigned URLs age at once."""

    def __init__(self, offset: timedelta) -> None:
        self._offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset


async def _finished(esd: EsdBackend, url: str, **changes: object) -> str:
    submitted = await esd.submit("bot1", params(**changes), png(), None)
    await state_of(url).finish(submitted.backend_id)
    assert (await settle(esd, submitted.backend_id)).state is JobState.SUCCEED
    return submitted.backend_id


async def test_expired_urls_raise_then_refresh_brings_fresh_ones() -> None:
    config = server_config(job_seconds=(0.0, 0.0), realtime_gateway_timeout=30.0, url_ttl=60.0)
    async with running_server(config) as url, EsdBackend(esd_config(url)) as esd:
        state = state_of(url)
        # A Real-time start hands back the finished job, URLs included; they are kept.
        submitted = await esd.submit("bot1", params(endpoint=REALTIME), png(), None)
        state.clock = _LaterClock(timedelta(hours=2))
        with pytest.raises(ResultsExpiredError):
            await esd.results(submitted.backend_id)
        await esd.refresh(submitted.backend_id)
        output = await esd.results(submitted.backend_id)
        assert len(output.images) == 1 and output.infotext
        assert state.requests["get_inference"] == 1  # the refresh


async def test_not_an_image_is_refused(server: str, backend: EsdBackend) -> None:
    job_id = await _finished(backend, server)
    state = state_of(server)
    state.storage.objects[f"out/{job_id}/result/image_0.png"] = b"<html>sign in</html>"
    with pytest.raises(BackendError) as caught:
        await backend.results(job_id)
    assert caught.value.user_message == "the backend returned a file that is not an image"


async def test_jpeg_results_are_delivered_as_png(server: str, backend: EsdBackend) -> None:
    job_id = await _finished(backend, server)
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, "JPEG")
    state_of(server).storage.objects[f"out/{job_id}/result/image_0.png"] = buffer.getvalue()
    [image] = (await backend.results(job_id)).images
    with Image.open(io.BytesIO(image)) as opened:
        assert (opened.format, opened.size) == ("PNG", (40, 30))


async def test_results_over_the_size_cap_are_refused(server: str) -> None:
    async with EsdBackend(esd_config(server, max_result_bytes=200)) as esd:
        job_id = await _finished(esd, server)
        with pytest.raises(BackendError) as caught:
            await esd.results(job_id)
    assert caught.value.user_message == "a result file from ESD is larger than the bot accepts"


async def test_a_missing_parameters_file_costs_only_the_infotext(
    server: str, backend: EsdBackend
) -> None:
    job_id = await _finished(backend, server)
    del state_of(server).storage.objects[f"out/{job_id}/result/{job_id}_param.json"]
    output = await backend.results(job_id)
    assert len(output.images) == 1 and output.infotext is None


async def test_images_listed_twice_are_delivered_once(server: str, backend: EsdBackend) -> None:
    job_id = await _finished(backend, server, count=2)
    state_of(server).jobs[job_id].image_names.append("image_1.png")  # ESD's retry duplicate
    assert len((await backend.results(job_id)).images) == 2


async def test_results_of_a_job_still_running_are_an_error(
    server: str, backend: EsdBackend
) -> None:
    submitted = await backend.submit("bot1", params(), png(), None)
    with pytest.raises(BackendError, match="has no results"):
        await backend.results(submitted.backend_id)
