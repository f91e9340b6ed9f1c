"""Every command and option of sdbot, declared once (SPEC §2.1–§2.2).

The text parser (`commands.parse`), the help text (`commands.help`) and the Discord command
signatures are all generated from the tables in this module; nothing else lists options.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime


class Sampler(enum.StrEnum):
    """A1111's samplers, by the names the WebUI shows and the API takes."""

    DPMPP_2M_KARRAS = "DPM++ 2M Karras"
    DPMPP_SDE_KARRAS = "DPM++ SDE Karras"
    DPMPP_2M_SDE_KARRAS = "DPM++ 2M SDE Karras"
    DPMPP_2M_SDE_EXPONENTIAL = "DPM++ 2M SDE Exponential"
    DPMPP_2M_SDE_HEUN_KARRAS = "DPM++ 2M SDE Heun Karras"
    DPMPP_2M_SDE_HEUN_EXPONENTIAL = "DPM++ 2M SDE Heun Exponential"
    DPMPP_3M_SDE_KARRAS = "DPM++ 3M SDE Karras"
    DPMPP_3M_SDE_EXPONENTIAL = "DPM++ 3M SDE Exponential"
    DPMPP_2M = "DPM++ 2M"
    DPMPP_SDE = "DPM++ SDE"
    DPMPP_2M_SDE = "DPM++ 2M SDE"
    DPMPP_2M_SDE_HEUN = "DPM++ 2M SDE Heun"
    DPMPP_2S_A = "DPM++ 2S a"
    DPMPP_2S_A_KARRAS = "DPM++ 2S a Karras"
    DPMPP_3M_SDE = "DPM++ 3M SDE"
    EULER_A = "Euler a"
    EULER = "Euler"
    LMS = "LMS"
    LMS_KARRAS = "LMS Karras"
    HEUN = "Heun"
    DPM2 = "DPM2"
    DPM2_A = "DPM2 a"
    DPM2_KARRAS = "DPM2 Karras"
    DPM2_A_KARRAS = "DPM2 a Karras"
    DPM_FAST = "DPM fast"
    DPM_ADAPTIVE = "DPM adaptive"
    RESTART = "Restart"
    DDIM = "DDIM"
    PLMS = "PLMS"
    UNIPC = "UniPC"
    LCM = "LCM"


SAMPLERS: tuple[Sampler, ...] = tuple(Sampler)
DEFAULT_SAMPLER = Sampler.DPMPP_2M_KARRAS


# A1111 1.9+ schedule types (`modules/sd_schedulers.py`, labels as the WebUI shows and the API
# takes them; 1.10 list). "Automatic" lets the sampler pick, as A1111 does by default.
class Scheduler(enum.StrEnum):
    """A1111 1.9+ schedule types (`modules/sd_schedulers.py`, labels as the WebUI shows and the
    API takes them; 1.10 list). "Automatic" lets the sampler pick, as A1111 does by default."""

    AUTOMATIC = "Automatic"
    UNIFORM = "Uniform"
    KARRAS = "Karras"
    EXPONENTIAL = "Exponential"
    POLYEXPONENTIAL = "Polyexponential"
    SGM_UNIFORM = "SGM Uniform"
    KL_OPTIMAL = "KL Optimal"
    ALIGN_YOUR_STEPS = "Align Your Steps"
    SIMPLE = "Simple"
    NORMAL = "Normal"
    DDIM = "DDIM"
    BETA = "Beta"


SCHEDULERS: tuple[Scheduler, ...] = tuple(Scheduler)
DEFAULT_SCHEDULER = Scheduler.AUTOMATIC

# Images one job may make: batch size (`count`) × batch count (`batch_count`). A chat message
# shows them all with a "Use as input N" button each, so the cap is small.
MAX_IMAGES = 8


