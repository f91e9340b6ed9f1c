"""The bad-input corpus (issue 3): hostile and broken requests through the real console.

Every case gets its own specific message, nothing reaches the backend, and the bot keeps
serving: after the whole corpus, a good job still runs.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from scenario_kit import ConsoleRun, chat_caller, job_ids, mask_png, png, transparent_png

from bot.app import BotApp


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge picture (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _black(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, "PNG")
    return buf.getvalue()


def tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "TIFF")
    return buf.getvalue()


def noise_png(size: int) -> bytes:
    """An incompressible PNG of about size*size*3 bytes."""
    import random

    rng = random.Random(1)
    image = Image.frombytes(
        "RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3))
    )
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=0)
    return buf.getvalue()


FILES = {
    "ok.png": png(96, 64),
    "bomb.png": png_header_only(30000, 30000),
    "hundred-mp.png": png_header_only(10000, 10000),
    "zero.png": b"",
    "login.png": b"<!DOCTYPE html><html><body>Sign in</body></html>",
    "truncated.png": png(96, 64)[:120],
    "notes.png": b"just some text, not a picture\n" * 10,
    "scan.tif": tiff(),
    "huge.png": noise_png(300),  # ~270 kB, over the 200 kB cap set below
    "black-mask.png": _black(96, 64),
    "mask.png": mask_png(96, 64),
    "alpha.png": transparent_png(96, 64),
}

# (command line, where the answer shows, a fragment of the specific message)
CORPUS: list[tuple[str, str, str]] = [
    ("img2img x image=bomb.png", "error", "bomb.png"),
    ("img2img x image=hundred-mp.png", "error", "hundred-mp.png"),
    ("img2img x image=zero.png", "error", "zero.png is empty"),
    ("img2img x image=login.png", "error", "login.png is not an image"),
    ("img2img x image=truncated.png", "error", "truncated.png"),
    ("img2img x image=notes.png", "error", "notes.png is not an image"),
    ("img2img x image=scan.tif", "error", "scan.tif is not an image"),
    ("img2img x image=huge.png", "error", "the limit is 200 kB"),
    ("img2img x image=missing.png", "error", "no such file"),
    ("img2img x image=.", "error", "is a folder"),
    ("inpaint x image=ok.png", "error", "attach a mask"),
    ("inpaint x image=ok.png mask=black-mask.png", "error", "the mask is empty"),
    ("inpaint x image=ok.png mask=login.png", "error", "login.png is not an image"),
    ("inpaint-sketch x image=ok.png sketch=ok.png", "error", "does not differ"),
    ("inpaint-upload x image=ok.png", "error", "needs mask"),
    ("inpaint-sketch x image=ok.png", "error", "needs sketch"),
    ("img2img x", "error", "needs image"),
    ("imgtoimg x image=ok.png", "error", "did you mean `img2img`"),
    ("img2img x image=ok.png strenght=0.5", "error", "did you mean `strength`"),
    ("img2img x image=ok.png steps=10 steps=20", "error", "given twice"),
    ("img2img x image=ok.png steps=500", "error", "between 1 and 150"),
    ("img2img x image=ok.png strength=1.5", "error", "between 0 and 1"),
    ("img2img x image=ok.png size=big", "error", "`size`"),
    ("img2img x image=ok.png size=100x100", "error", "multiple of 8"),
    ("img2img x image=ok.png size=512x512 width=512", "error", "not both"),
    ("img2img x image=ok.png sampler=Eulr", "error", "did you mean"),
    ("img2img x image=ok.png model=nope.safetensors", "error", "unknown model `nope.safetensors`"),
    ("img2img x image=ok.png endpoint=gpu-1", "error", "unknown endpoint `gpu-1`"),
    ("img2img x image=ok.png vae=nope.pt", "error", "unknown VAE `nope.pt`"),
    ("img2img x image=ok.png size=2048x2048", "error", "over the cap of 1024"),
    ("img2img " + "a" * 2001 + " image=ok.png", "error", "the limit is 2000"),
    ("img2img x image=ok.png sketch=ok.png", "error", "sketch"),
    ("inpaint x image=alpha.png invert=maybe", "error", "must be true or false"),
    ('img2img "unclosed image=ok.png', "error", "unclosed quote"),
    ("img2img x image=ok.png count=9", "error", "between 1 and 4"),
    ("img2img x image=ok.png input=result", "error", "reply"),
    ("jobs since=yesterdayish", "error", "since"),
    ("job ab", "error", "4"),
    ("interrogate image=ok.png method=blip", "error", "did you mean"),
    ("interrogate image=login.png", "error", "login.png is not an image"),
]


def _answers(lines: list[str]) -> list[str]:
    """One answer per command line, in order: its `error:` line or its job's outcome."""
    outcome: dict[str, str] = {}
    for line in lines:
        parts = line.split(" ", 2)
        if (
            line.startswith("job ")
            and len(parts) == 3
            and parts[2].startswith(("failed", "succeed"))
        ):
            outcome[parts[1]] = parts[2]
    answers = []
    for line in lines:
        if line.startswith("error: "):
            answers.append(line)
        elif line.endswith(" accepted"):
            answers.append(outcome.get(line.split()[1], "no outcome"))
    return answers


async def test_the_corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(CORPUS) >= 30
    monkeypatch.chdir(tmp_path)
    async with ConsoleRun(tmp_path, max_bytes=200_000) as console:
        for name, data in FILES.items():
            console.write(name, data)
        lines = await console.run(*(line for line, _, _ in CORPUS))
        answers = _answers(lines)
        assert len(answers) == len(CORPUS), lines
        for (line, where, fragment), answer in zip(CORPUS, answers, strict=True):
            expected_start = "error: " if where == "error" else "failed"
            assert answer.startswith(expected_start), (line, answer)
            assert fragment in answer, (line, answer)
        # Nothing reached the backend, and the bot still serves.
        assert await _backend_jobs(console.app) == 0
        good = await console.run("img2img fine image=ok.png", "inpaint fine image=alpha.png")
        assert len(job_ids(good)) == 2
        assert sum(line.startswith("saved ") for line in good) == 2


async def _backend_jobs(app: BotApp) -> int:
    total = 0
    for task in ("img2img", "interrogate_clip", "interrogate_deepbooru"):
        total += len(await app.backend.history(task, 1000))
    return total


async def test_path_keys_are_refused_outside_the_console(tmp_path: Path) -> None:
    from scenario_kit import RecordingAdapter, RecordingResponder, fast_config, make_app

    app = make_app(fast_config(tmp_path))
    app.add_adapter(RecordingAdapter())
    async with app:
        r = RecordingResponder()
        await app.dispatcher.handle_text(chat_caller(), "img2img x image=/etc/passwd", [], r)
        assert "only work in the console" in r.refusals[0]
        assert r.accepted_ids == []
