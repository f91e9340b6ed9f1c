"""What the core hands adapters to show: status and result views, and the actions on them.

Actions are routed by an id that carries the job id (`sdbot:<action>:<job>[:<n>]`, under
Discord's 100-character `custom_id` limit), so buttons keep working after a restart.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.model import JobState

ACTION_PREFIX = "sdbot"


class ActionKind(enum.StrEnum):
    """What a button does."""

    CANCEL = "cancel"
    REROLL = "reroll"
    EDIT = "edit"
    USE_AS_INPUT = "input"
    DELETE = "delete"
    USE_AS_PROMPT = "prompt"


ACTION_LABELS: dict[ActionKind, str] = {
    ActionKind.CANCEL: "Cancel",
    ActionKind.REROLL: "Re-roll",
    ActionKind.EDIT: "Edit",
    ActionKind.USE_AS_INPUT: "Use as input",
    ActionKind.DELETE: "Delete",
    ActionKind.USE_AS_PROMPT: "Use as prompt",
}

# Fields of the Edit modal (at most 5 on Discord), in order.
EDIT_FIELDS: tuple[str, ...] = ("prompt", "negative", "strength", "seed")


@dataclass(frozen=True)
class Action:
    """A button on a status or result message."""

    kind: ActionKind
    job_id: str
    index: int | None = None  # 1-based image number for "Use as input"

    @property
    def id(self) -> str:
        parts = [ACTION_PREFIX, self.kind.value, self.job_id]
        if self.index is not None:
            parts.append(str(self.index))
        return ":".join(parts)

    @property
    def label(self) -> str:
        label = ACTION_LABELS[self.kind]
        return f"{label} {self.index}" if self.index is not None else label

    @classmethod
    def parse(cls, action_id: str) -> Action | None:
        """The action an id names, or None when it is not one of ours."""
        parts = action_id.split(":")
        if len(parts) not in (3, 4) or parts[0] != ACTION_PREFIX:
            return None
        try:
            kind = ActionKind(parts[1])
            index = int(parts[3]) if len(parts) == 4 else None
        except ValueError:
            return None
        if not parts[2].isalnum():
            return None
        return cls(kind, parts[2], index)


@dataclass(frozen=True)
class StatusView:
    """A job's status message."""

    job_id: str
    command: str
    state: JobState
    text: str  # the whole message, rendered by the core
    detail: str = ""  # one line: endpoint, cold start, failure reason … (console state lines)
    actions: tuple[Action, ...] = ()
    preview: bytes | None = None  # a live preview of the running job, when the backend has one


@dataclass(frozen=True)
class ResultImage:
    """One result image."""

    name: str
    data: bytes  # PNG


@dataclass(frozen=True)
class ResultView:
    """A finished job's outcome: images, a caption, or a failure."""

    job_id: str
    command: str
    state: JobState
    text: str  # the summary rendered by the core (prompt, negative, infotext, id, endpoint, time)
    images: tuple[ResultImage, ...] = ()
    caption: str | None = None
    error: str | None = None
    actions: tuple[Action, ...] = ()
    # Structured fields for rich renderings (Discord embeds, Slack blocks).
    prompt: str = ""
    negative: str = ""
    infotext: str = ""
    endpoint: str = ""
    duration: float | None = None
    # Set when the images are not Stable Diffusion's (the local preview engine): adapters show
    # it wherever the result is shown, so nobody takes a preview for the real thing.
    notice: str = ""

    @property
    def marker(self) -> str:
        """The text every result message carries, so a restarted bot can find it."""
        return self.job_id
