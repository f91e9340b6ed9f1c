"""The core knows no platform: `bot/` and `commands/` never import chat or cloud libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = (
    "discord",
    "slack_bolt",
    "slack_sdk",
    "aiohttp",
    "boto3",
    "botocore",
    "prometheus_client",
    "jinja2",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_core_and_grammar_sources_import_no_platform_or_cloud_library() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & set(FORBIDDEN))
        for package in ("bot", "commands")
        for path in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_does_not_pull_them_in_transitively() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for package in ("bot", "commands")
        for p in (ROOT / package).rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(sorted(n for n in sys.modules if n.split('.')[0] in {FORBIDDEN!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_boundary_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import aiohttp\nfrom discord.ext import commands\n")
    assert _imports(sample) == {"aiohttp", "discord"}


PLATFORM_NAMES = ("console", "discord", "slack")


def _names_in_code(path: Path) -> set[str]:
    """Identifiers and string constants of `path` that name a platform (docstrings aside)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = "" if id(node) in docstrings else node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.arg):
            text = node.arg
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            text = node.name
        else:
            continue
        found.update(name for name in PLATFORM_NAMES if name in text.lower())
    return found


def test_the_core_names_no_platform() -> None:
    """Platforms are open (`bot.model.Platform`): each adapter declares its name, traits and
    settings, so adding one touches no file in bot/ (docs/architecture.md)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(_names_in_code(path))
        for path in (ROOT / "bot").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_platform_name_check_sees_a_name(tmp_path: Path) -> None:
    module = tmp_path / "core.py"
    module.write_text('"""Discord is fine in a docstring."""\nHINT = {"slack": 1}\n')
    assert _names_in_code(module) == {"slack"}
