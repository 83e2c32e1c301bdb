"""Drift: compare an agent's telemetry window with the package's baseline, and alarm on it.

Pure library (no database, no network). Three parts:

- reading the baseline file (`baseline.json`, edgefleet.contracts.drift), written by the compiler;
- distances between two histograms: PSI and the Jensen-Shannon distance (base 2, in 0..1);
- the per-(device, model version) alarm state machine, as a transition table: an alarm is
  raised after `windows_to_alarm` consecutive windows over the threshold and cleared after
  `windows_to_clear` consecutive windows under it.

A drift summary (the agent's telemetry `drift` object, edgefleet.agent.metrics) holds
histograms with FIXED bin edges (brightness, contrast, confidence) and per-class top-1
counts (predictions). A window and its baseline are only compared on equal edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError

# Baseline and parse_summary are the drift contract (edgefleet.contracts.drift); the fleet's drift modules take them from here.
from edgefleet.contracts.drift import BASELINE_FORMAT_VERSION, Baseline, DriftSummary, Histogram, parse_summary  # noqa: F401
from edgefleet.contracts.mqtt import AlarmEvent
from edgefleet.errors import BadInputError
from edgefleet.strict import Strict, first_error

FEATURES = ("brightness", "contrast", "predictions", "confidence")
# PSI adds this pseudo-count to every bin (Jeffreys prior): an empty bin stays finite, and a
# small window's empty bins do not read as drift the way a tiny floor (1e-4) makes them.
PSEUDO_COUNT = 0.5


def merge_summaries(summaries: list[DriftSummary]) -> DriftSummary:
    """Several windows (of one model version, same fixed edges) as one: counts added bin by bin."""
    first = summaries[0]

    def add(feature: str) -> Histogram:
        return Histogram(
            edges=getattr(first, feature).edges,
            counts=[sum(c) for c in zip(*(getattr(s, feature).counts for s in summaries))],
        )

    predictions: dict[str, int] = {}
    for s in summaries:
        for label, n in s.predictions.items():
            predictions[label] = predictions.get(label, 0) + n
    return DriftSummary(
        brightness=add("brightness"), contrast=add("contrast"), predictions=predictions, confidence=add("confidence")
    )


def parse_baseline(raw: object) -> Baseline:
    if isinstance(raw, dict) and raw.get("format_version") not in (None, BASELINE_FORMAT_VERSION):
        raise BadInputError(
            f"baseline format version {raw.get('format_version')} is not supported (this edgefleet reads {BASELINE_FORMAT_VERSION})",
            "upgrade edgefleet on the fleet service",
        )
    try:
        return Baseline.model_validate(raw)
    except ValidationError as exc:
        first = first_error(exc)
        raise BadInputError(
            f"baseline.json is malformed at {first.where}: {first.msg}", "recompile the package with --baseline-images"
        ) from None


# ---- distances ------------------------------------------------------------------------


def _proportions(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.full(counts.shape, 1.0 / counts.size)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` against `expected` (both bin counts).

    Rule of thumb: < 0.1 no shift, 0.1-0.25 moderate, > 0.25 significant.
    """
    e = _proportions(np.asarray(expected, dtype=np.float64) + PSEUDO_COUNT)
    a = _proportions(np.asarray(actual, dtype=np.float64) + PSEUDO_COUNT)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2): 0 for equal distributions, 1 for disjoint ones."""
    from scipy.spatial.distance import jensenshannon

    value = float(
        jensenshannon(
            _proportions(np.asarray(expected, dtype=np.float64)),
            _proportions(np.asarray(actual, dtype=np.float64)),
            base=2,
        )
    )
    return 0.0 if math.isnan(value) else value


def _vectors(feature: str, baseline: DriftSummary, window: DriftSummary) -> tuple[np.ndarray, np.ndarray]:
    if feature == "predictions":
        classes = sorted(set(baseline.predictions) | set(window.predictions))
        return (
            np.array([baseline.predictions.get(c, 0) for c in classes], dtype=np.float64),
            np.array([window.predictions.get(c, 0) for c in classes], dtype=np.float64),
        )
    b, w = getattr(baseline, feature), getattr(window, feature)
    if len(b.edges) != len(w.edges) or not np.allclose(b.edges, w.edges, atol=1e-6):
        raise BadInputError(
            f"the window's {feature} bin edges differ from the baseline's",
            "the agent and the compiler must share edgefleet.agent.metrics' fixed edges; upgrade the older one",
        )
    return np.array(b.counts, dtype=np.float64), np.array(w.counts, dtype=np.float64)


def check_edges(baseline: DriftSummary, window: DriftSummary) -> None:
    """BadInputError unless every histogram of `window` has the baseline's bin edges (checked
    before windows are pooled: a sum over different edges would be meaningless)."""
    for feature in FEATURES:
        if feature != "predictions":
            _vectors(feature, baseline, window)


@dataclass(frozen=True)
class FeatureDistance:
    psi: float
    js: float


def compare(baseline: DriftSummary, window: DriftSummary) -> dict[str, FeatureDistance]:
    """PSI and JS distance per feature. Features with no data on either side are left out."""
    out = {}
    for feature in FEATURES:
        b, w = _vectors(feature, baseline, window)
        if b.size == 0 or not b.sum() or not w.sum():
            continue
        out[feature] = FeatureDistance(round(psi(b, w), 6), round(js_distance(b, w), 6))
    return out


# ---- alarm state machine --------------------------------------------------------------


class DriftConfig(Strict):
    """The [drift] section of the fleet config (see docs/drift.md)."""

    metric: Literal["psi", "js"] = "psi"
    threshold: float = Field(0.25, gt=0)
    features: list[Literal["brightness", "contrast", "predictions", "confidence"]] = Field(
        default_factory=lambda: list(FEATURES)
    )
    windows_to_alarm: int = Field(3, ge=1)
    windows_to_clear: int = Field(3, ge=1)
    # Windows with fewer frames are skipped: PSI of a 10-bin histogram has a sampling bias of about
    # (bins - 1) * (1/frames + 1/baseline images), so small windows read as drift.
    min_frames: int = Field(100, ge=1)
    # A device's telemetry windows are pooled until they hold min_frames (so a 1 fps camera is judged
    # too); frames older than this are dropped rather than mixed with the present (night with day).
    max_age_s: float = Field(1800.0, gt=0)
    # The fleet-wide alarm of a model version: over when at least fleet_share of its devices seen in
    # the last fleet_horizon_s have a newest window over the threshold; needs fleet_min_devices of them.
    fleet_share: float = Field(0.5, gt=0, le=1)
    fleet_min_devices: int = Field(2, ge=1)
    fleet_horizon_s: float = Field(1800.0, gt=0)
    # Where alarms are POSTed as JSON; a URL often carries a secret, so it is read from a file
    # (or the env var EDGEFLEET_FLEET_DRIFT_WEBHOOK), never written in the config itself.
    webhook_url_file: Path | None = None
    webhook_timeout_s: float = Field(5.0, gt=0)


OK, PENDING, ALARM, RECOVERING = "ok", "pending", "alarm", "recovering"
STATES = (OK, PENDING, ALARM, RECOVERING)
# Events: a window over/under the threshold; "*_enough" when it completes the streak
# (windows_to_alarm over, windows_to_clear under).
OVER, OVER_ENOUGH, UNDER, UNDER_ENOUGH = "over", "over_enough", "under", "under_enough"
TRANSITIONS: dict[tuple[str, str], str] = {
    (OK, UNDER): OK,
    (OK, UNDER_ENOUGH): OK,
    (OK, OVER): PENDING,
    (OK, OVER_ENOUGH): ALARM,  # windows_to_alarm == 1
    (PENDING, OVER): PENDING,
    (PENDING, OVER_ENOUGH): ALARM,
    (PENDING, UNDER): OK,
    (PENDING, UNDER_ENOUGH): OK,
    (ALARM, OVER): ALARM,
    (ALARM, OVER_ENOUGH): ALARM,
    (ALARM, UNDER): RECOVERING,
    (ALARM, UNDER_ENOUGH): OK,  # windows_to_clear == 1
    (RECOVERING, UNDER): RECOVERING,
    (RECOVERING, UNDER_ENOUGH): OK,
    (RECOVERING, OVER): ALARM,
    (RECOVERING, OVER_ENOUGH): ALARM,
}
ALARMED = frozenset({ALARM, RECOVERING})  # the alarm is up in both


@dataclass(frozen=True)
class AlarmState:
    state: str = OK
    over_streak: int = 0
    under_streak: int = 0


@dataclass(frozen=True)
class WindowVerdict:
    score: float  # the configured metric, max over the configured features
    worst: str | None  # the feature with that score
    over: bool
    distances: dict[str, FeatureDistance]


def judge(baseline: DriftSummary, window: DriftSummary, config: DriftConfig) -> WindowVerdict:
    distances = compare(baseline, window)
    scored = {f: getattr(d, config.metric) for f, d in distances.items() if f in config.features}
    worst = max(scored, key=scored.get) if scored else None
    score = scored[worst] if worst else 0.0
    return WindowVerdict(score, worst, score > config.threshold, distances)


def step(current: AlarmState, over: bool, config: DriftConfig) -> tuple[AlarmState, AlarmEvent | None]:
    """Advance the alarm by one judged window. Returns the new state and "raised", "cleared" or None."""
    over_streak = current.over_streak + 1 if over else 0
    under_streak = 0 if over else current.under_streak + 1
    if over:
        event = OVER_ENOUGH if over_streak >= config.windows_to_alarm else OVER
    else:
        event = UNDER_ENOUGH if under_streak >= config.windows_to_clear else UNDER
    new = TRANSITIONS[(current.state, event)]
    change: AlarmEvent | None = None
    if new in ALARMED and current.state not in ALARMED:
        change = "raised"
    elif new not in ALARMED and current.state in ALARMED:
        change = "cleared"
    return AlarmState(new, over_streak, under_streak), change


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float | None], top: float) -> str:
    """One character per value, scaled to 0..top (values over top are full); None is a gap."""
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            level = min(len(SPARKS) - 1, int(max(0.0, v) / top * (len(SPARKS) - 1) + 0.5)) if top > 0 else 0
            out.append(SPARKS[level])
    return "".join(out)
