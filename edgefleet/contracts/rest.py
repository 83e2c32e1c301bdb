"""Request bodies of the fleet REST API, version 1 (/api/v1; OpenAPI at /openapi.json).

The API's major version is in its path; REVISION counts compatible changes, as for the wire
contracts (edgefleet/contracts/base.py).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from edgefleet.contracts.jobs import Probation
from edgefleet.contracts.shadow import ShadowSettings
from edgefleet.strict import Strict

API_VERSION = 1


class Body(Strict):
    VERSION: ClassVar[int] = API_VERSION
    REVISION: ClassVar[int] = 1


class HealthGate(Body):
    """Bounds on the new model's health relative to the previous model on the same devices."""

    enabled: bool = True
    min_samples: int = Field(default=1, ge=1)  # telemetry messages from the new model before judging
    alert_rate_max_ratio: float = Field(default=1.5, gt=0)
    alert_rate_slack: float = Field(default=0.02, ge=0)  # absolute alerts per frame, so 0 -> 0.01 is fine
    confidence_min_ratio: float = Field(default=0.9, ge=0, le=1)
    latency_p95_max_ratio: float = Field(default=1.5, gt=0)
    latency_p95_slack_ms: float = Field(default=5.0, ge=0)
    require_baseline: bool = False  # without telemetry from the previous model: wait (True) or pass
    # Evidence each bound needs on both sides before it is judged: a rate over a few frames swings
    # too much to pass or fail a model on (an alert rate read 0.14-0.4 on 20-frame windows).
    alert_rate_min_frames: int = Field(default=100, ge=1)
    confidence_min_frames: int = Field(default=100, ge=1)
    latency_min_samples: int = Field(default=1, ge=1)  # telemetry messages with a p95


class ShadowPlan(Body, ShadowSettings):
    """ShadowSettings as an operator writes them in a rollout plan: unknown keys are errors."""

    model_config = Body.model_config


class PromotionGate(Body):
    """What a shadow rollout's candidate must show, over all its devices, before it may be promoted:
    agreement with the active model >= min_agreement over >= min_frames compared frames, candidate /
    active p50 latency <= max_latency_ratio, and (when no_drift_alarm) no drift alarm on the candidate."""

    min_agreement: float = Field(default=0.95, ge=0, le=1)
    min_frames: int = Field(default=1000, ge=1)
    max_latency_ratio: float = Field(default=1.5, gt=0)
    no_drift_alarm: bool = True


