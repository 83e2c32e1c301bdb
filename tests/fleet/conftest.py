"""Fixtures for the fleet tests: a fleet on SQLite in tmp_path with a recording notifier."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "agent_update"))
from update_support import tiny_packages  # noqa: E402,F401

sys.path.insert(0, str(Path(__file__).parent))
from tests_fleet_util import Clock, api, fleet, postgres_database, postgres_server  # noqa: E402,F401
