"""Turning a job's options into concrete backend parameters (SPEC §2.2 "Defaults, in order").

Order: the command's options, then the channel's and server's settings over the configuration
(`bot.policy.Defaults`), then the backend (model = the first
Active `Stable-diffusion` checkpoint by name; endpoint = an `InService` endpoint of the
configured inference type). The backend's catalogue is cached briefly so a burst of jobs does
not list endpoints and models once per job.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.errors import BackendError, RefusedError
from bot.imaging import default_size
from bot.model import Endpoint, GenerationParams, Model
from commands import closest
from commands.options import (
    GENERATE_DEFAULTS,
    GenerateOptions,
    InterrogateOptions,
    JobOptions,
)
from commands.options import or_default as _or
from commands.prompt import NETWORK_KINDS, with_names
from commands.prompt import networks as prompt_networks
from commands.spec import image_count_error

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.config import Config
    from bot.policy import Defaults
    from bot.ports import Backend, Clock

MAX_SEED = 2**32 - 1
_LOGGER = logging.getLogger(__name__)


class Catalog:
    """The backend's endpoints and models, cached for `ttl` seconds.

    `fresh=True` reloads first unless the cache is younger than `min_age` seconds: a name not
    found in the cache is looked up again before it is refused, but a user repeating unknown
    names cannot make the bot list the backend more than once every `min_age` seconds.
    """

    def __init__(
        self, backend: Backend, clock: Clock, ttl: float = 60.0, min_age: float = 5.0
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._ttl = ttl
        self._min_age = min_age
        self._endpoints: tuple[float, Sequence[Endpoint]] | None = None
        # Bounded: one entry per model type the core asks for (a handful, named in code).
        self._models: dict[str | None, tuple[float, Sequence[Model]]] = {}
        self._lock = asyncio.Lock()

    def _usable(self, stamp: float, fresh: bool) -> bool:
        return self._clock.monotonic() - stamp < (self._min_age if fresh else self._ttl)

    async def endpoints(self, *, fresh: bool = False) -> Sequence[Endpoint]:
        async with self._lock:
            if self._endpoints is None or not self._usable(self._endpoints[0], fresh):
                self._endpoints = (self._clock.monotonic(), await self._backend.endpoints())
            return self._endpoints[1]

    async def models(
        self, model_type: str | None = None, *, fresh: bool = False
    ) -> Sequence[Model]:
        async with self._lock:
            cached = self._models.get(model_type)
            if cached is None or not self._usable(cached[0], fresh):
                cached = (self._clock.monotonic(), await self._backend.models(model_type))
                self._models[model_type] = cached
            return cached[1]

    def invalidate(self) -> None:
        self._endpoints = None
        self._models.clear()

    async def endpoint_named(self, name: str) -> tuple[Endpoint, Sequence[Endpoint]]:
        """The endpoint called `name` (any case) and every endpoint; refuses unknown names."""
        for fresh in (False, True):
            endpoints = await self.endpoints(fresh=fresh)
            found = match_name(name, [e.name for e in endpoints], files=False)
            if found is not None:
                return next(e for e in endpoints if e.name == found), endpoints
        raise RefusedError(
            unknown_name("endpoint", name, [e.name for e in endpoints])
            + f"; endpoints: {endpoint_states(endpoints)}"
        )

    async def model_named(self, name: str, model_type: str) -> str:
        """The backend's name of model `name` (any case, with or without its file extension)."""
        for fresh in (False, True):
            names = sorted(m.name for m in await self.models(model_type, fresh=fresh))
            found = match_name(name, names, files=True)
            if found is not None:
                return found
        label, hint = _MODEL_WORDS.get(model_type, (model_type, "`models`"))
        raise RefusedError(
            unknown_name(label, name, names)
            + f"; available: {_listing(names) or 'none'} (see {hint})"
        )


# How messages name each ESD model type, and the command that lists them.
_MODEL_WORDS: dict[str, tuple[str, str]] = {
    "Stable-diffusion": ("model", "`models`"),
    "VAE": ("VAE", "`models type=vae`"),
    "Lora": ("LoRA", "`models type=lora`"),
    "hypernetworks": ("hypernetwork", "`models type=hypernetwork`"),
}


# Model file extensions (A1111 lists these; ESD stores the files under their full names).
_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def _stem(name: str) -> str:
    """A model's name without its file extension (`style_v1.5` keeps its dot)."""
    lowered = name.lower()
    for extension in _MODEL_EXTENSIONS:
        if lowered.endswith(extension):
            return name[: -len(extension)]
    return name


