"""Shadow models, schema 1: a candidate runs beside the active model on a camera and never acts.

    edgefleet/v1/<device>/jobs/notify     JobDocument kind shadow_install (with `shadow`) / shadow_remove
    edgefleet/v1/<device>/shadow          ShadowReport, one per window while a shadow model runs

The camera installs the candidate as it would an install job (signature, hash, version rules) but
beside the active model; it runs it on a sampled share of frames within ShadowSettings' budget and
never raises alerts from it. Each report carries counts, not rates, so the fleet can sum windows
over devices and groups (a rate is computed where it is shown or gated on).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, StrictInt

from edgefleet.contracts.base import WireMessage
from edgefleet.contracts.drift import DriftSummary
from edgefleet.contracts.mqtt import Count, DeviceMessage, LatencySummary, ModelRef, Real

SHADOW_FEATURE = "shadow"  # what an agent that runs shadow jobs lists in StatusMessage.features
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class ShadowSettings(WireMessage):
    """How a camera runs the candidate; sent in the shadow_install job and shown by the fleet.

    The agent runs the candidate on `sample_share` of the frames the active model handled, skips a
    frame (counted in ShadowReport.skipped_budget) when the candidate's time in the last window
    would pass `cpu_share` of the wall clock, and keeps the active model's frame rate within
    `max_fps_drop_percent` of its rate without a shadow model."""

    sample_share: Share = 0.25
    cpu_share: Share = 0.25
    max_fps_drop_percent: Annotated[float, Field(ge=0.0, le=100.0)] = 10.0
    window_s: Annotated[float, Field(gt=0.0, le=3600.0)] = 60.0
    iou_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5  # detection: a box pair matches at or above it


class ClassificationAgreement(WireMessage):
    """Top labels compared on the same frames: `agree` of `frames` had the same top label."""

    task: Literal["classification"] = "classification"
    frames: Count = 0
    agree: Count = 0


class DetectionAgreement(WireMessage):
    """Boxes compared on the same frames: pairs matched greedily by IoU >= the threshold.

    `matched` pairs, of which `label_agree` had the same label; `score_delta_sum` and
    `score_abs_delta_sum` sum (candidate score - active score) over the matched pairs."""

    task: Literal["detection"] = "detection"
    frames: Count = 0
    active_boxes: Count = 0
    candidate_boxes: Count = 0
    matched: Count = 0
    label_agree: Count = 0
    score_delta_sum: Real = 0.0
    score_abs_delta_sum: Real = 0.0


Agreement = Annotated[ClassificationAgreement | DetectionAgreement, Field(discriminator="task")]


class ShadowReport(DeviceMessage):
    """One window of a shadow model beside the active one (topic edgefleet/v1/<device>/shadow).
    Revision 2: `run` and `seq` (DeviceMessage)."""

    REVISION: ClassVar[int] = 2
    job: Annotated[str, Field(min_length=1, max_length=200)]  # the shadow_install job it runs for
    rollout: StrictInt | None = None
    window_s: Annotated[float, Field(ge=0, le=1e9)]
    active: ModelRef
    candidate: ModelRef
    frames_seen: Count = 0  # frames the active model handled in the window
    skipped_budget: Count = 0  # sampled frames the candidate skipped to stay within the budget
    agreement: Agreement
    active_latency_ms: LatencySummary
    candidate_latency_ms: LatencySummary
    active_confidence: Real | None = None  # mean top score over the compared frames
    candidate_confidence: Real | None = None
    candidate_cpu_share: Share | None = None  # the candidate's inference time / the window's wall time
    drift: DriftSummary | None = None  # the candidate's drift summary over the compared frames
