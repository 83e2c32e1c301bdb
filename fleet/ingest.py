"""What the fleet does with MQTT messages from devices (topics v1, payloads with "schema": 1).

    edgefleet/v1/<device>/status               online/offline, current model, last seen
    edgefleet/v1/<device>/telemetry            health numbers for rollout gates (frames, alerts, confidence, p95)
    edgefleet/v1/<device>/alerts               counted (and marks the device seen)
    edgefleet/v1/<device>/jobs/<job>/update    the update state machine's progress -> deployments

Messages from devices the fleet does not know, and malformed ones, are dropped and counted
(`counters`); nothing a device sends can raise out of `handle_batch`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter as Tally
from dataclasses import dataclass

from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Counter, Device, Telemetry
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.rollouts import apply_job_update

log = logging.getLogger("edgefleet.fleet.ingest")
PREFIX = "edgefleet/v1/"


@dataclass
class Message:
    topic: str
    payload: bytes
    received_at: float


def telemetry_numbers(body: dict) -> dict:
    """Frames, alerts, mean top-1 confidence and p95 latency from an agent telemetry body."""
    frames = body.get("frames")
    ok = frames.get("ok", 0) if isinstance(frames, dict) else frames
    alerts = body.get("alerts")
    n_alerts = sum(v for v in alerts.values() if isinstance(v, int)) if isinstance(alerts, dict) else alerts
    latency = body.get("latency_ms") if isinstance(body.get("latency_ms"), dict) else {}
    conf = None
    hist = (body.get("drift") or {}).get("confidence") if isinstance(body.get("drift"), dict) else None
    if isinstance(hist, dict) and len(hist.get("edges", [])) == len(hist.get("counts", [])) + 1:
        edges, counts = hist["edges"], hist["counts"]
        total = sum(counts)
        if total:
            conf = sum((edges[i] + edges[i + 1]) / 2 * c for i, c in enumerate(counts)) / total
    p95 = latency.get("p95")
    return {
        "frames": int(ok or 0),
        "alerts": int(n_alerts or 0),
        "confidence_mean": float(conf) if conf is not None else None,
        "latency_p95_ms": float(p95) if isinstance(p95, (int, float)) else None,
    }


class Ingest:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.counters: Tally[str] = Tally()
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self.drift = DriftMonitor(fleet)  # judges telemetry drift summaries (fleet/drift_service.py)

    def _is_known(self, s, device_id: str) -> bool:
        if device_id in self._known:
            return True
        if s.get(Device, device_id) is not None:
            self._known.add(device_id)
            return True
        return False

    def handle_batch(self, messages: list[Message]) -> None:
        """Store a batch of messages in one transaction; job updates go through the rollout engine."""
        # One transaction per batch, job updates included (fleet.lock: the rollout ticker waits).
        with self._lock, self.fleet.lock, self.drift.batch(), self.fleet.writer() as s, s.begin():
            for m in messages:
                self.counters["received"] += 1
                try:
                    outcome = self._one(s, m)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    log.debug("dropping malformed message on %s: %s", m.topic, exc)
                    outcome = "dropped_malformed"
                self.counters[outcome] += 1
            dropped = self.counters["dropped_unknown_device"]
            row = s.get(Counter, "dropped_unknown_device")
            if row is None:
                s.add(Counter(name="dropped_unknown_device", value=dropped))
            elif dropped:
                row.value = max(row.value, dropped)

    def _one(self, s, m: Message) -> str:
        if not m.topic.startswith(PREFIX):
            return "dropped_malformed"
        device_id, _, suffix = m.topic[len(PREFIX):].partition("/")
        if not self._is_known(s, device_id):
            return "dropped_unknown_device"
        if suffix == "status" and m.payload.strip() in (b"offline", b'"offline"'):
            body = {"schema": 1, "state": "offline"}  # a bare last will
        else:
            body = json.loads(m.payload)
        if not isinstance(body, dict) or body.get("schema") != 1:
            return "dropped_malformed"
        if body.get("device") not in (None, device_id):
            return "dropped_malformed"
        device = s.get(Device, device_id)
        if suffix == "status":
            state = body.get("state")
            if state not in ("online", "offline"):
                return "dropped_malformed"
            device.status = state
            model = body.get("model")
            if isinstance(model, dict) and model.get("name"):
                device.model_name, device.model_version = str(model["name"]), str(model.get("version"))
        elif suffix == "telemetry":
            model = body.get("model") if isinstance(body.get("model"), dict) else {}
            s.add(Telemetry(device_id=device_id, received_at=m.received_at, model_name=model.get("name"), model_version=model.get("version"), **telemetry_numbers(body)))
            self.drift.observe(s, device_id, body, m.received_at)
            device.status = "online"
        elif suffix == "alerts":
            device.status = "online"
        elif suffix.startswith("jobs/") and suffix.endswith("/update") and suffix.count("/") == 2:
            if not apply_job_update(self.fleet, s, device_id, suffix.split("/")[1], body):
                return "dropped_unknown_job"
        else:
            return "dropped_malformed"
        device.last_seen = max(device.last_seen or 0.0, m.received_at)
        return suffix.split("/")[0]

    def stats(self) -> dict:
        return dict(self.counters) | dict(self.drift.counters)
