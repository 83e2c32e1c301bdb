"""MQTT payloads between cameras and the fleet, schema 1 (topics in docs/agent.md).

    edgefleet/v1/<device>/status               StatusMessage
    edgefleet/v1/<device>/telemetry            TelemetryMessage
    edgefleet/v1/<device>/alerts               AlertMessage
    edgefleet/v1/<device>/jobs/<job>/update    JobUpdate
    edgefleet/v1/<device>/shadow               edgefleet.contracts.shadow.ShadowReport
    edgefleet/v1/<device>/jobs/notify          edgefleet.contracts.jobs.JobDocument
    edgefleet/v1/<device>/drift                DriftAlarmMessage (fleet -> subscribers, and the webhook)
    edgefleet/v1/fleet/drift                   FleetDriftAlarmMessage (idem)

The agent builds these models and sends `wire()`; the fleet parses each message once, where it
enters (fleet/ingest.py), and works on the model. Counts a device reports are bounded integers:
a float, a bool, a string or an absurd number is a malformed message, dropped and counted.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, PrivateAttr, StrictInt, ValidationError, model_validator

from edgefleet.contracts.base import WireMessage
from edgefleet.contracts.drift import DriftSummary, Histogram
from edgefleet.strict import first_error

SCHEMA: Literal[1] = 1
MAX_COUNT = 2**31 - 1  # frames and alerts per telemetry period; more is a forged number
MAX_ID = 64  # a message id is a uuid (36) or a uuid's hex (32); the fleet stores it as its dedup key
MAX_RUN = 2**31 - 1  # agent starts over a camera's life
# A run's last word: the offline last will, set when the agent starts, stands after all the run sent.
LAST_SEQ = 2**32 - 1
Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
# A number the fleet only shows or compares: kept finite and bounded (JSON constants are refused before).
Real = Annotated[float, Field(ge=-1e12, le=1e12)]
Label = Annotated[str, Field(min_length=1, max_length=64)]
UpdateState = Literal[
    "idle",
    "downloading",
    "verifying",
    "staged",
    "switching",
    "probation",
    "committed",
    "rolling_back",
    "rolled_back",
    "failed",
]
UPDATE_STATES: tuple[str, ...] = get_args(UpdateState)
TERMINAL_STATES = frozenset({"committed", "rolled_back", "failed"})


class ModelRef(WireMessage):
    name: Annotated[str, Field(min_length=1)]
    version: str


class DeviceMessage(WireMessage):
    """What every device message carries; `device`, when present, must be the topic's device.

    `id` is the message's own id, kept by the agent's outbox across resends: the fleet stores a
    telemetry message once per (device, id) however often it arrives (revision 2 bounds it to
    64 characters, the stored key; messages without one are stored on every arrival).

    Revision 3 adds `run` and `seq`, the message's place in what the device said: `run` counts the
    agent's starts (kept on the camera beside its identity), `seq` counts the messages of a run in
    the order they were made, `LAST_SEQ` for the offline last will (made at start, sent by the
    broker at the end). The fleet keeps the device's state (online/offline, model) from the
    message latest in (run, seq), so a message delivered again or late never brings back an older
    state; no clocks are compared (cameras without a real-time clock boot in the past). Agents
    before it send neither, and their messages are applied in arrival order."""

    REVISION: ClassVar[int] = 3
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"run", "seq"})
    schema_: Literal[1] = Field(default=SCHEMA, alias="schema")
    id: Annotated[str, Field(min_length=1, max_length=MAX_ID)] | None = None
    type: str | None = None
    device: str | None = None
    ts: str | None = None
    run: Annotated[StrictInt, Field(ge=1, le=MAX_RUN)] | None = None
    seq: Annotated[StrictInt, Field(ge=1, le=LAST_SEQ)] | None = None

    model_config = WireMessage.model_config | {"populate_by_name": True}

    @property
    def order(self) -> int | None:
        """(run, seq) as one integer that sorts the same (None: the agent does not number its messages)."""
        return None if self.run is None or self.seq is None else self.run << 32 | self.seq


class StatusMessage(DeviceMessage):
    """Revision 2 adds `watching`: the labels the camera's alert rules watch (Home Assistant
    discovery makes one binary sensor per label); agents before it do not say. It also bounds
    `id` (DeviceMessage). Revision 3 adds `features`: what the agent can do beyond revision 1's
    jobs (e.g. "shadow", edgefleet.contracts.shadow); an agent that does not say has none.
    Revision 4: `run` and `seq` (DeviceMessage)."""

    REVISION: ClassVar[int] = 4
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"watching", "features", "run", "seq"})
    state: Literal["online", "offline"]
    model: ModelRef | None = None
    agent_version: Annotated[str, Field(max_length=64)] | None = None  # agents before 0.2 do not say
    arch: Annotated[str, Field(max_length=32)] | None = None
    watching: Annotated[list[Label], Field(max_length=64)] | None = None
    features: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=32)] | None = None


class FrameCounts(WireMessage):
    ok: Count = 0
    bad: Count = 0
    error: Count = 0
    bad_reasons: dict[str, Count] = Field(default_factory=dict)


class LatencySummary(WireMessage):
    count: Count = 0
    p50: Real | None = None
    p95: Real | None = None


class SystemUsage(WireMessage):
    cpu_percent: Real | None = None
    rss_bytes: Count | None = None


class TelemetryMessage(DeviceMessage):
    """One window of health numbers. A drift summary that does not parse costs only the drift
    judgement (counted as drift_malformed), not the health numbers: it is kept apart in
    `drift_error` instead of refusing the message."""

    window_s: Annotated[float, Field(ge=0, le=1e9)] | None = None
    frames: FrameCounts | Count | None = None  # a bare count from the earliest agents
    latency_ms: LatencySummary | None = None
    alerts: dict[str, Count] | Count | None = None
    system: SystemUsage | None = None
    drift: DriftSummary | None = None
    model: ModelRef | None = None
    # Revision 2: which of the package's libraries runs ("model.x86-64-v4.so (x86-64-v4, best this CPU runs)");
    # it also bounds `id` (DeviceMessage).
    library: Annotated[str, Field(max_length=200)] | None = None
    outbox: dict[str, Any] | None = None
    REVISION: ClassVar[int] = 3  # 3: `run` and `seq` (DeviceMessage)
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"library", "run", "seq"})
    _drift_error: str | None = PrivateAttr(None)
    _confidence: Histogram | None = PrivateAttr(None)  # when the summary around it is malformed

    @model_validator(mode="wrap")
    @classmethod
    def _keep_bad_drift_apart(cls, data: Any, handler: Any) -> TelemetryMessage:
        error, confidence = None, None
        if isinstance(data, dict) and data.get("drift") is not None:
            raw = data["drift"]
            try:
                data = data | {"drift": DriftSummary.model_validate(raw)}
            except ValidationError as exc:
                first = first_error(exc)
                error = f"{first.where}: {first.msg}"
                data = {k: v for k, v in data.items() if k != "drift"}
                # The rollout health gate reads the confidence histogram alone.
                confidence = (
                    Histogram.model_validate(raw["confidence"])
                    if isinstance(raw, dict) and raw.get("confidence") is not None
                    else None
                )
        msg: TelemetryMessage = handler(data)
        msg._drift_error, msg._confidence = error, confidence
        return msg

    @model_validator(mode="after")
    def _bounded_totals(self) -> TelemetryMessage:
        if self.alert_count > MAX_COUNT:
            raise ValueError(f"alert total {self.alert_count} is over {MAX_COUNT}")
        return self

    @property
    def drift_error(self) -> str | None:
        """Why the window's drift summary was set aside, or None."""
        return self._drift_error

    @property
    def frames_ok(self) -> int:
        return self.frames.ok if isinstance(self.frames, FrameCounts) else (self.frames or 0)

    @property
    def alert_count(self) -> int:
        return sum(self.alerts.values()) if isinstance(self.alerts, dict) else (self.alerts or 0)

    @property
    def confidence_mean(self) -> float | None:
        hist = self.drift.confidence if self.drift else self._confidence
        return hist.mean() if hist else None

    @property
    def latency_p95_ms(self) -> float | None:
        return self.latency_ms.p95 if self.latency_ms else None


