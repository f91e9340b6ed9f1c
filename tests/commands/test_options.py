"""The typed options of a job (`commands.options`) agree with the declarations in
`commands.spec`, and parsed values become them as they are."""

from __future__ import annotations

import dataclasses
import enum
import typing
from typing import TYPE_CHECKING

import pytest

from commands import COMMANDS, OPTIONS, Family, Kind, Size, parse
from commands.options import (
    GENERATE_DEFAULTS,
    INTERROGATE_DEFAULTS,
    GenerateDefaults,
    GenerateOptions,
    InterrogateDefaults,
    InterrogateOptions,
    JobsOptions,
    given,
    job_options,
    jobs_options,
    text_form,
)
from commands.spec import Fill, Method, Sampler, Scheduler

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Not job options: where the images come from, and the base job's result a reply uses.
_NOT_KEPT = {Kind.PATH, Kind.RESULT}
_TYPES = {Kind.TEXT: str, Kind.INT: int, Kind.FLOAT: float, Kind.BOOL: bool, Kind.SIZE: Size}


def _kept(family: Family) -> set[str]:
    return {
        name
        for spec in COMMANDS.values()
        if spec.family is family
        for name in spec.options
        if OPTIONS[name].kind not in _NOT_KEPT
    }


def _fields(kind: type[DataclassInstance]) -> dict[str, object]:
    hints = typing.get_type_hints(kind)
    return {f.name: hints[f.name] for f in dataclasses.fields(kind)}


@pytest.mark.parametrize(
    ("family", "kind", "defaults"),
    [
        (Family.GENERATE, GenerateOptions, GenerateDefaults),
        (Family.INTERROGATE, InterrogateOptions, InterrogateDefaults),
    ],
)
def test_each_family_keeps_every_declared_option_with_its_type(
    family: Family, kind: type[DataclassInstance], defaults: type[DataclassInstance]
) -> None:
    hints = _fields(kind)
    assert set(hints) == _kept(family)
    for name, hint in hints.items():
        option = OPTIONS[name]
        (declared,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if option.kind is Kind.CHOICE:
            assert issubclass(declared, enum.StrEnum), name
            assert option.choices == tuple(declared), name
        else:
            assert declared is _TYPES[option.kind], name
    with_default = {name for name in hints if OPTIONS[name].default is not None}
    assert set(_fields(defaults)) == with_default


def test_defaults_are_the_declared_ones_typed() -> None:
    for name, value in dataclasses.asdict(GENERATE_DEFAULTS).items():
        assert value == OPTIONS[name].default and type(value) is type(OPTIONS[name].default)
    assert GENERATE_DEFAULTS.sampler is Sampler.DPMPP_2M_KARRAS
    assert GENERATE_DEFAULTS.fill is Fill.ORIGINAL
    assert INTERROGATE_DEFAULTS.method is Method.CLIP


def test_parsed_values_become_the_typed_options() -> None:
    parsed = parse("inpaint-sketch a hat sampler=euler scheduler=karras fill=fill mask_alpha=40")
    options = job_options(parsed.name, parsed.options)
    assert options == GenerateOptions(
        prompt="a hat",
        sampler=Sampler.EULER,
        scheduler=Scheduler.KARRAS,
        fill=Fill.FILL,
        mask_alpha=40,
    )
    assert given(options) == dict(parsed.options)
    assert job_options("interrogate", parse("interrogate method=deepbooru").options) == (
        InterrogateOptions(method=Method.DEEPBOORU)
    )


def test_what_a_family_does_not_keep_is_a_bug_not_an_option() -> None:
    with pytest.raises(ValueError, match="method"):
        job_options("img2img", {"method": Method.CLIP})
    with pytest.raises(ValueError, match="steps"):
        job_options("img2img", {"steps": "many"})
    with pytest.raises(ValueError, match="does not create jobs"):
        job_options("jobs", {})


def test_text_forms_read_back_as_the_value() -> None:
    parsed = parse("inpaint x size=512x768 invert=on strength=0.5 sampler=euler_a")
    for name, value in parsed.options.items():
        assert parse(f"inpaint {name}={text_form(value)!r}").options[name] == value


def test_the_jobs_filters_are_the_declared_options_typed() -> None:
    assert [f.name for f in dataclasses.fields(JobsOptions)] == list(COMMANDS["jobs"].options)
    parsed = parse("jobs status=failed since=2026-11-01 source=cloud all=yes", now=None)
    opts = jobs_options(parsed.options)
    assert (opts.status, opts.source, opts.all, opts.filtered) == ("failed", "cloud", True, True)
    assert opts.since is not None and opts.since.tzinfo is not None
    assert not jobs_options(parse("jobs type=img2img user=u1").options).filtered
