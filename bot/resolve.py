"""Turning a job's options into concrete backend parameters (SPEC §2.2 "Defaults, in order").

Order: the command's options, then the channel's and server's settings over the configuration
(`bot.policy.Defaults`), then the backend (model = the first
Active `Stable-diffusion` checkpoint by name; endpoint = an `InService` endpoint of the
configured inference type). The backend's catalogue is cached briefly so a burst of jobs does
not list endpoints and models once per job.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from bot.errors import RefusedError
from bot.imaging import default_size
from bot.model import Endpoint, GenerationParams, Model
from commands import OPTIONS, Size, convert_option
from commands.spec import DEFAULT_SAMPLER, DEFAULT_SCHEDULER, image_count_error, split_sampler

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bot.config import Config
    from bot.policy import Defaults
    from bot.ports import Backend, Clock

MAX_SEED = 2**32 - 1


class Catalog:
    """The backend's endpoints and models, cached for `ttl` seconds."""

    def __init__(self, backend: Backend, clock: Clock, ttl: float = 60.0) -> None:
        self._backend = backend
        self._clock = clock
        self._ttl = ttl
        self._endpoints: tuple[float, Sequence[Endpoint]] | None = None
        self._models: dict[str | None, tuple[float, Sequence[Model]]] = {}
        self._lock = asyncio.Lock()

    def _fresh(self, stamp: float) -> bool:
        return self._clock.monotonic() - stamp < self._ttl

    async def endpoints(self) -> Sequence[Endpoint]:
        async with self._lock:
            if self._endpoints is None or not self._fresh(self._endpoints[0]):
                self._endpoints = (self._clock.monotonic(), await self._backend.endpoints())
            return self._endpoints[1]

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        async with self._lock:
            cached = self._models.get(model_type)
            if cached is None or not self._fresh(cached[0]):
                cached = (self._clock.monotonic(), await self._backend.models(model_type))
                self._models[model_type] = cached
            return cached[1]

    def invalidate(self) -> None:
        self._endpoints = None
        self._models.clear()


def _typed(options: Mapping[str, str], name: str) -> object:
    """An option's typed value, or its declared default when the job did not give it."""
    raw = options.get(name)
    spec = OPTIONS[name]
    if raw is None:
        return spec.default
    return convert_option(spec, raw)


def _int(options: Mapping[str, str], name: str) -> int:
    value = _typed(options, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"option {name} is not an int: {value!r}")
    return value


