"""What the text of a prompt may hold: no hidden control characters, and well-formed
extra-network tags (`<lora:name:0.8>`, `<hypernet:name>`) in A1111's syntax.

`clean` drops characters that are invisible in chat but change what the backend reads or how
a message displays (NUL and other C0 / C1 controls except tab and newline, and the Unicode
bidirectional embeddings, overrides and isolates). `networks` finds the tags; the weights must
be finite numbers, as A1111 parses them with `float()` and would fail the job on anything else.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ("NETWORK_KINDS", "NetworkTag", "clean", "networks", "with_names")

# Cc except tab and newline; LRE RLE PDF LRO RLO (U+202A–U+202E); LRI RLI FSI PDI (U+2066–U+2069).
_HIDDEN = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# A1111's extra-network syntax (extra_networks.py: `<(\w+):([^>]+)>`), for the kinds the bot
# checks: `<lora:name>`, `<lora:name:0.8>`, `<lora:name:0.8:0.5>`, `<lora:name:te=0.8:unet=1>`.
_TAG = re.compile(r"<(lora|hypernet):([^:>]+)((?::[^:>]*)*)>", re.IGNORECASE)
# The ESD model type each kind names.
NETWORK_KINDS: dict[str, str] = {"lora": "Lora", "hypernet": "hypernetworks"}
# Named multipliers A1111's LoRA takes (`te=`, `unet=`, `dyn=` is a whole number).
_NAMED_WEIGHTS = frozenset({"te", "unet", "dyn"})


@dataclass(frozen=True)
class NetworkTag:
    kind: str  # "lora" | "hypernet"
    name: str
    span: tuple[int, int]  # where the name is in the prompt


def clean(text: str) -> str:
    """`text` without NUL, other control characters and bidirectional overrides."""
    return _HIDDEN.sub("", text)


def networks(prompt: str) -> list[NetworkTag]:
    """The prompt's LoRA / hypernetwork tags, in order. A weight that is not a finite number
    (`<lora:x:nan>`, `<lora:x:1e999>`, `<lora:x:strong>`) raises `ValueError` with a message
    for the user (the parser turns it into its `GrammarError`)."""
    found = []
    for match in _TAG.finditer(prompt):
        name = match[2].strip()
        for part in match[3].split(":")[1:]:
            key, _, value = part.rpartition("=")
            if key and key.strip().lower() not in _NAMED_WEIGHTS:
                continue  # an extension's own argument: not ours to judge
            if not _finite(value):
                raise ValueError(
                    f"the weight in `{match[0]}` must be a number such as 0.8, got "
                    f"`{part.strip() or '(nothing)'}`"
                )
        if name:
            found.append(NetworkTag(match[1].lower(), name, match.span(2)))
    return found


def _finite(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def with_names(prompt: str, names: dict[tuple[int, int], str]) -> str:
    """`prompt` with the tag names at the given spans replaced (the backend's spelling)."""
    out, last = [], 0
    for (start, end), name in sorted(names.items()):
        out += [prompt[last:start], name]
        last = end
    return "".join(out) + prompt[last:]