# A1111's other spellings of a schedule in a sampler name (`Scheduler.aliases`).
_SCHEDULE_ALIASES: dict[str, tuple[str, ...]] = {"SGM Uniform": ("SGMUniform",)}


def split_sampler(sampler: str) -> tuple[str, str | None]:
    """A sampler name's sampler and the schedule named at its end, as A1111 1.9+ reads it.

    `DPM++ 2M Karras` → (`DPM++ 2M`, `Karras`); `Euler a` → (`Euler a`, None). Each schedule's
    label and aliases are tried in A1111's order (`sd_samplers.get_sampler_and_scheduler`).
    """
    found = None
    for label in SCHEDULERS[1:]:
        for written in (label, *_SCHEDULE_ALIASES.get(label, ())):
            if sampler.endswith(" " + written):
                found, sampler = label, sampler[: -len(written) - 1]
                break
    return sampler, found


def join_sampler(sampler: str, scheduler: str) -> str:
    """The sampler name that runs `sampler` with `scheduler` on A1111 1.8 as on 1.9+.

    "Automatic" keeps the sampler as given. Otherwise the schedule is written at the end of the
    sampler, replacing one named there: A1111 1.9+ splits it off again (the name wins over its
    `scheduler` field, so the user's choice must be in it), and 1.8 — what ESD 1.5–1.7 run, with
    no `scheduler` field — runs the legacy sampler of that name (`DPM++ 2M SDE Exponential`) or
    answers "Sampler not found" instead of silently using another schedule. SGM Uniform is
    written `SGMUniform`, A1111's alias, since 1.9+ would read "… SGM Uniform" as Uniform.
    """
    if scheduler == SCHEDULERS[0]:
        return sampler
    written = _SCHEDULE_ALIASES.get(scheduler, (scheduler,))[0]
    return f"{split_sampler(sampler)[0]} {written}"


def read_sampler(name: str, scheduler: str = DEFAULT_SCHEDULER) -> tuple[Sampler, Scheduler]:
    """The sampler and schedule that a sampler name runs, `join_sampler` undone.

    `scheduler` is the schedule given beside the name; a schedule named at the end of a name
    that is not itself a sampler wins, as on A1111 1.9+ (`Euler Karras` → Euler, Karras). Raises
    `ValueError` when the name is no sampler of `Sampler`, with or without a schedule.
    """
    schedule = Scheduler(scheduler)
    try:
        return Sampler(name), schedule
    except ValueError:
        base, named = split_sampler(name)
        return Sampler(base), Scheduler(named) if named is not None else schedule


def image_count_error(count: int, batch_count: int) -> str | None:
    """Why `count` × `batch_count` images are too many for one job, or None."""
    if count * batch_count <= MAX_IMAGES:
        return None
    return (
        f"count × batch_count is {count} × {batch_count} = {count * batch_count} images; "
        f"one job makes at most {MAX_IMAGES}"
    )


class Resize(enum.StrEnum):
    """How the input is fitted to the output size (A1111 `resize_mode`)."""

    JUST_RESIZE = "just-resize"
    CROP = "crop"
    FILL = "fill"
    LATENT = "latent"


class Fill(enum.StrEnum):
    """What fills the masked area before sampling (A1111 `inpainting_fill`)."""

    FILL = "fill"
    ORIGINAL = "original"
    LATENT_NOISE = "latent-noise"
    LATENT_NOTHING = "latent-nothing"


class Area(enum.StrEnum):
    """Inpaint the whole picture or only the masked area (A1111 `inpaint_full_res`)."""

    WHOLE = "whole"
    MASKED = "masked"


class Method(enum.StrEnum):
    """How interrogate describes an image."""

    CLIP = "clip"  # a sentence
    DEEPBOORU = "deepbooru"  # tags


# A1111 `resize_mode`, `inpainting_fill` and `inpaint_full_res` values (reference/esd-api.md §7.1).
RESIZE_MODES: dict[Resize, int] = {mode: number for number, mode in enumerate(Resize)}
FILL_MODES: dict[Fill, int] = {mode: number for number, mode in enumerate(Fill)}
AREAS: dict[Area, bool] = {Area.WHOLE: False, Area.MASKED: True}

