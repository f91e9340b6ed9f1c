"""Turning a job's options into concrete backend parameters (SPEC §2.2 "Defaults, in order").

Order: the command's options, then the channel's and server's settings over the configuration
(`bot.policy.Defaults`), then the backend (model = the first
Active `Stable-diffusion` checkpoint by name; endpoint = an `InService` endpoint of the
configured inference type), as `bot.catalog` lists and caches it.
"""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from typing import TYPE_CHECKING

from bot.catalog import endpoint_states, stem, vae_keyword
from bot.errors import BackendError, RefusedError
from bot.imaging import default_size
from bot.model import Endpoint, EndpointType, GenerationParams
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

    from bot.catalog import Catalog
    from bot.config import Config
    from bot.policy import Defaults

MAX_SEED = 2**32 - 1
_LOGGER = logging.getLogger(__name__)


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
        # The default names last found on the backend, and the catalogue's lists they were
        # found in (`_defaults_hold`).
        self._checked: tuple[tuple[str | None, ...], tuple[Sequence[object], ...]] | None = None

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
        plain = (
            options.endpoint is None
            and options.model is None
            and options.vae is None
            and "<" not in (options.prompt or "")  # no LoRA / hypernetwork tag
        )
        if plain and self._defaults_hold(defaults):
            return options
        lists = self._catalog.cached(*_model_types(defaults))  # what the look-ups below see
        try:
            endpoint = await self.endpoint(options.endpoint, default=defaults.endpoint)
            model = await self.model(options.model, defaults.model)
            vae = await self.vae(options.vae, defaults.vae)
            prompt = None if options.prompt is None else await self.networks(options.prompt)
        except BackendError as exc:
            _LOGGER.warning("names are checked after the ack: the backend failed: %r", exc)
            return options
        names = (
            prompt,
            None if options.endpoint is None else endpoint.name,
            None if options.model is None else model,
            None if options.vae is None else vae,
        )
        if (
            plain
            and lists is not None
            and _same(lists, self._catalog.cached(*_model_types(defaults)))
        ):
            self._checked = (_default_names(defaults), lists)  # nothing reloaded meanwhile
        if names == (
            options.prompt,
            options.endpoint,
            options.model,
            options.vae,
        ):
            return options  # already in the backend's spelling: no copy (the ack path's cost)
        return replace(options, prompt=names[0], endpoint=names[1], model=names[2], vae=names[3])

    def _defaults_hold(self, defaults: Defaults) -> bool:
        """Whether a request that names nothing needs no look-up: its channel's default names
        were found in the very lists the catalogue still holds (every command of a burst
        asks; resolving them again cost a tenth of an acknowledgement, issue 11)."""
        checked = self._checked
        if checked is None or checked[0] != _default_names(defaults):
            return False
        return _same(checked[1], self._catalog.cached(*_model_types(defaults)))

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
            if async_only and found.type is not EndpointType.ASYNC:
                raise RefusedError(
                    f"endpoint `{found.name}` is {found.type}; interrogate needs an Async endpoint"
                )
            return found
        wanted = EndpointType.ASYNC if async_only else self._config.inference_type
        for fresh in (False, True):
            endpoints = await self._catalog.endpoints(fresh=fresh)
            usable = [e for e in endpoints if e.in_service and e.type == wanted]
            if usable:
                return min(usable, key=_name)  # the first by name
        raise RefusedError(
            f"no {wanted} endpoint is InService; endpoints: {endpoint_states(endpoints)}"
        )

    async def model(self, requested: str | None, default: str | None = None) -> str:
        name = requested or default
        if name is not None:
            return await self._catalog.model_named(name, "Stable-diffusion")
        for fresh in (False, True):
            checkpoints = await self._catalog.models("Stable-diffusion", fresh=fresh)
            if checkpoints:
                return min(m.name for m in checkpoints)  # the first by name
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
            names[tag.span] = stem(found)
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


def _same(lists: tuple[Sequence[object], ...], now: tuple[Sequence[object], ...] | None) -> bool:
    """Whether the catalogue holds the very lists it held (not equal ones: the same)."""
    return now is not None and all(a is b for a, b in zip(lists, now, strict=True))


def _default_names(defaults: Defaults) -> tuple[str | None, ...]:
    return (defaults.endpoint, defaults.model, defaults.vae)


def _model_types(defaults: Defaults) -> tuple[str, ...]:
    """The catalogue's model lists the default names are found in."""
    return ("Stable-diffusion",) if vae_keyword(defaults.vae) else ("Stable-diffusion", "VAE")


def _name(endpoint: Endpoint) -> str:
    return endpoint.name


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
