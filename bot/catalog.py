"""The backend's catalogue: its endpoints and models, cached briefly, and how a name given by a
user is matched against them (case and model file extensions aside, with suggestions when it is
not found).

`bot.resolve` (a job's parameters) and `bot.policy` (channel and server `settings`) both check
names here; neither depends on the other for it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from bot.errors import RefusedError
from commands import closest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from bot.model import Endpoint, Model
    from bot.ports import Backend, Clock


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

    def cached(self, *model_types: str) -> tuple[Sequence[object], ...] | None:
        """The cached endpoints and models of `model_types`, while every one is fresh (else
        None): a check made against these very lists holds while they are the ones cached."""
        stamped = [self._endpoints, *(self._models.get(t) for t in model_types)]
        lists: list[Sequence[object]] = []
        for entry in stamped:
            if entry is None or not self._usable(entry[0], False):
                return None
            lists.append(entry[1])
        return tuple(lists)

    async def endpoints(self, *, fresh: bool = False) -> Sequence[Endpoint]:
        cached = self._endpoints
        if cached is not None and self._usable(cached[0], fresh):
            return cached[1]  # the common case, every command: no lock
        async with self._lock:
            if self._endpoints is None or not self._usable(self._endpoints[0], fresh):
                self._endpoints = (self._clock.monotonic(), await self._backend.endpoints())
            return self._endpoints[1]

    async def models(
        self, model_type: str | None = None, *, fresh: bool = False
    ) -> Sequence[Model]:
        cached = self._models.get(model_type)
        if cached is not None and self._usable(cached[0], fresh):
            return cached[1]
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
            + f"; available: {listing(names) or 'none'} (see {hint})"
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


def stem(name: str) -> str:
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
            if stem(candidate).casefold() in (lowered, stem(name).casefold()):
                return candidate
    return None


def unknown_name(label: str, name: str, names: Sequence[str]) -> str:
    """`unknown model `x``, with a "did you mean" when a name is close."""
    guesses = closest(name, list(names) + [stem(n) for n in names])
    shown = list(dict.fromkeys(n for g in guesses for n in names if g in (n, stem(n))))[:3]
    message = f"unknown {label} `{name}`"
    if shown:
        message += " — did you mean " + " or ".join(f"`{n}`" for n in shown) + "?"
    return message


def endpoint_states(endpoints: Sequence[Endpoint]) -> str:
    return ", ".join(f"`{e.name}` ({e.status}, {e.type})" for e in endpoints) or "none"


def listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def vae_keyword(name: str) -> str | None:
    """`Automatic` or `None` (any case): A1111's own VAE choices, not files on the backend."""
    return next((k for k in ("Automatic", "None") if name.casefold() == k.casefold()), None)


__all__ = [
    "Catalog",
    "endpoint_states",
    "listing",
    "match_name",
    "stem",
    "unknown_name",
    "vae_keyword",
]
