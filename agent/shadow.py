"""Shadow models on the camera: a candidate runs beside the active model and never acts.

The inference loop hands ShadowRunner.observe() every frame the active model handled. The
candidate runs on `sample_share` of them (a deterministic credit: share 0.25 is every 4th
frame), on the active model's preprocessed input when both packages preprocess alike (else on
its own), after the active model's alerts are stored: its results go to the window's counts and
nowhere else (no rules, no alerts).

Budget (ShadowBudget): two buckets of candidate seconds. The CPU bucket fills with `cpu_share`
of each wall-clock second; the frame-rate bucket fills with k = d / (1 - d) of each active
frame's handling time (d = max_fps_drop_percent / 100): a loop that spends at most k x its
active time on the candidate handles frames at least (1 - d) as fast as without it. A sampled
frame runs only when neither bucket is in debt; the candidate's whole step (preprocessing, run,
comparison) is then taken from both, so one run can overshoot by its own cost, which later
frames pay back. Each bucket holds at most BURST_S seconds' refill. A sampled frame that does
not run is counted in `skipped_budget`.

Every `window_s` with frames, report_if_due() (called by the loop) sends one ShadowReport
through the outbox as telemetry: agreement counts, both latency summaries and mean confidences
over the compared frames, the candidate's CPU share and its drift summary (agent/metrics.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from edgefleet.agent import payloads
from edgefleet.agent.boxes import iou
from edgefleet.agent.metrics import drift_summary, latency_summary
from edgefleet.agent.model_slot import ActiveModel
from edgefleet.agent.postprocess import Detection, FrameResult, interpret
from edgefleet.agent.preprocess import geometry, preprocess
from edgefleet.contracts.drift import DriftSummary
from edgefleet.contracts.jobs import JobDocument
from edgefleet.contracts.mqtt import LatencySummary, ModelRef
from edgefleet.contracts.shadow import ClassificationAgreement, DetectionAgreement, ShadowReport, ShadowSettings

log = logging.getLogger("edgefleet.agent.shadow")

BURST_S = 1.0  # a bucket holds at most this many seconds of refill: an idle spell does not buy a long burst


def match_boxes(active: list[Detection], candidate: list[Detection], threshold: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching: pairs by falling IoU (frame pixels), each box used once, IoU >= threshold."""
    if not active or not candidate:
        return []
    cand = np.asarray([d.px for d in candidate], dtype=np.float64)
    pairs = [
        (float(overlap), i, j)
        for i, a in enumerate(active)
        for j, overlap in enumerate(iou(np.asarray(a.px, dtype=np.float64), cand))
        if overlap >= threshold
    ]
    used_a: set[int] = set()
    used_c: set[int] = set()
    matched = []
    for _, i, j in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if i not in used_a and j not in used_c:
            used_a.add(i)
            used_c.add(j)
            matched.append((i, j))
    return matched


@dataclass
class AgreementTally:
    """Agreement counts of one window; classification compares top labels, detection matched boxes."""

    frames: int = 0
    agree: int = 0
    active_boxes: int = 0
    candidate_boxes: int = 0
    matched: int = 0
    label_agree: int = 0
    score_delta_sum: float = 0.0
    score_abs_delta_sum: float = 0.0

    def add(self, active: FrameResult, candidate: FrameResult, iou_threshold: float) -> None:
        self.frames += 1
        if active.detections is None or candidate.detections is None:
            self.agree += active.top_label == candidate.top_label
            return
        self.active_boxes += len(active.detections)
        self.candidate_boxes += len(candidate.detections)
        for i, j in match_boxes(active.detections, candidate.detections, iou_threshold):
            a, c = active.detections[i], candidate.detections[j]
            self.matched += 1
            self.label_agree += a.label == c.label
            self.score_delta_sum += c.score - a.score
            self.score_abs_delta_sum += abs(c.score - a.score)

    def contract(self, task: str) -> ClassificationAgreement | DetectionAgreement:
        if task != "detection":
            return ClassificationAgreement(frames=self.frames, agree=self.agree)
        return DetectionAgreement(
            frames=self.frames,
            active_boxes=self.active_boxes,
            candidate_boxes=self.candidate_boxes,
            matched=self.matched,
            label_agree=self.label_agree,
            score_delta_sum=round(self.score_delta_sum, 6),
            score_abs_delta_sum=round(self.score_abs_delta_sum, 6),
        )