class RolloutPlan(Body):
    """Revision 2 adds `mode`: "shadow" installs the version beside the active model on every selected
    device at once (no waves) until it is promoted or stopped, with `shadow` settings and the
    `promotion` gate (docs/fleet.md, "Shadow rollouts")."""

    REVISION: ClassVar[int] = 2
    mode: Literal["install", "shadow"] = "install"
    shadow: ShadowPlan = Field(default_factory=lambda: ShadowPlan())
    promotion: PromotionGate = Field(default_factory=lambda: PromotionGate())
    canary: int | None = Field(default=1, ge=1)
    canary_percent: float | None = Field(default=None, gt=0, le=100)
    waves: list[float] = Field(default_factory=lambda: [100.0])
    success_threshold: float = Field(default=1.0, gt=0, le=1)
    failure_threshold: float = Field(default=0.0, ge=0, lt=1)
    bake_time_s: float = Field(default=60.0, ge=0)
    wave_timeout_s: float = Field(default=900.0, gt=0)
    health: HealthGate = Field(default_factory=lambda: HealthGate())
    probation: Probation = Field(default_factory=lambda: Probation())

    @model_validator(mode="before")
    @classmethod
    def _percent_replaces_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("canary_percent") is not None:
            return data | {"canary": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> RolloutPlan:
        if (
            not self.waves
            or any(not 0 < w <= 100 for w in self.waves)
            or self.waves != sorted(self.waves)
            or self.waves[-1] != 100
        ):
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
    REVISION: ClassVar[int] = 2  # its plan's revision 2
    group: str
    version: str
    selection: Selection = Field(default_factory=Selection)
    plan: RolloutPlan = Field(default_factory=lambda: RolloutPlan())


class ControlBody(Body):
    reason: str = ""


class PromoteBody(Body):
    """POST /rollouts/{id}/promote: the staged rollout of the candidate; without a plan, the shadow
    rollout's own plan in mode "install"."""

    plan: RolloutPlan | None = None
    reason: str = ""


class TokenBody(Body):
    name: str = Field(min_length=1, max_length=128)
    scope: str


BODIES: list[type[Body]] = [
    RolloutPlan,
    Selection,
    ApprovalBody,
    DevicePatch,
    EnrollmentTokenBody,
    EnrollBody,
    RolloutBody,
    ControlBody,
    PromoteBody,
    PromotionGate,
    TokenBody,
]


# ---- responses ----------------------------------------------------------------------------


class Response(BaseModel):
    """What the API returns; a client ignores fields a newer fleet adds."""

    VERSION: ClassVar[int] = API_VERSION
    REVISION: ClassVar[int] = 1


ErrorCode = Literal[
    "bad_input",
    "unauthorized",
    "permission_denied",
    "not_found",
    "conflict",
    "invalid_transition",
    "service_unavailable",
    "validation_error",
    "payload_too_large",
]


class ErrorBody(Response):
    """Every 4xx/5xx body: `code` is stable and machine-readable; `error` (the cause) and `fix` are for people."""

    error: str
    fix: str = ""
    code: ErrorCode


class Health(Response):
    status: Literal["ok"]


class Metrics(Response):
    mqtt: dict[str, int]  # ingest counters since the service started (fleet/ingest.py)
    persisted: dict[str, int]


class ModelGroupOut(Response):
    name: str
    description: str | None = None
    versions: int
    latest: str | None


class BuildOut(Response):
    id: int
    target: str
    arch: str | None
    sha256: str
    size: int
    signer: str | None
    created_at: float


class Lineage(Response):
    source_uri: str | None
    source_sha256: str | None
    training_job: str | None


class ModelVersionOut(Response):
    id: int
    group: str
    version: str
    approval: str
    approval_note: str | None
    lineage: Lineage
    builds: list[BuildOut]
    created_at: float


class DeviceModel(Response):
    name: str | None
    version: str | None


class DeviceAgent(Response):
    version: str | None
    arch: str | None


class DeviceOut(Response):
    id: str
    group: str | None
    tags: list[str]
    target: str
    status: str
    last_seen: float | None
    model: DeviceModel | None
    agent: DeviceAgent | None
    enrolled_at: float | None


class EnrollmentTokenOut(Response):
    device_id: str
    token: str


class BrokerAddress(Response):
    host: str | None
    port: int | None


class Enrollment(Response):
    """What a camera needs after enrolling (schema 1)."""

    schema_: Literal[1] = Field(default=1, alias="schema")
    device_id: str
    certificate: str
    ca_certificate: str
    broker: BrokerAddress
    fleet_url: str | None
    trusted_keys: list[str]


class RolloutModel(Response):
    group: str
    version: str


class RolloutOut(Response):
    """Revision 2: the plan's revision 2, and `source`, the shadow rollout a staged one was promoted from."""

    REVISION: ClassVar[int] = 2
    id: int
    model: RolloutModel
    kind: Literal["agent", "model"]
    state: str
    wave: int
    waves: list[int]
    devices: int
    installs: dict[str, int]  # install jobs per state
    reason: str | None
    selection: Selection
    plan: RolloutPlan
    created_at: float
    updated_at: float
    source: int | None = None


class DeploymentOut(Response):
    job: str
    device: str
    kind: str
    wave: int
    state: str
    previous_version: str | None
    detail: str | None


class RolloutDetail(RolloutOut):
    """GET /rollouts/{id}. Version 2: the deployments are a page of their own
    (GET /rollouts/{id}/deployments, `DeploymentPage`); version 1 embedded every one, O(devices)
    a call. The counts per state stay here (`installs`)."""

    VERSION: ClassVar[int] = 2
    REVISION: ClassVar[int] = 1


class RolloutEventOut(Response):
    at: float
    event: str
    from_: str = Field(alias="from")
    to: str
    device: str | None
    detail: str | None


# ---- pages: every list endpoint answers one page (?limit=1..1000, default 100; ?cursor=<next>) --

MAX_PAGE = 1000


class Page(Response):
    """`next` is the cursor of the following page (pass it as ?cursor=), None on the last page."""

    next: str | None


class DevicePage(Page):
    items: list[DeviceOut]


class ModelGroupPage(Page):
    items: list[ModelGroupOut]


class ModelVersionPage(Page):
    items: list[ModelVersionOut]


class RolloutPage(Page):
    REVISION: ClassVar[int] = 2
    items: list[RolloutOut]


class RolloutEventPage(Page):
    items: list[RolloutEventOut]


class DeploymentPage(Page):
    """A rollout's deployments (jobs), in the order they were created."""

    items: list[DeploymentOut]


class TokenOut(Response):
    name: str
    scope: str
    token: str


class Revoked(Response):
    revoked: int


# ---- drift and telemetry (fleet/drift_routes.py, docs/drift.md) ---------------------------


class ModelName(Response):
    name: str
    version: str


class DriftConfigOut(Response):
    """The fleet's [drift] config, as far as readers of alarms need it."""

    metric: str
    threshold: float
    windows_to_alarm: int
    windows_to_clear: int
    features: list[str]
    min_frames: int
    max_age_s: float
    fleet_share: float
    fleet_min_devices: int


class DriftAlarmOut(Response):
    device: str
    model: ModelName
    state: str
    score: float | None
    feature: str | None
    raised_at: float | None
    cleared_at: float | None
    updated_at: float


class DriftCollectingOut(Response):
    """A device's telemetry windows pooled until they hold `target` frames."""

    device: str
    model: ModelName
    frames: int
    target: int
    messages: int
    updated_at: float


class FleetDriftAlarmOut(Response):
    model: ModelName
    state: str
    devices: int
    drifting: int
    share: float | None
    raised_at: float | None
    cleared_at: float | None
    updated_at: float


class Distance(Response):
    psi: float
    js: float


class FleetDriftOut(Response):
    """A model version across the fleet: the newest window of each device, summed and judged."""

    model: ModelName
    state: str
    devices: int
    frames: int
    score: float
    feature: str | None
    over: bool
    distances: dict[str, Distance]


class DriftOverview(Response):
    config: DriftConfigOut
    alarms: list[DriftAlarmOut]
    collecting: list[DriftCollectingOut]
    fleet_alarms: list[FleetDriftAlarmOut]
    fleet: list[FleetDriftOut]


class DriftWindowOut(Response):
    device: str
    model: ModelName
    at: float
    frames: int
    score: float
    feature: str | None
    over: bool
    state: str  # the alarm's state after this window
    distances: dict[str, Distance]


class DeviceDriftEventOut(Response):
    at: float
    scope: Literal["device"]
    device: str
    model: ModelName
    event: str
    score: float
    feature: str | None


class FleetDriftEventOut(Response):
    at: float
    scope: Literal["fleet"]
    device: None = None
    model: ModelName
    event: str
    devices: int
    drifting: int


# /drift/events lists both, told apart by `scope`.
DriftEventOut = Annotated[DeviceDriftEventOut | FleetDriftEventOut, Field(discriminator="scope")]


class TelemetryPoint(Response):
    """One telemetry message's health numbers (the model is null for a device running none)."""

    device: str
    at: float
    model: DeviceModel
    frames: int
    alerts: int
    confidence_mean: float | None
    latency_p95_ms: float | None


class DriftWindowPage(Page):
    """Newest first (the cursor is a window's id)."""

    items: list[DriftWindowOut]


class DriftEventPage(Page):
    """Device and fleet-wide events together, newest first (the cursor names the last of each)."""

    items: list[DriftEventOut]


class TelemetryPage(Page):
    """Newest first (the cursor is a telemetry row's id)."""

    items: list[TelemetryPoint]


class AlertBox(Response):
    """One box of an alert, as the camera reported it: `box` normalised to the frame, `box_px` in frame pixels."""

    label: str
    score: float
    box: list[float]
    box_px: list[float] | None
    zones: list[str] | None


class AlertSnapshot(Response):
    """The alert's JPEG: named by the alert, `stored` once the camera uploaded it and the fleet checked it."""

    sha256: str
    size: int
    width: int
    height: int
    stored: bool


class AlertEventOut(Response):
    id: int
    alert_id: str | None  # the camera's message id (one event per id, however often it arrives)
    device: str
    received_at: float
    ts: str | None  # the camera's clock, ISO 8601
    label: str
    score: float
    consecutive: int
    rule: str | None
    source: str
    frame: str  # the camera's name for the frame (a file name, a timestamp)
    model: DeviceModel | None
    boxes: list[AlertBox]
    frame_size: list[int] | None
    snapshot: AlertSnapshot | None


class AlertEventPage(Page):
    """One page of alert events, newest first. Version 2: paged as every list is (version 1 had
    `total`, `limit` and `offset`, and took ?offset=)."""

    VERSION: ClassVar[int] = 2
    items: list[AlertEventOut]


class SnapshotStored(Response):
    sha256: str
    size: int
    events: int  # how many alert events name it


# ---- shadow rollouts (fleet/shadow.py, docs/fleet.md "Shadow rollouts") -------------------


class ShadowStats(Response):
    """A shadow model beside the active one, summed over stored reports (rates computed from the sums).

    agreement: classification, frames with the same top label / compared frames; detection,
    2 x label-agreeing matched boxes / (active + candidate boxes). match_rate (detection): 2 x
    matched / (active + candidate boxes); label_agreement: label-agreeing / matched. Latencies are
    the count-weighted means of the windows' p50s; latency_ratio = candidate / active."""

    devices: int
    reports: int
    frames_seen: int
    frames: int  # compared frames
    skipped_budget: int
    agreement: float | None
    match_rate: float | None
    label_agreement: float | None
    mean_score_delta: float | None
    mean_abs_score_delta: float | None
    active_latency_p50_ms: float | None
    candidate_latency_p50_ms: float | None
    latency_ratio: float | None
    active_confidence: float | None
    candidate_confidence: float | None
    candidate_cpu_share: float | None
    drift_alarm: bool  # the candidate's drift alarm is up on at least one device
    drift_devices: list[str]


class ShadowGroupOut(Response):
    """One (active version, candidate version, device group) of a shadow rollout."""

    active: ModelName
    candidate: ModelName
    group: str | None
    stats: ShadowStats


class ShadowPoint(Response):
    """One stored report (one device's window)."""

    at: float
    device: str
    frames: int
    agreement: float | None
    active_latency_p50_ms: float | None
    candidate_latency_p50_ms: float | None


class GateCheck(Response):
    name: Literal["agreement", "frames", "latency_ratio", "drift"]
    ok: bool
    value: float | None
    limit: float
    detail: str


class GateVerdict(Response):
    passed: bool
    checks: list[GateCheck]


class ShadowOut(Response):
    """GET /rollouts/{id}/shadow: champion (active) vs challenger (candidate) of a shadow rollout."""

    rollout: int
    state: str
    candidate: ModelName
    settings: ShadowPlan
    gate: PromotionGate
    verdict: GateVerdict
    total: ShadowStats
    groups: list[ShadowGroupOut]
    series: list[ShadowPoint]
    promoted_to: int | None


RESPONSES: list[type[Response]] = [
    ErrorBody,
    Health,
    Metrics,
    ModelGroupOut,
    ModelVersionOut,
    DeviceOut,
    EnrollmentTokenOut,
    Enrollment,
    RolloutOut,
    RolloutDetail,
    RolloutEventOut,
    DevicePage,
    ModelGroupPage,
    ModelVersionPage,
    RolloutPage,
    RolloutEventPage,
    DeploymentPage,
    TokenOut,
    Revoked,
    DriftOverview,
    DriftWindowOut,
    DeviceDriftEventOut,
    FleetDriftEventOut,
    TelemetryPoint,
    DriftWindowPage,
    DriftEventPage,
    TelemetryPage,
    AlertEventOut,
    AlertEventPage,
    SnapshotStored,
    ShadowOut,
]
