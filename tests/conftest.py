"""Shared fixtures: every test gets its own EDGEFLEET_HOME with a fresh signing key."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.cli import CliResult, run_cli
from support.scenes import scene_dataset, scene_detector  # noqa: F401  (session fixtures for tests/models and tests/agent)

from edgefleet.signing import SigningKey, create_signing_key

# The TVM compiler and the camera runtime cannot share a process (docs/runtime.md). Tests
# compile in this process, so the compiler comes first and agent code called from a test runs
# models in the runtime worker; agents started as processes load the runtime themselves.
try:
    import tvm  # noqa: F401
except ImportError:  # an install without the compiler: agent code loads the runtime in-process
    pass


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """With pytest-xdist (`--dist loadgroup`, scripts/test.sh): a file's tests run in one worker, in
    order, so its module fixtures are made once; tests/cross runs in one worker, so one process builds
    the sysroots and ARM runtimes its session fixtures share."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            path = Path(item.path).relative_to(Path(__file__).parent)
            item.add_marker(pytest.mark.xdist_group("cross" if path.parts[0] == "cross" else str(path)))


@pytest.fixture
def edgefleet_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "edgefleet-home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    monkeypatch.delenv("EDGEFLEET_SIGNING_KEY", raising=False)
    return home


@pytest.fixture
def signing_key(edgefleet_home: Path) -> SigningKey:
    return create_signing_key()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """`cli("compile", ...)` runs `edgefleet compile ...` in this process and returns a CliResult."""

    def run(*args: object) -> CliResult:
        return run_cli(capsys, *args)

    return run
