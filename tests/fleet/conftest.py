"""Fixtures for the fleet tests: a fleet on SQLite in tmp_path with a recording notifier."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "agent_update"))
from update_support import tiny_packages  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).parent))
from tests_fleet_util import Clock  # noqa: E402


@pytest.fixture
def fleet(tmp_path: Path, edgefleet_home: Path, tiny_packages: dict):
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet

    sent: list[tuple[str, dict]] = []
    config = FleetConfig(data_dir=tmp_path / "fleet", signing_key=tiny_packages["key"])
    f = open_fleet(config, notify=lambda device, payload: sent.append((device, payload)))
    f.clock = Clock()
    f.sent = sent
    return f
