"""Three `edgefleet fleet serve` replicas on one PostgreSQL and one mosquitto, with simulated devices.

A rollout runs while the replica that schedules rollouts is SIGKILLed: another replica takes the
scheduler lease within seconds and sends the remaining waves; the killed replica returns under
its id (mosquitto keeps dealing its share of the device messages to its session while it is
away: docs/fleet.md "A replica that dies") and the rollout completes. An observer on the broker
counts every job message: each device gets one install job, sent once.

The broker here is plain TCP without an ACL, so the simulator can speak for many devices on one
connection (benchmarks/fleet_rollout.py); the broker's authorization is tested in tests/security.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from support.paging import all_items
from tests_fleet_util import wait_http

from edgefleet.net import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fleet_rollout import SimulatedFleet  # noqa: E402

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]
DEVICES = 300
LEADER_LINE = "this replica now schedules rollouts"


class Observer:
    """Counts every job message the broker delivers: (device, job) -> messages."""

    def __init__(self, port: int) -> None:
        self.messages: Counter[tuple[str, str, str]] = Counter()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer", clean_session=True)
        self.client.on_connect = lambda c, *a: c.subscribe("edgefleet/v1/+/jobs/notify", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        job = json.loads(msg.payload)
        self.messages[(msg.topic.split("/")[2], job["kind"], job["job"])] += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Replica:
    def __init__(self, root: Path, name: str, database_url: str, mqtt_port: int, key: Path, secret: Path) -> None:
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / f"{name}.toml"
        self.log = root / f"{name}.log"
        self.config.write_text(
            f'format_version = 1\ndata_dir = "{root / name}"\ndatabase_url = "{database_url}"\n'
            f'listen_port = {self.port}\npublic_url = "{self.url}"\nsigning_key = "{key}"\n'
            f'download_secret_file = "{secret}"\ntick_seconds = 0.3\nreplica_id = "{name}"\n'
            f"[broker]\nport = {mqtt_port}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cli = [sys.executable, "-m", "edgefleet.cli", "fleet", "serve", "--config", str(self.config)]
        self.proc = subprocess.Popen(cli, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_http(f"{self.url}/healthz")

    def leads(self) -> int:
        """How often this replica took the scheduler lease (its log says so)."""
        return self.log.read_text(errors="replace").count(LEADER_LINE)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.fixture
def world(postgres_server, tmp_path, edgefleet_home, tiny_packages):
    """PostgreSQL database, mosquitto, the fleet's packages and devices; replicas not started."""
    from sqlalchemy import create_engine, text

    from edgefleet.fleet import auth, registry
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.db import Device
    from edgefleet.fleet.local_broker import MAX_INFLIGHT_MESSAGES

    name = f"fleet_{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        postgres_server.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    url = f"{postgres_server}/{name}"
    setup = open_fleet(FleetConfig(data_dir=tmp_path / "setup", database_url=url, signing_key=tiny_packages["key"]))
    for package in (tiny_packages["v1"], tiny_packages["v2"]):
        version = registry.upload_package(setup, package)
        registry.set_approval(setup, version.group, version.version, "Approved")
    token = auth.create_token(setup, "test", "admin")
    ids = [f"sim-{i:04d}" for i in range(DEVICES)]
    with setup.writer() as s, s.begin():
        s.add_all([Device(id=d, target="x86_64", group="sim", model_name="tiny", model_version="1") for d in ids])
    engine = setup.sessions.kw["bind"]
    mport = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {mport} 127.0.0.1\nallow_anonymous true\nlog_dest none\nmax_inflight_messages {MAX_INFLIGHT_MESSAGES}\n"
    )
    broker = subprocess.Popen(
        [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(tmp_path / "mosquitto.conf")]
    )
    time.sleep(0.5)
    secret = tmp_path / "download.secret"
    secret.write_text(os.urandom(32).hex())
    replicas = [Replica(tmp_path, f"fleet-{i}", url, mport, tiny_packages["key"], secret) for i in range(3)]
    try:
        yield {"replicas": replicas, "mqtt": mport, "token": token, "ids": ids, "engine": engine}
    finally:
        for r in replicas:
            r.stop()
        broker.terminate()
        broker.wait(timeout=10)
        engine.dispose()
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def _unsent(engine, rollout_id: int) -> int:
    from sqlalchemy import text

    with engine.connect() as c:
        return c.execute(
            text("SELECT count(*) FROM deployments WHERE rollout_id = :r AND sent_at IS NULL"), {"r": rollout_id}
        ).scalar()


