"""The base for every pydantic model edgefleet reads from outside (configs, manifests, specs),
and the one way a validation error becomes a one-line message.

Unknown keys are errors: a typo in a config or a field from a newer writer must not be ignored
silently.
"""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError


class Strict(BaseModel):
    """Unknown keys rejected; instances immutable (parsed input is not edited in place)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictMutable(BaseModel):
    """Unknown keys rejected; fields assignable (a service config that tests and setup adjust)."""

    model_config = ConfigDict(extra="forbid")


class FirstError(NamedTuple):
    """The first problem pydantic found: where (dotted key path) and what; `more` counts the rest."""

    where: str
    msg: str
    more: int


def first_error(exc: ValidationError, top: str = "top level") -> FirstError:
    """Error messages name one problem (the first) so the user fixes it and runs again."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or top
    return FirstError(where, error["msg"], exc.error_count() - 1)
