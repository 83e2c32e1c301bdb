"""Detector heads, one plugin per file (each with its config class), like Frigate's detectors.

The registry is built from the modules in this folder: each defines one `Head` subclass.
`resolve_head` picks the head for a model at compile time, from `--head` or from the output
shapes when only one head can read them.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from edgefleet.agent.detectors.base import Head, HeadConfig, Shapes
from edgefleet.errors import BadInputError, UsageError
from edgefleet.strict import first_error

NOT_PLUGINS = {"base"}


@cache
def heads() -> dict[str, type[Head]]:
    """name -> Head class, from every plugin module in this package."""
    found: dict[str, type[Head]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in NOT_PLUGINS:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for value in vars(module).values():
            own = isinstance(value, type) and value.__module__ == module.__name__
            if own and issubclass(value, Head):
                found[value.name] = value
    return dict(sorted(found.items()))


def get_head(name: str) -> type[Head]:
    try:
        return heads()[name]
    except KeyError:
        raise BadInputError(
            f"unknown detection head {name!r}; this agent knows {', '.join(heads())}",
            "upgrade the agent, or recompile the model with one of those heads",
        ) from None


def head_config(name: str, options: dict) -> HeadConfig:
    """Validate a head's options with its config class; a clear error names the bad key."""
    from pydantic import ValidationError

    try:
        return get_head(name).config_class(**options)
    except ValidationError as exc:
        first = first_error(exc, top="options")
        raise BadInputError(
            f"detection head {name} option {first.where}: {first.msg}", "see docs/agent.md for the head's options"
        ) from None


def layouts() -> str:
    return "; ".join(f"{name}: {cls.layout}" for name, cls in heads().items())


def detect_head(shapes: Shapes) -> str:
    """The one head that can read outputs of these shapes, or a refusal naming the candidates."""
    found = [name for name, cls in heads().items() if cls.matches(shapes)]
    if len(found) == 1:
        return found[0]
    h, w = shapes.input_hw
    described = f"outputs {shapes.outputs} (input {h}x{w}, {shapes.num_labels or 'no'} labels)"
    if not found:
        raise UsageError(
            f"no detection head reads {described}; expected one of: {layouts()}",
            "export the model with one of these layouts (docs/agent.md), or compile with --task classification",
        )
    raise UsageError(
        f"{described} could be read by several heads: {', '.join(found)}",
        f"pick one with --head {'|'.join(found)} (a --labels file also narrows it down)",
    )
