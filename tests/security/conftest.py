"""Fixtures for the attack suite: the real broker (the fleet's configuration and ACL), the fleet,
tiny signed packages and the update-side device, all from the existing test helpers."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).parent.parent
for area in ("fleet", "agent_update", "agent", "security"):
    sys.path.insert(0, str(TESTS / area))

from agent_support import agent_package  # noqa: E402,F401
from support.broker import mqtt_broker  # noqa: E402,F401
from tests_fleet_util import api, fleet  # noqa: E402,F401
from update_support import device, static_server, tiny_packages  # noqa: E402,F401
