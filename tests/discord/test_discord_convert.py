"""The adapter's pure conversions: batching, text splitting, markers, URLs, modal payloads."""

from __future__ import annotations

import io
import random

from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image

from adapters.discord.convert import (
    DISCORD_CDN_ORIGINS,
    allowed_url,
    chunk_text,
    grammar_quote,
    is_result_message,
    modal_values,
    plan_batches,
    result_marker,
    shrink_image,
    status_channel,
    strip_bot_mention,
)
from adapters.discord.interactions import form_text
from bot.model import Conversation
from commands import parse
from commands.prompt import clean, networks


def test_batches_respect_file_count_and_bytes_and_keep_order() -> None:
    assert plan_batches([5] * 12, max_files=10, max_bytes=100) == [list(range(10)), [10, 11]]
    assert plan_batches([60, 50, 40, 10], max_files=10, max_bytes=100) == [[0], [1, 2, 3]]
    assert plan_batches([100, 100], max_files=10, max_bytes=100) == [[0], [1]]
    assert plan_batches([], max_files=10, max_bytes=100) == []


@given(st.lists(st.integers(1, 100), max_size=40), st.integers(1, 10))
def test_batches_never_exceed_the_limits(sizes: list[int], max_files: int) -> None:
    batches = plan_batches(sizes, max_files=max_files, max_bytes=100)
    assert [i for batch in batches for i in batch] == list(range(len(sizes)))
    for batch in batches:
        assert 1 <= len(batch) <= max_files and sum(sizes[i] for i in batch) <= 100


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=5000))
def test_chunks_fit_a_message_and_lose_nothing(text: str) -> None:
    chunks = chunk_text(text, 2000)
    assert all(len(c) <= 2000 for c in chunks)
    assert "".join(chunks).replace("\n", "") == text.replace("\n", "")


def test_result_markers_are_not_status_lines() -> None:
    assert result_marker("abc", "result", 1, 2) == "job `abc` · result (1/2)"
    assert is_result_message(result_marker("abc", "failed"), "abc")
    assert not is_result_message("img2img `abc` — succeed (done)", "abc")
    assert not is_result_message(result_marker("abcd", "result"), "abc")


def test_status_message_channel() -> None:
    started = Conversation("7000", "555")  # thread started from status message 555
    assert status_channel(started, "555") == "7000"
    assert status_channel(started, "556") == "555"  # a status posted inside the thread
    assert status_channel(Conversation("8000"), "1") == "8000"  # DM or channel without thread


def test_only_discord_cdn_urls_are_allowed() -> None:
    allowed = DISCORD_CDN_ORIGINS
    assert allowed_url("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1&hm=2", allowed)
    assert allowed_url("https://media.discordapp.net:443/attachments/1/2/a.png", allowed)
    for url in (
        "http://cdn.discordapp.com/a.png",
        "https://cdn.discordapp.com.evil.example/a.png",
        "https://user@cdn.discordapp.com/a.png",
        "https://evil.example/https://cdn.discordapp.com/a.png",
        "file:///etc/passwd",
        "not a url",
    ):
        assert not allowed_url(url, allowed), url


@given(st.text(max_size=300))
def test_quoted_form_fields_read_back_exactly(text: str) -> None:
    try:
        networks(clean(text))
    except ValueError:
        assume(False)  # a LoRA reference with a bad weight (`<lora:x:>`) is refused, rightly
    parsed = parse(f"img2img prompt={grammar_quote(text)}")
    assert parsed.options["prompt"] == clean(text)  # hidden control characters are dropped


def test_form_text_combines_fields_and_options() -> None:
    text = form_text({"prompt": "“a” \\ b", "seed": "3", "negative": " ", "options": "steps=4"})
    parsed = parse(text)
    assert dict(parsed.options) == {"prompt": "“a” \\ b", "seed": 3, "steps": 4}


def test_modal_values_from_rows_and_labels() -> None:
    components = [
        {"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": "a"}]},
        {"type": 18, "component": {"type": 4, "custom_id": "seed", "value": "5"}},
        {"type": 10, "content": "no input here"},
    ]
    assert modal_values(components) == {"prompt": "a", "seed": "5"}


def test_bot_mention_removed_other_mentions_kept() -> None:
    assert strip_bot_mention("<@1000> steps=3 <@42>", 1000) == "steps=3 <@42>"
    assert strip_bot_mention("<@!1000>+ more", 1000) == "+ more"


def test_shrinking_an_image_to_a_limit() -> None:
    rng = random.Random(5)
    image = Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    smaller = shrink_image(data, len(data) // 2)
    assert smaller is not None and len(smaller.data) <= len(data) // 2
    # Noise does not compress losslessly: the first lossy step that fits, said so.
    assert Image.open(io.BytesIO(smaller.data)).format == "WEBP"
    assert smaller.extension == "webp" and smaller.how == "re-encoded as WebP (quality 95)"
    assert shrink_image(data, 10) is None
    assert shrink_image(b"not an image", 1000) is None