def test_a_rollout_completes_across_a_sigkill_of_its_scheduler_and_sends_each_job_once(world):
    replicas = world["replicas"]
    for r in replicas:
        r.start()
    observer = Observer(world["mqtt"])
    sim = SimulatedFleet(world["mqtt"], world["ids"], telemetry_s=0, per_connection=50)
    sim.wait_subscribed()
    api = [
        httpx.Client(base_url=f"{r.url}/api/v1", headers={"Authorization": f"Bearer {world['token']}"}, timeout=30)
        for r in replicas
    ]
    # Each wave bakes 8 s: long enough to catch wave 1 baking between two polls on a loaded machine
    # (4 s was missed once on a CI machine).
    plan = {"canary": 1, "waves": [10, 50, 100], "bake_time_s": 8, "wave_timeout_s": 600, "health": {"enabled": False}}
    created = api[1].post(
        "/rollouts", json={"group": "tiny", "version": "2", "selection": {"group": "sim"}, "plan": plan}
    )
    assert created.status_code == 201, created.text
    rid = created.json()["id"]

    # The scheduler is whichever replica took the lease; SIGKILL it while wave 1 bakes, its jobs all sent.
    start = time.time()
    seen: list[str] = []  # each change of (state, wave, unsent) with its time: what a miss looked like
    while True:
        sim.pump(0.2)
        state = api[0].get(f"/rollouts/{rid}").json()
        unsent = _unsent(world["engine"], rid)
        now = f"{state['state']} wave {state['wave']} unsent {unsent}"
        if not seen or not seen[-1].endswith(now):
            seen.append(f"{time.time() - start:.1f} s: {now}")
        if state["state"] == "baking" and state["wave"] == 1 and unsent == 0:
            break
        assert time.time() - start < 120, f"wave 1 never baked with its jobs sent; polls saw {seen}"
    leaders = [r for r in replicas if r.leads()]
    assert len(leaders) == 1, [r.name for r in leaders]
    leader = leaders[0]
    leader.kill()
    killed_at = time.time()

    # Another replica takes the lease and sends wave 2.
    others = [r for r in replicas if r is not leader]
    while not any(r.leads() for r in others):
        sim.pump(0.1)
        assert time.time() - killed_at < 30, "no replica took over the scheduler"
    failover_s = time.time() - killed_at
    survivor = api[replicas.index(others[0])]
    while survivor.get(f"/rollouts/{rid}").json()["wave"] < 2:
        sim.pump(0.2)
        assert time.time() - killed_at < 60, "the new scheduler did not send wave 2"
    # Back under its id: its session kept a share of the device messages for it.
    leader.start()
    while (state := survivor.get(f"/rollouts/{rid}").json())["state"] not in ("succeeded", "aborted"):
        sim.pump(0.3)
        if time.time() - killed_at > 180:
            metrics = [c.get("/metrics").json() for c in api]
            pytest.fail(
                f"rollout stuck: {state['state']} wave {state['wave']} {state['installs']}; replicas' counters {metrics}"
            )
    sim.pump(1)
    observer.close()
    sim.close()
    print(f"scheduler failover after SIGKILL: {failover_s:.1f} s")

    assert state["state"] == "succeeded", state["reason"]
    jobs = all_items(survivor, f"/rollouts/{rid}/deployments")
    assert sorted(d["device"] for d in jobs) == world["ids"]
    assert {d["state"] for d in jobs} == {"committed"}
    # One install job per device, every job message once, nothing else sent.
    jobs_per_device = Counter(device for device, _, _ in observer.messages)
    assert set(jobs_per_device) == set(world["ids"]) and set(jobs_per_device.values()) == {1}
    assert {kind for _, kind, _ in observer.messages} == {"install"}
    twice = {key: n for key, n in observer.messages.items() if n > 1}
    assert not twice, f"job messages sent more than once: {list(twice.items())[:5]}"
    assert sum(observer.messages.values()) == len(world["ids"]) == sim.jobs_received
    # The audit trail has each device's states once, whichever replica ingested them.
    events = all_items(survivor, f"/rollouts/{rid}/events")
    updates = Counter((e["device"], e["to"]) for e in events if e["device"])
    assert updates and set(updates.values()) == {1}
