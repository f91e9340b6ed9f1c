"""The console adapter: the embedded default, for trying the bot on one machine (SPEC §5).

Commands are read from stdin, one per line; piped input runs the lines in order (jobs run
concurrently, as in chat) and returns once every job is terminal and delivered. Output on
stdout is one fact per line, for people and scripts alike:

    job <id> accepted
    job <id> <state> [detail]      on each state change
    preview <id> <path>            once, when a running job first has a live preview
                                   (<output_dir>/<job-id>.preview.png, rewritten as the
                                   preview changes and removed when the job ends)
    saved <path>                   for each result image (<output_dir>/<job-id>/<n>.png)
    caption <id>: <text>
    error: <message>               for refusals

`reply <id|last> <text>` re-generates a job as a thread reply would. The console user is the
local operator and an admin. Image paths are given as `image=PATH`, `mask=PATH`, `sketch=PATH`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import stat
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from bot.config import Section
from bot.errors import ImageInputError
from bot.model import AttachmentRef, Caller, Conversation, JobState, Platform
from bot.ports import PlatformTraits, PostedStatus
from bot.recent import Recent
from bot.render import byte_size

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

    from bot.dispatcher import Dispatcher
    from bot.views import ResultImage, ResultView, StatusView

CONSOLE_CHANNEL = "console"


class ConsoleSettings(Section):
    """The console's settings section."""

    output_dir: Path = Path("sdbot-output")  # result images go to <output_dir>/<job-id>/


CONSOLE = Platform("console")
# The operator's own terminal: files are paths on this machine, no allow-lists or user limits.
CONSOLE_TRAITS = PlatformTraits(
    attach_hint="give it as `{slot}=PATH`", local_files=True, operator=True
)


class ConsoleResponder:
    """Answers one console line."""

    def __init__(self, adapter: ConsoleAdapter) -> None:
        self._adapter = adapter

    async def accepted(self, job_id: str) -> None:
        self._adapter.last_job = job_id
        self._adapter.emit(f"job {job_id} accepted")

    async def reply(
        self, text: str, *, private: bool = False, images: Sequence[ResultImage] = ()
    ) -> None:
        self._adapter.emit(text)
        for image in images:
            self._adapter.emit(f"saved {self._adapter.save(image)}")

    async def refuse(self, message: str) -> None:
        self._adapter.emit("error: " + " ".join(message.split()))


