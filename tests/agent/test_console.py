"""A camera has no rich: the command line prints plain text through edgefleet.console."""

from __future__ import annotations

import subprocess
import sys

from edgefleet.console import PlainConsole, make_console, print_table

# Runs the real CLI in a Python where `import rich` fails, as on a camera with only the agent role.
NO_RICH = "import sys; sys.modules['rich'] = None; from edgefleet.cli import main; main(sys.argv[1:])"


def test_without_rich_the_console_is_plain_and_strips_only_edgefleet_markup(monkeypatch, capsys):
    for name in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, name, None)
    console = make_console()
    assert isinstance(console, PlainConsole)
    console.print("[green]signature valid[/green] for labels [1, 2]")
    print_table(console, ["name", "size"], [["numpy", 71], ["click", 1]], title="sizes")
    assert capsys.readouterr().out.splitlines() == [
        "signature valid for labels [1, 2]",
        "sizes",
        "name   size",
        "numpy  71",
        "click  1",
    ]


def test_agent_cli_errors_print_plain_lines_without_rich(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", NO_RICH, "agent", "check-config", str(tmp_path / "missing.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("error: ") and "[bold" not in proc.stderr and "fix: " in proc.stderr