# Bot model type names → ESD checkpoint types (reference/esd-api.md §4.8).
MODEL_TYPES: dict[str, str] = {
    "checkpoint": "Stable-diffusion",
    "lora": "Lora",
    "vae": "VAE",
    "hypernetwork": "hypernetworks",
    "embedding": "embeddings",
}
JOB_STATES: tuple[str, ...] = ("created", "inprogress", "succeed", "failed", "cancelled")
METHODS: tuple[Method, ...] = tuple(Method)


class Kind(enum.Enum):
    """How an option's value is read from text."""

    TEXT = "text"  # free text, kept as written
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"  # true/false/yes/no/on/off/1/0
    CHOICE = "choice"  # one of `choices`, case-insensitive; the canonical spelling is kept
    SIZE = "size"  # WxH, each side a multiple of 8
    TIME = "time"  # ISO date / date-time (UTC) or relative 30m / 2h / 3d, as an aware datetime
    PATH = "path"  # a local file; console only
    JOB_ID = "job_id"  # a job id or a unique prefix of at least 4 characters
    RESULT = "result"  # `result` or `result:N` (1-based) — a base job's result image


@dataclass(frozen=True, slots=True)
class Size:
    """Width and height in pixels."""

    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


# A parsed option value. `int` for RESULT is the 1-based image index.
OptionValue = str | int | float | bool | Size | datetime


@dataclass(frozen=True)
class OptionSpec:
    """One option: its name, how it is read, its range and its help line."""

    name: str
    kind: Kind
    help: str
    default: OptionValue | None = None
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()
    # Model, sampler and endpoint values are offered by autocomplete on Discord.
    autocomplete: bool = False
    # Only the console accepts local paths (SPEC §2.3).
    console_only: bool = False
    # Only valid in a reply that re-generates a job (SPEC §3.2), e.g. `input=result:2`.
    reply_only: bool = False
    # A rarely used option: on Discord it is written inside the one `advanced` text option
    # (`advanced: clip_skip=2 tiling=on`, read by the same grammar), because Discord allows 25
    # options per command. Text platforms take it like any other option.
    advanced: bool = False


class Slot(enum.Enum):
    """The images a command takes. The value is also the console path key."""

    IMAGE = "image"
    MASK = "mask"
    SKETCH = "sketch"


@dataclass(frozen=True)
class AttachmentSpec:
    """An image a command takes, from a platform attachment or (console) a path option."""

    slot: Slot
    required: bool
    help: str


class Family(enum.Enum):
    """What the core does with a command."""

    GENERATE = "generate"  # img2img family: a job with images
    INTERROGATE = "interrogate"  # a job that returns a caption
    QUERY = "query"  # answered at once: job, jobs, endpoints, models, help
    ADMIN = "admin"  # cancel, settings


@dataclass(frozen=True)
class CommandSpec:
    """One command: its options, images, what its free text means, and its help."""

    name: str
    family: Family
    summary: str
    options: tuple[str, ...]
    attachments: tuple[AttachmentSpec, ...] = ()
    # The option that the free text (all non-option tokens, joined by single spaces) fills;
    # None means the command takes no free text.
    free_text: str | None = None
    examples: tuple[str, ...] = field(default=())


def _gen(*extra: OptionSpec) -> tuple[OptionSpec, ...]:
    return extra


# The Discord option that carries a command's `advanced` options as `key=value` words.
ADVANCED = "advanced"