def _float(options: Mapping[str, str], name: str) -> float:
    value = _typed(options, name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"option {name} is not a number: {value!r}")
    return float(value)


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Resolver:
    """Resolves endpoints, models and generation parameters against defaults and backend."""

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self._config = config
        self._catalog = catalog

    async def endpoint(
        self, requested: str | None, *, default: str | None = None, async_only: bool = False
    ) -> Endpoint:
        """The endpoint a job runs on; refuses unknown or not-InService endpoints."""
        endpoints = await self._catalog.endpoints()
        name = requested or default
        states = ", ".join(f"`{e.name}` ({e.status}, {e.type})" for e in endpoints) or "none"
        if name is not None:
            found = next((e for e in endpoints if e.name == name), None)
            if found is None:
                raise RefusedError(f"unknown endpoint `{name}`; endpoints: {states}")
            if not found.in_service:
                raise RefusedError(
                    f"endpoint `{name}` is {found.status}, not InService; endpoints: {states}"
                )
            if async_only and found.type != "Async":
                raise RefusedError(
                    f"endpoint `{name}` is {found.type}; interrogate needs an Async endpoint"
                )
            return found
        wanted = "Async" if async_only else self._config.inference_type
        for endpoint in sorted(endpoints, key=lambda e: e.name):
            if endpoint.in_service and endpoint.type == wanted:
                return endpoint
        raise RefusedError(f"no {wanted} endpoint is InService; endpoints: {states}")

    async def model(self, requested: str | None, default: str | None = None) -> str:
        checkpoints = sorted(m.name for m in await self._catalog.models("Stable-diffusion"))
        name = requested or default
        if name is None:
            if not checkpoints:
                raise RefusedError("the backend has no Active Stable-diffusion checkpoint")
            return checkpoints[0]
        if name not in checkpoints:
            raise RefusedError(
                f"unknown model `{name}`; checkpoints: {_listing(checkpoints) or 'none'}"
                " (see `models`)"
            )
        return name

    async def vae(self, requested: str | None, default: str = "Automatic") -> str:
        name = requested or default
        if name in ("Automatic", "None"):
            return name
        vaes = sorted(m.name for m in await self._catalog.models("VAE"))
        if name not in vaes:
            raise RefusedError(
                f"unknown VAE `{name}`; VAEs: {_listing(['Automatic', *vaes])}"
                " (see `models type=vae`)"
            )
        return name

    async def generation(
        self, options: Mapping[str, str], input_width: int, input_height: int, defaults: Defaults
    ) -> GenerationParams:
        """Every img2img parameter, concrete: defaults applied, size fitted, seed drawn."""
        cap = defaults.max_size
        size = _typed(options, "size")
        width = _typed(options, "width")
        height = _typed(options, "height")
        scale = _typed(options, "scale")
        if isinstance(scale, float):
            # A1111's "Resize by" tab: int(side × scale) of the init image, here floored to the
            # multiple of 8 that the latent space keeps anyway. The grammar and the reply merge
            # keep `scale` apart from size / width / height.
            width, height = (
                max(64, int(side * scale) // 8 * 8) for side in (input_width, input_height)
            )
        elif isinstance(size, Size):
            width, height = size.width, size.height
        elif isinstance(width, int) and not isinstance(height, int):
            height = max(64, round(width * input_height / input_width / 8) * 8)
        elif isinstance(height, int) and not isinstance(width, int):
            width = max(64, round(height * input_width / input_height / 8) * 8)
        if isinstance(width, int) and isinstance(height, int):
            if max(width, height) > cap:
                scaled = (
                    f" ({input_width}x{input_height} × {scale:g})"
                    if isinstance(scale, float)
                    else ""
                )
                raise RefusedError(
                    f"size {width}x{height}{scaled} is over the cap of {cap} pixels on the "
                    "longest side"
                )
        else:
            width, height = default_size(input_width, input_height, cap)
        seed = _int(options, "seed")
        if seed < 0:
            seed = random.randint(0, MAX_SEED)
        count, batch_count = _int(options, "count"), _int(options, "batch_count")
        too_many = image_count_error(count, batch_count)
        if too_many is not None:
            raise RefusedError(too_many)
        subseed_strength = _float(options, "subseed_strength")
        subseed = _int(options, "subseed")
        if subseed < 0 and subseed_strength > 0:
            # Drawn here, like the seed, so the job's details and a re-generation can repeat it.
            subseed = random.randint(0, MAX_SEED)
        sampler = str(_typed(options, "sampler") or DEFAULT_SAMPLER)
        scheduler = str(_typed(options, "scheduler") or DEFAULT_SCHEDULER)
        if scheduler != DEFAULT_SCHEDULER:
            # A schedule named in the sampler would win in A1111 1.9+ (`DPM++ 2M Karras`); the
            # one the user chose here wins instead, so the sampler is sent without it.
            sampler = split_sampler(sampler)[0]
        endpoint = await self.endpoint(options.get("endpoint"), default=defaults.endpoint)
        return GenerationParams(
            prompt=str(options.get("prompt", "")),
            negative=str(options.get("negative", "")),
            strength=_float(options, "strength"),
            steps=_int(options, "steps"),
            cfg=_float(options, "cfg"),
            sampler=sampler,
            seed=seed,
            width=width,
            height=height,
            count=count,
            resize=str(_typed(options, "resize")),
            model=await self.model(options.get("model"), defaults.model),
            vae=await self.vae(options.get("vae"), defaults.vae),
            endpoint=endpoint.name,
            mask_blur=_int(options, "mask_blur"),
            fill=str(_typed(options, "fill")),
            area=str(_typed(options, "area")),
            padding=_int(options, "padding"),
            invert=bool(_typed(options, "invert")),
            batch_count=batch_count,
            subseed=subseed,
            subseed_strength=subseed_strength,
            restore_faces=bool(_typed(options, "restore_faces")),
            tiling=bool(_typed(options, "tiling")),
            clip_skip=_int(options, "clip_skip"),
            image_cfg=_float(options, "image_cfg"),
            noise_multiplier=_float(options, "noise_multiplier"),
            scheduler=scheduler,
            mask_alpha=_int(options, "mask_alpha"),
        )
