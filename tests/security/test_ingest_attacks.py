"""Malformed telemetry from a hostile camera: each poison message is dropped and counted alone,
the rest of its batch (other cameras' messages) is stored; the fleet acknowledges a message to the
broker only once it is committed. In-process ingest on SQLite, then the real bridge on mosquitto."""

from __future__ import annotations

import json
import threading
import time

import pytest
from attack_support import CAMERAS, Client, fleet_broker_config

from edgefleet.fleet import devices
from edgefleet.fleet.ingest import Ingest, Message

GOOD = json.dumps({"schema": 1, "frames": {"ok": 5}, "alerts": {"person": 1}, "latency_ms": {"p95": 12.5}}).encode()
DEEP = b'{"schema": 1, "frames": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

# (row id, topic suffix on cam-2, payload, counter that goes up)
POISON = [
    ("infinity-count", "telemetry", b'{"schema": 1, "frames": {"ok": Infinity}}', "dropped_malformed"),
    (
        "minus-infinity-latency",
        "telemetry",
        b'{"schema": 1, "frames": 1, "latency_ms": {"p95": -Infinity}}',
        "dropped_malformed",
    ),
    (
        "nan-histogram-edge",
        "telemetry",
        b'{"schema": 1, "drift": {"confidence": {"edges": [0, NaN], "counts": [1]}}}',
        "dropped_malformed",
    ),
    ("1e30-count", "telemetry", b'{"schema": 1, "frames": {"ok": 1e30}}', "dropped_malformed"),
    (
        "2-to-the-70-count",
        "telemetry",
        json.dumps({"schema": 1, "frames": {"ok": 2**70}}).encode(),
        "dropped_malformed",
    ),
    ("negative-count", "telemetry", b'{"schema": 1, "frames": {"ok": -5}}', "dropped_malformed"),
    ("100k-deep-nesting", "telemetry", DEEP, "dropped_malformed"),
    ("count-as-string", "telemetry", b'{"schema": 1, "frames": {"ok": "many"}}', "dropped_malformed"),
    ("count-as-list", "telemetry", b'{"schema": 1, "frames": [1, 2]}', "dropped_malformed"),
    ("alert-counts-as-strings", "telemetry", b'{"schema": 1, "alerts": {"person": "9"}}', "dropped_malformed"),
    (
        "model-name-as-object",
        "telemetry",
        b'{"schema": 1, "frames": 1, "model": {"name": {"x": 1}, "version": [1]}}',
        "dropped_malformed",
    ),
    ("body-not-an-object", "telemetry", b"[1, 2, 3]", "dropped_malformed"),
    ("invalid-utf8", "telemetry", b'{"schema": 1, "frames": "\xff\xfe"}', "dropped_malformed"),
    ("schema-2", "telemetry", b'{"schema": 2, "frames": 1}', "dropped_malformed"),
    ("claims-another-device", "telemetry", b'{"schema": 1, "device": "cam-1", "frames": 1}', "dropped_malformed"),
    ("status-state-forged", "status", b'{"schema": 1, "state": "admin"}', "dropped_malformed"),
    (
        "update-for-someone-elses-job",
        "jobs/job-of-cam-1/update",
        b'{"schema": 1, "state": "committed"}',
        "dropped_unknown_job",
    ),
    ("unknown-topic", "exec", b'{"schema": 1}', "dropped_malformed"),
    ("oversize-payload", "telemetry", b'{"schema": 1, "pad": "' + b"x" * 300_000 + b'"}', "dropped_malformed"),
]


def telemetry_rows(fleet) -> dict[str, int]:
    from sqlalchemy import func, select

    from edgefleet.fleet.db import Telemetry

    with fleet.session() as s:
        return dict(s.execute(select(Telemetry.device_id, func.count()).group_by(Telemetry.device_id)).all())


@pytest.fixture
def ingest(fleet):
    for cam in CAMERAS:
        devices.register_device(fleet, cam, "x86_64")
    return Ingest(fleet)


@pytest.mark.parametrize("suffix, payload, counter", [r[1:] for r in POISON], ids=[r[0] for r in POISON])
def test_a_poison_message_is_dropped_alone(fleet, ingest, suffix, payload, counter):
    """Hole 3: was a rollback of the whole batch (other cameras' messages and job updates)."""
    batch = [
        Message("edgefleet/v1/cam-1/telemetry", GOOD, 1.0),
        Message(f"edgefleet/v1/cam-2/{suffix}", payload, 2.0),
        Message("edgefleet/v1/cam-3/telemetry", GOOD, 3.0),
        Message("edgefleet/v1/cam-2/telemetry", GOOD, 4.0),
    ]
    ingest.handle_batch(batch)
    assert telemetry_rows(fleet) == {"cam-1": 1, "cam-2": 1, "cam-3": 1}
    assert ingest.counters[counter] == 1 and ingest.counters["telemetry"] == 3 and ingest.counters["received"] == 4


def bridge_for(broker, fleet, ingest):
    from edgefleet.fleet.bridge import Bridge

    return Bridge(fleet_broker_config(broker), ingest)


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.mqtt
def test_poison_stream_through_the_real_bridge_loses_no_other_message(tmp_path, fleet, ingest):
    """Hole 3 end to end: 3 cameras, one of them sending every poison row between good messages."""
    from attack_support import production_broker

    broker = production_broker(tmp_path / "broker")
    bridge = bridge_for(broker, fleet, ingest)
    bridge.start()
    cams = {c: Client(broker, c).start(broker) for c in CAMERAS}
    try:
        for i in range(20):
            cams["cam-1"].publish("edgefleet/v1/cam-1/telemetry", GOOD)
            cams["cam-3"].publish("edgefleet/v1/cam-3/telemetry", GOOD)
            _, suffix, payload, _ = POISON[i % len(POISON)]
            if len(payload) < 256 * 1024:  # bigger ones the broker itself refuses (test_mqtt_attacks)
                cams["cam-2"].publish(f"edgefleet/v1/cam-2/{suffix}", payload)
        wait_until(lambda: telemetry_rows(fleet) == {"cam-1": 20, "cam-3": 20})
    finally:
        for c in cams.values():
            c.stop()
        bridge.stop()
        broker.close()
    assert ingest.counters["dropped_malformed"] + ingest.counters["dropped_unknown_job"] >= 17


@pytest.mark.mqtt
def test_messages_are_acknowledged_only_once_committed(tmp_path, fleet, ingest):
    """While the database refuses, the bridge holds its batch unacknowledged; a fleet that stops
    then gets the messages again from the broker on its next connection."""
    from attack_support import production_broker

    broker = production_broker(tmp_path / "broker")
    failing = bridge_for(broker, fleet, ingest)
    refused = threading.Event()

    def database_down(batch):
        refused.set()
        raise RuntimeError("database is down")

    failing.ingest = type("Down", (), {"handle_batch": staticmethod(database_down), "counters": ingest.counters})()
    failing.start()
    cam = Client(broker, "cam-1").start(broker)
    try:
        for _ in range(5):
            cam.publish("edgefleet/v1/cam-1/telemetry", GOOD)
        assert refused.wait(10)
        failing.stop()
        assert telemetry_rows(fleet) == {}
        working = bridge_for(broker, fleet, ingest)
        working.start()
        wait_until(lambda: telemetry_rows(fleet) == {"cam-1": 5})
        working.stop()
    finally:
        cam.stop()
        broker.close()
