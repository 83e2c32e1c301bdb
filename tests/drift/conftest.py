"""Drift test fixtures: the tiny classifier compiled with a baseline (once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from drift_support import compile_with_baseline


@pytest.fixture(scope="session")
def baseline_package(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(package, trusted public key, baseline image folder) compiled for this machine with --baseline-images."""
    return compile_with_baseline(tmp_path_factory.mktemp("drift-package"))
