"""Prints the vision subset's per-operator table at the end of the run (when it ran)."""

from __future__ import annotations

import pytest

_SUMMARY: list[str] = []


@pytest.fixture(scope="session")
def conformance_summary() -> list[str]:
    """Tables appended here are printed in pytest's terminal summary."""
    return _SUMMARY


def pytest_terminal_summary(terminalreporter) -> None:
    if _SUMMARY:
        terminalreporter.section("ONNX conformance, vision subset (passed / wrong / unsupported / error per operator)")
        for block in _SUMMARY:
            terminalreporter.write_line(block)
