"""At-least-once ingest with real processes: mosquitto (the fleet's own TLS configuration),
`edgefleet fleet serve` subprocesses and camera clients with their own certificates.

Every telemetry message a camera got a PUBACK for is stored exactly once: through a fleet
SIGKILL and restart (SQLite), with two replicas sharing the device topics on one PostgreSQL
(each message ingested by one of them), across a replica's SIGKILL and return, and a
malformed message is counted once and acknowledged (never redelivered).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import select
from support.broker import Broker
from tests_fleet_util import wait_http

from edgefleet.fleet import auth, devices
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import open_fleet
from edgefleet.fleet.db import Telemetry
from edgefleet.net import free_port

pytestmark = pytest.mark.mqtt
CAMERAS = ["cam-1", "cam-2", "cam-3"]


class World:
    """A broker, a fleet database with CAMERAS enrolled, and `fleet serve` replicas on demand."""

    def __init__(self, root: Path, database_url: str | None, home: Path, *, dynsec: bool = False) -> None:
        self.root = root
        self.broker = Broker(root / "broker", dynsec=dynsec)
        self.broker.start()
        self.pid_file = root / "broker" / "mosquitto.pid"
        self.pid_file.write_text(str(self.broker.process.pid))  # the fleet sends SIGHUP after writing the ACL
        self.database_url, self.home = database_url, home
        self.library = open_fleet(self.config("fleet"))
        for cam in CAMERAS:
            devices.register_device(self.library, cam, "x86_64")
        self.token = auth.create_token(self.library, "reader", "read-only")
        self.replicas: dict[str, tuple[subprocess.Popen, str]] = {}

    def config(self, replica: str, port: int = 0) -> FleetConfig:
        cert, key = (
            (self.broker.fleet_cert, self.broker.fleet_key) if replica == "fleet" else self.broker.pki.issue(replica)
        )
        return FleetConfig.model_validate(
            {
                "data_dir": self.root / "fleet-data",
                "database_url": self.database_url,
                "listen_port": port or free_port(),
                "replica_id": replica,
                "broker": {
                    "host": self.broker.host,
                    "port": self.broker.port,
                    "ca_file": self.broker.pki.ca_file,
                    "cert_file": cert,
                    "key_file": key,
                    **(
                        {"acl_file": self.broker.acl_file, "mosquitto_pid_file": self.pid_file}
                        if self.broker.acl_file
                        else {"authorization": "dynsec"}
                    ),
                },
            }
        )

    def start(self, replica: str) -> None:
        cfg = self.config(replica)
        path = self.root / f"{replica}.toml"
        path.write_text(toml(cfg.model_dump(mode="json", exclude_none=True)))
        log = open(self.root / f"{replica}.log", "ab")
        env = dict(os.environ, EDGEFLEET_HOME=str(self.home))
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "fleet", "serve", "--config", str(path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{cfg.listen_port}"
        wait_http(f"{url}/healthz")
        self.replicas[replica] = (process, url)

    def kill(self, replica: str) -> None:
        process, _ = self.replicas.pop(replica)
        process.kill()
        process.wait(timeout=10)

    def stop(self, replica: str) -> None:
        process, _ = self.replicas.pop(replica)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    def metrics(self, replica: str) -> dict[str, int]:
        _, url = self.replicas[replica]
        answer = httpx.get(f"{url}/api/v1/metrics", headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        return answer.json()["mqtt"]

    def stored(self) -> list[str]:
        with self.library.session() as s:
            return list(s.scalars(select(Telemetry.message_id)))

    def wait_stored(self, n: int, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(rows := self.stored()) < n:
            assert time.monotonic() < deadline, f"{len(rows)} of {n} messages stored after {timeout} s"
            time.sleep(0.2)
        return rows

    def close(self) -> None:
        for replica in list(self.replicas):
            self.kill(replica)
        self.broker.stop()


def toml(doc: dict, section: str = "") -> str:
    """The fleet config as TOML (strings, numbers and one level of tables are all it holds)."""
    plain = "".join(f"{k} = {json.dumps(v)}\n" for k, v in doc.items() if not isinstance(v, dict))
    tables = "".join(toml(v, k) for k, v in doc.items() if isinstance(v, dict))
    return (f"[{section}]\n" if section else "") + plain + tables


class Camera:
    """A camera's MQTT client (its own certificate): publishes QoS 1 and records what the broker acknowledged."""

    def __init__(self, broker: Broker, device: str) -> None:
        self.device = device
        cert, key = broker.pki.issue(device)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
        self.client.tls_set_context(broker.ssl_context(cert, key))
        self.client.max_inflight_messages_set(50)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.accepted: list[str] = []

    def telemetry(self, n: int, pause_s: float = 0.0) -> None:
        for _ in range(n):
            mid = uuid.uuid4().hex
            body = {"schema": 1, "id": mid, "frames": {"ok": 10}, "alerts": {"person": 1}}
            self.client.publish(f"edgefleet/v1/{self.device}/telemetry", json.dumps(body), qos=1).wait_for_publish(10)
            self.accepted.append(mid)  # PUBACK received: the broker has it
            time.sleep(pause_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def send_in_background(cameras: list[Camera], n: int, pause_s: float) -> list[threading.Thread]:
    threads = [threading.Thread(target=c.telemetry, args=(n, pause_s)) for c in cameras]
    for t in threads:
        t.start()
    return threads


def accepted(cameras: list[Camera]) -> list[str]:
    return [m for c in cameras for m in c.accepted]


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
