"""A loopback fake of the AUTOMATIC1111 WebUI API (`--api`), as strict as the real one.

Written from modules/api/api.py and modules/api/models.py of AUTOMATIC1111/stable-diffusion-webui
(read at commit 2fec947, v1.10 line) and extensions-builtin/Lora/scripts/lora_script.py; each
behaviour cites where it comes from. What it does like the real WebUI:

- Routes registered with `Api.add_api_route` require HTTP basic auth when `--api-auth` is set
  (`Api.auth`: 401 "Incorrect username or password"; FastAPI's `HTTPBasic` 401 "Not
  authenticated" without a header). `/sdapi/v1/loras` (the Lora extension's `@app.get`) and
  `/internal/sysinfo` (webui.py `app.add_api_route`) are outside that and never ask.
- Errors go through `api_middleware.handle_exception`: `{"error", "detail", "body", "errors"}`
  with the exception's status (500 when it has none) and without the exception's headers (so a
  401 carries no `WWW-Authenticate`). Request validation is FastAPI's own: 422 with
  `{"detail": [{"loc", "msg", "type"}]}` in pydantic v1 wording; unknown fields are ignored.
- One job at a time: `with self.queue_lock` around the work; other requests wait, held open.
  A client that disconnects does not stop its job (the handler runs to the end).
- `/sdapi/v1/progress`: `progress` 0 and no image while idle (`job_count == 0`); else
  0.01 + job_no/job_count + sampling_step/sampling_steps/job_count, capped at 1, with
  `current_image` (the live preview) unless `skip_current_image`, and `current_task` = the
  request's `force_task_id`.
- `/sdapi/v1/interrupt` stops the running job, which still answers 200 with its images.
- An unknown `sd_model_checkpoint` override is silently dropped (processing.py
  `process_images`: "if the override checkpoint can't be found, remove override entry"), and an
  unknown `sd_vae` becomes None ("Couldn't find VAE named …; using None instead").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from PIL import Image, PngImagePlugin

from commands.spec import SAMPLERS

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

VERSION = "v1.10.1"
CHECKPOINTS = ("sdbot-preview.safetensors", "dreamshaper_8.safetensors")
VAES = ("vae-ft-mse-840000-ema-pruned.safetensors",)
LORAS = ("add_detail",)
EMBEDDINGS = ("easynegative",)
OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity; "
    "5.10 GiB already allocated)"
)

# Field types of `StableDiffusionProcessingImg2Img` as the API model declares them
# (models.py `PydanticModelGenerator` over the processing classes' __init__ annotations, plus the
# `additional_fields`); every field is Optional, unknown fields are ignored (pydantic v1).
IMG2IMG_FIELDS: dict[str, str] = {
    "prompt": "str",
    "negative_prompt": "str",
    "styles": "list",
    "seed": "int",
    "subseed": "int",
    "subseed_strength": "float",
    "seed_resize_from_h": "int",
    "seed_resize_from_w": "int",
    "sampler_name": "str",
    "scheduler": "str",
    "batch_size": "int",
    "n_iter": "int",
    "steps": "int",
    "cfg_scale": "float",
    "width": "int",
    "height": "int",
    "restore_faces": "bool",
    "tiling": "bool",
    "do_not_save_samples": "bool",
    "do_not_save_grid": "bool",
    "eta": "float",
    "s_min_uncond": "float",
    "s_churn": "float",
    "s_tmax": "float",
    "s_tmin": "float",
    "s_noise": "float",
    "override_settings": "dict",
    "override_settings_restore_afterwards": "bool",
    "disable_extra_networks": "bool",
    "comments": "dict",
    "init_images": "list",
    "resize_mode": "int",
    "denoising_strength": "float",
    "image_cfg_scale": "float",
    "mask": "str",
    "mask_blur_x": "int",
    "mask_blur_y": "int",
    "mask_blur": "int",
    "mask_round": "bool",
    "inpainting_fill": "int",
    "inpaint_full_res": "bool",
    "inpaint_full_res_padding": "int",
    "inpainting_mask_invert": "int",
    "initial_noise_multiplier": "float",
    "force_task_id": "str",
    "include_init_images": "bool",
    "script_name": "str",
    "script_args": "list",
    "send_images": "bool",
    "save_images": "bool",
    "alwayson_scripts": "dict",
    "infotext": "str",
    "sampler_index": "str",
}
INTERROGATE_FIELDS: dict[str, str] = {"image": "str", "model": "str"}
# pydantic v1 messages and types, as FastAPI puts them in a 422.
_TYPE_ERRORS: dict[str, tuple[str, str]] = {
    "int": ("value is not a valid integer", "type_error.integer"),
    "float": ("value is not a valid float", "type_error.float"),
    "bool": ("value could not be parsed to a boolean", "type_error.bool"),
    "str": ("str type expected", "type_error.str"),
    "list": ("value is not a valid list", "type_error.list"),
    "dict": ("value is not a valid dict", "type_error.dict"),
}
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}


def _valid(kind: str, value: object) -> bool:
    """pydantic v1 coercion: what each field type accepts."""
    if value is None:
        return True  # every field is Optional
    if kind == "str":
        return isinstance(value, str | int | float) and not isinstance(value, bool)
    if kind == "int":
        if isinstance(value, bool | int):
            return True
        if isinstance(value, float):
            return value == value and value not in (float("inf"), float("-inf"))
        if isinstance(value, str):
            try:
                int(value.strip())
            except ValueError:
                return False
            return True
        return False
    if kind == "float":
        if isinstance(value, int | float):
            return True
        if isinstance(value, str):
            try:
                float(value)
            except ValueError:
                return False
            return True
        return False
    if kind == "bool":
        if isinstance(value, bool) or value in (0, 1):
            return True
        return isinstance(value, str) and value.lower() in _TRUE | _FALSE
    if kind == "list":
        return isinstance(value, list)
    return isinstance(value, dict)


def validation_errors(body: object, fields: dict[str, str]) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    errors = []
    for name, kind in fields.items():
        if name in body and not _valid(kind, body[name]):
            msg, kind_name = _TYPE_ERRORS[kind]
            errors.append({"loc": ["body", name], "msg": msg, "type": kind_name})
    return errors


class ApiError(Exception):
    """An exception the WebUI's handler turns into `{"error", "detail", "body", "errors"}`."""

    def __init__(self, status: int, detail: str, error: str = "HTTPException", text: str = ""):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.error = error
        # str(HTTPException) is "<status>: <detail>" in starlette; other exceptions their text.
        self.text = text or (f"{status}: {detail}" if error == "HTTPException" else detail)

    def response(self) -> web.Response:
        # handle_exception: the exception's status, its fields, never its headers.
        body = {"error": self.error, "detail": self.detail, "body": "", "errors": self.text}
        return web.json_response(body, status=self.status)


