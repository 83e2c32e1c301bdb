"""Shared fixtures: every test gets its own EDGEFLEET_HOME with a fresh signing key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.signing import SigningKey, create_signing_key

LIGHT_MODELS = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture
def edgefleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "edgefleet-home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    monkeypatch.delenv("EDGEFLEET_SIGNING_KEY", raising=False)
    return home


@pytest.fixture
def signing_key(edgefleet_home: Path) -> SigningKey:
    return create_signing_key()
