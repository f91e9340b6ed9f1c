"""Text the core shows users: status lines, result summaries, job details and lists.

Plain text with backticks for ids and names, which reads well on Discord, Slack and the
console alike. Adapters may render richer views from the structured fields of `bot.views`.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from bot.ids import display_name, format_time
from bot.model import (
    BackendStatus,
    CloudJob,
    Endpoint,
    GenerationParams,
    Job,
    JobOutput,
    JobState,
    Model,
)
from bot.views import Action, ActionKind, ResultImage, ResultView, StatusView

if TYPE_CHECKING:
    from collections.abc import Sequence

_STATE_WORDS: dict[JobState, str] = {
    JobState.CREATED: "queued",
    JobState.INPROGRESS: "running",
    JobState.SUCCEED: "done",
    JobState.FAILED: "failed",
    JobState.CANCELLED: "cancelled",
}
_BAR = 10


def duration(seconds: float) -> str:
    """`42 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def byte_size(count: int) -> str:
    """`512 kB`, `20 MB` — for limits in messages."""
    if count >= 1_000_000:
        return f"{count / 1_000_000:.3g} MB"
    return f"{count / 1000:.3g} kB"


def estimate(elapsed: float, recent: Sequence[float]) -> float | None:
    """Estimated progress 0..0.95 from recent run times on the endpoint, or None without data."""
    if not recent:
        return None
    typical = statistics.median(recent)
    if typical <= 0:
        return None
    return min(0.95, elapsed / typical)


def status_view(
    job: Job,
    *,
    elapsed: float | None,
    progress: float | None,
    cold_start: bool,
    live: BackendStatus | None = None,
) -> StatusView:
    """The status message of a job in any state.

    `progress` is an estimate from recent run times; `live` is what the backend last said
    (its own queue position, measured progress and a preview), which wins when it has them.
    """
    lines = [f"{job.command} `{job.id}` — {job.state.value} ({_STATE_WORDS[job.state]})"]
    detail = ""
    if job.endpoint:
        detail = f"on {job.endpoint}"
    running = live is not None and not job.state.terminal and live.state is job.state
    if running and live is not None and live.queue_position is not None:
        lines.append(f"position {live.queue_position} in the queue")
        detail = (detail + " " if detail else "") + f"(queue position {live.queue_position})"
    if elapsed is not None and not job.state.terminal:
        line = f"{duration(elapsed)} elapsed"
        measured = live.progress if running and live is not None else None
        shown = measured if measured is not None else progress
        if shown is not None:
            filled = round(shown * _BAR)
            line += f" · {'▰' * filled}{'▱' * (_BAR - filled)} ~{shown:.0%}"
            line += "" if measured is not None else " (estimate)"
        lines.append(line)
    if cold_start and not job.state.terminal:
        lines.append(
            "the endpoint is starting from zero instances (cold start): this can take minutes"
        )
        detail = (detail + " " if detail else "") + "(cold start)"
    if job.state is JobState.FAILED and job.error:
        lines.append(f"failed: {job.error}")
        detail = job.error
    if job.state is JobState.CANCELLED:
        lines.append("cancelled; its result will not be posted")
    lines.extend(job.notes)
    if job.endpoint:
        lines.append(
            f"endpoint `{job.endpoint}`" + (f" · model `{job.model}`" if job.model else "")
        )
    actions = () if job.state.terminal else (Action(ActionKind.CANCEL, job.id),)
    preview = live.preview if running and live is not None else None
    return StatusView(job.id, job.command, job.state, "\n".join(lines), detail, actions, preview)


def run_time(job: Job) -> float | None:
    if job.started_at is None or job.finished_at is None:
        return None
    return (job.finished_at - job.started_at).total_seconds()


PREVIEW_NOTICE = "made by sdbot's preview engine, not Stable Diffusion"


def result_view(job: Job, images: Sequence[ResultImage], *, preview: bool = False) -> ResultView:
    """The result (or failure) message of a finished job; `preview`: made by the local preview
    engine, which the message says."""
    took = run_time(job)
    head = f"{job.command} `{job.id}` — {job.state.value}"
    if job.endpoint:
        head += f" on `{job.endpoint}`"
    if took is not None:
        head += f" in {duration(took)}"
    lines = [head]
    notice = PREVIEW_NOTICE if preview and job.state is JobState.SUCCEED else ""
    if notice:
        lines.append(f"⚠ {notice}")
    prompt = job.params.prompt if job.params else ""
    negative = job.params.negative if job.params else ""
    if job.state is JobState.FAILED:
        lines.append(f"failed: {job.error or 'the backend gave no reason'}")
    if job.caption is not None:
        lines.append(f"caption: {job.caption}")
    if job.params is not None:
        lines.append(f"prompt: {prompt}" if prompt else "prompt: (empty)")
        if negative:
            lines.append(f"negative: {negative}")
    if job.infotext:
        # A1111 infotext repeats the prompts above its parameter line; show that line only.
        lines.append(job.infotext.strip().splitlines()[-1])
    actions: list[Action] = []
    if job.command == "interrogate":
        if job.state is JobState.SUCCEED:
            actions.append(Action(ActionKind.USE_AS_PROMPT, job.id))
    else:
        actions += [Action(ActionKind.REROLL, job.id), Action(ActionKind.EDIT, job.id)]
        if len(images) == 1:
            actions.append(Action(ActionKind.USE_AS_INPUT, job.id))
        else:
            actions += [Action(ActionKind.USE_AS_INPUT, job.id, i + 1) for i in range(len(images))]
    if images or job.caption is not None:
        actions.append(Action(ActionKind.DELETE, job.id))
    return ResultView(
        job_id=job.id,
        command=job.command,
        state=job.state,
        text="\n".join(lines),
        images=tuple(images),
        caption=job.caption,
        error=job.error if job.state is JobState.FAILED else None,
        actions=tuple(actions),
        prompt=prompt,
        negative=negative,
        infotext=job.infotext or "",
        endpoint=job.endpoint or "",
        duration=took,
        notice=notice,
    )


def job_details(job: Job) -> str:
    """Everything about one job (`job <id>`)."""
    lines = [display_name(job), f"requested by {job.caller.user_name or job.caller.user}"]
    if job.started_at:
        lines.append(f"started {format_time(job.started_at)}")
    if job.finished_at:
        took = run_time(job)
        lines.append(
            f"finished {format_time(job.finished_at)}"
            + (f" ({duration(took)})" if took is not None else "")
        )
    if job.endpoint:
        lines.append(f"endpoint `{job.endpoint}`")
    if job.backend_id:
        lines.append(f"backend id `{job.backend_id}`")
    if job.parent_id:
        lines.append(f"re-generated from `{job.parent_id}`")
    if job.params is not None:
        p = job.params
        lines.append(f"prompt: {p.prompt or '(empty)'}")
        if p.negative:
            lines.append(f"negative: {p.negative}")
        lines.append(
            f"model `{p.model}` · VAE `{p.vae}` · sampler {p.sampler_name} · steps {p.steps} · "
            f"cfg {p.cfg:g} · strength {p.strength:g} · seed {p.seed} · size {p.width}x{p.height}"
            f" · count {p.count} · resize {p.resize}"
        )
        panel = _panel_details(p)
        if panel:
            lines.append(panel)
        if job.command.startswith("inpaint"):
            lines.append(
                f"mask blur {p.mask_blur} · fill {p.fill} · area {p.area} · padding {p.padding}"
                f" · invert {'yes' if p.invert else 'no'}"
                + (f" · mask transparency {p.mask_alpha}%" if p.mask_alpha else "")
            )
    if job.interrogate is not None:
        lines.append(f"method {job.interrogate.method}")
    if job.caption is not None:
        lines.append(f"caption: {job.caption}")
    if job.error:
        # Not `error:`, which means a refused command (the console's line protocol).
        lines.append(f"failed: {job.error}")
    if job.results_expired:
        lines.append("the result images have expired and are no longer stored")
    elif job.result_count:
        lines.append(f"{job.result_count} result image(s)")
    lines.extend(job.notes)
    return "\n".join(lines)


def cloud_job_details(row: CloudJob, output: JobOutput | None = None, note: str = "") -> str:
    """A backend's own job that no bot job here ran as (`job <backend id>`): what the backend
    says of it, its first line as `jobs source=cloud` lists it, and a succeeded one's caption or
    infotext."""
    when = format_time(row.created_at) if row.created_at else "?"
    lines = [
        f"{when} → {row.task_type} → {row.state} → {row.backend_id}",
        "a backend job the bot did not start here",
    ]
    if row.owner:
        lines.append(f"owner `{row.owner}`")
    if row.endpoint:
        lines.append(f"endpoint `{row.endpoint}`")
    if row.model:
        lines.append(f"model `{row.model}`")
    if row.reason:
        lines.append(f"failed: {row.reason}")
    if output is not None and output.caption is not None:
        lines.append(f"caption: {output.caption}")
    if output is not None and output.infotext:
        lines.append(output.infotext)
    if output is not None and output.images:
        lines.append(f"{len(output.images)} result image(s)")
    if note:
        lines.append(note)
    return "\n".join(lines)


def _panel_details(p: GenerationParams) -> str:
    """The rest of the img2img panel, where it differs from the WebUI's defaults."""
    parts = []
    if p.batch_count != 1:
        parts.append(f"batch count {p.batch_count} ({p.images} images)")
    if p.subseed_strength:
        parts.append(f"variation seed {p.subseed} (strength {p.subseed_strength:g})")
    if p.scheduler != "Automatic":
        parts.append(f"schedule type {p.scheduler}")
    if p.clip_skip != 1:
        parts.append(f"clip skip {p.clip_skip}")
    if p.image_cfg != 1.5:
        parts.append(f"image CFG {p.image_cfg:g}")
    if p.noise_multiplier != 1.0:
        parts.append(f"noise multiplier {p.noise_multiplier:g}")
    if p.restore_faces:
        parts.append("restore faces")
    if p.tiling:
        parts.append("tiling")
    return " · ".join(parts)


def endpoint_lines(endpoints: Sequence[Endpoint]) -> str:
    if not endpoints:
        return "the backend has no sd endpoints"
    lines = []
    for e in endpoints:
        count = "?" if e.instance_count is None else str(e.instance_count)
        scale = ""
        if e.min_instances is not None and e.max_instances is not None:
            scale = f" (scales {e.min_instances}–{e.max_instances})"
        lines.append(
            f"`{e.name}` — {e.status} — {e.type} — {e.instance_type} — {count} instance(s){scale}"
        )
    return "\n".join(lines)


def model_lines(models: Sequence[Model]) -> str:
    if not models:
        return "no models of that type on the backend"
    by_type: dict[str, list[str]] = {}
    for m in models:
        by_type.setdefault(m.type, []).append(m.name)
    return "\n".join(
        f"{kind} ({len(names)}): " + ", ".join(f"`{n}`" for n in sorted(names))
        for kind, names in sorted(by_type.items())
    )
