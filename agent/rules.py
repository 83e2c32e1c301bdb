"""Alert rules: labels of interest, a score threshold, N consecutive frames, a cooldown per label.

A label "hits" a frame when its score there is >= min_score. It alerts when it has hit at
least `min_consecutive` frames in a row and its last alert is at least `cooldown_s` old;
a frame without a hit resets its run. With cooldown 0 every hit past the minimum alerts.

Detection models: a label hits when one of its boxes passes its filters: the label's minimum
score (`filters.<label>.min_score`, else `min_score`), minimum area in frame pixels, and, when
zones name the label (or name none), its bottom centre inside one of those zones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefleet.agent.boxes import point_in_polygon
from edgefleet.agent.config import RulesConfig
from edgefleet.agent.postprocess import Detection


@dataclass
class Hit:
    label: str
    score: float
    consecutive: int
    detections: list[Detection] | None = field(default=None)  # the boxes that hit (detection models)


class AlertRules:
    def __init__(self, cfg: RulesConfig) -> None:
        self.cfg = cfg
        self.labels = set(cfg.labels)
        self._run: dict[str, int] = {label: 0 for label in cfg.labels}
        self._last_alert: dict[str, float] = {}

    def min_score(self, label: str) -> float:
        found = self.cfg.filters.get(label)
        return found.min_score if found and found.min_score is not None else self.cfg.min_score

    def min_area(self, label: str) -> float:
        found = self.cfg.filters.get(label)
        return found.min_area if found and found.min_area is not None else self.cfg.min_area

    def zones_for(self, label: str) -> dict:
        return {name: z for name, z in self.cfg.zones.items() if not z.labels or label in z.labels}

    def describe(self, label: str) -> str:
        """The rule that makes `label` alert, in words (shown with the alert event)."""
        words = f"{label} score >= {self.min_score(label):g} in {self.cfg.min_consecutive} frame(s)"
        if self.min_area(label):
            words += f", area >= {self.min_area(label):g} px"
        zones = self.zones_for(label)
        if zones:
            words += f", in zone {' or '.join(sorted(zones))}"
        if self.cfg.cooldown_s:
            words += f", cooldown {self.cfg.cooldown_s:g} s"
        return words[:200]

    def passing(self, detections: list[Detection], label: str) -> list[Detection]:
        """The label's boxes that pass its filters, each with the zones it is in."""
        zones = self.zones_for(label)
        kept = []
        for d in detections:
            if d.label != label or d.score < self.min_score(label) or d.area < self.min_area(label):
                continue
            if zones:
                foot = ((d.px[0] + d.px[2]) / 2, d.px[3])
                d.zones = [name for name, z in zones.items() if point_in_polygon(*foot, z.coordinates)]
                if not d.zones:
                    continue
            kept.append(d)
        return kept

    def observe(self, scores: dict[str, float], now: float, detections: list[Detection] | None = None) -> list[Hit]:
        """Feed one frame's per-label scores, or its detections (monotonic time `now`); returns the alerts to send."""
        alerts: list[Hit] = []
        for label in self.cfg.labels:
            boxes = None if detections is None else self.passing(detections, label)
            score = scores.get(label, 0.0) if boxes is None else max((d.score for d in boxes), default=0.0)
            if score < self.min_score(label) or boxes == []:
                self._run[label] = 0
                continue
            self._run[label] += 1
            if self._run[label] < self.cfg.min_consecutive:
                continue
            last = self._last_alert.get(label)
            if last is not None and now - last < self.cfg.cooldown_s:
                continue
            self._last_alert[label] = now
            alerts.append(Hit(label, score, self._run[label], boxes))
        return alerts