OPTIONS: dict[str, OptionSpec] = {
    o.name: o
    for o in _gen(
        # Generation (img2img family), A1111 semantics.
        OptionSpec("prompt", Kind.TEXT, "what to draw; free text after the command also sets it"),
        OptionSpec("negative", Kind.TEXT, "what to avoid (negative prompt)"),
        OptionSpec("strength", Kind.FLOAT, "denoising strength", 0.75, 0.0, 1.0),
        OptionSpec("steps", Kind.INT, "sampling steps", 20, 1, 150),
        OptionSpec(
            "cfg", Kind.FLOAT, "CFG scale: how closely to follow the prompt", 7.0, 1.0, 30.0
        ),
        OptionSpec(
            "sampler", Kind.CHOICE, "sampler", DEFAULT_SAMPLER, choices=SAMPLERS, autocomplete=True
        ),
        OptionSpec("seed", Kind.INT, "seed; -1 picks a random one", -1, -1, 2**32 - 1),
        OptionSpec("size", Kind.SIZE, "output size WxH, multiples of 8 (not with width/height)"),
        OptionSpec("width", Kind.INT, "output width, a multiple of 8", None, 64, 2048),
        OptionSpec("height", Kind.INT, "output height, a multiple of 8", None, 64, 2048),
        OptionSpec("count", Kind.INT, "images per batch (batch size)", 1, 1, 4),
        OptionSpec(
            "batch_count",
            Kind.INT,
            f"batches, run one after another (count × batch_count ≤ {MAX_IMAGES})",
            1,
            1,
            100,
        ),
        OptionSpec(
            "scale",
            Kind.FLOAT,
            "resize by: output = input size × scale (not with size/width/height)",
            None,
            0.05,
            4.0,
        ),
        OptionSpec(
            "resize",
            Kind.CHOICE,
            "how the input is fitted to the size",
            Resize.JUST_RESIZE,
            choices=tuple(Resize),
        ),
        OptionSpec("model", Kind.TEXT, "checkpoint on the backend", autocomplete=True),
        OptionSpec("vae", Kind.TEXT, "VAE on the backend (Automatic = the checkpoint's own)"),
        OptionSpec("endpoint", Kind.TEXT, "SageMaker endpoint to run on", autocomplete=True),
        # The rest of A1111's img2img panel, on Discord inside `advanced`.
        OptionSpec(
            "subseed",
            Kind.INT,
            "variation seed; -1 picks a random one",
            -1,
            -1,
            2**32 - 1,
            advanced=True,
        ),
        OptionSpec(
            "subseed_strength",
            Kind.FLOAT,
            "variation strength: how far to move from seed toward subseed",
            0.0,
            0.0,
            1.0,
            advanced=True,
        ),
        OptionSpec(
            "restore_faces",
            Kind.BOOL,
            "restore faces (the endpoint's face restoration model)",
            False,
            advanced=True,
        ),
        OptionSpec("tiling", Kind.BOOL, "make a seamlessly tiling image", False, advanced=True),
        OptionSpec(
            "clip_skip",
            Kind.INT,
            "CLIP layers to stop before the end (1 = none skipped)",
            1,
            1,
            12,
            advanced=True,
        ),
        OptionSpec(
            "image_cfg",
            Kind.FLOAT,
            "image CFG scale (instruct-pix2pix models only)",
            1.5,
            0.0,
            3.0,
            advanced=True,
        ),
        OptionSpec(
            "noise_multiplier",
            Kind.FLOAT,
            "initial noise multiplier for img2img",
            1.0,
            0.0,
            1.5,
            advanced=True,
        ),
        OptionSpec(
            "scheduler",
            Kind.CHOICE,
            "schedule type (A1111 1.9+); replaces one named in the sampler",
            DEFAULT_SCHEDULER,
            choices=SCHEDULERS,
            advanced=True,
        ),
        # Inpaint.
        OptionSpec("mask_blur", Kind.INT, "mask blur in pixels", 4, 0, 64),
        OptionSpec(
            "fill",
            Kind.CHOICE,
            "what fills the masked area before sampling",
            Fill.ORIGINAL,
            choices=tuple(Fill),
        ),
        OptionSpec(
            "area",
            Kind.CHOICE,
            "inpaint the whole picture or only the masked area",
            Area.WHOLE,
            choices=tuple(Area),
        ),
        OptionSpec("padding", Kind.INT, "padding around the masked area, pixels", 32, 0, 256),
        OptionSpec("invert", Kind.BOOL, "repaint what is NOT masked", False),
        OptionSpec(
            "mask_alpha",
            Kind.INT,
            "mask transparency, percent: how faintly the sketch's colours go in",
            0,
            0,
            100,
            advanced=True,
        ),
        # Console-only image paths.
        OptionSpec("image", Kind.PATH, "path of the image (console only)", console_only=True),
        OptionSpec("mask", Kind.PATH, "path of the mask (console only)", console_only=True),
        OptionSpec("sketch", Kind.PATH, "path of the sketch (console only)", console_only=True),
        # Replies.
        OptionSpec(
            "input",
            Kind.RESULT,
            "use the base job's result N as the input (`result` or `result:N`)",
            reply_only=True,
        ),
        # Interrogate.
        OptionSpec("method", Kind.CHOICE, "captioning method", Method.CLIP, choices=METHODS),
        # Queries.
        OptionSpec("id", Kind.JOB_ID, "job id, or a unique prefix of at least 4 characters"),
        OptionSpec("status", Kind.CHOICE, "only jobs in this state", choices=JOB_STATES),
        OptionSpec("type", Kind.TEXT, "only jobs of this command (or model type for `models`)"),
        OptionSpec("since", Kind.TIME, "only jobs created at or after (2026-11-01, 2h, 3d)"),
        OptionSpec("until", Kind.TIME, "only jobs created before (2026-11-01, 30m)"),
        OptionSpec("user", Kind.TEXT, "only this user's jobs (admins)"),
        OptionSpec(
            "source",
            Kind.CHOICE,
            "`cloud`: the backend's own history (admins)",
            choices=("bot", "cloud"),
        ),
        OptionSpec("all", Kind.BOOL, "list everything, page by page", False),
        OptionSpec("command", Kind.TEXT, "the command to explain"),
        # Settings (admins).
        OptionSpec(
            "scope",
            Kind.CHOICE,
            "which settings to change",
            "channel",
            choices=("channel", "server"),
        ),
        OptionSpec("max_size", Kind.INT, "cap on the longest output side", None, 64, 2048),
        OptionSpec("concurrency", Kind.INT, "jobs one user may have in flight", None, 1, 100),
        OptionSpec(
            "reset",
            Kind.TEXT,
            "settings to remove, comma-separated (`model,vae`), or `all`",
        ),
        OptionSpec(
            "daily_quota",
            Kind.INT,
            "jobs one user may start per day (0 = no limit)",
            None,
            0,
            100000,
        ),
    )
}

