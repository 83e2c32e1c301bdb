"""At-least-once ingest with real processes: mosquitto (the fleet's own TLS configuration),
`edgefleet fleet serve` subprocesses and camera clients with their own certificates.

Every telemetry message a camera got a PUBACK for is stored exactly once: through a fleet
SIGKILL and restart (SQLite), with two replicas sharing the device topics on one PostgreSQL
(each message ingested by one of them), across a replica's SIGKILL and return, and a
malformed message is counted once and acknowledged (never redelivered).
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from fleet_world import CAMERAS, Camera, World, accepted, send_in_background

from edgefleet.fleet.config import FleetConfig

pytestmark = pytest.mark.mqtt


@pytest.fixture
def world(tmp_path, edgefleet_home):
    w = World(tmp_path, None, edgefleet_home)
    cams: list[Camera] = []
    w.cameras = cams
    yield w
    for c in cams:
        c.close()
    w.close()


def test_a_fleet_sigkilled_mid_stream_and_restarted_stores_every_accepted_message_once(world):
    world.start("fleet")
    world.cameras += [Camera(world.broker, c) for c in CAMERAS]
    senders = send_in_background(world.cameras, 400, 0.002)
    world.wait_stored(300)
    world.kill("fleet")  # mid-stream: batches in flight are committed or not, never acknowledged before
    time.sleep(1)  # the cameras keep sending; the broker queues for the fleet's session
    world.start("fleet")
    for t in senders:
        t.join()
    sent = accepted(world.cameras)
    rows = world.wait_stored(len(sent))
    time.sleep(2)  # a redelivered duplicate would land now
    rows = world.stored()
    assert len(sent) == 1200
    assert sorted(rows) == sorted(sent), f"lost {len(set(sent) - set(rows))}, duplicated {len(rows) - len(set(rows))}"


def test_a_malformed_message_is_counted_once_and_acknowledged(world):
    world.start("fleet")
    cam = Camera(world.broker, "cam-1")
    world.cameras.append(cam)
    for payload in (b'{"schema": 1, "frames": {"ok": -1}}', b"not json"):
        cam.client.publish("edgefleet/v1/cam-1/telemetry", payload, qos=1).wait_for_publish(10)
    cam.telemetry(1)
    world.wait_stored(1)
    assert world.metrics("fleet")["dropped_malformed"] == 2
    world.stop("fleet")  # a clean restart: anything not acknowledged would be sent again now
    world.start("fleet")
    cam.telemetry(1)
    world.wait_stored(2)
    assert "dropped_malformed" not in world.metrics("fleet")


@pytest.mark.postgres
def test_two_replicas_on_postgresql_each_ingest_a_share_and_store_every_message_once(
    tmp_path, edgefleet_home, postgres_database
):
    world = World(tmp_path, postgres_database, edgefleet_home)
    cams = [Camera(world.broker, c) for c in CAMERAS]
    try:
        world.start("fleet-a")
        world.start("fleet-b")
        for t in send_in_background(cams, 300, 0.001):
            t.join()
        sent = accepted(cams)
        rows = world.wait_stored(len(sent))
        shares = {r: world.metrics(r).get("telemetry", 0) for r in ("fleet-a", "fleet-b")}
        assert sorted(rows) == sorted(sent)
        assert sum(shares.values()) == len(sent) and min(shares.values()) > 0, shares  # each message ingested once

        # One replica dies: the broker keeps dealing messages to its session. They wait there
        # until it returns under its id, then they are stored (once).
        world.kill("fleet-b")
        for t in send_in_background(cams, 100, 0.001):
            t.join()
        sent = accepted(cams)
        time.sleep(3)
        waiting = len(sent) - len(world.stored())
        world.start("fleet-b")
        rows = world.wait_stored(len(sent))
        time.sleep(2)
        rows = world.stored()
        assert sorted(rows) == sorted(sent) and waiting > 0, waiting
    finally:
        for c in cams:
            c.close()
        world.close()


def test_replica_ids_must_be_fleet_identities_that_match_the_certificate(world):
    from edgefleet.errors import ServiceError
    from edgefleet.fleet.bridge import replica_id

    assert replica_id(world.config("fleet-a")) == "fleet-a"
    wrong = world.config("fleet-a")
    wrong.replica_id = "fleet-b"
    with pytest.raises(ServiceError, match="not the CN 'fleet-a'"):
        replica_id(wrong)
    for cn in ("fleet-viewer", "fleet-a\ntopic readwrite #", "cam-1"):  # the read-only viewer, ACL syntax, a device
        config = world.config("fleet-a")
        config.replica_id = None  # taken from the certificate
        config.broker.cert_file, config.broker.key_file = world.broker.pki.issue(cn)
        with pytest.raises(ServiceError, match="not a fleet identity"):
            replica_id(config)
    with pytest.raises(ValueError, match="replica_id"):
        FleetConfig.model_validate({"replica_id": "cam-1"})


def test_a_camera_cannot_divert_the_fleets_messages_into_a_share_group(world):
    """mosquitto grants any subscription and checks the ACL only on delivery, dropping what it
    dealt to a member that may not read it: a camera in the replicas' group would lose half of
    the messages (measured: 20 of 40). The group's name is a random secret in the database, so
    a camera's guesses make groups of their own."""
    world.start("fleet")
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cam-2", protocol=mqtt.MQTTv5)
    cert, key = world.broker.pki.issue("cam-2")
    spy.tls_set_context(world.broker.ssl_context(cert, key))
    got: list = []
    subscribed = threading.Event()
    spy.on_subscribe = lambda *a: subscribed.set()
    spy.on_message = lambda c, u, m: got.append(m)
    spy.connect(world.broker.host, world.broker.port)
    spy.loop_start()
    cam = Camera(world.broker, "cam-1")
    world.cameras.append(cam)
    try:
        spy.subscribe([(f"$share/{g}/edgefleet/v1/+/telemetry", 1) for g in ("edgefleet", "fleet", "fleet-a")])
        assert subscribed.wait(10)
        cam.telemetry(40)
        rows = world.wait_stored(40, timeout=30)
    finally:
        spy.disconnect()
        spy.loop_stop()
    assert got == [] and sorted(rows) == sorted(cam.accepted)


def test_a_fleet_on_a_dynsec_broker_grants_itself_and_the_cameras_over_mqtt(tmp_path, edgefleet_home):
    """`fleet serve` with `authorization = "dynsec"`: no ACL file, no SIGHUP; the cameras' rights
    come from the fleet's commands at startup, so their telemetry reaches the fleet."""
    w = World(tmp_path, None, edgefleet_home, dynsec=True)
    cams: list[Camera] = []
    try:
        w.start("fleet")
        cams += [Camera(w.broker, c) for c in CAMERAS]
        for c in cams:
            c.telemetry(20)
        rows = w.wait_stored(60, timeout=30)
        assert sorted(rows) == sorted(accepted(cams))
        assert not (tmp_path / "broker" / "acl").exists()
    finally:
        for c in cams:
            c.close()
        w.close()
