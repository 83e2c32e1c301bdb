"""Prints the vision subset's per-operator table at the end of the run (when it ran)."""

from __future__ import annotations

SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY:
        terminalreporter.section("ONNX conformance, vision subset (passed / wrong / unsupported / error per operator)")
        for block in SUMMARY:
            terminalreporter.write_line(block)
