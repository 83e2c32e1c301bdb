"""Agent 0.1.0's device code, as cameras in the field run it: the last commit before agents updated
themselves, `git archive --format=tar.gz -9 e4efb7df745d884c5f7f4dc45478c8623c69d240 edgefleet agent`
(kept in tests/fleet/data so a shallow clone runs the tests that need it)."""

from __future__ import annotations

import tarfile
from pathlib import Path

OLD_AGENT_ARCHIVE = Path(__file__).parents[1] / "fleet" / "data" / "agent-0.1.0.tar.gz"


def old_agent_site(root: Path) -> Path:
    """The device code of agent 0.1.0 laid out as a camera's site-packages (edgefleet + edgefleet.agent)."""
    src = root / "old-src"
    with tarfile.open(OLD_AGENT_ARCHIVE) as tar:
        tar.extractall(src, filter="data")
    site = root / "old-site"
    (site / "edgefleet").mkdir(parents=True)
    for py in (src / "edgefleet").glob("*.py"):
        (site / "edgefleet" / py.name).write_bytes(py.read_bytes())
    (src / "agent").rename(site / "edgefleet" / "agent")
    return site
