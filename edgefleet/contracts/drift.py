"""Drift summaries (the `drift` object of agent telemetry) and the package baseline (baseline.json)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from edgefleet.contracts.base import Document
from edgefleet.errors import BadInputError
from edgefleet.strict import first_error

BASELINE_FORMAT_VERSION: Literal[1] = 1


class Histogram(Document):
    edges: list[float]
    counts: list[int]

    @model_validator(mode="after")
    def _shape(self) -> Histogram:
        if len(self.edges) != len(self.counts) + 1 or len(self.counts) < 1:
            raise ValueError(
                f"a histogram needs len(edges) == len(counts) + 1 (got {len(self.edges)} edges, {len(self.counts)} counts)"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError("histogram counts must be >= 0")
        return self

    def mean(self) -> float | None:
        """The mean of the binned values (bin centres weighted by count); None when empty."""
        total = sum(self.counts)
        if not total:
            return None
        return sum((self.edges[i] + self.edges[i + 1]) / 2 * c for i, c in enumerate(self.counts)) / total


class DriftSummary(Document):
    """The agent's per-window `drift` object, and the baseline's `summary` (versioned with its container)."""

    brightness: Histogram
    contrast: Histogram
    predictions: dict[str, int] = Field(default_factory=dict)
    confidence: Histogram

    @property
    def frames(self) -> int:
        return sum(self.brightness.counts)


class Baseline(Document):
    """baseline.json inside a model package (format version 1), written by the compiler, read by the fleet."""

    format_version: Literal[1] = BASELINE_FORMAT_VERSION
    model: str
    version: str
    images: int = Field(ge=1)
    source: str  # the folder or S3 prefix the baseline images came from
    computed_with: str  # the runtime that produced the predictions (the compiled model, or a reference)
    created_at: str
    summary: DriftSummary


def parse_summary(raw: object) -> DriftSummary:
    try:
        return DriftSummary.model_validate(raw)
    except ValidationError as exc:
        first = first_error(exc)
        raise BadInputError(
            f"drift summary is malformed at {first.where}: {first.msg}",
            "send the agent's telemetry `drift` object unchanged",
        ) from None
