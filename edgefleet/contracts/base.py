"""Base classes of the contracts between components, and their versions.

A contract carries its major version on the wire (`schema`, `format` or `format_version`);
a reader refuses any other major. Within one major a writer may add optional fields, which
readers of that major ignore (cameras and the fleet are upgraded at different times), so
wire messages are read with extra="ignore". `REVISION` counts those additions: the contract
test (tests/contracts) fails when a model's JSON schema changes while (version, REVISION)
stays, so every change of shape is a deliberate new revision or major.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from edgefleet.strict import Strict


class WireMessage(BaseModel):
    """A message between independently upgraded components: extra fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    REVISION: ClassVar[int] = 1
    # Optional additions written only when set, as the v1 writers always did.
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()

    def wire(self) -> dict[str, Any]:
        """The JSON-ready dict that goes on the wire."""
        skip = {name for name in self.OMIT_IF_NONE if getattr(self, name) is None}
        return self.model_dump(mode="json", by_alias=True, exclude=skip)


class Document(Strict):
    """A document whose writer and reader agree on every field (a baseline, a rollout plan): unknown
    fields are errors, and a parsed one is not edited in place."""

    REVISION: ClassVar[int] = 1
