"""sdbot's command grammar: the declarations, the text parser and the help generated from them.

`commands.spec` declares every command and option once; `commands.parse` reads chat text and
Discord option values against those declarations; `commands.help` writes the help text from
them. This package is pure (no I/O), knows no chat platform and imports nothing from the core:
it raises its own `GrammarError`, which the core answers as a refusal.
"""

from __future__ import annotations

from commands.errors import GrammarError
from commands.help import describe_value, help_text
from commands.parse import (
    BACKEND_JOB_ID,
    ParsedCommand,
    ParsedReply,
    build,
    closest,
    convert_option,
    find_command,
    parse,
    parse_reply,
    tokenize,
)
from commands.spec import (
    AREAS,
    COMMANDS,
    DEFAULT_SAMPLER,
    FILL_MODES,
    GENERATION_OPTIONS,
    INPAINT_OPTIONS,
    JOB_STATES,
    METHODS,
    MODEL_TYPES,
    OPTIONS,
    OUT_OF_SCOPE,
    RESIZE_MODES,
    SAMPLERS,
    AttachmentSpec,
    CommandSpec,
    Family,
    Kind,
    OptionSpec,
    OptionValue,
    Size,
    Slot,
)

__all__ = (
    "AREAS",
    "BACKEND_JOB_ID",
    "COMMANDS",
    "DEFAULT_SAMPLER",
    "FILL_MODES",
    "GENERATION_OPTIONS",
    "INPAINT_OPTIONS",
    "JOB_STATES",
    "METHODS",
    "MODEL_TYPES",
    "OPTIONS",
    "OUT_OF_SCOPE",
    "RESIZE_MODES",
    "SAMPLERS",
    "AttachmentSpec",
    "CommandSpec",
    "Family",
    "GrammarError",
    "Kind",
    "OptionSpec",
    "OptionValue",
    "ParsedCommand",
    "ParsedReply",
    "Size",
    "Slot",
    "build",
    "closest",
    "convert_option",
    "describe_value",
    "find_command",
    "help_text",
    "parse",
    "parse_reply",
    "tokenize",
)
