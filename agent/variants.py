"""Which of a package's libraries to load: the best one this CPU runs (docs/package-format.md, variants.json).

A package for a generic target carries one library per ISA level (model.so, the portable one,
and e.g. model.x86-64-v4.so), each with the Linux /proc/cpuinfo flags it needs. The first one
whose flags the CPU has wins; a package without variants.json loads runtime.library as before.
`EDGEFLEET_LIBRARY` (or [runtime] library) forces one by ISA level or member name, and
`EDGEFLEET_CPU_FLAGS` replaces the flags read from the CPU (tests, and CPUs whose kernel hides them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import TargetNotRunnableError, UsageError
from edgefleet.package import OpenedPackage

FORCE_ENV = "EDGEFLEET_LIBRARY"
FLAGS_ENV = "EDGEFLEET_CPU_FLAGS"
CPUINFO = Path("/proc/cpuinfo")

# [runtime] library of the agent config (`force_library`); the environment wins over it.
_forced: str | None = None


@dataclass(frozen=True)
class Choice:
    path: Path
    library: str  # the package member
    isa: str | None  # None: a package without variants.json
    why: str  # "best this CPU runs", "forced by EDGEFLEET_LIBRARY", ...

    def describe(self) -> str:
        return self.library if self.isa is None else f"{self.library} ({self.isa}, {self.why})"


def force_library(name: str | None) -> None:
    """The agent config's [runtime] library: an ISA level or member name to load instead of the best."""
    global _forced
    _forced = name


def cpu_flags() -> set[str]:
    """This CPU's feature flags: EDGEFLEET_CPU_FLAGS (space- or comma-separated) or /proc/cpuinfo's first `flags` line."""
    given = os.environ.get(FLAGS_ENV)
    if given is not None:
        return set(given.replace(",", " ").split())
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def select_library(package: OpenedPackage) -> Choice:
    """The library to load from `package`: forced, else the best whose CPU flags this machine has."""
    listed = package.variants()
    default = package.manifest.runtime.library
    if listed is None:
        return Choice(package.path(default), default, None, "the package's only library")
    env = os.environ.get(FORCE_ENV)
    forced, source = (env, FORCE_ENV) if env else (_forced, "[runtime] library")
    flags = cpu_flags()
    if forced:
        match = [v for v in listed.variants if forced in (v.isa, v.library)]
        if not match:
            names = ", ".join(v.isa for v in listed.variants)
            raise UsageError(f"{source} = {forced!r} is not a library of this package", f"pick one of: {names}")
        return Choice(package.path(match[0].library), match[0].library, match[0].isa, f"forced by {source}")
    for variant in listed.variants:
        if set(variant.cpu_features) <= flags:
            return Choice(package.path(variant.library), variant.library, variant.isa, "best this CPU runs")
    # Refused here, not by an illegal-instruction crash on the first frame.
    lacking = sorted(set(listed.variants[-1].cpu_features) - flags)
    raise TargetNotRunnableError(
        f"this CPU lacks {', '.join(lacking)}, which every library of package {package.manifest.name} needs",
        "compile the model for this CPU (a target with an older ISA level, or a raw TVM target)",
    )
