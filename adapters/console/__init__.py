"""The console adapter: commands from stdin, line-oriented results on stdout (SPEC §5)."""

from adapters.console.adapter import ConsoleAdapter, ConsoleSettings, run_console

__all__ = ["ConsoleAdapter", "ConsoleSettings", "run_console"]
