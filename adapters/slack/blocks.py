"""Block Kit for sdbot on Slack: status and result messages, their buttons, and the modals.

Everything here builds plain JSON-ready dicts (the wire format) from the core's views and
reads modal submissions back; no I/O. Buttons carry `bot.views.Action.id` as `action_id`
(and the job id as `value`), so a click is routed by the job id alone and works after a
restart. Text from users is escaped (`convert.escape`) before it goes into mrkdwn, and every
field is cut to Slack's limits (section text 3000, button text 75, modal title 24).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.slack.convert import escape, safe_cut, truncate
from bot.views import EDIT_FIELDS, Action, ActionKind

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from bot.views import ResultView, StatusView

Block = dict[str, Any]

SECTION_LIMIT = 3000
MESSAGE_TEXT_LIMIT = 3900  # the notification / fallback text; Slack truncates far above this
PRIVATE_METADATA_LIMIT = 3000
IMG2IMG_CALLBACK = "sdbot_img2img"
EDIT_CALLBACK = "sdbot_edit"

_CONFIRMS: dict[ActionKind, tuple[str, str, str]] = {
    ActionKind.CANCEL: ("Cancel this job?", "Its result will not be posted.", "Cancel job"),
    ActionKind.DELETE: (
        "Delete the results?",
        "The result messages and the stored images are removed.",
        "Delete",
    ),
}
_FIELD_LABELS: dict[str, str] = {
    "prompt": "Prompt",
    "negative": "Negative prompt",
    "strength": "Denoising strength (0–1)",
    "seed": "Seed (-1 = random)",
    "options": "More options",
}
_FIELD_HINTS: dict[str, str] = {
    "seed": "Leave empty for a new random seed.",
    "options": 'key=value words, e.g. steps=30 cfg=6 size=768x512 sampler="Euler a"',
}


def plain(text: str, limit: int = 75) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text, limit), "emoji": True}


def sections(text: str) -> list[Block]:
    """mrkdwn sections holding `text` (already escaped), split at Slack's 3000 characters."""
    blocks: list[Block] = []
    rest = text or " "
    while rest:
        cut = len(rest)
        if cut > SECTION_LIMIT:
            cut = rest.rfind("\n", 0, SECTION_LIMIT)
            cut = cut if cut > 0 else safe_cut(rest, SECTION_LIMIT) or SECTION_LIMIT
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": rest[:cut]}})
        rest = rest[cut:].lstrip("\n")
    return blocks


def button(action: Action) -> Block:
    element: Block = {
        "type": "button",
        "action_id": action.id,
        "value": action.job_id,
        "text": plain(action.label),
    }
    if action.kind in _CONFIRMS:
        title, text, confirm = _CONFIRMS[action.kind]
        element["style"] = "danger"
        element["confirm"] = {
            "title": plain(title, 100),
            "text": plain(text, 300),
            "confirm": plain(confirm, 30),
            "deny": plain("Keep", 30),
        }
    elif action.kind in (ActionKind.REROLL, ActionKind.USE_AS_PROMPT):
        element["style"] = "primary"
    return element


def actions_block(actions: Sequence[Action], job_id: str) -> list[Block]:
    """One `actions` block (Slack allows 25 elements; sdbot has at most 11: 8 "Use as input" with
    Re-roll, Edit and Delete)."""
    if not actions:
        return []
    return [
        {
            "type": "actions",
            "block_id": f"sdbot-actions-{job_id}",
            "elements": [button(a) for a in actions[:25]],
        }
    ]


def status_message(status: StatusView, preview_file: str | None = None) -> tuple[str, list[Block]]:
    """Fallback text and blocks of a job's status message (with Cancel while it runs), and the
    backend's live preview when `preview_file` names the Slack file holding it: an image block
    whose `slack_file` is the bot's own upload (an image block shows a Slack file by id when the
    poster can see it: https://docs.slack.dev/reference/block-kit/composition-objects/slack-file-object)."""
    text = escape(status.text)
    blocks = sections(text)
    if preview_file is not None:
        blocks.append(
            {
                "type": "image",
                "slack_file": {"id": preview_file},
                "alt_text": f"live preview of job {status.job_id}",
            }
        )
    return truncate(text, MESSAGE_TEXT_LIMIT), blocks + actions_block(status.actions, status.job_id)


