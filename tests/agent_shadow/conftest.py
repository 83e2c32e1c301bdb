"""Fixtures for shadow models on the camera: real agent processes, real mosquitto, real compiled candidates."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).parents[1] / "agent_update"))
sys.path.insert(0, str(Path(__file__).parent))
from shadow_support import shadow_packages  # noqa: E402,F401
from support.broker import mqtt_broker  # noqa: E402,F401
from update_support import static_server  # noqa: E402,F401
