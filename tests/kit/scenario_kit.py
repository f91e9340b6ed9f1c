"""Shared test kit: generated images, a configured core, a console and a recording adapter.

Scenario tests drive the real core (`BotApp`) with the real SQLite store and the real local
backend, through the real console adapter or `RecordingAdapter`, a `ChatAdapter` that keeps
what the core posted so tests can look at threads, status edits and results.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw

from adapters.cli import SECTIONS
from adapters.console import ConsoleAdapter, run_console
from bot.app import BotApp
from bot.config import Section, Settings, environment_names
from bot.errors import ChatDeliveryError, ImageInputError
from bot.model import AttachmentRef, Caller, Conversation, Job, Platform
from bot.ports import PlatformTraits, PostedStatus
from bot.store import SqliteJobStore
from cloud.local import LocalBackend, LocalBackendConfig

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from bot.views import ResultImage, ResultView, StatusView

DISCORD = Platform("discord")  # a chat-like platform: the default of the fakes below


def png(
    width: int = 96, height: int = 64, color: tuple[int, ...] = (40, 90, 200), mode: str = "RGB"
) -> bytes:
    """A picture with a gradient and a shape, so transforms have something to change."""
    image = Image.new(mode, (width, height), color)
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 4):
        fill: Any = (x * 255 // max(1, width), 120, 80) + ((255,) if mode == "RGBA" else ())
        draw.line([(x, 0), (x, height // 3)], fill=fill)
    draw.ellipse(
        [width // 4, height // 4, width // 2, height // 2],
        fill=(250, 220, 30) + ((255,) if mode == "RGBA" else ()),
    )
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def mask_png(
    width: int = 96, height: int = 64, box: tuple[int, int, int, int] = (10, 10, 40, 40)
) -> bytes:
    """White box (repaint) on black."""
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).rectangle(box, fill=255)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def transparent_png(width: int = 96, height: int = 64) -> bytes:
    """RGBA picture with a transparent hole (the inpaint mask)."""
    image = Image.open(io.BytesIO(png(width, height))).convert("RGBA")
    ImageDraw.Draw(image).rectangle((20, 20, 50, 50), fill=(0, 0, 0, 0))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def sketch_of(original: bytes) -> bytes:
    """The original with a red stroke painted over it."""
    image = Image.open(io.BytesIO(original)).convert("RGB")
    ImageDraw.Draw(image).rectangle((30, 20, 60, 45), fill=(230, 10, 10))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


class FastSettings(Settings):
    """Test settings: any section's field also reads as an attribute (`settings.local_delay`)."""

    def __getattr__(self, name: str) -> Any:
        for section in self._sections.values():
            if name in type(section).model_fields:
                return getattr(section, name)
        raise AttributeError(name)


def clean_env(**env: str) -> dict[str, str]:
    """This process's environment without any variable sdbot's settings read, plus `env`: a
    child `sdbot` sees the settings a test gives it and none of the developer's."""
    read = environment_names(SECTIONS)
    return {k: v for k, v in os.environ.items() if k not in read} | env


def fast_config(tmp_path: Path, **overrides: Any) -> FastSettings:
    """Fast settings: tiny delays, quick polling, short status interval. `overrides` name any
    section's settings (credentials too: `discord_token="…"`)."""
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "output_dir": tmp_path / "out",
        "local_delay": 0.05,
        "poll_interval": 0.01,
        "poll_max_interval": 0.05,
        "status_interval": 0.2,
    }
    values.update(overrides)
    given: dict[type[Section], dict[str, Any]] = {kind: {} for kind in SECTIONS}
    for name, value in values.items():
        kind = next((k for k in SECTIONS if name in k.model_fields), None)
        if kind is None:
            raise TypeError(f"no settings section declares {name!r}")
        given[kind][name] = value
    return FastSettings(kind(**fields) for kind, fields in given.items())


# The backend scenarios run on when they bring none: the local one, or what the
# `scenario_backend` fixture (tests/conftest.py) installs for the backend-neutral scenarios.
_backend_for: Callable[[FastSettings], Any] | None = None


def use_backend(factory: Callable[[FastSettings], Any] | None) -> None:
    global _backend_for
    _backend_for = factory


def default_backend(config: FastSettings) -> Any:
    if _backend_for is not None:
        return _backend_for(config)
    return LocalBackend(
        LocalBackendConfig(delay=config.local_delay, state_dir=config.data_dir / "local")
    )