# What any fleet takes as one alert snapshot at most; each fleet's own cap (alerts.snapshot_max_bytes) is lower.
MAX_SNAPSHOT_BYTES = 1024 * 1024
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class SnapshotRef(WireMessage):
    """The alert's frame as a JPEG, uploaded apart from the message over HTTPS
    (PUT /api/v1/devices/<device>/snapshots/<sha256>); the fleet checks it against this."""

    sha256: Sha256
    size: Annotated[StrictInt, Field(ge=1, le=MAX_SNAPSHOT_BYTES)]
    width: Annotated[StrictInt, Field(ge=1, le=65_535)]
    height: Annotated[StrictInt, Field(ge=1, le=65_535)]


class Thumbnail(WireMessage):
    format: Literal["jpeg"]
    width: int
    height: int
    data: str  # base64


class Detection(WireMessage):
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"box_px", "zones"})
    label: str
    score: float
    box: list[float]
    box_px: list[float] | None = None
    zones: list[str] | None = None


class AlertMessage(DeviceMessage):
    """Revision 2 adds `snapshot` (the frame's JPEG, named by its sha256) and `rule` (the rule
    that fired, for people); agents before it send neither, and are read the same. It also
    bounds `id` (DeviceMessage). Revision 3: `run` and `seq` (DeviceMessage)."""

    REVISION: ClassVar[int] = 3
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset(
        {"detections", "frame_size", "thumbnail", "snapshot", "rule", "run", "seq"}
    )
    label: str
    score: float
    consecutive: int
    source: str
    frame: str
    model: ModelRef | None
    latency_ms: float
    detections: list[Detection] | None = None
    frame_size: list[int] | None = None
    thumbnail: Thumbnail | None = None
    snapshot: SnapshotRef | None = None
    rule: Annotated[str, Field(max_length=200)] | None = None

    def wire(self) -> dict[str, Any]:
        body = super().wire()
        if self.detections is not None:  # nested optional fields are omitted the same way
            body["detections"] = [d.wire() for d in self.detections]
        return body


