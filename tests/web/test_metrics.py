"""Metrics on a scripted scenario: the real core wired by the composition root, its ports
measured by the wrappers, read back from the Prometheus registry."""

from __future__ import annotations

from pathlib import Path

from scenario_kit import RecordingAdapter, RecordingResponder, chat_caller, fast_config, png
from yarl import URL

from adapters.cli import make_app
from adapters.web.metrics import LabelCap, Metrics, instrument_chat, route_template
from bot.model import JobState

PROMPT = "a hat <b>secret-prompt-words</b>"


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_counters_and_histograms_follow_a_scripted_scenario(tmp_path: Path) -> None:
    metrics = Metrics()
    config = fast_config(tmp_path, daily_quota=3)
    app = make_app(config, metrics)
    adapter = RecordingAdapter()
    app.add_adapter(instrument_chat(adapter, metrics))
    u1, u2 = chat_caller("u1"), chat_caller("u2")
    async with app:
        # 1: succeeds.  2: an attachment that is not an image fails in the driver.
        ok = await app.dispatcher.handle_text(
            u1, f"img2img {PROMPT}", [adapter.attach("a.png", png())], RecordingResponder()
        )
        bad = await app.dispatcher.handle_text(
            u1, "img2img x", [adapter.attach("b.png", b"not a picture")], RecordingResponder()
        )
        await app.runner.wait_idle()
        assert ok is not None and bad is not None
        # Refusals: a typo (parse), a missing image (refused), then u1's quota of 3 (after
        # a third job).
        refused = RecordingResponder()
        await app.dispatcher.handle_text(u2, "img2imgg x", [], refused)
        await app.dispatcher.handle_text(u2, "img2img x", [], refused)
        third = await app.dispatcher.handle_text(
            u1, "img2img y", [adapter.attach("c.png", png())], RecordingResponder()
        )
        await app.runner.wait_idle()
        assert third is not None
        await app.dispatcher.handle_text(u1, "img2img z", [adapter.attach("d.png", png())], refused)
        assert len(refused.refusals) == 3
        ok_job = await app.store.get(ok.id)
        bad_job = await app.store.get(bad.id)
        assert ok_job is not None and ok_job.state is JobState.SUCCEED
        assert bad_job is not None and bad_job.state is JobState.FAILED
        endpoint = ok_job.endpoint or ""
        assert metrics.registry.get_sample_value("sdbot_jobs_in_flight") == 0
        # Every job ended here: no lease held, none taken over, none parked.
        assert metrics.registry.get_sample_value("sdbot_job_leases_held") == 0
        assert value(metrics, "sdbot_stale_writes_refused_total") == 0
        assert value(metrics, "sdbot_jobs_parked_total") == 0

    created = value(metrics, "sdbot_jobs_created_total", command="img2img", platform="discord")
    assert created == 3
    succeeded = value(
        metrics,
        "sdbot_jobs_finished_total",
        command="img2img",
        state="succeed",
        endpoint=endpoint,
        platform="discord",
    )
    assert succeeded == 2
    # The failed job never reached an endpoint.
    failed = value(
        metrics,
        "sdbot_jobs_finished_total",
        command="img2img",
        state="failed",
        endpoint="none",
        platform="discord",
    )
    assert failed == 1
    assert value(metrics, "sdbot_refusals_total", reason="parse") == 1
    assert value(metrics, "sdbot_refusals_total", reason="refused") == 1
    assert value(metrics, "sdbot_refusals_total", reason="quota") == 1
    assert value(metrics, "sdbot_ack_seconds_count") == 3
    assert value(metrics, "sdbot_submit_seconds_count", command="img2img") == 2
    assert value(metrics, "sdbot_backend_seconds_count", endpoint=endpoint, state="succeed") == 2
    assert value(metrics, "sdbot_post_seconds_count", platform="discord") == 2
    assert value(metrics, "sdbot_backend_calls_total", method="submit") == 2
    rounds = value(metrics, "sdbot_poll_round_jobs_count")
    assert rounds >= 1
    assert value(metrics, "sdbot_backend_calls_total", method="statuses") == rounds
    assert value(metrics, "sdbot_poll_round_seconds_count") == rounds
    assert value(metrics, "sdbot_chat_calls_total", platform="discord", method="post_result") == 3
    assert value(metrics, "sdbot_chat_calls_total", platform="discord", method="download") == 3
    # Four inserts: the quota is checked inside the fourth, which the store refused.
    assert value(metrics, "sdbot_store_call_seconds_count", method="insert") == 4
    # No label carries a prompt, a user or a job id.
    text = metrics.exposition().decode()
    for private in ("secret-prompt-words", ok.id, bad.id, "u1", "u2"):
        assert private not in text


def test_route_templates_hide_ids_and_other_hosts() -> None:
    base = URL("http://127.0.0.1:8080/prod/")
    assert route_template(URL("http://127.0.0.1:8080/prod/ping"), base) == "/ping"
    job = URL("http://127.0.0.1:8080/prod/inferences/3f2a9c1e-77aa-4b0c-9d3e-1/start")
    assert route_template(job, base) == "/inferences/{id}/start"
    webui = URL("http://gpu:7860")
    assert route_template(URL("http://gpu:7860/sdapi/v1/img2img"), webui) == "/sdapi/v1/img2img"
    for made_up in ("f3a9c1e", "a1b2c3d4e5", "job12ab", "deadbeef99", "x" * 41):
        assert route_template(URL(f"http://gpu:7860/jobs/{made_up}"), webui) == "/jobs/{id}"
    s3 = URL("https://bucket.s3.amazonaws.com/out/3f2a.png?X-Amz-Signature=abc")
    assert route_template(s3, base) == "external"
    discord = URL("https://discord.com/api/v10")
    path = URL("https://discord.com/api/v10/channels/112233445566/messages/998877")
    assert route_template(path, discord) == "/channels/{id}/messages/{id}"
    slack = URL("https://slack.com/api/")
    assert route_template(URL("https://slack.com/api/chat.postMessage"), slack) == (
        "/chat.postMessage"
    )


def test_label_cap_bounds_a_label() -> None:
    cap = LabelCap(2)
    assert [cap(v) for v in ("a", "b", "c", "a", None)] == ["a", "b", "other", "a", "none"]


def test_ownership_is_read_off_the_runner_at_each_scrape() -> None:
    metrics = Metrics()
    counts = {"held": 3, "stale": 2, "parked": 1}
    metrics.watch_ownership(
        lambda: counts["held"], lambda: counts["stale"], lambda: counts["parked"]
    )
    assert metrics.registry.get_sample_value("sdbot_job_leases_held") == 3
    counts.update(held=0, stale=5)
    assert metrics.registry.get_sample_value("sdbot_job_leases_held") == 0
    assert value(metrics, "sdbot_stale_writes_refused_total") == 5
    assert value(metrics, "sdbot_jobs_parked_total") == 1
    assert "# TYPE sdbot_stale_writes_refused_total counter" in metrics.exposition().decode()
