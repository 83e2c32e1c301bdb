"""Fixtures for the agent's own over-the-air updates: real agent processes under a supervisor, real mosquitto."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).parents[1] / "agent_update"))
sys.path.insert(0, str(Path(__file__).parent))
from agent_support import agent_package  # noqa: E402,F401
from ota_support import releases  # noqa: E402,F401
from support.broker import mqtt_broker  # noqa: E402,F401
from update_support import static_server  # noqa: E402,F401
