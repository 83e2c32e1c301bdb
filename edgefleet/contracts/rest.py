"""Request bodies of the fleet REST API, version 1 (/api/v1; OpenAPI at /openapi.json).

The API's major version is in its path; REVISION counts compatible changes, as for the wire
contracts (edgefleet/contracts/base.py).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from edgefleet.contracts.jobs import Probation
from edgefleet.strict import Strict

API_VERSION = 1


class Body(Strict):
    REVISION: ClassVar[int] = 1


class HealthGate(Body):
    """Bounds on the new model's health relative to the previous model on the same devices."""

    enabled: bool = True
    min_samples: int = Field(1, ge=1)  # telemetry messages from the new model before judging
    alert_rate_max_ratio: float = Field(1.5, gt=0)
    alert_rate_slack: float = Field(0.02, ge=0)  # absolute alerts per frame, so 0 -> 0.01 is fine
    confidence_min_ratio: float = Field(0.9, ge=0, le=1)
    latency_p95_max_ratio: float = Field(1.5, gt=0)
    latency_p95_slack_ms: float = Field(5.0, ge=0)
    require_baseline: bool = False  # without telemetry from the previous model: wait (True) or pass
    # Evidence each bound needs on both sides before it is judged: a rate over a few frames swings
    # too much to pass or fail a model on (an alert rate read 0.14-0.4 on 20-frame windows).
    alert_rate_min_frames: int = Field(100, ge=1)
    confidence_min_frames: int = Field(100, ge=1)
    latency_min_samples: int = Field(1, ge=1)  # telemetry messages with a p95


class RolloutPlan(Body):
    canary: int | None = Field(1, ge=1)
    canary_percent: float | None = Field(None, gt=0, le=100)
    waves: list[float] = Field(default_factory=lambda: [100.0])
    success_threshold: float = Field(1.0, gt=0, le=1)
    failure_threshold: float = Field(0.0, ge=0, lt=1)
    bake_time_s: float = Field(60.0, ge=0)
    wave_timeout_s: float = Field(900.0, gt=0)
    health: HealthGate = Field(default_factory=HealthGate)
    probation: Probation = Field(default_factory=Probation)

    @model_validator(mode="after")
    def _check(self) -> RolloutPlan:
        if self.canary_percent is not None:
            self.canary = None
        if not self.waves or any(not 0 < w <= 100 for w in self.waves) or self.waves != sorted(self.waves) or self.waves[-1] != 100:
            raise ValueError("waves are increasing cumulative percents in (0, 100] ending at 100, e.g. [10, 50, 100]")
        return self


class Selection(Body):
    group: str | None = None
    tags: list[str] = Field(default_factory=list)  # a device must carry all of them
    devices: list[str] | None = None


class ApprovalBody(Body):
    state: str
    note: str = ""


class DevicePatch(Body):
    group: str | None = None
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)


class EnrollmentTokenBody(Body):
    device_id: str
    target: str
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class EnrollBody(Body):
    token: str
    device_id: str
    csr: str


class RolloutBody(Body):
    group: str
    version: str
    selection: Selection = Field(default_factory=Selection)
    plan: RolloutPlan = Field(default_factory=RolloutPlan)


class ControlBody(Body):
    reason: str = ""


class TokenBody(Body):
    name: str = Field(min_length=1, max_length=128)
    scope: str
