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
import threading
from collections import Counter as Tally
from dataclasses import dataclass

from edgefleet.contracts.mqtt import AlertMessage, DeviceMessage, JobUpdate, StatusMessage, TelemetryMessage
from edgefleet.fleet import alert_events
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Counter, Device, Telemetry
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.local_broker import MAX_PACKET_BYTES
from edgefleet.fleet.rollouts import apply_job_update

log = logging.getLogger("edgefleet.fleet.ingest")
PREFIX = "edgefleet/v1/"


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


# What each topic suffix promises (edgefleet/contracts/mqtt.py); an alert is parsed whole, as it
# becomes an alert event.
CONTRACTS: dict[str, type[DeviceMessage]] = {
    "status": StatusMessage,
    "telemetry": TelemetryMessage,
    "alerts": AlertMessage,
    "jobs": JobUpdate,
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
            self._known.discard(m.topic[len(PREFIX) :].partition("/")[0])  # the cache may hold a rolled-back read
            log.debug("dropping malformed message on %s: %s", m.topic, exc)
            return "dropped_malformed"

    def _one(self, s, m: Message) -> str:
        if not m.topic.startswith(PREFIX):
            return "dropped_malformed"
        device_id, _, suffix = m.topic[len(PREFIX) :].partition("/")
        if not self._is_known(s, device_id):
            return "dropped_unknown_device"
        kind = suffix.split("/")[0]
        if suffix not in ("status", "telemetry", "alerts") and not (
            kind == "jobs" and suffix.endswith("/update") and suffix.count("/") == 2
        ):
            return "dropped_malformed"
        if suffix == "status" and m.payload.strip() in (b"offline", b'"offline"'):
            msg: DeviceMessage = StatusMessage(state="offline")  # a bare last will
        else:
            msg = CONTRACTS[kind].model_validate(parse_body(m.payload))
        if msg.device not in (None, device_id):
            return "dropped_malformed"
        device = s.get(Device, device_id)
        if isinstance(msg, StatusMessage):
            self._status(device, msg)
        elif isinstance(msg, TelemetryMessage):
            s.add(
                Telemetry(
                    device_id=device_id,
                    received_at=m.received_at,
                    model_name=msg.model and msg.model.name,
                    model_version=msg.model and msg.model.version,
                    frames=msg.frames_ok,
                    alerts=msg.alert_count,
                    confidence_mean=msg.confidence_mean,
                    latency_p95_ms=msg.latency_p95_ms,
                )
            )
            self.drift.observe(s, device_id, msg, m.received_at)
            device.status = "online"
        elif isinstance(msg, JobUpdate):
            if not apply_job_update(self.fleet, s, device_id, suffix.split("/")[1], msg):
                return "dropped_unknown_job"
        else:
            device.status = "online"  # an alert: counted, and the device is seen
        alert_events.observe(s, device, msg, m.received_at)  # alert events, watched labels (fleet/alert_events.py)
        device.last_seen = max(device.last_seen or 0.0, m.received_at)
        return kind

    @staticmethod
    def _status(device: Device, msg: StatusMessage) -> None:
        device.status = msg.state
        if msg.model is not None:
            device.model_name, device.model_version = msg.model.name, msg.model.version
        if msg.state == "online" and msg.agent_version is not None:
            device.agent_version = msg.agent_version
            # Agents before 0.2 do not say; they cannot update themselves anyway.
            device.arch = msg.arch if msg.arch is not None else device.arch

    def stats(self) -> dict:
        return dict(self.counters) | dict(self.drift.counters)
