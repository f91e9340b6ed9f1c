"""The admin page in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser). Sign in, filter, open a job, see its thumbnail, and hostile prompts stay text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.web.admin_demo import (
    BREAKOUT_PROMPT,
    BROWSER_FLAGS,
    CHROMIUM,
    SCRIPT_PROMPT,
    TOKEN,
    running_demo,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from playwright.async_api import Browser, Page

if not Path(CHROMIUM).exists():
    # CI installs chromium (.ci/run); there, a missing browser is a failure, not a skip.
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{CHROMIUM} is missing; .ci/run installs Debian's chromium")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            yield launched
        finally:
            await launched.close()


async def loaded(page: Page, selector: str) -> bool:
    """Whether every image matching `selector` loads, with real pixels."""
    await page.wait_for_load_state("load")
    return bool(
        await page.eval_on_selector_all(
            selector,
            "imgs => imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)",
        )
    )


async def no_injection(page: Page) -> None:
    assert await page.evaluate("() => document.querySelectorAll('script').length") == 0
    assert (
        await page.evaluate("() => document.querySelectorAll('[onerror],[onmouseover]').length")
        == 0
    )
    assert await page.evaluate("() => window.__pwned === undefined")


async def test_sign_in_filter_open_a_job_and_hostile_prompts_stay_text(
    browser: Browser, tmp_path: Path
) -> None:
    async with running_demo(tmp_path) as demo:
        page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.goto(f"{demo.url}/admin")
        assert page.url.endswith("/admin/login")  # no session yet
        await page.fill("#token", "wrong-token-wrong-token")
        await page.click("button[type=submit]")
        assert "that token is not right" in await page.inner_text("main")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        assert page.url.endswith("/admin")
        cookies = await page.context.cookies()
        [session] = [c for c in cookies if c["name"] == "sdbot_admin"]
        assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
        assert TOKEN not in session["value"]

        # The list: every job with a thumbnail; the hostile prompts as plain text.
        assert await loaded(page, "ul.jobs img")
        prompts = await page.locator(".job .prompt").all_inner_texts()
        assert SCRIPT_PROMPT in prompts and BREAKOUT_PROMPT in prompts
        await no_injection(page)
        # The chart and the summaries are there.
        assert await page.locator("svg.chart rect.bar-jobs").count() == 14
        assert "CUDA out of memory" in await page.inner_text("main")

        # Filter: failed jobs only.
        await page.select_option("select[name=state]", "failed")
        await page.click("#filters button[type=submit]")
        assert "state=failed" in page.url
        states = await page.locator(".job .badge").all_inner_texts()
        assert states and set(states) == {"failed"}
        assert demo.failed_job in await page.inner_text("ul.jobs")
        # Filter by user, then by a date range that holds nothing.
        await page.select_option("select[name=state]", "")
        await page.fill("input[name=user]", "U02")
        await page.click("#filters button[type=submit]")
        ids = await page.locator(".job .id").all_inner_texts()
        assert demo.breakout_job in ids and demo.script_job not in ids
        await page.fill("input[name=since]", "2001-01-01")
        await page.fill("input[name=until]", "2001-01-02")
        await page.click("#filters button[type=submit]")
        assert await page.locator(".job").count() == 0
        assert "No jobs match." in await page.inner_text("main")

        # Open the <script> job: its prompt is text, its images load.
        await page.goto(f"{demo.url}/admin")
        await page.click(f"a.id:text('{demo.script_job}')")
        assert page.url.endswith(f"/admin/jobs/{demo.script_job}")
        assert await page.inner_text("#prompt") == SCRIPT_PROMPT
        assert await loaded(page, ".images img")
        assert "strength" in await page.inner_text("main")  # the parameters
        await no_injection(page)
        # And the breakout one.
        await page.goto(f"{demo.url}/admin/jobs/{demo.breakout_job}")
        assert await page.inner_text("#prompt") == BREAKOUT_PROMPT
        await no_injection(page)
        # The failed job shows its reason.
        await page.goto(f"{demo.url}/admin/jobs/{demo.failed_job}")
        assert "not an image" in (
            await page.inner_text("#reason")
        ).lower() or await page.inner_text("#reason")
        assert dialogs == []

        # Signing out ends the session.
        await page.click("header button")
        assert page.url.endswith("/admin/login")
        await page.goto(f"{demo.url}/admin")
        assert page.url.endswith("/admin/login")