GENERATION_OPTIONS: tuple[str, ...] = (
    "prompt",
    "negative",
    "strength",
    "steps",
    "cfg",
    "sampler",
    "seed",
    "size",
    "width",
    "height",
    "count",
    "batch_count",
    "scale",
    "resize",
    "model",
    "vae",
    "endpoint",
    "subseed",
    "subseed_strength",
    "restore_faces",
    "tiling",
    "clip_skip",
    "image_cfg",
    "noise_multiplier",
    "scheduler",
)
INPAINT_OPTIONS: tuple[str, ...] = ("mask_blur", "fill", "area", "padding", "invert")
# Only inpaint-sketch has a mask transparency (A1111's `mask_alpha`, shown on that tab alone).
SKETCH_OPTIONS: tuple[str, ...] = ("mask_alpha",)

_IMAGE = AttachmentSpec(Slot.IMAGE, True, "the picture to start from")


def _generate(
    name: str,
    summary: str,
    attachments: tuple[AttachmentSpec, ...],
    inpaint: bool,
    example: str,
    extra: tuple[str, ...] = (),
) -> CommandSpec:
    paths = tuple(a.slot.value for a in attachments)
    inpainting = INPAINT_OPTIONS if inpaint else ()
    options = GENERATION_OPTIONS + inpainting + extra + paths + ("input",)
    return CommandSpec(
        name,
        Family.GENERATE,
        summary,
        options,
        attachments,
        free_text="prompt",
        examples=(example,),
    )


