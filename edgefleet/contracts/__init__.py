"""Every contract between edgefleet components, one versioned pydantic model each.

    mqtt.py     camera <-> fleet MQTT payloads (status, telemetry, alerts, job updates), drift alarms
    jobs.py     job documents the fleet sends a camera (model and agent install/rollback)
    journal.py  the camera's update journals and their history lines
    drift.py    drift summaries and the package baseline (compiler -> fleet)
    rest.py     fleet REST API request and response bodies

Versions and revisions: edgefleet/contracts/base.py. CONTRACTS lists the top-level ones with
their major version; tests/contracts holds each one's JSON schema per (version, revision).
"""

from __future__ import annotations

from pydantic import BaseModel

from edgefleet.contracts import drift, jobs, journal, mqtt, rest


def _version(model: type[BaseModel]) -> int:
    """The major version a model carries in its version field, else its container's (VERSION)."""
    for field in ("schema_", "format", "format_version"):
        info = model.model_fields.get(field)
        if info is not None:
            return int(info.default)
    version = getattr(model, "VERSION", None)
    if not isinstance(version, int):
        raise TypeError(f"contract {model.__name__} has no version field and no VERSION")
    return version


TOP_LEVEL: list[type[BaseModel]] = [
    mqtt.StatusMessage,
    mqtt.TelemetryMessage,
    mqtt.AlertMessage,
    mqtt.JobUpdate,
    mqtt.DriftAlarmMessage,
    mqtt.FleetDriftAlarmMessage,
    jobs.JobDocument,
    jobs.RollbackAuthorization,
    journal.UpdateJournal,
    journal.AgentUpdateJournal,
    journal.HistoryEntry,
    drift.Baseline,
    *rest.BODIES,
    *rest.RESPONSES,
]
CONTRACTS: dict[str, tuple[type[BaseModel], int]] = {m.__name__: (m, _version(m)) for m in TOP_LEVEL}
