"""The versioned JSON of a job's typed options and parameters, as the store keeps them.

Version 2, written now: `{"v": 2, "options": {…}}` holds the options the user gave
(`commands.options`: only those given, enums by value, `Size` as `{"width", "height"}`), and
`{"v": 2, "params": {…}}` the resolved `GenerationParams` / `InterrogateParams`.

Version 1, rows written before options were typed, is still read: the options as a flat object
of text forms (`{"steps": "30", "size": "512x768"}`), read back by the grammar that wrote them,
and the parameters as a flat object whose `sampler` has the schedule written into its name
(`DPM++ 2M Exponential`, see `commands.spec.join_sampler`). Such a row is written as version 2
the next time the job is saved.

pydantic (over the frozen dataclasses themselves) reads and writes both; a stored value that
no longer reads (a choice a newer release dropped, a hand-edited row) is an
`InvalidRecordError` that names the field, not an unexpected error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from pydantic import TypeAdapter, ValidationError

from bot.errors import InvalidRecordError
from bot.model import GenerationParams, InterrogateParams
from commands import COMMANDS, OPTIONS, Family, GrammarError, Kind, OptionValue, convert_option
from commands.options import GenerateOptions, InterrogateOptions, JobOptions, job_options
from commands.spec import read_sampler

VERSION: Final = 2
_T = TypeVar("_T")


@dataclass(frozen=True)
class _GenerateRecord:
    v: Literal[2]
    options: GenerateOptions


@dataclass(frozen=True)
class _InterrogateRecord:
    v: Literal[2]
    options: InterrogateOptions


@dataclass(frozen=True)
class _ParamsRecord:
    v: Literal[2]
    params: GenerationParams


@dataclass(frozen=True)
class _InterrogateParamsRecord:
    v: Literal[2]
    params: InterrogateParams


_GENERATE = TypeAdapter(_GenerateRecord)
_INTERROGATE = TypeAdapter(_InterrogateRecord)
_PARAMS = TypeAdapter(_ParamsRecord)
_INTERROGATE_PARAMS = TypeAdapter(_InterrogateParamsRecord)
_V1_GENERATE = TypeAdapter(GenerationParams)
_V1_INTERROGATE = TypeAdapter(InterrogateParams)


def dump_options(options: JobOptions) -> str:
    if isinstance(options, GenerateOptions):
        return _GENERATE.dump_json(_GenerateRecord(VERSION, options), exclude_none=True).decode()
    record = _InterrogateRecord(VERSION, options)
    return _INTERROGATE.dump_json(record, exclude_none=True).decode()


def load_options(command: str, text: str) -> JobOptions:
    """The options of a stored job of `command`, from either version."""
    data = _object(text, "options")
    if "v" not in data:
        return _options_v1(command, data)
    if COMMANDS[command].family is Family.GENERATE:
        return _read(_GENERATE, data, "an option").options
    return _read(_INTERROGATE, data, "an option").options


def dump_params(params: GenerationParams) -> str:
    return _PARAMS.dump_json(_ParamsRecord(VERSION, params)).decode()


def params_value(params: GenerationParams) -> dict[str, Any]:
    """`dump_params` as a JSON value, for a document that holds it (the local backend's jobs)."""
    value: dict[str, Any] = _PARAMS.dump_python(_ParamsRecord(VERSION, params), mode="json")
    return value


def load_params(text: str) -> GenerationParams:
    return read_params(_object(text, "parameters"))


def read_params(value: object) -> GenerationParams:
    """`load_params` of an already decoded JSON value."""
    if not isinstance(value, dict):
        raise InvalidRecordError("this job's stored parameters are not a JSON object")
    data: dict[str, Any] = value
    if "v" in data:
        return _read(_PARAMS, data, "a parameter").params
    if isinstance(data.get("sampler"), str):
        # Version 1 kept the name sent to the backend, the schedule written into it.
        try:
            sampler, scheduler = read_sampler(data["sampler"], data.get("scheduler", "Automatic"))
        except ValueError:
            raise _invalid(
                "a parameter", "sampler", data["sampler"], "not a known sampler"
            ) from None
        data = {**data, "sampler": sampler, "scheduler": scheduler}
    return _read(_V1_GENERATE, data, "a parameter")


def dump_interrogate(params: InterrogateParams) -> str:
    return _INTERROGATE_PARAMS.dump_json(_InterrogateParamsRecord(VERSION, params)).decode()


def load_interrogate(text: str) -> InterrogateParams:
    data = _object(text, "parameters")
    if "v" in data:
        return _read(_INTERROGATE_PARAMS, data, "a parameter").params
    return _read(_V1_INTERROGATE, data, "a parameter")


def _options_v1(command: str, data: dict[str, Any]) -> JobOptions:
    """Version 1: text forms, read by the grammar (free text as it was stored, as the
    resolver of that version took it)."""
    values: dict[str, OptionValue] = {}
    for name, raw in data.items():
        option = OPTIONS.get(name)
        if option is None or not isinstance(raw, str):
            raise _invalid("an option", name, raw, "not an option of this command")
        if option.kind is Kind.TEXT:
            values[name] = raw
            continue
        try:
            values[name] = convert_option(option, raw)
        except GrammarError as exc:
            raise _invalid("an option", name, raw, str(exc)) from None
    try:
        return job_options(command, values)
    except ValidationError as exc:
        raise _unreadable(exc, "an option") from None


def _object(text: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        raise InvalidRecordError(f"this job's stored {what} are not a JSON object")
    return data


def _read(adapter: TypeAdapter[_T], data: object, what: str) -> _T:
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise _unreadable(exc, what) from None


def _unreadable(exc: ValidationError, what: str) -> InvalidRecordError:
    error = exc.errors()[0]
    field = ".".join(str(part) for part in error["loc"] if part not in ("options", "params"))
    return _invalid(what, field, error.get("input"), error["msg"])


def _invalid(what: str, name: str, value: object, why: str) -> InvalidRecordError:
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(shown) > 60:
        shown = shown[:59] + "…"
    if len(why) > 160:
        why = why[:159] + "…"
    return InvalidRecordError(
        f"this job was stored with {what} this version of the bot cannot read: "
        f"`{name}` is `{shown}` ({why}); start the job again instead"
    )
