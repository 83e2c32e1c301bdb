"""Stage progress for long work: each stage shows while it runs and prints its time when done."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from edgefleet.console import AnyConsole, make_console


class Stages:
    """Times named stages and reports them on stderr (a spinner on a terminal, lines otherwise)."""

    def __init__(self, quiet: bool = False, console: AnyConsole | None = None) -> None:
        self.console = console or make_console(stderr=True)
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        label = f"{name}" + (f" [dim]{detail}[/dim]" if detail else "")
        start = time.perf_counter()
        ok = False
        try:
            if self.quiet:
                yield
            elif self.console.is_terminal:
                with self.console.status(f"{label} ..."):
                    yield
            else:
                self.console.print(f"  {label} ...")
                yield
            ok = True
        finally:
            elapsed = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + elapsed
            if not self.quiet:
                mark = "[green]ok[/green]" if ok else "[red]failed[/red]"
                self.console.print(
                    f"  {mark} {name:<9} {elapsed:7.2f} s" + (f"  [dim]{detail}[/dim]" if detail else "")
                )

    def note(self, text: str) -> None:
        if not self.quiet:
            self.console.print(f"  [dim]{text}[/dim]")


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
