"""The stored form of typed job options and parameters (`bot.records`): round trips, the
migration of rows written before options were typed, and clear errors for values that no
longer read."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import records
from bot.errors import InvalidRecordError, UserInputError
from bot.model import (
    Caller,
    Conversation,
    GenerationParams,
    InterrogateParams,
    Job,
    JobState,
    Platform,
)
from bot.store import SqliteJobStore
from commands import Size, parse
from commands.options import GenerateOptions, InterrogateOptions, job_options
from commands.spec import Area, Fill, Method, Resize, Sampler, Scheduler

if TYPE_CHECKING:
    from pathlib import Path

_texts = st.text(max_size=20)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_ints = st.integers(min_value=-(2**63), max_value=2**63)


def _maybe(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


_generate_options = st.builds(
    GenerateOptions,
    **{
        field.name: _maybe(strategy)
        for field, strategy in zip(
            dataclasses.fields(GenerateOptions),
            (
                _texts,  # prompt
                _texts,  # negative
                _floats,  # strength
                _ints,  # steps
                _floats,  # cfg
                st.sampled_from(Sampler),
                _ints,  # seed
                st.builds(Size, _ints, _ints),
                _ints,  # width
                _ints,  # height
                _ints,  # count
                _ints,  # batch_count
                _floats,  # scale
                st.sampled_from(Resize),
                _texts,  # model
                _texts,  # vae
                _texts,  # endpoint
                _ints,  # subseed
                _floats,  # subseed_strength
                st.booleans(),  # restore_faces
                st.booleans(),  # tiling
                _ints,  # clip_skip
                _floats,  # image_cfg
                _floats,  # noise_multiplier
                st.sampled_from(Scheduler),
                _ints,  # mask_blur
                st.sampled_from(Fill),
                st.sampled_from(Area),
                _ints,  # padding
                st.booleans(),  # invert
                _ints,  # mask_alpha
            ),
            strict=True,
        )
    },
)
_params = st.builds(
    GenerationParams,
    prompt=_texts,
    negative=_texts,
    strength=_floats,
    steps=_ints,
    cfg=_floats,
    sampler=st.sampled_from(Sampler),
    seed=_ints,
    width=_ints,
    height=_ints,
    count=_ints,
    resize=st.sampled_from(Resize),
    model=_texts,
    vae=_texts,
    endpoint=_texts,
    mask_blur=_ints,
    fill=st.sampled_from(Fill),
    area=st.sampled_from(Area),
    padding=_ints,
    invert=st.booleans(),
    batch_count=_ints,
    subseed=_ints,
    subseed_strength=_floats,
    restore_faces=st.booleans(),
    tiling=st.booleans(),
    clip_skip=_ints,
    image_cfg=_floats,
    noise_multiplier=_floats,
    scheduler=st.sampled_from(Scheduler),
    mask_alpha=_ints,
)


# -- Round trips ------------------------------------------------------------------------------


@settings(max_examples=300)
@given(_generate_options)
def test_generate_options_round_trip(options: GenerateOptions) -> None:
    loaded = records.load_options("inpaint", records.dump_options(options))
    assert loaded == options
    assert type(loaded.sampler) is type(options.sampler)


@given(
    st.builds(InterrogateOptions, method=_maybe(st.sampled_from(Method)), endpoint=_maybe(_texts))
)
def test_interrogate_options_round_trip(options: InterrogateOptions) -> None:
    assert records.load_options("interrogate", records.dump_options(options)) == options


@settings(max_examples=300)
@given(_params)
def test_generation_params_round_trip(params: GenerationParams) -> None:
    loaded = records.load_params(records.dump_params(params))
    assert loaded == params
    assert isinstance(loaded.sampler, Sampler) and isinstance(loaded.fill, Fill)
    assert records.read_params(records.params_value(params)) == params


@given(st.builds(InterrogateParams, st.sampled_from(Method), _texts))
def test_interrogate_params_round_trip(params: InterrogateParams) -> None:
    loaded = records.load_interrogate(records.dump_interrogate(params))
    assert loaded == params and isinstance(loaded.method, Method)


def test_parsed_options_survive_the_store_as_parsed() -> None:
    parsed = parse("inpaint a red barn size=512x768 sampler=euler_a fill=latent-noise invert=on")
    options = job_options(parsed.name, parsed.options)
    assert records.load_options("inpaint", records.dump_options(options)) == options
    assert options == GenerateOptions(
        prompt="a red barn",
        size=Size(512, 768),
        sampler=Sampler.EULER_A,
        fill=Fill.LATENT_NOISE,
        invert=True,
    )


# -- Version 1 rows ---------------------------------------------------------------------------

# The options and parameters as the store wrote them before options were typed.
_V1_OPTIONS = {
    "prompt": "a cat, <lora:Style:0.5>",
    "steps": "30",
    "strength": "0.6",
    "size": "512x768",
    "sampler": "Euler a",
    "scheduler": "Karras",
    "invert": "true",
    "fill": "latent-noise",
    "seed": "1234",
}
_V1_PARAMS = {
    "prompt": "a cat",
    "negative": "",
    "strength": 0.6,
    "steps": 30,
    "cfg": 7.0,
    # The schedule written into the name that was sent (`join_sampler`).
    "sampler": "Euler a Karras",
    "seed": 1234,
    "width": 512,
    "height": 768,
    "count": 1,
    "resize": "just-resize",
    "model": "sd15.safetensors",
    "vae": "Automatic",
    "endpoint": "ep",
    "mask_blur": 4,
    "fill": "latent-noise",
    "area": "whole",
    "padding": 32,
    "invert": True,
    # Rows older still lack the rest of the panel: their defaults apply.
    "scheduler": "Karras",
}


def test_version_1_options_are_read_by_the_grammar() -> None:
    options = records.load_options("inpaint", json.dumps(_V1_OPTIONS))
    assert options == GenerateOptions(
        prompt="a cat, <lora:Style:0.5>",
        steps=30,
        strength=0.6,
        size=Size(512, 768),
        sampler=Sampler.EULER_A,
        scheduler=Scheduler.KARRAS,
        invert=True,
        fill=Fill.LATENT_NOISE,
        seed=1234,
    )
    assert records.load_options("interrogate", '{"method": "deepbooru"}') == InterrogateOptions(
        method=Method.DEEPBOORU
    )


def test_version_1_params_keep_the_sampler_they_sent() -> None:
    params = records.load_params(json.dumps(_V1_PARAMS))
    assert (params.sampler, params.scheduler) == (Sampler.EULER_A, Scheduler.KARRAS)
    assert params.sampler_name == "Euler a Karras"
    assert (params.batch_count, params.clip_skip, params.mask_alpha) == (1, 1, 0)
    plain = {**_V1_PARAMS, "sampler": "DDIM", "scheduler": "Automatic"}
    assert records.load_params(json.dumps(plain)).sampler_name == "DDIM"
    old_interrogate = records.load_interrogate('{"method": "clip", "endpoint": "ep"}')
    assert old_interrogate == InterrogateParams(Method.CLIP, "ep")


async def test_an_old_row_loads_and_is_written_back_in_the_new_version(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    caller = Caller(Platform("console"), "console", "u1", Conversation("console"))
    job = Job(
        id="old0000001",
        command="inpaint",
        caller=caller,
        state=JobState.SUCCEED,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        options=GenerateOptions(),
    )
    async with SqliteJobStore(path) as store:
        await store.insert(job)
    # What the store of the previous release wrote for this job.
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE jobs SET options = ?, params = ? WHERE id = ?",
            (json.dumps(_V1_OPTIONS), json.dumps(_V1_PARAMS), job.id),
        )
    conn.close()
    async with SqliteJobStore(path) as store:
        loaded = await store.get(job.id)
        assert loaded is not None
        assert loaded.options == records.load_options("inpaint", json.dumps(_V1_OPTIONS))
        assert loaded.params is not None and loaded.params.sampler_name == "Euler a Karras"
        await store.save(dataclasses.replace(loaded, error="saved again"))
    with sqlite3.connect(path) as conn:
        options, params = conn.execute(
            "SELECT options, params FROM jobs WHERE id = ?", (job.id,)
        ).fetchone()
    conn.close()
    assert json.loads(options)["v"] == json.loads(params)["v"] == records.VERSION
    assert json.loads(options)["options"]["size"] == {"width": 512, "height": 768}


# -- Values that no longer read ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "stored", "named"),
    [
        # A choice a newer release dropped.
        ("img2img", {"v": 2, "options": {"sampler": "Euler Z"}}, "`sampler` is `Euler Z`"),
        ("img2img", {"v": 2, "options": {"steps": "many"}}, "`steps` is `many`"),
        ("img2img", {"v": 2, "options": {"flip": True}}, "`flip`"),
        ("interrogate", {"v": 2, "options": {"method": "blip"}}, "`method` is `blip`"),
        # Version 1: text the grammar no longer reads.
        ("img2img", {"steps": "lots"}, "`steps` is `lots`"),
        ("img2img", {"sampler": "Euler Z"}, "`sampler` is `Euler Z`"),
    ],
)
def test_options_that_no_longer_read_name_the_field(
    command: str, stored: dict[str, object], named: str
) -> None:
    with pytest.raises(InvalidRecordError) as caught:
        records.load_options(command, json.dumps(stored))
    message = str(caught.value)
    assert named in message and "start the job again" in message
    # Shown to users as it is (`bot.jobs`: a UserInputError is the job's failure message).
    assert isinstance(caught.value, UserInputError)


def test_params_that_no_longer_read_name_the_field() -> None:
    with pytest.raises(InvalidRecordError, match="`sampler` is `Euler Z Karras`"):
        records.load_params(json.dumps({**_V1_PARAMS, "sampler": "Euler Z Karras"}))
    stored = json.loads(records.dump_params(records.load_params(json.dumps(_V1_PARAMS))))
    stored["params"]["fill"] = "smudge"
    with pytest.raises(InvalidRecordError, match="`fill` is `smudge`"):
        records.load_params(json.dumps(stored))
    with pytest.raises(InvalidRecordError, match="not a JSON object"):
        records.load_params("[1, 2]")