def decode_image(encoding: str) -> Image.Image:
    """decode_base64_to_image: a data URI or bare base64; 500 "Invalid encoded image"."""
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoding)))
        image.load()
    except (OSError, ValueError, binascii.Error, IndexError) as exc:
        raise ApiError(500, "Invalid encoded image") from exc
    return image


def _png(image: Image.Image, infotext: str | None = None) -> str:
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)  # encode_pil_to_base64 keeps `image.info` text
    buf = io.BytesIO()
    image.save(buf, "PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass
class Received:
    """A generation or interrogate request the fake took, as it was sent."""

    route: str
    body: dict[str, Any]
    model: str = ""  # the checkpoint the job ran on
    vae: str = ""
    interrupted: bool = False
    started: float = 0.0  # loop time the job got the queue lock (benchmarks)
    ended: float = 0.0  # loop time it finished its steps


@dataclass
class _State:
    """shared.state (modules/shared_state.py) as the progress route reads it."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    current_image: Image.Image | None = None
    task: str | None = None  # modules/progress.py current_task


@dataclass
class FakeWebUI:
    """The fake server. `hold()` pauses running jobs after their first step; `release()` lets
    them go on. `fail_next` holds errors for the next jobs, raised inside the queue lock."""

    auth: str | None = None  # "user:password" as --api-auth takes it
    job_seconds: float = 0.0  # how long a job takes in total, spread over its steps
    checkpoints: tuple[str, ...] = CHECKPOINTS
    vaes: tuple[str, ...] = VAES
    loras: tuple[str, ...] | None = LORAS  # None: the Lora extension is disabled
    version: str | None = VERSION  # None: no /internal/sysinfo (before 1.6)
    api: bool = True  # False: started without --api
    received: list[Received] = field(default_factory=list)
    fail_next: list[ApiError] = field(default_factory=list)
    loaded_model: str = CHECKPOINTS[0]
    running: int = 0  # jobs inside the queue lock right now
    most_running: int = 0  # the most jobs ever inside the lock at once
    waiting: int = 0  # requests waiting for the lock
    interrupts: int = 0
    restarts: int = 0
    progress_reads: int = 0

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()  # queue_lock
        self._state = _State()
        self._gate = asyncio.Event()
        self._gate.set()
        self._changed = asyncio.Condition()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._transports: set[asyncio.Transport] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- Test controls ---------------------------------------------------------------------------

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    async def wait_for(self, what: str, count: int = 1) -> None:
        """Until `what` ("started": jobs begun, "step": the running job made a step,
        "waiting": requests waiting for the lock) reaches `count`."""

        def reached() -> bool:
            if what == "started":
                return len(self.received) >= count
            if what == "step":
                return self._state.job_count > 0 and self._state.sampling_step >= count
            return self.waiting >= count

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(reached), 10)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- Serving ---------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024**2)
        routes = [
            web.post("/sdapi/v1/img2img", self._img2img),
            web.post("/sdapi/v1/interrogate", self._interrogate),
            web.get("/sdapi/v1/progress", self._progress),
            web.post("/sdapi/v1/interrupt", self._interrupt),
            web.get("/sdapi/v1/sd-models", self._sd_models),
            web.get("/sdapi/v1/sd-vae", self._sd_vae),
            web.get("/sdapi/v1/samplers", self._samplers),
            web.get("/sdapi/v1/embeddings", self._embeddings),
            web.get("/sdapi/v1/hypernetworks", self._hypernetworks),
        ]
        if self.api:
            app.add_routes(routes)
        if self.loras is not None:
            app.add_routes([web.get("/sdapi/v1/loras", self._loras)])
        if self.version is not None:
            app.add_routes([web.get("/internal/sysinfo", self._sysinfo)])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await self.up()

    async def up(self) -> None:
        """Listen (again) on the same port."""
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    async def down(self) -> None:
        """The WebUI process dies: connections drop mid-request, jobs end, the port refuses."""
        self.restarts += 1
        for transport in list(self._transports):
            transport.abort()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(list(self._handlers))
        if self._site is not None:
            await self._site.stop()
            self._site = None
        self._lock = asyncio.Lock()
        self._state = _State()

    async def restart(self) -> None:
        await self.down()
        await self.up()

    async def aclose(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeWebUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        transport = request.transport
        self._handlers.add(task)
        if transport is not None:
            self._transports.add(transport)
        try:
            if self.auth and request.path not in ("/sdapi/v1/loras", "/internal/sysinfo"):
                self._check_auth(request)
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPNotFound:
            # Starlette's 404 for a route that does not exist (no --api): JSON, not text.
            return web.json_response({"detail": "Not Found"}, status=404)
        except web.HTTPMethodNotAllowed:
            return web.json_response({"detail": "Method Not Allowed"}, status=405)
        finally:
            self._handlers.discard(task)
            if transport is not None:
                self._transports.discard(transport)

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            raise ApiError(401, "Not authenticated")  # fastapi.security.HTTPBasic
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(401, "Invalid authentication credentials") from exc
        assert self.auth is not None
        want_user, _, want_password = self.auth.partition(":")
        if (user, password) != (want_user, want_password):
            raise ApiError(401, "Incorrect username or password")  # Api.auth

    async def _body(self, request: web.Request, fields: dict[str, str]) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise web.HTTPUnprocessableEntity(
                text=json.dumps(
                    {
                        "detail": [
                            {"loc": ["body", 0], "msg": "Expecting value", "type": "value_error"}
                        ]
                    }
                ),
                content_type="application/json",
            ) from None
        errors = validation_errors(body, fields)
        if errors:
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"detail": errors}), content_type="application/json"
            )
        assert isinstance(body, dict)
        return body

    # -- Generation --------------------------------------------------------------------------------

    def _aliases(self) -> dict[str, str]:
        """sd_models.checkpoint_aliases: file name, stem and title all name a checkpoint."""
        found = {}
        for name in self.checkpoints:
            stem = name.rsplit(".", 1)[0]
            for alias in (name, stem, f"{name} [{_hash(name)}]"):
                found[alias] = name
        return found

    async def _img2img(self, request: web.Request) -> web.Response:
        body = await self._body(request, IMG2IMG_FIELDS)
        init_images = body.get("init_images")
        if init_images is None:
            raise ApiError(404, "Init image not found")
        if body.get("mask"):
            decode_image(str(body["mask"]))
        sampler = body.get("sampler_name") or body.get("sampler_index") or "Euler"
        if sampler not in SAMPLERS:
            raise ApiError(400, "Sampler not found")  # validate_sampler_name
        images = [decode_image(str(i)) for i in init_images]
        overrides = body.get("override_settings") or {}
        job = Received("img2img", body)
        self.received.append(job)
        await self._notify()
        async with self._queue_lock():
            previous = self.loaded_model
            wanted = self._aliases().get(str(overrides.get("sd_model_checkpoint")))
            self.loaded_model = wanted or previous  # unknown override: dropped
            vae = str(overrides.get("sd_vae", "Automatic"))
            job.model = self.loaded_model
            job.vae = vae if vae in ("Automatic", "None", *self.vaes) else "None"
            try:
                await self._work(job, int(body.get("steps") or 20), body.get("force_task_id"))
                width, height = int(body.get("width") or 512), int(body.get("height") or 512)
                count = int(body.get("batch_size") or 1) * int(body.get("n_iter") or 1)
                given = body.get("seed")
                seed = int(given) if given is not None else -1
                infotexts = [self._infotext(body, seed + n, job) for n in range(count)]
                outputs = [
                    _png(_picture(images[0], width, height, seed + n, str(body.get("prompt"))), t)
                    for n, t in enumerate(infotexts)
                ]
            finally:
                if body.get("override_settings_restore_afterwards", True):
                    self.loaded_model = previous
        info = {
            "prompt": body.get("prompt", ""),
            "negative_prompt": body.get("negative_prompt", ""),
            "seed": seed,
            "all_seeds": [seed + n for n in range(count)],
            "width": width,
            "height": height,
            "sampler_name": sampler,
            "steps": body.get("steps"),
            "cfg_scale": body.get("cfg_scale"),
            "denoising_strength": body.get("denoising_strength"),
            "sd_model_name": job.model.rsplit(".", 1)[0],
            "sd_vae_name": None if job.vae in ("Automatic", "None") else job.vae,
            "infotexts": infotexts,
            "version": self.version,
        }
        # ImageToImageResponse; init_images and mask are blanked unless include_init_images.
        parameters = dict(body, init_images=None, mask=None)
        answer = {"images": outputs, "parameters": parameters, "info": json.dumps(info)}
        return web.json_response(answer)

    def _infotext(self, body: dict[str, Any], seed: int, job: Received) -> str:
        """create_infotext: the prompt, the negative line, then one parameter line."""
        pairs = [
            ("Steps", body.get("steps")),
            ("Sampler", body.get("sampler_name")),
            ("CFG scale", body.get("cfg_scale")),
            ("Seed", seed),
            ("Size", f"{body.get('width')}x{body.get('height')}"),
            ("Model hash", _hash(job.model)),
            ("Model", job.model.rsplit(".", 1)[0]),
            ("VAE", None if job.vae in ("Automatic", "None") else job.vae),
            ("Denoising strength", body.get("denoising_strength")),
            ("Mask blur", body.get("mask_blur") if body.get("mask") else None),
            ("Version", self.version),
        ]
        line = ", ".join(f"{k}: {v}" for k, v in pairs if v is not None)
        negative = body.get("negative_prompt")
        lines = [str(body.get("prompt", ""))]
        if negative:
            lines.append(f"Negative prompt: {negative}")
        return "\n".join([*lines, line])

    async def _interrogate(self, request: web.Request) -> web.Response:
        body = await self._body(request, INTERROGATE_FIELDS)
        if body.get("image") is None:
            raise ApiError(404, "Image not found")
        image = decode_image(str(body.get("image", ""))).convert("RGB")
        job = Received("interrogate", body)
        self.received.append(job)
        await self._notify()
        async with self._queue_lock():
            model = body.get("model", "clip")
            if model not in ("clip", "deepdanbooru"):
                raise ApiError(404, "Model not found")
            await self._work(job, 1, None)
        width, height = image.size
        if model == "clip":
            caption = f"a picture of {width}x{height} pixels, trending on artstation"
        else:
            caption = "1girl, solo, outdoors, sky, cloud"
        return web.json_response({"caption": caption})  # InterrogateResponse

    def _queue_lock(self) -> _Held:
        return _Held(self)

    async def _work(self, job: Received, steps: int, task: object) -> None:
        """process_images: state.begin, the sampling steps, state.end (in `_Held`)."""
        if self.fail_next:
            raise self.fail_next.pop(0)
        state = self._state
        state.job, state.job_count, state.job_no = "scripts_img2img", 1, 0
        state.sampling_steps, state.sampling_step, state.interrupted = max(1, steps), 0, False
        state.task = task if isinstance(task, str) else None  # start_task(force_task_id)
        job.started = asyncio.get_running_loop().time()
        pause = self.job_seconds / state.sampling_steps
        for step in range(1, state.sampling_steps + 1):
            if state.interrupted:
                job.interrupted = True
                break
            state.sampling_step = step
            state.current_image = Image.new("RGB", (32, 32), (step * 7 % 256, 80, 160))
            await self._notify()
            if not self._gate.is_set():
                await self._gate.wait()
            await asyncio.sleep(pause)
        state.task = None  # finish_task
        job.ended = asyncio.get_running_loop().time()

    # -- Progress, interrupt, catalogue ----------------------------------------------------------

    async def _progress(self, request: web.Request) -> web.Response:
        self.progress_reads += 1
        skip = request.query.get("skip_current_image", "false").lower() in _TRUE
        state = self._state
        snapshot = {
            "skipped": False,
            "interrupted": state.interrupted,
            "stopping_generation": False,
            "job": state.job,
            "job_count": state.job_count,
            "job_timestamp": "20261203000000",
            "job_no": state.job_no,
            "sampling_step": state.sampling_step,
            "sampling_steps": state.sampling_steps,
        }
        if state.job_count == 0:
            # ProgressResponse serialised whole: the unset fields are there as null.
            idle = {"progress": 0, "eta_relative": 0, "state": snapshot, "current_image": None}
            return web.json_response(idle | {"textinfo": None, "current_task": state.task})
        progress = 0.01 + state.job_no / state.job_count
        if state.sampling_steps > 0:
            progress += state.sampling_step / state.sampling_steps / state.job_count
        image = None
        if state.current_image is not None and not skip:
            image = _png(state.current_image)
        return web.json_response(
            {
                "progress": min(progress, 1),
                "eta_relative": 1.0,
                "state": snapshot,
                "current_image": image,
                "textinfo": None,
                "current_task": state.task,
            }
        )

    async def _interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        self._state.interrupted = True  # shared.state.interrupt()
        self.release()
        return web.json_response({})

    async def _sd_models(self, request: web.Request) -> web.Response:
        return web.json_response(
            [
                {
                    "title": f"{name} [{_hash(name)}]",
                    "model_name": name.rsplit(".", 1)[0],
                    "hash": _hash(name),
                    "sha256": None,
                    "filename": f"/webui/models/Stable-diffusion/{name}",
                    "config": None,
                }
                for name in self.checkpoints
            ]
        )

    async def _sd_vae(self, request: web.Request) -> web.Response:
        return web.json_response(
            [{"model_name": n, "filename": f"/webui/models/VAE/{n}"} for n in self.vaes]
        )

    async def _loras(self, request: web.Request) -> web.Response:
        assert self.loras is not None
        return web.json_response(
            [
                {"name": n, "alias": n, "path": f"/webui/Lora/{n}.safetensors", "metadata": {}}
                for n in self.loras
            ]
        )

    async def _samplers(self, request: web.Request) -> web.Response:
        return web.json_response([{"name": n, "aliases": [], "options": {}} for n in SAMPLERS])

    async def _embeddings(self, request: web.Request) -> web.Response:
        item: dict[str, object] = {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None}
        item |= {"shape": 768, "vectors": 1}
        return web.json_response({"loaded": dict.fromkeys(EMBEDDINGS, item), "skipped": {}})

    async def _hypernetworks(self, request: web.Request) -> web.Response:
        return web.json_response([])

    async def _sysinfo(self, request: web.Request) -> web.Response:
        # PlainTextResponse of JSON text; only a few of its many fields here.
        text = json.dumps({"Platform": "Linux", "Version": self.version, "Commandline": ["--api"]})
        return web.Response(text=text, content_type="text/plain")


class _Held:
    """`with self.queue_lock:` plus the state bookkeeping around a job."""

    def __init__(self, fake: FakeWebUI) -> None:
        self._fake = fake
        self._lock = fake._lock  # a restart makes a new lock; this job holds the old one

    async def __aenter__(self) -> None:
        fake = self._fake
        fake.waiting += 1
        await fake._notify()
        try:
            await self._lock.acquire()
        finally:
            fake.waiting -= 1
        fake.running += 1
        fake.most_running = max(fake.most_running, fake.running)

    async def __aexit__(self, *exc: object) -> None:
        fake = self._fake
        fake.running -= 1
        fake._state.job_count = 0  # shared.state.end()
        fake._state.current_image = None
        self._lock.release()
        await fake._notify()


def _hash(name: str) -> str:
    return f"{zlib.crc32(name.encode()):08x}"[:10]


def _picture(source: Image.Image, width: int, height: int, seed: int, prompt: str) -> Image.Image:
    """A deterministic result: the input resized, tinted by seed and prompt."""
    tint = zlib.crc32(f"{seed}:{prompt}".encode())
    base = source.convert("RGB").resize((width, height))
    overlay = Image.new("RGB", (width, height), (tint & 255, (tint >> 8) & 255, (tint >> 16) & 255))
    return Image.blend(base, overlay, 0.35)


def oom() -> ApiError:
    """torch.cuda.OutOfMemoryError through handle_exception: 500, no `detail`."""
    return ApiError(500, "", error="OutOfMemoryError", text=OOM)
