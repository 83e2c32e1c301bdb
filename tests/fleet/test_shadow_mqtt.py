"""Shadow rollouts with real parts: mosquitto (ACL file and dynamic security), `edgefleet fleet serve`,
and simulated devices: MQTT clients with their own certificates that answer jobs and publish status
messages and ShadowReports as an agent does. The numbers the API shows are summed by hand here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import paho.mqtt.client as mqtt
import pytest
from test_fleet_ingest import World
from test_shadow_library import SHADOW_PLAN, report, status

from edgefleet.fleet import registry

pytestmark = pytest.mark.mqtt
NOT_AUTHORIZED = 135  # MQTT v5 PUBACK reason code


class SimulatedDevice:
    """A simulated camera: one MQTT v5 client with the device's certificate, which records the jobs
    it is sent and the broker's answer (PUBACK reason code) to each of its publishes."""

    def __init__(self, broker, device: str) -> None:
        self.device = device
        self.jobs: list[dict] = []
        self.acks: dict[int, int] = {}
        self._cond = threading.Condition()
        cert, key = broker.pki.issue(device)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(broker.ssl_context(cert, key))
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe(f"edgefleet/v1/{device}/jobs/notify", qos=1)
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.jobs.append(json.loads(msg.payload))
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.acks[mid] = reason_code.value
            self._cond.notify_all()

    def publish(self, topic: str, body: dict) -> int:
        """Publish QoS 1 and return the broker's reason code."""
        info = self.client.publish(topic, json.dumps(body), qos=1)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.acks, 10), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def send(self, kind: str, body: dict) -> int:
        return self.publish(f"edgefleet/v1/{self.device}/{kind}", body)

    def wait_job(self, kind: str, timeout: float = 30) -> dict:
        with self._cond:
            found = self._cond.wait_for(lambda: [j for j in self.jobs if j["kind"] == kind], timeout)
        assert found, f"{self.device} got no {kind} job within {timeout} s (got {[j['kind'] for j in self.jobs]})"
        return found[-1]

    def answer(self, job: dict, state: str = "committed") -> None:
        update = {"schema": 1, "id": uuid.uuid4().hex, "job": job["job"], "state": state}
        assert self.send(f"jobs/{job['job']}/update", update) == 0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ShadowWorld(World):
    """test_fleet_ingest's World (broker, `fleet serve`, cam-1..3 registered) with tiny 1 and 2 uploaded."""

    def __init__(self, root, home, packages, dynsec: bool = False, database_url: str | None = None) -> None:
        self.signing_key = packages["key"]
        super().__init__(root, database_url, home, dynsec=dynsec)
        for version in ("v1", "v2"):
            registry.upload_package(self.library, packages[version])
        registry.set_approval(self.library, "tiny", "2", "Approved")

    def config(self, replica: str, port: int = 0):
        cfg = super().config(replica, port)
        cfg.signing_key = self.signing_key
        return cfg

    def cli(self, token: str, *args: str) -> subprocess.CompletedProcess:
        """`edgefleet fleet ARGS` against the replica `fleet`."""
        _, url = self.replicas["fleet"]
        env = dict(os.environ, EDGEFLEET_HOME=str(self.home), EDGEFLEET_FLEET_URL=url, EDGEFLEET_FLEET_TOKEN=token)
        command = [sys.executable, "-m", "edgefleet.cli", "fleet", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    def api(self, method: str, path: str, token: str, replica: str = "fleet", **kw) -> httpx.Response:
        _, url = self.replicas[replica]
        return httpx.request(method, f"{url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}, **kw)


@pytest.fixture(params=["acl_file", "dynsec"])
def world(request, tmp_path, edgefleet_home, tiny_packages):
    from edgefleet.fleet import auth

    w = ShadowWorld(tmp_path, edgefleet_home, tiny_packages, request.param == "dynsec")
    w.start("fleet")
    w.operator = auth.create_token(w.library, "operator", "operator")
    w.sims = {d: SimulatedDevice(w.broker, d) for d in ("cam-1", "cam-2", "cam-3")}
    for device, sim in w.sims.items():
        assert sim.send("status", status(device, None if device == "cam-3" else ["shadow"])) == 0
    yield w
    for sim in w.sims.values():
        sim.close()
    w.close()


def test_a_shadow_rollout_through_the_broker_aggregates_gates_promotes_and_refuses_forgeries(world):
    sims, op, ro = world.sims, world.operator, world.token
    body = {"group": "tiny", "version": "2", "selection": {"devices": ["cam-1", "cam-2", "cam-3"]}, "plan": SHADOW_PLAN}
    wait_until(lambda: world.api("GET", "/devices/cam-3", ro).json()["status"] == "online", "cam-3 online")
    refused = world.api("POST", "/rollouts", op, json=body)
    assert refused.status_code == 409 and "cam-3 runs agent 0.9.0, which does not list the 'shadow'" in refused.text
    body["selection"] = {"devices": ["cam-1", "cam-2"]}
    assert world.api("POST", "/rollouts", ro, json=body).status_code == 403  # creating needs the operator scope
    rid = world.api("POST", "/rollouts", op, json=body).json()["id"]
    jobs = {d: sims[d].wait_job("shadow_install") for d in ("cam-1", "cam-2")}
    for device, job in jobs.items():
        assert job["rollout"] == rid and job["shadow"]["sample_share"] == 0.5 and job["package"]["version"] == "2"
        sims[device].answer(job)

    first = report("cam-1", jobs["cam-1"]["job"], rid, frames=60, agree=45, active_ms=10.0, cand_ms=12.0)
    assert sims["cam-1"].send("shadow", first) == 0
    assert sims["cam-1"].send("shadow", first) == 0  # a resend (no PUBACK seen): stored once
    second = report("cam-2", jobs["cam-2"]["job"], rid, frames=40, agree=28, active_ms=20.0, cand_ms=20.0)
    assert sims["cam-2"].send("shadow", second) == 0
    # Forgeries: cam-1 on cam-2's topic (the broker refuses it), cam-1 naming cam-2 (malformed),
    # and a report of a job the fleet never sent (ignored and counted).
    forged = report("cam-2", jobs["cam-2"]["job"], rid, frames=1000, agree=1000, active_ms=1, cand_ms=1)
    assert sims["cam-1"].publish("edgefleet/v1/cam-2/shadow", forged) == NOT_AUTHORIZED
    assert sims["cam-1"].send("shadow", forged) == 0
    assert sims["cam-1"].send("shadow", first | {"id": uuid.uuid4().hex, "job": "r999-sh-gone", "rollout": 999}) == 0
    wait_until(lambda: world.metrics("fleet").get("dropped_unknown_shadow") == 1, "the unknown report counted")
    counters = world.metrics("fleet")
    assert (counters["shadow"], counters["duplicate"], counters["dropped_malformed"]) == (2, 1, 1), counters

    view = world.api("GET", f"/rollouts/{rid}/shadow", ro).json()
    total = view["total"]
    assert (total["frames"], total["reports"], total["devices"]) == (100, 2, 2)
    assert total["agreement"] == pytest.approx((45 + 28) / 100)
    active, candidate = (60 * 10 + 40 * 20) / 100, (60 * 12 + 40 * 20) / 100
    assert total["latency_ratio"] == pytest.approx(candidate / active)
    assert [(g["group"], g["stats"]["frames"]) for g in view["groups"]] == [(None, 100)]
    # The gate wants agreement >= 0.8: 0.73 fails, and the 409 says which condition and by how much.
    failed = world.api("POST", f"/rollouts/{rid}/promote", op)
    assert failed.status_code == 409 and "agreement 0.730 (at least 0.800)" in failed.json()["error"], failed.text
    # The CLI: the same numbers as a table and as the API's JSON; a refused promotion exits 41 (conflict).
    shown = world.cli(ro, "rollouts", "shadow", str(rid))
    assert shown.returncode == 0 and "0.730" in shown.stdout and "FAIL agreement 0.730" in shown.stdout, shown
    assert json.loads(world.cli(ro, "rollouts", "shadow", str(rid), "--json").stdout)["total"] == total
    refused = world.cli(op, "rollouts", "promote", str(rid))
    assert refused.returncode == 41 and "does not pass its promotion gate" in refused.stderr, refused
    for _ in range(4):
        more = report("cam-2", jobs["cam-2"]["job"], rid, frames=50, agree=50, active_ms=20.0, cand_ms=20.0)
        assert sims["cam-2"].send("shadow", more) == 0
    wait_until(lambda: world.api("GET", f"/rollouts/{rid}/shadow", ro).json()["verdict"]["passed"], "the gate to pass")
    assert world.api("POST", f"/rollouts/{rid}/promote", ro).status_code == 403  # promoting needs the operator scope
    promoted = world.cli(op, "rollouts", "promote", str(rid), "--json")
    assert promoted.returncode == 0 and json.loads(promoted.stdout)["source"] == rid, promoted
    for device in ("cam-1", "cam-2"):
        assert sims[device].wait_job("shadow_remove")["package"]["version"] == "2"
    canary = sims["cam-1"].wait_job("install")  # the staged rollout's canary (device order)
    assert canary["rollout"] == json.loads(promoted.stdout)["id"]
    assert world.api("GET", f"/rollouts/{rid}", ro).json()["state"] == "promoted"


def test_stopping_a_shadow_rollout_removes_the_candidate_from_the_cameras(world):
    sims, op = world.sims, world.operator
    body = {"group": "tiny", "version": "2", "selection": {"devices": ["cam-1"]}, "plan": SHADOW_PLAN}
    rid = world.api("POST", "/rollouts", op, json=body).json()["id"]
    sims["cam-1"].answer(sims["cam-1"].wait_job("shadow_install"))
    stopped = world.api("POST", f"/rollouts/{rid}/stop", op, json={"reason": "enough"})
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped", stopped.text
    removal = sims["cam-1"].wait_job("shadow_remove")
    assert removal["rollout"] == rid and "url" not in removal["package"]


@pytest.mark.postgres
def test_two_replicas_each_ingest_a_share_of_the_reports_and_show_the_same_hand_computed_sums(
    tmp_path, edgefleet_home, tiny_packages, postgres_database
):
    from edgefleet.fleet import auth

    world = ShadowWorld(tmp_path, edgefleet_home, tiny_packages, database_url=postgres_database)
    sims: dict[str, SimulatedDevice] = {}
    try:
        for replica in ("fleet-a", "fleet-b"):
            world.start(replica)
        op, ro = auth.create_token(world.library, "operator", "operator"), world.token
        sims |= {d: SimulatedDevice(world.broker, d) for d in ("cam-1", "cam-2")}
        for device, sim in sims.items():
            assert sim.send("status", status(device, ["shadow"])) == 0
        body = {"group": "tiny", "version": "2", "selection": {"devices": list(sims)}, "plan": SHADOW_PLAN}
        wait_until(
            lambda: all(world.api("GET", f"/devices/{d}", ro, "fleet-a").json()["status"] == "online" for d in sims),
            "both devices online",
        )
        rid = world.api("POST", "/rollouts", op, "fleet-a", json=body).json()["id"]
        jobs = {d: sim.wait_job("shadow_install") for d, sim in sims.items()}
        for d, sim in sims.items():
            sim.answer(jobs[d])
        frames = agree = 0
        for i in range(30):
            for d, sim in sims.items():
                n, k = 20 + i, 15 + i // 2
                frames, agree = frames + n, agree + k
                r = report(d, jobs[d]["job"], None, frames=n, agree=k, active_ms=10.0, cand_ms=11.0)
                assert sim.send("shadow", r) == 0
        views = {}
        for replica in ("fleet-a", "fleet-b"):
            path = f"/rollouts/{rid}/shadow"
            shown = lambda r=replica, p=path: world.api("GET", p, ro, r).json()["total"]["reports"] == 60  # noqa: E731
            wait_until(shown, f"{replica} to show every report")
            views[replica] = world.api("GET", path, ro, replica).json()
        assert views["fleet-a"] == views["fleet-b"]
        total = views["fleet-a"]["total"]
        assert (total["frames"], total["devices"]) == (frames, 2)
        assert total["agreement"] == pytest.approx(agree / frames) and total["latency_ratio"] == pytest.approx(1.1)
        shares = [world.metrics(r).get("shadow", 0) for r in ("fleet-a", "fleet-b")]
        assert sum(shares) == 60 and min(shares) > 0, shares  # each report ingested by one replica
    finally:
        for sim in sims.values():
            sim.close()
        world.close()


def wait_until(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
