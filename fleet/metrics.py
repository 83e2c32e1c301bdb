"""The fleet's Prometheus metrics at GET /metrics (text exposition format).

Two kinds, so that several fleet replicas behind one database report sensibly:
- this process's MQTT ingest counters (messages by topic kind and by outcome, the time from a
  message's arrival to its commit): per replica, as Prometheus expects (sum them over replicas);
- fleet state read from the database at scrape time (devices by status, rollouts by state,
  drift alarms by state, age of the newest telemetry): the same on every replica, a few
  GROUP BY counts per scrape.

The route is fleet/routers/prometheus.py; Ingest calls `ingested` once per committed batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from edgefleet.errors import UsageError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Device, Rollout, Telemetry
from edgefleet.fleet.drift import STATES as DRIFT_STATES
from edgefleet.fleet.drift_tables import DriftAlarm, DriftFleetAlarm
from edgefleet.fleet.rollouts import TRANSITIONS

TOPIC_KINDS = ("status", "telemetry", "alerts", "jobs")
DEVICE_STATUSES = ("online", "offline", "unknown")
ROLLOUT_STATES = tuple(sorted({"created", *TRANSITIONS.values()}))  # every state a rollout can be in

# Process-wide (one ingest per process); each app's registry exposes them with its own fleet's gauges.
RECEIVED = Counter("edgefleet_fleet_ingest_received", "MQTT messages committed, by topic kind", ["kind"], registry=None)
OUTCOMES = Counter(
    "edgefleet_fleet_ingest_messages",
    "MQTT messages committed, by outcome: the kind stored, or why it was dropped",
    ["outcome"],
    registry=None,
)
LAG = Histogram(
    "edgefleet_fleet_ingest_lag_seconds",
    "Time from a message's arrival at the fleet to the commit of its batch",
    registry=None,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)


def topic_kind(topic: str) -> str:
    """`edgefleet/v1/<device>/<kind>[/...]` -> kind; anything else is "other" (labels stay few)."""
    parts = topic.split("/")
    return parts[3] if len(parts) >= 4 and parts[3] in TOPIC_KINDS else "other"


def ingested(messages: Iterable, outcomes: Mapping[str, int], committed_at: float) -> None:
    """Count a committed ingest batch: `messages` (topic, received_at) and Ingest's outcome tally."""
    for m in messages:
        RECEIVED.labels(topic_kind(m.topic)).inc()
        LAG.observe(max(0.0, committed_at - m.received_at))
    for outcome, count in outcomes.items():
        if outcome != "received" and count:  # "received" is the batch size, counted by kind above
            OUTCOMES.labels(outcome).inc(count)


def _by(rows: Iterable, known: tuple[str, ...]) -> dict[str, int]:
    """(label, count) rows with every known label present (0 when absent), so series do not vanish."""
    counts = dict.fromkeys(known, 0)
    counts.update({str(label): int(n) for label, n in rows})
    return counts


class FleetStateCollector(Collector):
    """Gauges read from the database on each scrape."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.fleet.session() as s:
            devices = _by(s.execute(select(Device.status, func.count()).group_by(Device.status)), DEVICE_STATUSES)
            rollouts = _by(s.execute(select(Rollout.state, func.count()).group_by(Rollout.state)), ROLLOUT_STATES)
            alarms = _by(s.execute(select(DriftAlarm.state, func.count()).group_by(DriftAlarm.state)), DRIFT_STATES)
            fleet_alarms = _by(
                s.execute(select(DriftFleetAlarm.state, func.count()).group_by(DriftFleetAlarm.state)), DRIFT_STATES
            )
            newest = s.scalar(select(func.max(Telemetry.received_at)))
        yield _family("edgefleet_fleet_devices", "Enrolled devices by last reported status", "status", devices)
        yield _family("edgefleet_fleet_rollouts", "Rollouts by state", "state", rollouts)
        yield _family("edgefleet_fleet_drift_alarms", "Per-device drift alarms by state", "state", alarms)
        yield _family("edgefleet_fleet_drift_fleet_alarms", "Fleet-wide drift alarms by state", "state", fleet_alarms)
        if newest is not None:
            yield GaugeMetricFamily(
                "edgefleet_fleet_telemetry_age_seconds",
                "Seconds since the newest telemetry message was received (ingest stalled when it grows)",
                value=max(0.0, self.fleet.clock() - newest),
            )


def _family(name: str, doc: str, label: str, counts: dict[str, int]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family


def registry(fleet: Fleet) -> CollectorRegistry:
    """What GET /metrics exposes for `fleet`: this process's ingest counters and the database's gauges."""
    registry = CollectorRegistry()
    for collector in (RECEIVED, OUTCOMES, LAG, FleetStateCollector(fleet)):
        registry.register(collector)
    ProcessCollector(registry=registry)  # the standard process_* series: CPU, resident memory, open fds
    return registry


def metrics_token(path: Path | None) -> str | None:
    """The token /metrics requires (read once at start, so a bad path fails then), or None: open."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read metrics_token_file {path}: {exc.strerror}", "check the path") from None
    if not token:
        raise UsageError(f"metrics_token_file {path} is empty", "write the token Prometheus sends into it")
    return token
