"""Shared fixtures: every test gets its own EDGEFLEET_HOME with a fresh signing key."""

from __future__ import annotations

from collections.abc import Callable
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


# Tables a test reports (`report_table`) travel in its report's user properties, so pytest's terminal
# summary prints them also when a pytest-xdist worker ran the test. This hook lives in the root
# conftest: with xdist the main process loads no other.
TABLE_PROPERTY = "edgefleet_table"


@pytest.fixture
def report_table(record_property) -> Callable[[str, str], None]:
    """`report_table(title, table)`: the terminal summary prints the table under the title."""
    return lambda title, table: record_property(TABLE_PROPERTY, (title, table))


def pytest_terminal_summary(terminalreporter) -> None:
    tables = dict.fromkeys(
        tuple(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == TABLE_PROPERTY
    )
    for title, table in tables:
        terminalreporter.section(title)
        terminalreporter.write_line(table)


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
