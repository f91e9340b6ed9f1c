"""Downloads of users' files: only from Slack's file hosts, with the bot token, size-capped
before and during the download, and never mistaking Slack's sign-in page for an image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scenario_kit import png

from bot.model import JobState

if TYPE_CHECKING:
    from bot.model import Job
    from tests.slack.conftest import MakeRig, SlackRig


async def _run(rig: SlackRig, file: dict[str, Any]) -> Job:
    await rig.post("<@UBOT> img2img a cat", files=[file])
    await rig.settle()
    [job] = await rig.jobs()
    return job


async def test_an_html_page_instead_of_the_image_fails_the_job_clearly(any_rig: SlackRig) -> None:
    rig = any_rig
    file = rig.fake.add_file("cat.png", png())
    rig.fake.serve_html_for(file)
    job = await _run(rig, file)
    assert job.state is JobState.FAILED and job.backend_id is None
    assert job.error is not None
    assert "cat.png" in job.error and "web page" in job.error and "files:read" in job.error
    status = rig.status_of(job.id)
    assert "failed" in status.updates[-1][0] and "cat.png" in status.updates[-1][0]
    assert "xoxb" not in job.error


async def test_an_html_page_served_as_an_image_is_recognised(rig: SlackRig) -> None:
    page = b"  <!DOCTYPE html><html><body>Sign in to Slack</body></html>"
    job = await _run(rig, rig.fake.add_file("cat.png", page, mimetype="image/png"))
    assert job.state is JobState.FAILED and job.error is not None
    assert "web page" in job.error


async def test_files_on_foreign_hosts_are_refused_without_a_request(rig: SlackRig) -> None:
    evil = rig.fake.add_file("cat.png", png())
    evil["url_private_download"] = "https://evil.example/files-pri/T1-F1/cat.png"
    job = await _run(rig, evil)
    assert job.state is JobState.FAILED and job.error is not None
    assert "cat.png is not on Slack's file servers" in job.error
    # The same server under another name is another origin: no token goes there either.
    other = rig.fake.add_file("dog.png", png())
    other["url_private_download"] = other["url_private"].replace("127.0.0.1", "localhost")
    await rig.post("<@UBOT> img2img a dog", files=[other])
    await rig.settle()
    assert all(j.state is JobState.FAILED for j in await rig.jobs())
    assert rig.fake.file_requests == []


async def test_redirects_are_followed_only_to_allowed_hosts(rig: SlackRig) -> None:
    good = rig.fake.add_file("cat.png", png())
    moved = rig.fake.add_file("moved.png", png())
    path = good["url_private"].removeprefix(rig.fake.base)
    rig.fake.redirects[path] = moved["url_private"]
    good["url_private_download"] = good["url_private"]
    job = await _run(rig, good)
    assert job.state is JobState.SUCCEED, job.error
    bad = rig.fake.add_file("bad.png", png())
    bad_path = bad["url_private"].removeprefix(rig.fake.base)
    rig.fake.redirects[bad_path] = "https://evil.example/steal"
    bad["url_private_download"] = bad["url_private"]
    await rig.post("<@UBOT> img2img again", files=[bad])
    await rig.settle()
    second = (await rig.jobs())[-1]
    assert second.state is JobState.FAILED and second.error is not None
    assert "bad.png is not on Slack's file servers" in second.error


async def test_size_is_checked_before_and_during_the_download(make_rig: MakeRig) -> None:
    async with make_rig("http", max_bytes=3000) as rig:
        big = png() + bytes(5000)  # trailing bytes: the size is what matters here
        declared = rig.fake.add_file("declared.png", big)
        job = await _run(rig, declared)
        assert job.state is JobState.FAILED and job.error is not None
        assert "declared.png is" in job.error and "limit" in job.error
        assert rig.fake.file_requests == []  # refused from Slack's own size, before asking

        lying = rig.fake.add_file("lying.png", big, chunked=True)
        lying["size"] = 100
        await rig.post("<@UBOT> img2img a cat", files=[lying])
        await rig.settle()
        second = (await rig.jobs())[-1]
        assert second.state is JobState.FAILED and second.error is not None
        assert "lying.png is over the 3 kB limit" in second.error
