"""The one strict base model: unknown fields are an error, so a typo in a request or a
config file is refused with its name instead of being ignored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
