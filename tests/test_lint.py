"""ruff (lint and format) over the repository and mypy (strict) over the shared package, as configured in
pyproject.toml; both come with the dev extra (`pip install -e '.[dev]'`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_tool(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "No module named" not in proc.stderr, f"{args[0]} is not installed: pip install -e '.[dev]'"
    return proc


def test_ruff_check_passes():
    proc = run_tool("ruff", "check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_leaves_nothing_to_change():
    proc = run_tool("ruff", "format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, "run `ruff format .`:\n" + proc.stdout + proc.stderr


def test_mypy_strict_on_the_shared_package_passes():
    proc = run_tool("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
