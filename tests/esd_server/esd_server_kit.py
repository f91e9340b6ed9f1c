"""Helpers of the ESD-compatible server's tests: images, A1111 payloads and a small API client.

`Api` speaks to a loopback server with aiohttp the way ESD clients do (x-api-key and lower-case
username on API calls, no headers on presigned URLs); every call returns a `Reply` with status,
parsed body and headers. Imported as `tests.esd_server.esd_server_kit`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from PIL import Image

from cloud.esd_server import ServerConfig

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy

    from cloud.esd_server import ServerState

KEY = "local-backend-key"
CHECKPOINT = "sdbot-preview.safetensors"
# Jobs that would run for a minute: tests end them with `state.finish`, so nothing is timed.
SLOW = ServerConfig(job_seconds=(60.0, 60.0))
# The same with the sdbot-only REST interrogate turned on.
INTERROGATING = dataclasses.replace(SLOW, rest_interrogate=True)


def png(
    colour: tuple[int, int, int] = (200, 40, 40),
    size: tuple[int, int] = (40, 30),
    mode: str = "RGB",
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def img2img_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "prompt": "a red boat",
        "negative_prompt": "blurry",
        "init_images": [data_url(png())],
        "mask": None,
        "denoising_strength": 0.6,
        "steps": 12,
        "cfg_scale": 6.5,
        "sampler_name": "Euler a",
        "seed": 1234,
        "width": 48,
        "height": 32,
        "batch_size": 1,
        "n_iter": 1,
        "resize_mode": 0,
        "mask_blur": 4,
        "inpainting_fill": 1,
        "inpaint_full_res": False,
        "inpaint_full_res_padding": 32,
        "inpainting_mask_invert": 0,
        "override_settings": {},
    }
    payload.update(changes)
    return payload


@dataclass
class Reply:
    status: int
    body: Any  # parsed JSON, text for XML, None when empty
    headers: CIMultiDictProxy[str]

    @property
    def data(self) -> Any:
        return self.body["data"]


@dataclass
class Api:
    """A thin ESD client for tests: every call returns status, parsed body and headers."""

    base: str
    session: aiohttp.ClientSession
    state: ServerState
    key: str = KEY
    user: str = "api"
    models: dict[str, list[str]] = field(default_factory=lambda: {"Stable-diffusion": [CHECKPOINT]})

    def headers(self, *, key: bool = True, user: bool = True) -> dict[str, str]:
        headers = {}
        if key:
            headers["x-api-key"] = self.key
        if user:
            headers["username"] = self.user
        return headers

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | io.BytesIO | None = None,
        params: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        sent = self.headers() if headers is None else headers
        client_timeout = (
            aiohttp.ClientTimeout(total=timeout) if timeout else aiohttp.ClientTimeout()
        )
        async with self.session.request(
            method,
            self.base + path,
            json=json,
            data=data,
            params=params,
            headers=sent,
            timeout=client_timeout,
        ) as response:
            return await _reply(response)

    async def raw(self, method: str, url: str, **kwargs: Any) -> Reply:
        """A request to a presigned URL: no API headers unless a test adds them."""
        async with self.session.request(method, url, **kwargs) as response:
            return await _reply(response)

    async def download(self, url: str) -> bytes:
        async with self.session.get(url) as response:
            assert response.status == 200, await response.text()
            return await response.read()

    async def create(self, task_type: str = "img2img", **body: Any) -> dict[str, Any]:
        sent = {"task_type": task_type, "inference_type": "Async", "models": self.models, **body}
        reply = await self.call("POST", "inferences", json=sent)
        assert reply.status == 201, reply.body
        inference: dict[str, Any] = reply.data["inference"]
        return inference

    async def upload(self, inference: dict[str, Any], payload: dict[str, Any]) -> None:
        reply = await self.raw("PUT", inference["api_params_s3_upload_url"], json=payload)
        assert reply.status == 200, reply.body

    async def start(self, job_id: str) -> Reply:
        return await self.call("PUT", f"inferences/{job_id}/start")

    async def submit(
        self, payload: dict[str, Any] | None = None, task_type: str = "img2img", **body: Any
    ) -> str:
        """Create, upload and start a job; its id."""
        inference = await self.create(task_type, **body)
        await self.upload(inference, img2img_payload() if payload is None else payload)
        reply = await self.start(inference["id"])
        assert reply.status in (200, 202), reply.body
        job_id: str = inference["id"]
        return job_id

    async def job(self, job_id: str) -> dict[str, Any]:
        reply = await self.call("GET", f"inferences/{job_id}", headers=self.headers(user=False))
        assert reply.status == 200, reply.body
        data: dict[str, Any] = reply.data
        return data


async def _reply(response: aiohttp.ClientResponse) -> Reply:
    raw = await response.read()
    body: Any = None
    if raw and response.content_type == "application/json":
        body = await response.json()
    elif raw and response.content_type.startswith("image/"):
        body = raw
    elif raw:
        body = raw.decode()
    return Reply(response.status, body, response.headers)


# The `make_api` fixture: start a loopback server with a config, get an `Api` bound to it.
MakeApi = Callable[..., Awaitable[Api]]