def make_app(config: FastSettings, backend: Any = None) -> BotApp:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return BotApp(
        config.core,
        backend=backend or default_backend(config),
        store=SqliteJobStore(config.data_dir / "sdbot.sqlite3"),
        redaction=config.redaction(),
    )


async def _lines(lines: Sequence[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


class ConsoleRun:
    """A console session over a real core; `run` feeds lines and returns what was printed.

    `backend_for` builds the backend from the session's config (default: the local backend).
    """

    def __init__(
        self,
        tmp_path: Path,
        *,
        backend_for: Callable[[FastSettings], Any] | None = None,
        **overrides: Any,
    ) -> None:
        self.tmp_path = tmp_path
        self.config = fast_config(tmp_path, **overrides)
        self.out = io.StringIO()
        self.app = make_app(self.config, backend_for(self.config) if backend_for else None)
        self.adapter = ConsoleAdapter(self.config.output_dir, self.out)
        self.app.add_adapter(self.adapter)

    def write(self, name: str, data: bytes) -> Path:
        path = self.tmp_path / name
        path.write_bytes(data)
        return path

    async def run(self, *lines: str) -> list[str]:
        start = len(self.out.getvalue().splitlines())
        await run_console(
            self.adapter, self.app.dispatcher, self.app.runner.wait_idle, _lines(lines)
        )
        return self.out.getvalue().splitlines()[start:]

    async def __aenter__(self) -> ConsoleRun:
        await self.app.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.app.aclose()


def saved(lines: Sequence[str], job_id: str) -> list[Path]:
    """The result files a console run saved for one job."""
    return [
        Path(line.split(" ", 1)[1])
        for line in lines
        if line.startswith("saved ") and job_id in line
    ]


def states(lines: Sequence[str], job_id: str) -> list[str]:
    """The state lines a console run printed for one job, in order."""
    return [
        line.split()[2]
        for line in lines
        if line.startswith(f"job {job_id} ") and not line.endswith("accepted")
    ]


# Every image mode with the inputs it takes: (command, extra options with {image}/{mask}/
# {alpha}/{sketch} path placeholders).
IMAGE_MODES: list[tuple[str, str]] = [
    ("sketch", ""),
    ("inpaint", "mask={mask}"),
    ("inpaint", "image={alpha}"),
    ("inpaint-upload", "mask={mask} invert=true area=masked padding=8 fill=latent-noise"),
    ("inpaint-sketch", "sketch={sketch} mask_blur=0"),
]


async def run_image_mode(console: ConsoleRun, command: str, extra: str) -> Path:
    """Run one image mode through the console; the job must succeed. Returns its result file."""
    original = png(96, 64)
    paths = {
        "image": console.write("in.png", original),
        "mask": console.write("mask.png", mask_png(96, 64)),
        "alpha": console.write("alpha.png", transparent_png(96, 64)),
        "sketch": console.write("sketch.png", sketch_of(original)),
    }
    extra = extra.format(**paths)
    image_opt = "" if "image=" in extra else f"image={paths['image']}"
    lines = await console.run(f"{command} a hat {image_opt} {extra} size=96x64")
    [job] = job_ids(lines)
    assert states(lines, job)[-1] == "succeed", lines
    [out] = saved(lines, job)
    assert size_of(out.read_bytes()) == (96, 64)
    return out


def job_ids(lines: Sequence[str]) -> list[str]:
    return [
        line.split()[1] for line in lines if line.startswith("job ") and line.endswith(" accepted")
    ]


# -- A chat adapter that records --------------------------------------------------------------


@dataclass
class Posted:
    thread: Conversation
    id: str
    kind: str  # "status" | "result" | "text"
    payload: Any


@dataclass
class RecordingResponder:
    accepted_ids: list[str] = field(default_factory=list)
    replies: list[tuple[str, bool, int]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)

    async def accepted(self, job_id: str) -> None:
        self.accepted_ids.append(job_id)

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        self.replies.append((text, private, len(images)))

    async def refuse(self, message: str) -> None:
        self.refusals.append(message)


class RecordingAdapter:
    """A `ChatAdapter` for a chat-like platform that keeps everything the core posted."""

    def __init__(self, platform: Platform = DISCORD) -> None:
        self.platform = platform
        self.traits = PlatformTraits(attach_hint="attach it")
        self.files: dict[str, bytes] = {}
        self.posts: list[Posted] = []
        self.status_edits: dict[str, list[StatusView]] = {}
        self.deleted: list[str] = []
        self.fail_posts = 0  # the next N post_result calls raise ChatDeliveryError
        self._n = 0

    def _next(self) -> str:
        self._n += 1
        return f"m{self._n}"

    def attach(self, name: str, data: bytes, slot: str = "") -> AttachmentRef:
        url = f"https://cdn.example/{len(self.files)}/{name}"
        self.files[url] = data
        return AttachmentRef(name, url, len(data), "image/png", slot)

    async def download(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        data = self.files.get(ref.url)
        if data is None:
            raise ImageInputError(f"{ref.name} could not be downloaded")
        if len(data) > max_bytes:
            raise ImageInputError(f"{ref.name} is over the size limit")
        return data

    async def open_job_thread(
        self, where: Conversation, status: StatusView, *, again: bool = False
    ) -> PostedStatus:
        if again:  # as the real adapters do: an earlier post of this job's status is found
            for post in self.posts:
                if post.kind == "status" and post.payload.job_id == status.job_id:
                    return PostedStatus(post.thread, post.id)
        message = self._next()
        thread = where if where.thread else Conversation(where.channel, message)
        self.posts.append(Posted(thread, message, "status", status))
        self.status_edits[message] = [status]
        return PostedStatus(thread, message)

    async def edit_status(self, thread: Conversation, message: str, status: StatusView) -> None:
        self.status_edits[message].append(status)

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        if self.fail_posts:
            self.fail_posts -= 1
            raise ChatDeliveryError("fake 503")
        message = self._next()
        self.posts.append(Posted(thread, message, "result", result))
        return [message]

    async def post_text(self, thread: Conversation, text: str) -> str:
        message = self._next()
        self.posts.append(Posted(thread, message, "text", text))
        return message

    async def find_marker(self, thread: Conversation, marker: str) -> Sequence[str]:
        return [
            p.id
            for p in self.posts
            if p.kind == "result" and p.thread == thread and marker in p.payload.text
        ]

    async def delete_messages(self, thread: Conversation, messages: Sequence[str]) -> None:
        self.deleted.extend(messages)

    def results(self) -> list[ResultView]:
        return [p.payload for p in self.posts if p.kind == "result"]

    def result_in(self, thread: Conversation) -> list[ResultView]:
        return [p.payload for p in self.posts if p.kind == "result" and p.thread == thread]


def chat_caller(
    user: str = "u1",
    *,
    server: str = "g1",
    channel: str = "c1",
    thread: str | None = None,
    admin: bool = False,
    platform: Platform = DISCORD,
) -> Caller:
    return Caller(
        platform, server, user, Conversation(channel, thread), is_admin=admin, user_name=user
    )


def in_thread(caller: Caller, thread: Conversation) -> Caller:
    return replace(caller, conversation=thread)


async def stored(app: BotApp, job: Job | None) -> Job:
    """`job` as the store holds it now; the test fails when it was refused or is gone."""
    assert job is not None, "the command made no job"
    found = await app.store.get(job.id)
    assert found is not None, f"job {job.id} is not stored"
    return found


class ScriptedBackend(LocalBackend):
    """The local backend with a scripted outcome for every job, for failure and timeout paths.

    `outcome`: "run" (normal), "stuck" (never leaves created), "hang" (inprogress forever),
    "fail" (failed with a reason), "fail-silent" (failed without one), "empty" (succeeds with no
    images). `cold` reports a cold start while the job is queued.
    """

    def __init__(self, outcome: str = "run", *, cold: bool = False, delay: float = 0.05) -> None:
        super().__init__(LocalBackendConfig(delay=delay))
        self.outcome = outcome
        self.cold = cold
        self.cancelled: list[str] = []

    async def statuses(self, targets: Sequence[Any]) -> dict[str, Any]:
        from bot.model import BackendStatus, JobState

        real = await super().statuses(targets)
        scripted = {}
        for backend_id, status in real.items():
            state = status.state
            if self.outcome == "stuck":
                state = JobState.CREATED
            elif self.outcome == "hang" and state.terminal:
                state = JobState.INPROGRESS
            elif self.outcome.startswith("fail") and state is JobState.SUCCEED:
                reason = "CUDA out of memory" if self.outcome == "fail" else None
                scripted[backend_id] = BackendStatus(backend_id, JobState.FAILED, reason)
                continue
            cold = self.cold and state is JobState.CREATED
            scripted[backend_id] = BackendStatus(backend_id, state, status.reason, cold)
        return scripted

    async def results(self, backend_id: str) -> Any:
        from bot.model import JobOutput

        if self.outcome == "empty":
            return JobOutput()
        return await super().results(backend_id)

    async def cancel(self, backend_id: str) -> None:
        self.cancelled.append(backend_id)
        await super().cancel(backend_id)
