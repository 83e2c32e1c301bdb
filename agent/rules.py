"""Alert rules: labels of interest, a score threshold, N consecutive frames, a cooldown per label.

A label "hits" a frame when its score there is >= min_score. It alerts when it has hit at
least `min_consecutive` frames in a row and its last alert is at least `cooldown_s` old;
a frame without a hit resets its run. With cooldown 0 every hit past the minimum alerts.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.agent.config import RulesConfig


@dataclass
class Hit:
    label: str
    score: float
    consecutive: int


class AlertRules:
    def __init__(self, cfg: RulesConfig) -> None:
        self.cfg = cfg
        self.labels = set(cfg.labels)
        self._run: dict[str, int] = {label: 0 for label in cfg.labels}
        self._last_alert: dict[str, float] = {}

    def observe(self, scores: dict[str, float], now: float) -> list[Hit]:
        """Feed one frame's per-label scores (monotonic time `now`); returns the alerts to send."""
        alerts: list[Hit] = []
        for label in self.cfg.labels:
            score = scores.get(label, 0.0)
            if score < self.cfg.min_score:
                self._run[label] = 0
                continue
            self._run[label] += 1
            if self._run[label] < self.cfg.min_consecutive:
                continue
            last = self._last_alert.get(label)
            if last is not None and now - last < self.cfg.cooldown_s:
                continue
            self._last_alert[label] = now
            alerts.append(Hit(label, score, self._run[label]))
        return alerts
