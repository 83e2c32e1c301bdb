"""Running `edgefleet ARGS...` through the real entry point (edgefleet.cli.main) in-process."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def run_cli(capsys: pytest.CaptureFixture[str], *args: object) -> CliResult:
    from edgefleet.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


def assert_cli_error(result: CliResult, error_type: type, *fragments: str) -> None:
    """The CLI contract for bad input: its distinct exit code, `error:` and `fix:` lines, no traceback."""
    assert result.code == error_type.exit_code, result.text
    assert "error: " in result.err and "fix: " in result.err, result.text
    assert "Traceback" not in result.text
    for fragment in fragments:
        assert fragment in result.err, f"{fragment!r} not in:\n{result.err}"
