"""`bot.resolve.Resolver.check`: a request that names nothing is checked against the channel's
defaults once per catalogue snapshot; a catalogue reloaded is looked at again (issue 11)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from store_kit import HandClock

from bot.catalog import Catalog
from bot.config import Config
from bot.errors import RefusedError
from bot.model import Endpoint, EndpointType, Model
from bot.policy import Defaults
from bot.resolve import Resolver
from commands.options import job_options

if TYPE_CHECKING:
    from collections.abc import Sequence


@dataclass
class _Listing:
    """The two listings `Catalog` makes of a backend (`Backend.endpoints` / `models`)."""

    status: str = "InService"
    models_listed: list[str | None] = field(default_factory=list)
    endpoints_listed: int = 0

    async def endpoints(self) -> Sequence[Endpoint]:
        self.endpoints_listed += 1
        return [Endpoint("sd-async", self.status, EndpointType.ASYNC, "ml.g5.xlarge", 1)]

    async def models(self, model_type: str | None = None) -> Sequence[Model]:
        self.models_listed.append(model_type)
        every = [
            Model("base.safetensors", "Stable-diffusion"),
            Model("v.pt", "VAE"),
            Model("x.safetensors", "Lora"),
        ]
        return [m for m in every if model_type is None or m.type == model_type]


def _defaults(vae: str = "Automatic") -> Defaults:
    return Defaults(None, None, vae, 1024, 2, 0, {})


async def test_a_request_naming_nothing_is_looked_up_once_per_catalogue_snapshot() -> None:
    backend, clock = _Listing(), HandClock()
    catalog = Catalog(backend, clock, ttl=60.0)  # type: ignore[arg-type]
    resolver = Resolver(Config(inference_type=EndpointType.ASYNC), catalog)
    lookups: list[str | None] = []
    real = resolver.endpoint

    async def counted(requested: str | None, **kwargs: object) -> Endpoint:
        lookups.append(requested)
        return await real(requested, **kwargs)  # type: ignore[arg-type]

    resolver.endpoint = counted  # type: ignore[method-assign]
    plain = job_options("img2img", {"prompt": "a cat"})
    for _ in range(3):
        assert await resolver.check(plain, _defaults()) is plain
    # The first fills the catalogue, the second finds the same lists and records them.
    assert len(lookups) == 2
    # What a request names is always looked up (a LoRA tag, a VAE file).
    await resolver.check(job_options("img2img", {"prompt": "<lora:x:0.5> a cat"}), _defaults())
    await resolver.check(job_options("img2img", {"prompt": "a", "vae": "v.pt"}), _defaults())
    assert len(lookups) == 4
    # Other defaults (a VAE file, its list cached by now) are checked once, then held.
    for _ in range(3):
        await resolver.check(plain, _defaults(vae="v.pt"))
    assert len(lookups) == 5
    # Once the lists are older than the catalogue's ttl, they are listed again and the
    # defaults checked against what the backend says now.
    backend.status = "Updating"
    clock.at += 61.0
    with pytest.raises(RefusedError, match="no Async endpoint is InService"):
        await resolver.check(plain, _defaults(vae="v.pt"))
    backend.status = "InService"
    catalog.invalidate()
    assert await resolver.check(plain, _defaults(vae="v.pt")) is plain