class JobUpdate(DeviceMessage):
    """A job's progress through the camera's update state machine (agent/update.py, agent/self_update.py).
    Its revision is DeviceMessage's (3: `run` and `seq`)."""

    job: str | None = None
    state: UpdateState
    detail: Annotated[str, Field(max_length=100_000)] = ""
    package: ModelRef | None = None


# ---- fleet -> subscribers: drift alarms (fleet/drift_service.py; also POSTed to the drift webhook) ----


class AlarmMessage(WireMessage):
    """What both alarms carry first; the fields of each are listed in the order they go on the wire."""

    schema_: Literal[1] = Field(default=SCHEMA, alias="schema")

    model_config = WireMessage.model_config | {"populate_by_name": True}


Metric = Literal["psi", "js"]
AlarmEvent = Literal["raised", "cleared"]


class DriftAlarmMessage(AlarmMessage):
    """A device's drift alarm raised or cleared; `state` is the alarm's state after the change."""

    type: Literal["drift_alarm"] = "drift_alarm"
    event: AlarmEvent
    device: str
    model: ModelRef
    state: str
    metric: Metric
    threshold: float
    score: float
    feature: str | None  # the feature farthest from the baseline
    at: float  # the fleet's clock


class FleetDriftAlarmMessage(AlarmMessage):
    """A model version's fleet-wide alarm raised or cleared: `drifting` of its `devices` over the threshold."""

    type: Literal["fleet_drift_alarm"] = "fleet_drift_alarm"
    event: AlarmEvent
    model: ModelRef
    state: str
    devices: int
    drifting: int
    share: float  # drifting / devices, 4 decimals
    fleet_share: float  # the share that raises the alarm
    metric: Metric
    threshold: float
    at: float


# What a subscriber or the webhook receives, told apart by `type`.
DriftAnnouncement = Annotated[DriftAlarmMessage | FleetDriftAlarmMessage, Field(discriminator="type")]
