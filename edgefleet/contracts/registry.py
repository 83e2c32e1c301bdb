"""CONTRACTS: every top-level contract by name, with its major version (tests/contracts)."""

from __future__ import annotations

from pydantic import BaseModel

from edgefleet.contracts import drift, jobs, journal, mqtt, rest, shadow


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
    shadow.ShadowReport,
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
