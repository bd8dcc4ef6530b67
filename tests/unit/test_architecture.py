"""The core's structure as rules that fail a test: layers without cycles (import-linter's
contracts in pyproject.toml), no Airflow and no simulator in production, imports at module top
except for heavy dependencies, and no module so long that its reason goes unstated."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "include" / "flywheel"
# Third-party packages that take seconds to import (or pull in a framework): a function may
# import them where it needs them, so that DAG parsing and light stages stay fast.
HEAVY = {
    "torch", "transformers", "peft", "datasets", "tokenizers", "great_expectations", "matplotlib",
    "statsmodels", "presidio_analyzer", "presidio_anonymizer", "spacy", "profanity_check", "detoxify",
    "google", "snowflake", "gcsfs", "s3fs", "datasketch", "sklearn", "tldextract",
    "detect_secrets",  # 0.46 s to import its plugins (python -X importtime), for the PII rule only
    "ftfy",  # 0.13 s to import, for validation's mojibake check only
    "pyap",  # address patterns, for the PII scanner only (imported with presidio)
    "faker",  # its person providers are the name gazetteer (about 90 locales, seconds), PII scanner only
    "flywheel_airflow",  # imports Airflow (seconds): `flywheel.ingest` opens a cloud warehouse's connection through it
}  # fmt: skip
LONG_MODULE_LINES = 400
LONG_MODULE_NOTE = "Why this module is long:"


def core_modules() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def test_import_contracts_hold():
    """`lint-imports` checks the contracts in pyproject.toml against the code's real imports."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (requirements.txt pins it)"
    run = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout, run.stdout[-3000:]


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if in_function and isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names)
            elif in_function and isinstance(child, ast.ImportFrom):
                found.append((child.lineno, "." * child.level + (child.module or "")))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return found


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_imports_are_at_module_top_except_heavy_dependencies(path):
    hidden = [(line, name) for line, name in function_level_imports(path) if name.split(".")[0] not in HEAVY]
    assert not hidden, f"{path.relative_to(ROOT)}: imports inside functions (move them to the top): {hidden}"


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_a_long_module_says_why(path):
    text = path.read_text(encoding="utf-8")
    n = len(text.splitlines())
    if n > LONG_MODULE_LINES:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert LONG_MODULE_NOTE in doc, f"{path.relative_to(ROOT)} has {n} lines: split it, or say in its docstring '{LONG_MODULE_NOTE} ...'"


def test_the_checks_catch_what_they_forbid(tmp_path):
    """The function-level scan sees nested and async functions, and skips TYPE_CHECKING blocks."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import json\n"
        "def f():\n    import os\n    def g():\n        from flywheel import config\n"
        "async def h():\n    import torch\n"
    )
    assert function_level_imports(probe) == [(5, "os"), (7, "flywheel"), (9, "torch")]