def result_message(result: ResultView) -> tuple[str, list[Block]]:
    """Fallback text and blocks of a job's result message: the summary the core rendered
    (prompt, negative, infotext, job id, endpoint, duration) and the action buttons."""
    text = escape(result.text)
    blocks = sections(text)
    facts = [result_fact(result.job_id)]
    if result.endpoint:
        facts.append(f"endpoint `{escape(result.endpoint)}`")
    if result.images:
        facts.append(f"{len(result.images)} image(s) above")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(facts)}]})
    return truncate(text, MESSAGE_TEXT_LIMIT), blocks + actions_block(result.actions, result.job_id)


def result_fact(job_id: str) -> str:
    """The job fact of a result message's context block: how a restarted bot recognises the
    result message of a job (the status message names the job too, but has no context)."""
    return f"job `{job_id}`"


def upload_comment(result: ResultView) -> str:
    """The text of the file upload message; it carries the job id like every result message."""
    count = len(result.images)
    return f"{result.command} `{result.job_id}` — {count} image{'s' if count != 1 else ''}"


# -- Modals -----------------------------------------------------------------------------------


def _text_input(
    name: str, initial: str = "", *, multiline: bool = False, max_length: int = 2000
) -> Block:
    element: Block = {
        "type": "plain_text_input",
        "action_id": name,
        "multiline": multiline,
        "max_length": max_length,
    }
    if initial:
        element["initial_value"] = truncate(initial, max_length)
    block: Block = {
        "type": "input",
        "block_id": name,
        "optional": True,
        "label": plain(_FIELD_LABELS[name], 2000),
        "element": element,
    }
    if name in _FIELD_HINTS:
        block["hint"] = plain(_FIELD_HINTS[name], 2000)
    return block


def _modal(callback_id: str, title: str, submit: str, blocks: list[Block], meta: str) -> Block:
    if len(meta) > PRIVATE_METADATA_LIMIT:
        raise ValueError("private_metadata over Slack's 3000 characters")
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": plain(title, 24),
        "submit": plain(submit, 24),
        "close": plain("Cancel", 24),
        "private_metadata": meta,
        "blocks": blocks,
    }


def edit_modal(defaults: Mapping[str, str], meta: ModalContext) -> Block:
    """The Edit modal, pre-filled from `Dispatcher.edit_defaults`."""
    blocks = [
        _text_input(name, defaults.get(name, ""), multiline=name in ("prompt", "negative"))
        for name in EDIT_FIELDS
    ]
    return _modal(EDIT_CALLBACK, "Edit and re-generate", "Generate", blocks, meta.dump())


def img2img_modal(meta: ModalContext) -> Block:
    """The modal of the "img2img from this image" message shortcut."""
    blocks = [
        _text_input("prompt", multiline=True),
        _text_input("negative", multiline=True),
        _text_input("strength", "0.75", max_length=10),
        _text_input("options", max_length=1000),
    ]
    return _modal(IMG2IMG_CALLBACK, "img2img", "Generate", blocks, meta.dump())


def submitted_values(view: Mapping[str, Any]) -> dict[str, str]:
    """A submitted modal's text fields by block id; an emptied field reads as ""."""
    values: dict[str, str] = {}
    state = view.get("state") or {}
    for block_id, actions in (state.get("values") or {}).items():
        for element in (actions or {}).values():
            value = element.get("value") if isinstance(element, dict) else None
            values[str(block_id)] = value if isinstance(value, str) else ""
    return values


@dataclass(frozen=True)
class ModalContext:
    """What a modal remembers between opening and submission (`private_metadata`).

    `action` is the Edit button's action id; `files` the shortcut's image references as
    (name, url, size, mimetype); `message` the shortcut's message ts (to fetch its files again
    when they did not fit); `respond` the shortcut's `response_url` (to reach the user
    privately should the channel refuse the bot).
    """

    channel: str
    thread: str | None
    action: str = ""
    files: tuple[tuple[str, str, int | None, str | None], ...] = ()
    message: str = ""
    respond: str = ""

    def dump(self) -> str:
        data: dict[str, Any] = {"c": self.channel, "t": self.thread}
        if self.action:
            data["a"] = self.action
        if self.files:
            data["f"] = [list(f) for f in self.files]
        if self.message:
            data["m"] = self.message
        if self.respond:
            data["r"] = self.respond
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> ModalContext | None:
        try:
            data = json.loads(text)
            files = tuple(
                (str(n), str(u), int(s) if s is not None else None, str(m) if m else None)
                for n, u, s, m in data.get("f", ())
            )
            return cls(
                channel=str(data["c"]),
                thread=str(data["t"]) if data.get("t") else None,
                action=str(data.get("a", "")),
                files=files,
                message=str(data.get("m", "")),
                respond=str(data.get("r", "")),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
