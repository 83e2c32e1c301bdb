"""Client-id takeover against the fleet's real MQTT bridge, and broker crashes (SIGKILL) with
QoS 1 messages the broker had acknowledged, on real mosquitto with the fleet's configuration."""

from __future__ import annotations

import json
import threading
import time

import pytest
from attack_support import CAMERAS, Client, fleet_broker_config, nonce, production_broker

pytestmark = pytest.mark.mqtt
# A SIGKILL loses nothing the broker acknowledged at least this long before it (docs/security.md:
# mosquitto acknowledges, then writes its persistence file in the same loop pass).
DURABLE_AFTER_S = 0.05


@pytest.fixture
def broker(tmp_path):
    b = production_broker(tmp_path / "broker")
    yield b
    b.close()


@pytest.fixture
def fleet_bridge(tmp_path, edgefleet_home, broker):
    """The fleet in-process with its real MQTT bridge (the fleet's certificate, CN fleet)."""
    from edgefleet.fleet import devices
    from edgefleet.fleet.bridge import Bridge
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.ingest import Ingest

    config = fleet_broker_config(broker)
    fleet = open_fleet(FleetConfig(data_dir=tmp_path / "fleet", signing_key=tmp_path / "none.key", broker=config))
    for cam in CAMERAS:
        devices.register_device(fleet, cam, "x86_64")
    bridge = Bridge(config, Ingest(fleet), client_id="edgefleet-fleet")
    drops = []
    bridge.client.on_disconnect = lambda *a: (drops.append(a), bridge.connected.clear())
    bridge.start()
    bridge.drops = drops
    yield fleet, bridge
    bridge.stop()


def telemetry_rows(fleet, device: str) -> int:
    from sqlalchemy import func, select

    from edgefleet.fleet.db import Telemetry

    with fleet.session() as s:
        return int(s.scalar(select(func.count()).select_from(Telemetry).where(Telemetry.device_id == device)))


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.parametrize("stolen_id", ["edgefleet-fleet", "fleet"], ids=["fleet-client-id-as-sent", "fleet-cn"])
def test_camera_cannot_take_over_the_fleets_session(broker, fleet_bridge, stolen_id):
    """Hole 1: a camera certificate connecting with the fleet's client id, again and again, while
    another camera sends telemetry: the fleet is never dropped and every message is stored."""
    fleet, bridge = fleet_bridge
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            attacker = Client(broker, "cam-1", client_id=stolen_id)
            try:
                attacker.start(broker, timeout=2)
            except ConnectionError:
                pass
            attacker.stop()

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    cam2 = Client(broker, "cam-2").start(broker)
    try:
        for i in range(30):
            cam2.publish("edgefleet/v1/cam-2/telemetry", json.dumps({"schema": 1, "frames": {"ok": i}}))
            time.sleep(0.03)
        wait_until(lambda: telemetry_rows(fleet, "cam-2") == 30)
    finally:
        stop.set()
        thread.join(10)
        cam2.stop()
    assert bridge.drops == [], "the fleet's session was never taken over"


def test_camera_cannot_take_over_another_cameras_session(broker):
    """Hole 1: cam-1's certificate with client id cam-2 does not resume cam-2's session (its queued jobs)."""
    cam2 = Client(broker, "cam-2", client_id="cam-2", clean=False).start(broker)
    cam2.subscribe("edgefleet/v1/cam-2/jobs/notify")
    cam2.stop()
    fleet_side = Client(broker, "fleet-observer-0").start(broker)
    jobs = [nonce() for _ in range(3)]
    for job in jobs:
        fleet_side.publish("edgefleet/v1/cam-2/jobs/notify", job)
    thief = Client(broker, "cam-1", client_id="cam-2", clean=False).start(broker)
    time.sleep(0.5)
    thief.stop()
    back = Client(
        broker,
        "cam-2",
        client_id="cam-2",
        clean=False,
        cert=(broker.pki.root / "cam-2.pem", broker.pki.root / "cam-2.key"),
    ).start(broker)
    try:
        wait_until(lambda: len(back.payloads()) == 3, timeout=10)
    finally:
        back.stop()
        fleet_side.stop()
    assert thief.payloads() == [] and sorted(back.payloads()) == sorted(jobs)


def _offline_session(broker, identity: str, topic: str) -> tuple:
    cert = broker.pki.issue(identity)
    c = Client(broker, identity, clean=False, cert=cert).start(broker)
    c.subscribe(topic)
    c.stop()
    return cert


def _reconnect(broker, identity: str, cert) -> Client:
    return Client(broker, identity, clean=False, cert=cert).start(broker)


def test_broker_sigkill_keeps_acknowledged_alerts_for_an_offline_fleet(broker):
    """Hole 2: 47 alerts acknowledged while the fleet's session is offline survive a SIGKILL."""
    cert = _offline_session(broker, "fleet-observer-1", "edgefleet/v1/+/alerts")
    cam = Client(broker, "cam-1").start(broker)
    sent = [nonce() for _ in range(47)]
    for alert in sent:
        cam.publish("edgefleet/v1/cam-1/alerts", alert)  # returns on PUBACK
    cam.stop()
    time.sleep(DURABLE_AFTER_S)
    broker.kill()
    broker.start()
    fleet_side = _reconnect(broker, "fleet-observer-1", cert)
    try:
        wait_until(lambda: len(set(fleet_side.payloads())) == 47, timeout=15)
    finally:
        fleet_side.stop()
    assert set(fleet_side.payloads()) == set(sent)


def test_broker_sigkill_keeps_a_job_queued_for_an_offline_camera(broker):
    """Hole 2: a job queued for an offline camera survives a SIGKILL (the rollout does not abort)."""
    cert = _offline_session(broker, "cam-2", "edgefleet/v1/cam-2/jobs/notify")
    fleet_side = Client(broker, "fleet-observer-2").start(broker)
    job = nonce()
    fleet_side.publish("edgefleet/v1/cam-2/jobs/notify", job)
    fleet_side.stop()
    time.sleep(DURABLE_AFTER_S)
    broker.kill()
    broker.start()
    cam2 = _reconnect(broker, "cam-2", cert)
    try:
        cam2.wait_for_payload(job)
    finally:
        cam2.stop()


def test_broker_config_bounds_queues_packets_and_saves_on_every_change(broker):
    """Hole 2/8: the limits are in the configuration the broker runs (and mosquitto accepted it)."""
    from edgefleet.fleet.local_broker import MAX_PACKET_BYTES, MAX_QUEUED_MESSAGES

    conf = broker.config_file.read_text().splitlines()
    for line in (
        "autosave_on_changes true",
        "autosave_interval 1",
        "persistence true",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ):
        assert line in conf
    assert broker.process.poll() is None


def test_the_fleet_reports_the_brokers_drop_and_queue_counters(broker, fleet_bridge):
    """Hole 2: queue overflow is no longer silent: the broker's counters reach /api/v1/metrics."""
    _, bridge = fleet_bridge
    wait_until(
        lambda: (
            "broker_messages_dropped" in bridge.ingest.stats() and "broker_messages_stored" in bridge.ingest.stats()
        ),
        timeout=12,
    )
    assert bridge.ingest.stats()["broker_messages_dropped"] == 0