class ShadowBudget:
    """The two buckets of candidate seconds (the module's docstring); times in seconds, `now` monotonic."""

    def __init__(self, settings: ShadowSettings, now: float) -> None:
        drop = settings.max_fps_drop_percent / 100.0
        self.cpu_share = settings.cpu_share
        self.per_active_s = float("inf") if drop >= 1.0 else drop / (1.0 - drop)
        self.cpu = 0.0
        self.fps = 0.0
        self.last = now

    def active_frame(self, frame_s: float, now: float) -> None:
        """An active frame took `frame_s`; refill both buckets."""
        self.cpu = min(self.cpu + self.cpu_share * (now - self.last), self.cpu_share * BURST_S)
        self.last = now
        fill = self.per_active_s * frame_s
        self.fps = min(self.fps + fill, self.per_active_s * BURST_S)

    def allows(self) -> bool:
        return self.cpu > 0.0 and self.fps > 0.0

    def spend(self, step_s: float) -> None:
        self.cpu -= step_s
        if self.per_active_s != float("inf"):
            self.fps -= step_s


@dataclass
class Candidate:
    """A shadow model that runs: its job (id, rollout, settings) and the loaded package."""

    doc: JobDocument
    model: ActiveModel

    @property
    def settings(self) -> ShadowSettings:
        return self.doc.shadow or ShadowSettings()


@dataclass
class Window:
    started: float
    budget: ShadowBudget
    credit: float = 0.0
    frames_seen: int = 0
    skipped_budget: int = 0
    errors: int = 0
    active_ref: ModelRef | None = None  # the active model when the window's last frame ran
    agreement: AgreementTally = field(default_factory=AgreementTally)
    active_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)
    active_scores: list[float] = field(default_factory=list)
    candidate_scores: list[float] = field(default_factory=list)
    candidate_s: float = 0.0
    brightness: list[float] = field(default_factory=list)
    contrast: list[float] = field(default_factory=list)
    predictions: Tally = field(default_factory=Tally)

    def sampled(self, share: float) -> bool:
        """Every frame adds `share` of credit; a full credit is one sampled frame."""
        self.credit += share
        if self.credit >= 1.0 - 1e-9:
            self.credit -= 1.0
            return True
        return False


@dataclass
class Observed:
    """What the loop knows of one frame the active model handled."""

    image: Image.Image  # the decoded frame
    batch: np.ndarray  # the active model's preprocessed input
    active: ActiveModel
    result: FrameResult
    model_s: float  # the active model's run
    frame_s: float  # the whole frame (decode .. outbox)
    brightness: float
    contrast: float


def _same_input(active: ActiveModel, candidate: ActiveModel) -> bool:
    a, c = active.manifest, candidate.manifest
    return a.inputs[0] == c.inputs[0] and a.preprocessing == c.preprocessing


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 6) if values else None


