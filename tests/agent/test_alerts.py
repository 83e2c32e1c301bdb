"""End to end against a real mosquitto with mutual TLS: frames in a folder -> the compiled model -> alerts."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.request

import pytest
from agent_support import agent_config, drop_frame, jpeg, wait_until
from PIL import Image

from edgefleet.agent.config import parse_config
from edgefleet.agent.run import Agent, RunOptions

pytestmark = pytest.mark.mqtt


def start_in_thread(config: dict, options: RunOptions | None = None) -> tuple[Agent, threading.Thread]:
    agent = Agent(parse_config(config), options or RunOptions(drain_s=3))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    return agent, thread


def test_matching_frames_alert_with_the_contract_payload_and_others_send_nothing(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    status = mqtt_broker.subscriber("edgefleet/v1/cam-1/status")
    rules = {
        "labels": ["bright"],
        "min_score": 0.9,
        "thumbnail": True,
        "thumbnail_max_side": 32,
        "thumbnail_max_bytes": 4096,
    }
    config = agent_config(tmp_path, mqtt_broker, agent_package, rules=rules, health={"enabled": True, "port": 0})
    agent, thread = start_in_thread(config)
    try:
        wait_until(lambda: status.messages, timeout=20)
        assert status.messages[-1].json()["state"] == "online"
        incoming = tmp_path / "incoming"
        for i, value in enumerate([20, 30, 240, 25, 250]):  # dark, dark, bright, dark, bright
            drop_frame(incoming, f"f{i:03d}.jpg", jpeg(value))
        got = alerts.wait_for(2)
        wait_until(lambda: agent.metrics.totals["ok"] == 5)
        time.sleep(0.5)  # would a dark frame have alerted late?
        assert len(alerts.messages) == 2
        first = got[0].json()
        assert first["schema"] == 1 and first["type"] == "alert" and first["device"] == "cam-1"
        assert first["label"] == "bright" and first["score"] > 0.99 and first["consecutive"] == 1
        assert first["model"] == {"name": "brightness", "version": "1"} and first["source"] == "folder"
        assert len({a.json()["id"] for a in got}) == 2
        assert [a.json()["frame"].split(":")[0] for a in got] == ["f002.jpg", "f004.jpg"]
        thumb = first["thumbnail"]
        raw = base64.b64decode(thumb["data"])
        assert len(raw) <= 4096 and max(Image.open(io.BytesIO(raw)).size) <= 32
        assert set(first) <= {
            "schema",
            "id",
            "type",
            "device",
            "ts",
            "label",
            "score",
            "consecutive",
            "source",
            "frame",
            "model",
            "latency_ms",
            "thumbnail",
            "rule",
            "run",
            "seq",
        }
        assert first["rule"] == "bright score >= 0.9 in 1 frame(s)"
        assert not list(incoming.glob("*.jpg")), "handled frames are deleted"

        port = int((tmp_path / "state-cam-1" / "health.port").read_text())
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
        assert health["status"] == "ok" and health["mqtt_connected"] and health["model"]["name"] == "brightness"
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'edgefleet_agent_frames_total{result="ok"} 5.0' in metrics
        assert 'edgefleet_agent_alerts_total{label="bright"} 2.0' in metrics
    finally:
        agent.request_stop()
        thread.join(15)
    assert not thread.is_alive()
    assert status.messages[-1].json()["state"] == "offline", "a clean stop publishes the retained offline status"


def test_every_message_carries_its_run_and_its_place_in_the_run(tmp_path, mqtt_broker, agent_package):
    """(run, seq) orders what the camera said for the fleet (agent/order.py): seq grows across
    status, telemetry and the offline status at stop; a restart is the next run, from seq 1."""
    status = mqtt_broker.subscriber("edgefleet/v1/cam-1/status")
    telemetry = mqtt_broker.subscriber("edgefleet/v1/cam-1/telemetry")
    config = agent_config(tmp_path, mqtt_broker, agent_package)
    places = []
    for run in (1, 2):
        agent, thread = start_in_thread(config)
        try:
            wait_until(lambda n=2 * run - 1: len(status.messages) == n, timeout=20)
        finally:  # a stop sends the last telemetry window, then the offline status
            agent.request_stop()
            thread.join(15)
        wait_until(lambda n=2 * run: len(status.messages) == n, timeout=20)
        sent = [status.messages[-2], telemetry.messages[-1], status.messages[-1]]
        places.append([(m.json()["run"], m.json()["seq"]) for m in sent])
    assert [m.json()["state"] for m in status.messages] == ["online", "offline"] * 2
    for run, (online, window, offline) in zip((1, 2), places):
        assert online == (run, 1) and window[0] == offline[0] == run and 1 < window[1] < offline[1]
    assert (tmp_path / "state-cam-1" / "run").read_text() == "2\n"


def test_consecutive_frames_and_cooldown_gate_alerts(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    rules = {"labels": ["bright"], "min_score": 0.9, "min_consecutive": 2, "cooldown_s": 3600}
    agent, thread = start_in_thread(agent_config(tmp_path, mqtt_broker, agent_package, rules=rules))
    try:
        for i, value in enumerate([240, 20, 240, 240, 240, 240]):  # run of 1, break, run of 4
            drop_frame(tmp_path / "incoming", f"f{i:03d}.jpg", jpeg(value))
        got = alerts.wait_for(1)
        wait_until(lambda: agent.metrics.totals["ok"] == 6)
        time.sleep(0.5)
        assert len(alerts.messages) == 1, "the second frame of the run alerts once; the cooldown silences the rest"
        assert got[0].json()["consecutive"] == 2
    finally:
        agent.request_stop()
        thread.join(15)


def test_telemetry_carries_latency_counts_and_drift_summary(tmp_path, mqtt_broker, agent_package):
    telemetry = mqtt_broker.subscriber("edgefleet/v1/cam-1/telemetry")
    agent, thread = start_in_thread(agent_config(tmp_path, mqtt_broker, agent_package, telemetry={"interval_s": 1.5}))
    try:
        for i, value in enumerate([20, 240, 240]):
            drop_frame(tmp_path / "incoming", f"f{i:03d}.jpg", jpeg(value))
        drop_frame(tmp_path / "incoming", "f999.jpg", b"not a jpeg")
        wait_until(lambda: any(m.json()["frames"]["ok"] for m in telemetry.messages), timeout=15)
    finally:
        agent.request_stop()
        thread.join(15)
    body = next(m.json() for m in telemetry.messages if m.json()["frames"]["ok"])
    assert body["schema"] == 1 and body["type"] == "telemetry" and body["model"]["version"] == "1"
    assert body["frames"]["ok"] == 3 and body["frames"]["bad"] == 1
    assert body["latency_ms"]["count"] == 3 and 0 < body["latency_ms"]["p50"] <= body["latency_ms"]["p95"]
    assert body["alerts"] == {"bright": 2}
    assert body["drift"]["predictions"] == {"dark": 1, "bright": 2}
    assert sum(body["drift"]["brightness"]["counts"]) == 3 and body["drift"]["brightness"]["counts"][-1] == 2
    assert sum(body["drift"]["confidence"]["counts"]) == 3
    assert body["system"]["rss_bytes"] > 0 and "cpu_percent" in body["system"]
    assert body["outbox"]["dropped"] == {}
    # Revision 2: which library of the x86_64 package runs (agent/variants.py): the AVX-512 one where the CPU has it.
    from edgefleet.agent.variants import cpu_flags

    avx512 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= cpu_flags()
    best = "model.x86-64-v4.so (x86-64-v4" if avx512 else "model.so (x86-64-v3"
    assert body["library"] == f"{best}, best this CPU runs)"


def test_job_notifications_reach_the_update_manager_and_its_updates_come_back(tmp_path, mqtt_broker, agent_package):
    """The wiring to agent/update.py: jobs/notify in, jobs/<job>/update out through the outbox, in order."""
    updates = mqtt_broker.subscriber("edgefleet/v1/cam-1/jobs/+/update")
    status = mqtt_broker.subscriber("edgefleet/v1/cam-1/status")
    agent, thread = start_in_thread(agent_config(tmp_path, mqtt_broker, agent_package))
    try:
        wait_until(lambda: agent.updates is not None, timeout=20)
        wait_until(lambda: status.messages, timeout=20)
        mqtt_broker.subscriber("edgefleet/v1/cam-1/jobs/notify").client.publish(
            "edgefleet/v1/cam-1/jobs/notify",
            json.dumps({"schema": 1, "job": "job-1", "package": {"name": "brightness", "version": "1"}}),
            qos=1,
        )
        got = updates.wait_for(2)
    finally:
        agent.request_stop()
        thread.join(15)
    assert [m.topic for m in got] == ["edgefleet/v1/cam-1/jobs/job-1/update"] * 2
    assert [m.json()["state"] for m in got] == ["idle", "committed"] and all(m.json()["schema"] == 1 for m in got)


def test_a_compiled_detector_alerts_with_its_boxes(tmp_path, mqtt_broker, detection_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    agent, thread = start_in_thread(
        agent_config(tmp_path, mqtt_broker, detection_package, rules={"labels": ["person"], "min_score": 0.8})
    )
    try:
        for i, value in enumerate([20, 245]):  # dark: 'car' scores high but is not of interest; bright: 'person'
            drop_frame(tmp_path / "incoming", f"f{i:03d}.jpg", jpeg(value))
        got = alerts.wait_for(1)
        wait_until(lambda: agent.metrics.totals["ok"] == 2)
        time.sleep(0.3)
    finally:
        agent.request_stop()
        thread.join(15)
    assert len(alerts.messages) == 1
    body = got[0].json()
    assert (
        body["label"] == "person"
        and body["frame"].startswith("f001.jpg")
        and body["model"] == {"name": "detector", "version": "1"}
    )
    assert len(body["detections"]) == 1 and body["detections"][0]["box"] == [0.1, 0.2, 0.5, 0.6]
    assert body["detections"][0]["score"] == body["score"] > 0.9
