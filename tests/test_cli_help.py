"""Every `edgefleet` group, command, option and argument has user-facing help: this walks the click
tree (component groups included) and fails on empty help, on developer text (module paths,
function names, "Maps to", TODO) and on a command without an example of itself."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from edgefleet.cli import cli

# Text for the developer, not the user: module paths, function calls, notes to self.
DEVELOPER_TEXT = re.compile(
    r"Maps to|\bTODO\b|\bFIXME\b|\bXXX\b|\bedgefleet\.[a-z_]+\.[a-z_]+|\b[a-z]+_[a-z_]+\(|\b[a-z_]+\(\)"
)


def walk(command: click.Command, path: tuple[str, ...], ctx: click.Context):
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{' '.join(path)} lists {name} but cannot load it"
            yield from walk(sub, (*path, name), click.Context(sub, parent=ctx, info_name=name))


COMMANDS = dict(walk(cli, ("edgefleet",), click.Context(cli, info_name="edgefleet")))


def test_the_walk_reaches_every_component():
    names = {path[1] for path in COMMANDS if len(path) > 1}
    assert {"compile", "fleet", "agent", "cross", "models", "runtime", "demo", "keys"} <= names
    assert len(COMMANDS) >= 50


def problems(path: tuple[str, ...], command: click.Command) -> list[str]:
    text = (command.help or "").strip()
    found = [] if text else ["no help text"]
    prose, _, examples = text.partition("Examples:")  # examples are shell lines: code is fine there
    found += [f"developer text {m.group(0)!r}" for m in DEVELOPER_TEXT.finditer(prose)]
    if not isinstance(command, click.Group):
        usage = " ".join(path)
        if not any(line.strip().startswith(usage) for line in examples.splitlines()):
            found.append(f"no 'Examples:' section with a line starting {usage!r}")
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            name = param.opts[-1]
            if not (param.help or "").strip():
                found.append(f"option {name} has no help")
            found += [
                f"option {name}: developer text {m.group(0)!r}" for m in DEVELOPER_TEXT.finditer(param.help or "")
            ]
        elif isinstance(param, click.Argument) and param.human_readable_name not in text:
            found.append(f"argument {param.human_readable_name} is not described in the help")
    return found


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_is_for_users(path):
    assert problems(path, COMMANDS[path]) == []


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_renders(path):
    result = CliRunner().invoke(cli, [*path[1:], "--help"], prog_name="edgefleet")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: {' '.join(path)}")


def test_the_checks_catch_what_they_look_for():
    """The check itself: a command with each kind of gap is reported."""

    @click.command()
    @click.argument("thing")
    @click.option("--plain")
    @click.option("--dev", help="See run_agent() for details.")
    def bad(thing: str, plain: str, dev: str) -> None:
        """Maps to edgefleet.agent.run.run_agent. TODO: examples."""

    found = problems(("edgefleet", "bad"), bad)
    assert any("'Maps to'" in p for p in found) and any("edgefleet.agent.run" in p for p in found)
    assert any("'TODO'" in p for p in found) and any("no 'Examples:'" in p for p in found)
    assert "option --plain has no help" in found and any(p.startswith("option --dev: developer") for p in found)
    assert "argument THING is not described in the help" in found


@pytest.mark.parametrize(
    ("words", "expected"),
    [("edgefleet fleet ro", "plain,rollouts"), ("edgefleet compile m.onnx --ta", "plain,--target")],
)
def test_shell_completion_as_the_readme_documents(words, expected):
    """Click's completion through the installed `edgefleet` script (README, "Shell completion")."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "edgefleet"
    source = subprocess.run(
        [script], env={**os.environ, "_EDGEFLEET_COMPLETE": "bash_source"}, capture_output=True, text=True, check=True
    )
    assert "complete -o nosort -F _edgefleet_completion edgefleet" in source.stdout
    env = {**os.environ, "_EDGEFLEET_COMPLETE": "bash_complete", "COMP_WORDS": words}
    env["COMP_CWORD"] = str(len(words.split()) - 1)  # completing the last word
    answer = subprocess.run([script], env=env, capture_output=True, text=True, check=True)
    assert expected in answer.stdout.splitlines()
