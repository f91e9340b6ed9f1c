"""The admin page over HTTP: off without a token, authentication, security headers, escaping
in the HTML itself, filter validation, and "cancel job" through the dispatcher's cancel."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import pytest
from scenario_kit import (
    RecordingAdapter,
    RecordingResponder,
    ScriptedBackend,
    chat_caller,
    fast_config,
    make_app,
    png,
)

from adapters.web.admin import AdminPage
from adapters.web.metrics import Metrics
from adapters.web.server import Readiness, WebServer
from bot.errors import ConfigError
from bot.model import JobState
from commands import build
from tests.web.admin_demo import BREAKOUT_PROMPT, SCRIPT_PROMPT, TOKEN, running_demo

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def test_admin_is_off_without_a_token_and_short_tokens_are_refused(tmp_path: Path) -> None:
    metrics = Metrics()
    app = make_app(fast_config(tmp_path))
    web = WebServer(metrics, Readiness(app.store, app.backend, metrics))
    port = await web.serve("127.0.0.1", 0)
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/admin", headers=BEARER) as response,
        ):
            assert response.status == 404
    finally:
        await web.aclose()
    with pytest.raises(ConfigError, match="at least 16 characters"):
        AdminPage(app, app.store, "short")


async def test_authentication_headers_and_escaping(tmp_path: Path) -> None:
    async with running_demo(tmp_path) as demo, aiohttp.ClientSession() as http:
        admin = f"{demo.url}/admin"
        async with http.get(admin, allow_redirects=False) as response:
            assert response.status == 303 and response.headers["Location"] == "/admin/login"
        for wrong in ("Bearer nope", f"Bearer {TOKEN}x", "Basic abc"):
            async with http.get(admin, headers={"Authorization": wrong}) as response:
                assert response.status == 401
        thumb = f"{admin}/jobs/{demo.script_job}/thumb"
        async with http.get(thumb, allow_redirects=False) as response:
            assert response.status == 303  # images need a session too
        async with http.get(thumb, headers=BEARER) as response:
            assert response.status == 200 and response.content_type == "image/png"
        async with http.post(f"{admin}/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
            assert "Path=/admin" in cookie and TOKEN not in cookie
        async with http.get(admin, headers=BEARER) as response:
            assert response.status == 200
            html = await response.text()
            csp = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp
            assert response.headers["Cache-Control"] == "no-store"
        # Hostile prompts are escaped in the markup itself, not only harmless in a browser.
        assert SCRIPT_PROMPT not in html and "<script" not in html
        assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt; a cat" in html
        assert 'onerror="' not in html
        assert "&#34;&gt;&lt;img src=x onerror=&#34;window.__pwned=2&#34;&gt;" in html
        assert BREAKOUT_PROMPT not in html
        # A hostile filter value comes back escaped in the form.
        async with http.get(
            admin, params={"user": '"><script>alert(1)</script>'}, headers=BEARER
        ) as response:
            page = await response.text()
            assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
        # Bad filters: a message, and the page still renders.
        for params, message in (
            ({"state": "exploded"}, "state must be one of"),
            ({"since": "yesterday"}, "since must be a date"),
            ({"command": "rm -rf"}, "command must be one of"),
            ({"user": "x" * 500}, "longer than 200"),
        ):
            async with http.get(admin, params=params, headers=BEARER) as response:
                assert response.status == 200
                assert message in await response.text()
        async with http.get(f"{admin}/jobs/nosuchjob", headers=BEARER) as response:
            assert response.status == 404


async def test_cancel_goes_through_the_chat_cancel(tmp_path: Path) -> None:
    config = fast_config(tmp_path)
    app = make_app(config, ScriptedBackend("hang"))
    adapter = RecordingAdapter()
    app.add_adapter(adapter)
    metrics = Metrics()
    web = WebServer(
        metrics,
        Readiness(app.store, app.backend, metrics),
        AdminPage(app, app.store, TOKEN).routes(),
    )
    async with app:
        job = await app.dispatcher.handle_command(
            chat_caller("U9"),
            build("img2img", {"prompt": "a slow one"}),
            [adapter.attach("a.png", png())],
            RecordingResponder(),
        )
        assert job is not None
        await app.store.heartbeat("replica-7", stale_writes=2)
        port = await web.serve("127.0.0.1", 0)
        try:
            base = f"http://127.0.0.1:{port}/admin/jobs/{job.id}"
            async with aiohttp.ClientSession(headers=BEARER) as http:
                # The store card: the engine, its schema version and the replicas seen lately.
                async with http.get(f"http://127.0.0.1:{port}/admin") as response:
                    page = await response.text()
                    assert f"{app.store.describe}, schema version " in page
                    assert re.search(r"<td>replica-7</td><td>[\d.]+ s ago</td>", page), page
                    assert '<td class="num warn">2</td>' in page
                async with http.get(base) as response:
                    page = await response.text()
                    assert "Cancel job" in page
                    [csrf] = re.findall(r'name="csrf" value="([0-9a-f]{64})"', page)[:1]
                async with http.post(f"{base}/cancel", data={"csrf": "0" * 64}) as response:
                    assert response.status == 403  # a forged form
                async with http.post(f"{base}/cancel", data={"csrf": csrf}) as response:
                    assert response.status == 200
                    page = await response.text()
                    assert f"job `{job.id}` cancelled" in page
                    assert "Cancel job" not in page
                stored = await app.store.get(job.id)
                assert stored is not None and stored.state is JobState.CANCELLED
                # Again: the chat path's own refusal comes back.
                async with http.post(f"{base}/cancel", data={"csrf": csrf}) as response:
                    [flash] = re.findall(r'<p class="flash"[^>]*>(.*?)</p>', await response.text())
                    assert job.id in flash and "already" in flash, flash
        finally:
            await web.aclose()


def test_thumbnails_are_small_and_refuse_pixel_bombs() -> None:
    import io

    from PIL import Image

    from adapters.web.admin import thumbnail

    with Image.open(io.BytesIO(thumbnail(png(960, 640)))) as small:
        assert small.size == (160, 107)
    # 8000 × 8000 black pixels compress to a few kilobytes; decoding them would take 64 MB.
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, "PNG")
    assert len(buf.getvalue()) < 200_000
    with Image.open(io.BytesIO(thumbnail(buf.getvalue()))) as grey:
        assert grey.size == (160, 160) and grey.getpixel((0, 0)) == (200, 200, 200, 255)
    with Image.open(io.BytesIO(thumbnail(b"not an image", 64))) as grey:
        assert grey.size == (64, 64)