class ShadowRunner:
    """Runs the candidate on the loop's frames and reports windows; start/stop come from the jobs thread."""

    def __init__(self, device: str, put: Callable[[str, dict], None], detection: dict) -> None:
        self.device = device
        self.put = put  # (topic, body) into the outbox as telemetry
        self.detection = detection  # the agent's [model.detection] overrides, as for the active model
        self._lock = threading.Lock()
        self._candidate: Candidate | None = None
        self._window: Window | None = None

    def start(self, candidate: Candidate) -> None:
        """Run `candidate` from now on (a running one's last window is reported first)."""
        self.stop()
        now = time.monotonic()
        with self._lock:
            self._candidate = candidate
            self._window = Window(now, ShadowBudget(candidate.settings, now))
        log.info("shadow model %s %s runs", candidate.model.manifest.name, candidate.model.manifest.version)

    def stop(self) -> None:
        """Stop running the candidate; the window so far is reported."""
        with self._lock:
            candidate, window = self._candidate, self._window
            self._candidate = self._window = None
        if candidate is not None and window is not None:
            self._report(candidate, window, time.monotonic())

    def observe(self, seen: Observed) -> None:
        with self._lock:
            candidate, window = self._candidate, self._window
        if candidate is None or window is None:
            return
        window.frames_seen += 1
        window.active_ref = payloads.model_ref(seen.active.manifest)
        window.budget.active_frame(seen.frame_s, time.monotonic())
        if not window.sampled(candidate.settings.sample_share):
            return
        if not window.budget.allows():
            window.skipped_budget += 1
            return
        start = time.perf_counter()
        try:
            self._compare(candidate, window, seen)
        except Exception as exc:  # a candidate that fails costs its budget and nothing else
            window.errors += 1
            if window.errors == 1:
                log.warning("shadow model failed on a frame: %s", str(exc)[:200])
        window.budget.spend(time.perf_counter() - start)

    def _compare(self, candidate: Candidate, window: Window, seen: Observed) -> None:
        model = candidate.model
        spec, prep = model.manifest.inputs[0], model.manifest.preprocessing
        batch = seen.batch if _same_input(seen.active, model) else preprocess(seen.image, spec, prep)
        run_start = time.perf_counter()
        outputs = model.model.run([batch])
        run_s = time.perf_counter() - run_start
        result = interpret(outputs, model.manifest, geometry(seen.image.size, spec, prep), self.detection)
        window.agreement.add(seen.result, result, candidate.settings.iou_threshold)
        window.candidate_s += run_s
        window.active_ms.append(seen.model_s * 1000)
        window.candidate_ms.append(run_s * 1000)
        window.active_scores.append(seen.result.top_score)
        window.brightness.append(seen.brightness)
        window.contrast.append(seen.contrast)
        if result.top_label:
            window.candidate_scores.append(result.top_score)
            window.predictions[result.top_label] += 1

    def report_if_due(self) -> None:
        """From the loop: end the window once `window_s` passed, and report it if it saw frames."""
        now = time.monotonic()
        with self._lock:
            candidate, window = self._candidate, self._window
            if candidate is None or window is None or now - window.started < candidate.settings.window_s:
                return
            self._window = Window(now, window.budget, window.credit)
        self._report(candidate, window, now)

    def _report(self, candidate: Candidate, window: Window, now: float) -> None:
        if window.frames_seen == 0:
            return
        wall = max(now - window.started, 1e-9)
        body = shadow_report(self.device, candidate, window, wall)
        self.put(payloads.topic(self.device, "shadow"), body)
        log.info(
            "shadow window: %d frames, %d compared, %d skipped for the budget, %d failed",
            window.frames_seen,
            window.agreement.frames,
            window.skipped_budget,
            window.errors,
        )


def shadow_report(device: str, candidate: Candidate, window: Window, wall_s: float) -> dict:
    manifest = candidate.model.manifest
    return ShadowReport(
        id=str(uuid.uuid4()),
        type="shadow",
        device=device,
        ts=payloads.now_iso(),
        job=candidate.doc.job,
        rollout=candidate.doc.rollout,
        window_s=round(wall_s, 3),
        active=window.active_ref,
        candidate=payloads.model_ref(manifest),
        frames_seen=window.frames_seen,
        skipped_budget=window.skipped_budget,
        agreement=window.agreement.contract(manifest.task),
        active_latency_ms=LatencySummary.model_validate(latency_summary(window.active_ms)),
        candidate_latency_ms=LatencySummary.model_validate(latency_summary(window.candidate_ms)),
        active_confidence=_mean(window.active_scores),
        candidate_confidence=_mean(window.candidate_scores),
        candidate_cpu_share=min(1.0, round(window.candidate_s / wall_s, 6)),
        drift=DriftSummary.model_validate(
            drift_summary(window.brightness, window.contrast, window.predictions, window.candidate_scores)
        )
        if window.agreement.frames
        else None,
    ).wire()
