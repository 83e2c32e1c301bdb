"""What the fleet does with MQTT messages from devices (topics v1, payloads with "schema": 1).

    edgefleet/v1/<device>/status               online/offline, current model, last seen
    edgefleet/v1/<device>/telemetry            health numbers for rollout gates (frames, alerts, confidence, p95)
    edgefleet/v1/<device>/alerts               counted (and marks the device seen)
    edgefleet/v1/<device>/jobs/<job>/update    the update state machine's progress -> deployments

Messages from devices the fleet does not know, and malformed ones, are dropped and counted
(`counters`); nothing a device sends can raise out of `handle_batch`. Each message is stored
in its own savepoint, so a poison message (NaN, 1e30 where a count goes, 100k-deep nesting,
wrong types, anything the database refuses) is dropped alone and the rest of its batch is kept.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections import Counter as Tally
from dataclasses import dataclass

from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Counter, Device, Telemetry
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.local_broker import MAX_PACKET_BYTES
from edgefleet.fleet.rollouts import apply_job_update

log = logging.getLogger("edgefleet.fleet.ingest")
PREFIX = "edgefleet/v1/"


MAX_COUNT = 2**31 - 1  # frames and alerts per telemetry period; more is a forged number
MAX_PAYLOAD_BYTES = MAX_PACKET_BYTES  # an external broker may not enforce ours


@dataclass
class Message:
    topic: str
    payload: bytes
    received_at: float
    mid: int = 0  # the MQTT message id, acknowledged once the message is committed (fleet/bridge.py)


class Malformed(ValueError):
    """A message that is not what its topic promises; dropped and counted as dropped_malformed."""


def _no_constant(name: str):
    raise Malformed(f"JSON constant {name} is not a number a device sends")


def parse_body(payload: bytes) -> object:
    """Strict JSON: no NaN/Infinity, bounded size; deep nesting fails as Malformed, not RecursionError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Malformed(f"payload of {len(payload)} bytes")
    try:
        return json.loads(payload, parse_constant=_no_constant)
    except RecursionError:
        raise Malformed("JSON nested too deeply") from None


def _count(value) -> int:
    """A non-negative count from a device; bool, floats, strings and absurd numbers are refused."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise Malformed(f"count {str(value)[:40]!r} is not an integer in 0..{MAX_COUNT}")
    return value


def _real(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > 1e12:
        return None
    return float(value)


def telemetry_numbers(body: dict) -> dict:
    """Frames, alerts, mean top-1 confidence and p95 latency from an agent telemetry body."""
    frames = body.get("frames")
    ok = _count(frames.get("ok", 0) if isinstance(frames, dict) else frames)
    alerts = body.get("alerts")
    n_alerts = _count(sum(_count(v) for v in alerts.values()) if isinstance(alerts, dict) else alerts)
    latency = body.get("latency_ms") if isinstance(body.get("latency_ms"), dict) else {}
    conf = None
    hist = (body.get("drift") or {}).get("confidence") if isinstance(body.get("drift"), dict) else None
    if isinstance(hist, dict) and isinstance(hist.get("edges"), list) and isinstance(hist.get("counts"), list) \
            and len(hist["edges"]) == len(hist["counts"]) + 1:
        edges, counts = [_real(e) for e in hist["edges"]], [_count(c) for c in hist["counts"]]
        total = sum(counts)
        if total and None not in edges:
            conf = sum((edges[i] + edges[i + 1]) / 2 * c for i, c in enumerate(counts)) / total
    return {
        "frames": ok,
        "alerts": n_alerts,
        "confidence_mean": _real(conf),
        "latency_p95_ms": _real(latency.get("p95")),
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
        """Store a batch of messages in one transaction; job updates go through the rollout engine.

        Returns once the batch is committed (then every message in it is handled: stored or
        dropped and counted); raises only if the commit itself fails (the database is down).
        """
        # One transaction per batch, job updates included (fleet.lock: the rollout ticker waits);
        # one savepoint per message, so one bad message cannot take its batch down with it.
        outcomes: Tally[str] = Tally()
        with self._lock, self.fleet.lock, self.drift.batch(), self.fleet.writer() as s, s.begin():
            for m in messages:
                outcomes["received"] += 1
                outcomes[self._isolated(s, m)] += 1
            dropped = self.counters["dropped_unknown_device"] + outcomes["dropped_unknown_device"]
            row = s.get(Counter, "dropped_unknown_device")
            if row is None:
                s.add(Counter(name="dropped_unknown_device", value=dropped))
            elif dropped:
                row.value = max(row.value, dropped)
        self.counters.update(outcomes)  # counted once committed: a failed batch is retried, not counted twice

    def _isolated(self, s, m: Message) -> str:
        savepoint = s.begin_nested()
        try:
            outcome = self._one(s, m)
            s.flush()  # the database's own refusals (overflow, types) surface here, inside the savepoint
            savepoint.commit()
            return outcome
        except Exception as exc:  # noqa: BLE001 - whatever a device sent, only this message is lost
            savepoint.rollback()
            self._known.discard(m.topic[len(PREFIX):].partition("/")[0])  # the cache may hold a rolled-back read
            log.debug("dropping malformed message on %s: %s", m.topic, exc)
            return "dropped_malformed"

    def _one(self, s, m: Message) -> str:
        if not m.topic.startswith(PREFIX):
            return "dropped_malformed"
        device_id, _, suffix = m.topic[len(PREFIX):].partition("/")
        if not self._is_known(s, device_id):
            return "dropped_unknown_device"
        if suffix == "status" and m.payload.strip() in (b"offline", b'"offline"'):
            body = {"schema": 1, "state": "offline"}  # a bare last will
        else:
            body = parse_body(m.payload)
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
            if state == "online" and isinstance(body.get("agent_version"), str):
                device.agent_version = body["agent_version"][:64]
                # Agents before 0.2 do not say; they cannot update themselves anyway.
                device.arch = str(body["arch"])[:32] if isinstance(body.get("arch"), str) else device.arch
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