def match_name(name: str, names: Sequence[str], *, files: bool) -> str | None:
    """The one of `names` that `name` means: exact, else the same letters in any case, else
    (`files`) the same file name without its extension (`style` for `Style.safetensors`)."""
    if name in names:
        return name
    lowered = name.casefold()
    for candidate in names:
        if candidate.casefold() == lowered:
            return candidate
    if files:
        for candidate in names:
            if _stem(candidate).casefold() in (lowered, _stem(name).casefold()):
                return candidate
    return None


def unknown_name(label: str, name: str, names: Sequence[str]) -> str:
    """`unknown model `x``, with a "did you mean" when a name is close."""
    guesses = closest(name, list(names) + [_stem(n) for n in names])
    shown = list(dict.fromkeys(n for g in guesses for n in names if g in (n, _stem(n))))[:3]
    message = f"unknown {label} `{name}`"
    if shown:
        message += " — did you mean " + " or ".join(f"`{n}`" for n in shown) + "?"
    return message


def endpoint_states(endpoints: Sequence[Endpoint]) -> str:
    return ", ".join(f"`{e.name}` ({e.status}, {e.type})" for e in endpoints) or "none"


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


class Resolver:
    """Resolves endpoints, models and generation parameters against defaults and backend.

    The same checks run twice: `check` before a job is acknowledged (so an unknown name is a
    refusal and nothing is stored), and `generation` / `endpoint` when it is submitted, which
    catches what changed in between, or what could not be checked because the backend could not
    be reached, with the same messages.
    """

    def __init__(self, config: Config, catalog: Catalog) -> None:
        self._config = config
        self._catalog = catalog

    async def check(self, options: JobOptions, defaults: Defaults) -> JobOptions:
        """Refuse what can be known before the ack; return `options` with the backend's names.

        Sizes are checked against the channel's cap, and the endpoint, model, VAE and the
        prompt's LoRA / hypernetwork tags against the backend's catalogue (any case; with a
        "did you mean"). A backend that cannot be reached leaves the names to `generation`.
        """
        if isinstance(options, InterrogateOptions):
            try:
                endpoint = await self.endpoint(
                    options.endpoint, default=defaults.endpoint, async_only=True
                )
            except BackendError as exc:
                _LOGGER.warning("names are checked after the ack: the backend failed: %r", exc)
                return options
            return options if options.endpoint is None else replace(options, endpoint=endpoint.name)
        _check_cap(*_requested_size(options), defaults.max_size)
        too_many = image_count_error(*_images(options))
        if too_many is not None:
            raise RefusedError(too_many)
        try:
            endpoint = await self.endpoint(options.endpoint, default=defaults.endpoint)
            model = await self.model(options.model, defaults.model)
            vae = await self.vae(options.vae, defaults.vae)
            prompt = None if options.prompt is None else await self.networks(options.prompt)
        except BackendError as exc:
            _LOGGER.warning("names are checked after the ack: the backend failed: %r", exc)
            return options
        return replace(
            options,
            prompt=prompt,
            endpoint=None if options.endpoint is None else endpoint.name,
            model=None if options.model is None else model,
            vae=None if options.vae is None else vae,
        )

    async def endpoint(
        self, requested: str | None, *, default: str | None = None, async_only: bool = False
    ) -> Endpoint:
        """The endpoint a job runs on; refuses unknown or not-InService endpoints."""
        name = requested or default
        if name is not None:
            found, endpoints = await self._catalog.endpoint_named(name)
            states = endpoint_states(endpoints)
            if not found.in_service:
                raise RefusedError(
                    f"endpoint `{found.name}` is {found.status}, not InService; endpoints: {states}"
                )
            if async_only and found.type != "Async":
                raise RefusedError(
                    f"endpoint `{found.name}` is {found.type}; interrogate needs an Async endpoint"
                )
            return found
        wanted = "Async" if async_only else self._config.inference_type
        for fresh in (False, True):
            endpoints = await self._catalog.endpoints(fresh=fresh)
            for endpoint in sorted(endpoints, key=lambda e: e.name):
                if endpoint.in_service and endpoint.type == wanted:
                    return endpoint
        raise RefusedError(
            f"no {wanted} endpoint is InService; endpoints: {endpoint_states(endpoints)}"
        )

    async def model(self, requested: str | None, default: str | None = None) -> str:
        name = requested or default
        if name is not None:
            return await self._catalog.model_named(name, "Stable-diffusion")
        for fresh in (False, True):
            checkpoints = sorted(
                m.name for m in await self._catalog.models("Stable-diffusion", fresh=fresh)
            )
            if checkpoints:
                return checkpoints[0]
        raise RefusedError("the backend has no Active Stable-diffusion checkpoint")

    async def vae(self, requested: str | None, default: str = "Automatic") -> str:
        name = requested or default
        return vae_keyword(name) or await self._catalog.model_named(name, "VAE")

    async def networks(self, prompt: str) -> str:
        """`prompt` with every LoRA / hypernetwork tag naming a model the backend has, in the
        backend's spelling (A1111 looks them up by exact file name without the extension)."""
        names = {}
        for tag in prompt_networks(prompt):
            found = await self._catalog.model_named(tag.name, NETWORK_KINDS[tag.kind])
            names[tag.span] = _stem(found)
        return with_names(prompt, names) if names else prompt

    async def generation(
        self, options: GenerateOptions, input_width: int, input_height: int, defaults: Defaults
    ) -> GenerationParams:
        """Every img2img parameter, concrete: defaults applied, size fitted, seed drawn."""
        o, d = options, GENERATE_DEFAULTS
        cap = defaults.max_size
        width, height = _requested_size(o)
        if o.scale is not None:
            # A1111's "Resize by" tab: int(side × scale) of the init image, here floored to the
            # multiple of 8 that the latent space keeps anyway. The grammar and the reply merge
            # keep `scale` apart from size / width / height.
            width, height = (
                max(64, int(side * o.scale) // 8 * 8) for side in (input_width, input_height)
            )
            if max(width, height) > cap:
                raise RefusedError(
                    f"size {width}x{height} ({input_width}x{input_height} × {o.scale:g}) is over "
                    f"the cap of {cap} pixels on the longest side"
                )
        elif width is not None and height is None:
            height = max(64, round(width * input_height / input_width / 8) * 8)
        elif height is not None and width is None:
            width = max(64, round(height * input_width / input_height / 8) * 8)
        if width is None or height is None:
            width, height = default_size(input_width, input_height, cap)
        _check_cap(width, height, cap)
        seed = _or(o.seed, d.seed)
        if seed < 0:
            seed = random.randint(0, MAX_SEED)
        count, batch_count = _images(o)
        too_many = image_count_error(count, batch_count)
        if too_many is not None:
            raise RefusedError(too_many)
        subseed_strength = _or(o.subseed_strength, d.subseed_strength)
        subseed = _or(o.subseed, d.subseed)
        if subseed < 0 and subseed_strength > 0:
            # Drawn here, like the seed, so the job's details and a re-generation can repeat it.
            subseed = random.randint(0, MAX_SEED)
        endpoint = await self.endpoint(o.endpoint, default=defaults.endpoint)
        return GenerationParams(
            prompt=await self.networks(o.prompt or ""),
            negative=o.negative or "",
            strength=_or(o.strength, d.strength),
            steps=_or(o.steps, d.steps),
            cfg=_or(o.cfg, d.cfg),
            sampler=_or(o.sampler, d.sampler),
            seed=seed,
            width=width,
            height=height,
            count=count,
            resize=_or(o.resize, d.resize),
            model=await self.model(o.model, defaults.model),
            vae=await self.vae(o.vae, defaults.vae),
            endpoint=endpoint.name,
            mask_blur=_or(o.mask_blur, d.mask_blur),
            fill=_or(o.fill, d.fill),
            area=_or(o.area, d.area),
            padding=_or(o.padding, d.padding),
            invert=_or(o.invert, d.invert),
            batch_count=batch_count,
            subseed=subseed,
            subseed_strength=subseed_strength,
            restore_faces=_or(o.restore_faces, d.restore_faces),
            tiling=_or(o.tiling, d.tiling),
            clip_skip=_or(o.clip_skip, d.clip_skip),
            image_cfg=_or(o.image_cfg, d.image_cfg),
            noise_multiplier=_or(o.noise_multiplier, d.noise_multiplier),
            scheduler=_or(o.scheduler, d.scheduler),
            mask_alpha=_or(o.mask_alpha, d.mask_alpha),
        )


def vae_keyword(name: str) -> str | None:
    """`Automatic` or `None` (any case): A1111's own VAE choices, not files on the backend."""
    return next((k for k in ("Automatic", "None") if name.casefold() == k.casefold()), None)


def _requested_size(options: GenerateOptions) -> tuple[int | None, int | None]:
    """The output width and height the options ask for (either may be left to the input)."""
    if options.size is not None:
        return options.size.width, options.size.height
    return options.width, options.height


def _images(options: GenerateOptions) -> tuple[int, int]:
    """Batch size and batch count."""
    d = GENERATE_DEFAULTS
    return _or(options.count, d.count), _or(options.batch_count, d.batch_count)


def _check_cap(width: int | None, height: int | None, cap: int) -> None:
    if width is not None and height is not None:
        if max(width, height) > cap:
            raise RefusedError(
                f"size {width}x{height} is over the cap of {cap} pixels on the longest side"
            )
        return
    for name, side in (("width", width), ("height", height)):
        if side is not None and side > cap:
            raise RefusedError(f"{name} {side} is over the cap of {cap} pixels on the longest side")
