"""Terminal output: rich where it is installed (developer machines, the fleet), plain text on cameras.

A camera installs the `agent` role only, which leaves out rich and what it pulls in (pygments,
markdown-it: ~13 MB of a camera's disk). Everything the agent's command line prints goes
through `make_console`, so the same code prints styled text with rich and plain text without.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO, Union

if TYPE_CHECKING:
    from rich.console import Console

# The markup tags edgefleet's messages use; only these are stripped, so text such as `[1, 2]` stays.
_MARKUP = re.compile(r"\[/?(?:bold red|bold cyan|bold|dim|green|red|yellow|cyan)\]")


class PlainConsole:
    """The part of rich's Console that edgefleet uses, printing plain lines."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    @property
    def file(self) -> TextIO:
        # Looked up at each print, as rich does, so redirected streams (tests, click's runner) are honoured.
        return sys.stderr if self.stderr else sys.stdout

    @property
    def is_terminal(self) -> bool:
        return self.file.isatty()

    def print(self, *objects: Any, **_: Any) -> None:
        print(_MARKUP.sub("", " ".join(str(o) for o in objects)), file=self.file, flush=True)

    @contextmanager
    def status(self, text: str) -> Iterator[None]:
        self.print(text)
        yield


# What make_console returns; Union, not |, because the alias is evaluated on Python 3.10.
AnyConsole = Union["Console", PlainConsole]


def escape(text: str) -> str:
    """`text` shown verbatim in a markup string: rich would read `edgefleet[fleet]` as a style tag."""
    try:
        from rich.markup import escape as rich_escape
    except ImportError:
        return text  # PlainConsole strips only edgefleet's own tags
    return rich_escape(text)


def make_console(stderr: bool = False) -> AnyConsole:
    """A rich Console when rich is installed, else a PlainConsole."""
    try:
        from rich.console import Console
    except ImportError:
        return PlainConsole(stderr)
    return Console(stderr=stderr, highlight=False)


def print_table(console: AnyConsole, columns: list[str], rows: list[list[object]], title: str | None = None) -> None:
    cells = [[str(c) for c in row] for row in rows]
    if not isinstance(console, PlainConsole):
        from rich.table import Table

        table = Table(*columns, title=title, show_lines=False)
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *cells)]
    for line in ([title] if title else []) + [
        "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [columns, *cells]
    ]:
        console.print(line)