class ConsoleAdapter:
    """`bot.ports.ChatAdapter` for the console."""

    platform = CONSOLE
    traits = CONSOLE_TRAITS

    def __init__(self, output_dir: Path, out: TextIO | None = None) -> None:
        self._output_dir = output_dir
        self._out = out or sys.stdout
        # The last state printed of recent jobs: an edit that changes nothing prints no line.
        self._shown: Recent[str, JobState] = Recent(1000)
        # Jobs whose preview file was announced, until they end.
        self._previews: set[str] = set()
        self.last_job: str | None = None
        self.caller = Caller(
            CONSOLE,
            "local",
            "operator",
            Conversation(CONSOLE_CHANNEL),
            is_admin=True,
            user_name="operator",
        )

    def emit(self, line: str) -> None:
        print(line, file=self._out, flush=True)

    def save(self, image: ResultImage) -> Path:
        job_id = image.name.rsplit("-", 1)[0]  # `<job id>-<n>.png`; a backend's id has dashes
        folder = self._output_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / image.name
        path.write_bytes(image.data)
        return path

    # -- ChatAdapter -----------------------------------------------------------------------

    async def download(self, ref: AttachmentRef, max_bytes: int) -> bytes:
        try:
            return await asyncio.to_thread(self._read, ref, max_bytes)
        except FileNotFoundError:
            raise ImageInputError(f"no such file: {ref.url}") from None
        except IsADirectoryError:
            raise ImageInputError(f"{ref.url} is a folder, not an image file") from None
        except PermissionError:
            raise ImageInputError(f"cannot read {ref.url}: permission denied") from None

    @staticmethod
    def _read(ref: AttachmentRef, max_bytes: int) -> bytes:
        path = Path(ref.url).expanduser()
        # Opened without blocking and checked on the open file: a FIFO (or a device) named as
        # an image would otherwise block the read until something writes to it, forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(info.st_mode):
                raise ImageInputError(f"{ref.url} is not a regular file; give an image file")
            if info.st_size > max_bytes:
                raise ImageInputError(
                    f"{ref.name} is {byte_size(info.st_size)}; the limit is {byte_size(max_bytes)}"
                )
            return fh.read(max_bytes + 1)

    async def open_job_thread(
        self, where: Conversation, status: StatusView, *, again: bool = False
    ) -> PostedStatus:
        thread = where if where.thread is not None else Conversation(where.channel, status.job_id)
        self._show(status)
        return PostedStatus(thread, f"status-{status.job_id}")

    async def edit_status(self, thread: Conversation, message: str, status: StatusView) -> None:
        self._show(status)
        path = self._output_dir / f"{status.job_id}.preview.png"
        if status.preview is not None:
            await asyncio.to_thread(_replace_file, path, status.preview)
            if status.job_id not in self._previews:
                self._previews.add(status.job_id)
                self.emit(f"preview {status.job_id} {path}")
        elif status.state.terminal and status.job_id in self._previews:
            self._previews.discard(status.job_id)
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def _show(self, status: StatusView) -> None:
        if self._shown.get(status.job_id) is status.state:
            return
        self._shown[status.job_id] = status.state
        line = f"job {status.job_id} {status.state.value}"
        if status.detail:
            line += " — " + " ".join(status.detail.split())
        self.emit(line)

    async def post_result(self, thread: Conversation, result: ResultView) -> Sequence[str]:
        paths = await asyncio.to_thread(self._save_result, result)
        for path in paths:
            if path.suffix == ".png":
                self.emit(f"saved {path}")
        if result.caption is not None:
            self.emit(f"caption {result.job_id}: {' '.join(result.caption.split())}")
        return [str(p) for p in paths]

    def _save_result(self, result: ResultView) -> list[Path]:
        """Write a result's files all at once: into a scratch folder renamed into place, so a
        crash leaves either the whole result (found by `find_marker`) or nothing."""
        final = self._output_dir / result.job_id
        scratch = self._output_dir / f".{result.job_id}.partial"
        scratch.mkdir(parents=True, exist_ok=True)
        names = [image.name for image in result.images]
        for image in result.images:
            (scratch / image.name).write_bytes(image.data)
        if result.caption is not None:
            names.append("caption.txt")
            (scratch / "caption.txt").write_text(result.caption + "\n")
        final.mkdir(parents=True, exist_ok=True)
        for name in names:
            (scratch / name).replace(final / name)
        scratch.rmdir()
        return [final / name for name in names]

    async def post_text(self, thread: Conversation, text: str) -> str:
        self.emit(text)
        return f"text-{thread.thread}"

    async def find_marker(self, thread: Conversation, marker: str) -> Sequence[str]:
        # Images saved by an earlier run are the console's "messages" of that job.
        folder = self._output_dir / marker
        return await asyncio.to_thread(
            lambda: sorted(str(p) for p in folder.glob("*") if p.suffix in (".png", ".txt"))
        )

    async def delete_messages(self, thread: Conversation, messages: Sequence[str]) -> None:
        paths = [Path(m) for m in messages]
        doomed = [
            p for p in paths if p.suffix in (".png", ".txt") and p.is_relative_to(self._output_dir)
        ]
        for path in doomed:
            await asyncio.to_thread(path.unlink, missing_ok=True)

    # -- input -----------------------------------------------------------------------------

    async def handle_line(self, dispatcher: Dispatcher, line: str) -> None:
        """Run one console line: a command or `reply <id|last> <text>`."""
        text = line.strip()
        if not text or text.startswith("#"):
            return
        responder = ConsoleResponder(self)
        head, _, rest = text.partition(" ")
        if head.lower() == "reply":
            target, _, body = rest.strip().partition(" ")
            if not target:
                await responder.refuse("usage: reply <job id|last> <text or options>")
                return
            if target.lower() == "last":
                if self.last_job is None:
                    await responder.refuse("no job yet to reply to")
                    return
                target = self.last_job
            await dispatcher.handle_reply(self.caller, body, [], responder, base_job=target)
            return
        await dispatcher.handle_text(self.caller, text, [], responder)


def _replace_file(path: Path, data: bytes) -> None:
    """Write `path` whole: a viewer reading it never sees half a picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.partial")
    scratch.write_bytes(data)
    scratch.replace(path)


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin, read by a daemon thread one at a time: when the bot stops on its own
    (its data folder lost), the thread is not waited for, where `asyncio.to_thread`'s worker
    would keep the process alive until someone typed a line or closed stdin."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str] = asyncio.Queue(maxsize=1)

    def read() -> None:
        for line in iter(sys.stdin.readline, ""):
            try:
                asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the loop has stopped
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(lines.put(""), loop)

    threading.Thread(target=read, name="sdbot-stdin", daemon=True).start()
    while line := await lines.get():
        yield line


async def run_console(
    adapter: ConsoleAdapter,
    dispatcher: Dispatcher,
    idle: Callable[[], Awaitable[None]],
    lines: AsyncIterator[str] | None = None,
) -> None:
    """Feed lines (stdin's by default) to the dispatcher in order, then wait until every job
    is delivered (`idle`: the runner's `wait_idle`)."""
    async for line in lines if lines is not None else _stdin_lines():
        await adapter.handle_line(dispatcher, line)
    await idle()
