"""The `edgefleet` command: a thin layer over the typed library.

Each subcommand maps its flags onto one documented function. Component groups are imported
lazily so a camera with only the agent installed never imports the compiler or fleet code.
Every EdgefleetError prints `error:` and `fix:` lines and exits with its code; no traceback.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from edgefleet.signing import PublicKey

from edgefleet import __version__
from edgefleet.console import escape, make_console, print_table
from edgefleet.errors import EdgefleetError, UsageError

console = make_console()
err_console = make_console(stderr=True)


class LazyGroup(click.Group):
    """A group whose subcommands are `module:attribute` strings, imported when used."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            module, _, attr = self.lazy[name].partition(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, name)


COMPONENT_GROUPS = {
    "compile": "edgefleet.compiler.cli:compile_command",
    "demo": "edgefleet.demo.cli:demo_command",
    "targets": "edgefleet.compiler.cli:targets_command",
    "inspect": "edgefleet.cli_package:inspect_command",
    "run": "edgefleet.agent.cli:run_package_command",
    "keys": "edgefleet.cli_package:keys",
    "models": "edgefleet.models.cli:models",
    "fleet": "edgefleet.fleet.cli:fleet",
    "agent": "edgefleet.agent.cli:agent",
    "cross": "edgefleet.cross.cli:cross",
    "runtime": "edgefleet.cross.runtime_cli:runtime",
    "bench": "edgefleet.compiler.bench:bench_command",
}


@click.group(
    cls=LazyGroup,
    lazy=COMPONENT_GROUPS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="edgefleet")
def cli() -> None:
    """Compile models for edge cameras, deploy them to fleets, and watch them drift."""


def print_json(obj: object) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def table(columns: list[str], rows: list[list[object]], title: str | None = None) -> None:
    print_table(console, columns, rows, title)


def run_cli(argv: list[str] | None) -> None:
    """The command, with a module missing from this role's install turned into a pip hint."""
    from edgefleet.extras import missing_extra_error

    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="edgefleet", standalone_mode=False)
    except ModuleNotFoundError as exc:
        hint = missing_extra_error(exc, next((a for a in args if not a.startswith("-")), None))
        if hint is None:
            raise
        raise hint from None


def main(argv: list[str] | None = None) -> None:
    try:
        run_cli(argv)
    except EdgefleetError as exc:
        err_console.print(f"[bold red]error:[/bold red] {escape(exc.cause)}", soft_wrap=True)
        if exc.fix:
            err_console.print(f"[bold]fix:[/bold] {escape(exc.fix)}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(UsageError.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


def parse_shape_option(values: tuple[str, ...]) -> dict[str, list[int]]:
    """`NAME:1,3,224,224` (repeatable) -> {NAME: [1, 3, 224, 224]}."""
    shapes: dict[str, list[int]] = {}
    for value in values:
        name, sep, dims = value.rpartition(":")
        try:
            parsed = [int(d) for d in dims.split(",")]
        except ValueError:
            parsed = []
        if not sep or not name or not parsed or any(d <= 0 for d in parsed):
            raise UsageError(
                f"--input-shape {value!r} is not NAME:D1,D2,...", "for example --input-shape input:1,3,224,224"
            )
        shapes[name] = parsed
    return shapes


def trusted_keys_option(paths: tuple[Path, ...]) -> list[PublicKey]:
    from edgefleet.signing import default_trusted_keys, load_public_key

    return [load_public_key(p) for p in paths] if paths else default_trusted_keys()


if __name__ == "__main__":
    main()
