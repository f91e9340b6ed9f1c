"""What a job-creating command asks for, typed: one frozen object per command family.

`GenerateOptions` (the img2img family) and `InterrogateOptions` hold the options the user gave,
each with its declared type (`Sampler`, `Fill`, … for choices, `Size` for sizes). A field left
`None` was not given: the channel's and server's settings, then the declared default (the
`*_DEFAULTS` objects, read from `commands.spec.OPTIONS`), apply when the job is resolved
(`bot.resolve`). The same object goes from the parser through the store (`bot.records` writes
it as versioned JSON) to the resolver, and is the base of a re-generation.

Built from parsed values through pydantic (over these frozen dataclasses): a value of the wrong
type, or an option the family does not keep, is a bug in the caller, found here rather than at
submission.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

from pydantic import ConfigDict, TypeAdapter

from commands.spec import (
    COMMANDS,
    OPTIONS,
    Area,
    Family,
    Fill,
    Method,
    OptionValue,
    Resize,
    Sampler,
    Scheduler,
    Size,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = (
    "GENERATE_DEFAULTS",
    "INTERROGATE_DEFAULTS",
    "GenerateDefaults",
    "GenerateOptions",
    "InterrogateDefaults",
    "InterrogateOptions",
    "JobOptions",
    "JobsOptions",
    "given",
    "job_options",
    "jobs_options",
    "or_default",
    "text_form",
)

_CLOSED: ConfigDict = ConfigDict(extra="forbid")
_T = TypeVar("_T")


# Slotted: every job in flight holds its options (31 fields: 0.8 KB each with a __dict__,
# 0.3 KB without; issue 11, 10,000 jobs in one process).
@dataclass(frozen=True, kw_only=True, slots=True)
class GenerateOptions:
    """The options given to an img2img-family command (`commands.spec.GENERATION_OPTIONS`,
    `INPAINT_OPTIONS`, `SKETCH_OPTIONS`); None = not given."""

    __pydantic_config__: ClassVar[ConfigDict] = _CLOSED

    prompt: str | None = None
    negative: str | None = None
    strength: float | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: Sampler | None = None
    seed: int | None = None  # -1 = draw one
    size: Size | None = None
    width: int | None = None
    height: int | None = None
    count: int | None = None
    batch_count: int | None = None
    scale: float | None = None
    resize: Resize | None = None
    model: str | None = None
    vae: str | None = None
    endpoint: str | None = None
    subseed: int | None = None  # -1 = draw one
    subseed_strength: float | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    clip_skip: int | None = None
    image_cfg: float | None = None
    noise_multiplier: float | None = None
    scheduler: Scheduler | None = None
    mask_blur: int | None = None
    fill: Fill | None = None
    area: Area | None = None
    padding: int | None = None
    invert: bool | None = None
    mask_alpha: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class InterrogateOptions:
    """The options given to `interrogate`; None = not given."""

    __pydantic_config__: ClassVar[ConfigDict] = _CLOSED

    method: Method | None = None
    endpoint: str | None = None


JobOptions = GenerateOptions | InterrogateOptions


@dataclass(frozen=True, kw_only=True)
class JobsOptions:
    """The filters of the `jobs` query; None = not given."""

    __pydantic_config__: ClassVar[ConfigDict] = _CLOSED

    status: str | None = None  # a `JOB_STATES` name
    type: str | None = None  # a command (bot jobs) or a backend task type (`source=cloud`)
    endpoint: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    source: Literal["bot", "cloud"] | None = None
    all: bool = False

    @property
    def filtered(self) -> bool:
        """Whether any filter on the jobs themselves was given."""
        return any(
            value is not None
            for value in (self.status, self.endpoint, self.model, self.since, self.until)
        )


@dataclass(frozen=True, kw_only=True)
class GenerateDefaults:
    """The declared default of every img2img option that has one (`OptionSpec.default`)."""

    __pydantic_config__: ClassVar[ConfigDict] = _CLOSED

    strength: float
    steps: int
    cfg: float
    sampler: Sampler
    seed: int
    count: int
    batch_count: int
    resize: Resize
    subseed: int
    subseed_strength: float
    restore_faces: bool
    tiling: bool
    clip_skip: int
    image_cfg: float
    noise_multiplier: float
    scheduler: Scheduler
    mask_blur: int
    fill: Fill
    area: Area
    padding: int
    invert: bool
    mask_alpha: int


@dataclass(frozen=True, kw_only=True)
class InterrogateDefaults:
    """The declared default of every interrogate option that has one."""

    __pydantic_config__: ClassVar[ConfigDict] = _CLOSED

    method: Method


_GENERATE = TypeAdapter(GenerateOptions)
_INTERROGATE = TypeAdapter(InterrogateOptions)


def job_options(command: str, values: Mapping[str, OptionValue]) -> JobOptions:
    """The typed options of a job-creating `command` from parsed values (`ParsedCommand.options`
    without the console paths and `input`). Raises `ValueError` for a value of the wrong type
    or an option the command's family does not keep: a bug in the caller, not the user's."""
    family = COMMANDS[command].family
    if family is Family.GENERATE:
        return _GENERATE.validate_python(dict(values))
    if family is Family.INTERROGATE:
        return _INTERROGATE.validate_python(dict(values))
    raise ValueError(f"`{command}` does not create jobs")


_JOBS = TypeAdapter(JobsOptions)


def jobs_options(values: Mapping[str, OptionValue]) -> JobsOptions:
    """The typed filters of a parsed `jobs` command (`ValueError` as `job_options`)."""
    return _JOBS.validate_python(dict(values))


def or_default(value: _T | None, default: _T) -> _T:
    """A given option (not None), or its default."""
    return default if value is None else value


def given(options: JobOptions) -> dict[str, OptionValue]:
    """The options that were given, by name, in declaration order."""
    return {
        field.name: value
        for field in dataclasses.fields(options)
        if (value := getattr(options, field.name)) is not None
    }


def text_form(value: OptionValue) -> str:
    """An option value as the grammar reads it back (`Size` → `512x512`, True → `true`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _defaults(kind: type[_T]) -> _T:
    """`kind` filled from the declarations: a default of the wrong type fails at import."""
    names = [field.name for field in dataclasses.fields(kind)]  # type: ignore[arg-type]
    return TypeAdapter(kind).validate_python({name: OPTIONS[name].default for name in names})


GENERATE_DEFAULTS = _defaults(GenerateDefaults)
INTERROGATE_DEFAULTS = _defaults(InterrogateDefaults)
