"""Prints the vision subset's per-operator table at the end of the run (when it ran). The table
travels in the test reports' user properties, so it is printed when a pytest-xdist worker ran it too."""

from __future__ import annotations

from collections.abc import Callable

import pytest

TABLE_PROPERTY = "onnx_conformance_table"


@pytest.fixture
def report_conformance_table(record_property) -> Callable[[str], None]:
    """Call it with a table: the terminal summary prints it."""
    return lambda table: record_property(TABLE_PROPERTY, table)


def pytest_terminal_summary(terminalreporter) -> None:
    tables = dict.fromkeys(
        value
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == TABLE_PROPERTY
    )
    if tables:
        terminalreporter.section("ONNX conformance, vision subset (passed / wrong / unsupported / error per operator)")
        for table in tables:
            terminalreporter.write_line(table)
