"""Fixtures for the on-device update tests (shared with tests/fleet through update_support)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from update_support import static_server, tiny_packages  # noqa: E402,F401