COMMANDS: dict[str, CommandSpec] = {
    c.name: c
    for c in (
        _generate(
            "img2img",
            "redraw an image guided by a prompt",
            (_IMAGE,),
            False,
            "img2img a watercolor castle strength=0.6",
        ),
        _generate(
            "sketch",
            "turn a picture with colour strokes into an image",
            (AttachmentSpec(Slot.IMAGE, True, "the sketch: a picture with colour strokes"),),
            False,
            "sketch a red sports car, studio light",
        ),
        _generate(
            "inpaint",
            "repaint part of an image (mask attachment, or the image's transparency)",
            (_IMAGE, AttachmentSpec(Slot.MASK, False, "white = repaint; else transparent pixels")),
            True,
            "inpaint a golden crown mask_blur=8",
        ),
        _generate(
            "inpaint-sketch",
            "repaint where a painted-over copy differs from the original",
            (
                AttachmentSpec(Slot.IMAGE, True, "the original picture"),
                AttachmentSpec(Slot.SKETCH, True, "the same picture painted over"),
            ),
            True,
            "inpaint-sketch a blue scarf mask_alpha=40",
            SKETCH_OPTIONS,
        ),
        _generate(
            "inpaint-upload",
            "repaint an image with an uploaded mask (white = repaint)",
            (_IMAGE, AttachmentSpec(Slot.MASK, True, "white = repaint, black = keep")),
            True,
            "inpaint-upload a stone wall fill=latent-noise",
        ),
        CommandSpec(
            "interrogate",
            Family.INTERROGATE,
            "describe an image (CLIP sentence or DeepBooru tags)",
            ("method", "endpoint", "image"),
            (_IMAGE,),
            examples=("interrogate method=deepbooru",),
        ),
        CommandSpec(
            "job",
            Family.QUERY,
            "status, parameters and results of one job",
            ("id",),
            free_text="id",
            examples=("job k3x9",),
        ),
        CommandSpec(
            "jobs",
            Family.QUERY,
            "your jobs, newest first",
            ("status", "type", "endpoint", "model", "since", "until", "user", "source", "all"),
            examples=("jobs status=failed since=3d",),
        ),
        CommandSpec("endpoints", Family.QUERY, "the backend's endpoints and their states", ()),
        CommandSpec(
            "models",
            Family.QUERY,
            "models on the backend",
            ("type",),
            examples=("models type=lora",),
        ),
        CommandSpec(
            "cancel",
            Family.ADMIN,
            "stop a job and never post its result",
            ("id",),
            free_text="id",
            examples=("cancel k3x9q2m7ab",),
        ),
        CommandSpec(
            "settings",
            Family.ADMIN,
            "channel / server defaults (admins); no options shows them",
            (
                "scope",
                "endpoint",
                "model",
                "vae",
                "max_size",
                "concurrency",
                "daily_quota",
                "reset",
            ),
            examples=(
                "settings scope=server model=sd_xl_base_1.0.safetensors",
                "settings concurrency=2 daily_quota=50",
                "settings reset=model,vae",
            ),
        ),
        CommandSpec(
            "help",
            Family.QUERY,
            "how to use the bot, or one command",
            ("command",),
            free_text="command",
            examples=("help inpaint",),
        ),
    )
}

OUT_OF_SCOPE = (
    "txt2img, ControlNet and other always-on scripts, the refiner, extras / upscaling, "
    "endpoint management (create / delete endpoints) and model upload"
)
