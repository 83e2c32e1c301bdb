"""Nothing lost, order kept: broker outages, SIGKILL of the agent, malformed frames, the ACL."""

from __future__ import annotations

import io
import json
import signal
import threading
import time

import numpy as np
import pytest
from agent_support import agent_config, drop_frame, jpeg, start_agent, wait_until, write_config
from PIL import Image

from edgefleet.agent.config import parse_config
from edgefleet.agent.run import Agent, RunOptions

pytestmark = pytest.mark.mqtt


def frames_of(messages) -> list[str]:
    return [m.json()["frame"].split(":")[0] for m in messages]


def assert_complete_in_order(messages, expected: list[str]) -> None:
    """Every expected frame arrived; duplicates (QoS 1 redelivery) repeat the same id and payload; first arrivals are in order."""
    first: dict[str, dict] = {}
    order = []
    for m in messages:
        body = m.json()
        name = body["frame"].split(":")[0]
        if name in first:
            assert first[name] == body, f"{name} was sent twice with different payloads"
        else:
            first[name] = body
            order.append(name)
    assert order == expected


@pytest.mark.parametrize("transport", ["paho", "awsiot"])
def test_broker_outage_loses_nothing_and_keeps_order(tmp_path, mqtt_broker, agent_package, transport):
    """`awsiot` is awsiotsdk's MQTT 5 client (the AWS IoT Core transport) against the same local mosquitto."""
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")  # persistent session: survives the restart
    agent = Agent(
        parse_config(agent_config(tmp_path, mqtt_broker, agent_package, transport=transport)), RunOptions(drain_s=5)
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        incoming = tmp_path / "incoming"
        names = [f"f{i:03d}.jpg" for i in range(30)]
        for name in names[:10]:
            drop_frame(incoming, name, jpeg(240))
        alerts.wait_for(10)
        mqtt_broker.stop()
        wait_until(lambda: not agent.transport.connected.is_set(), timeout=10)
        for name in names[10:]:
            drop_frame(incoming, name, jpeg(240))
        wait_until(lambda: agent.metrics.totals["ok"] == 30)
        assert agent.outbox.stats()["pending"] == 20, "the alerts made during the outage wait in the outbox"
        time.sleep(2)  # several seconds without a broker in all
        mqtt_broker.start()
        alerts.wait_for(30, timeout=30)
        wait_until(lambda: agent.outbox.stats()["pending"] == 0)
    finally:
        agent.request_stop()
        thread.join(15)
    assert_complete_in_order(alerts.messages, names)


def test_sigkill_mid_stream_then_restart_loses_nothing(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    status = mqtt_broker.subscriber("edgefleet/v1/cam-1/status")
    config = agent_config(
        tmp_path,
        mqtt_broker,
        agent_package,
        sources=[{"type": "folder", "path": str(tmp_path / "incoming"), "max_fps": 15.0, "poll_s": 0.05}],
    )
    config_path = write_config(tmp_path / "agent.toml", config)
    names = [f"f{i:03d}.jpg" for i in range(40)]
    for name in names:
        drop_frame(tmp_path / "incoming", name, jpeg(240))
    log = tmp_path / "agent.log"
    first = start_agent(config_path, log=log)
    try:
        wait_until(lambda: len(alerts.messages) >= 8, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    left = len(list((tmp_path / "incoming").glob("*.jpg")))
    assert 0 < left < 40, "killed mid-stream"
    wait_until(lambda: status.messages and status.messages[-1].json()["state"] == "offline", timeout=60)
    assert status.messages[-1].json()["model"] is None, "the broker sent the last will"
    second = start_agent(config_path, log=log)
    try:
        wait_until(lambda: len({m.json()["id"] for m in alerts.messages}) == 40, timeout=60)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    assert_complete_in_order(alerts.messages, names)
    assert len(alerts.messages) - 40 <= 20, "redelivery is bounded by the in-flight window"
    last = status.messages[-1].json()
    assert last["state"] == "offline" and last["model"] == {"name": "brightness", "version": "1"}, (
        "SIGTERM: a clean stop publishes offline itself"
    )


def test_malformed_frames_are_counted_and_skipped(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    agent = Agent(parse_config(agent_config(tmp_path, mqtt_broker, agent_package)), RunOptions(drain_s=3))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    good = jpeg(240)
    huge = bytearray(jpeg(240, size=(8, 8)))
    sof = huge.find(b"\xff\xc0")
    huge[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") * 2  # SOF0 height and width: a 30000x30000 header
    incoming = tmp_path / "incoming"
    try:
        drop_frame(incoming, "a-truncated.jpg", good[: len(good) // 2])
        drop_frame(incoming, "b-empty.jpg", b"")
        drop_frame(incoming, "c-huge.jpg", bytes(huge))
        drop_frame(incoming, "d-wrong-format.jpg", b"%PDF-1.4\n" + b"x" * 500)
        drop_frame(incoming, "e-good.jpg", good)
        # Valid but unusual images: a palette PNG and a 16-bit greyscale PNG.
        palette, deep = io.BytesIO(), io.BytesIO()
        Image.new("RGB", (40, 30), (240, 240, 240)).convert("P", palette=Image.Palette.ADAPTIVE).save(
            palette, format="PNG"
        )
        Image.fromarray(np.full((30, 40), 1000, dtype=np.uint16)).save(deep, format="PNG")
        drop_frame(incoming, "f-palette.png", palette.getvalue())
        drop_frame(incoming, "g-16bit.png", deep.getvalue())
        alerts.wait_for(2)
        totals = agent.metrics.totals
        wait_until(lambda: totals["ok"] + totals["bad"] + totals["error"] == 7)
        assert thread.is_alive()
        assert totals["bad"] == 4 and totals["ok"] + totals["error"] == 3 and totals["ok"] >= 2
        assert agent.metrics.w_bad_reasons == {
            "undecodable": 1,
            "unsupported_format": 1,
            "empty": 1,
            "oversize_pixels": 1,
        }
        assert not list(incoming.iterdir()), "bad frames are not retried forever"
    finally:
        agent.request_stop()
        thread.join(15)
    assert frames_of(alerts.messages)[:2] == ["e-good.jpg", "f-palette.png"]


def test_a_device_cannot_use_another_devices_topics(tmp_path, mqtt_broker):
    import paho.mqtt.client as mqtt

    fleet_view = mqtt_broker.subscriber("edgefleet/v1/cam-2/#")
    snoop = mqtt_broker.subscriber("edgefleet/v1/cam-2/#", identity="cam-1")  # cam-1 tries to read cam-2's topics
    own = mqtt_broker.subscriber("edgefleet/v1/cam-2/#", identity="cam-2", client_id="cam-2")
    cam1 = snoop.client  # one connection per identity: the broker makes the CN the client id
    cam1.publish("edgefleet/v1/cam-2/alerts", json.dumps({"schema": 1, "id": "forged"}), qos=1).wait_for_publish(5)
    cam1.publish("edgefleet/v1/cam-1/alerts", b"{}", qos=1).wait_for_publish(5)
    fleet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-pub")
    fleet.tls_set_context(mqtt_broker.ssl_context(mqtt_broker.fleet_cert, mqtt_broker.fleet_key))
    fleet.connect(mqtt_broker.host, mqtt_broker.port)
    fleet.loop_start()
    fleet.publish("edgefleet/v1/cam-2/jobs/notify", b'{"schema": 1, "id": "job"}', qos=1).wait_for_publish(5)
    own.wait_for(1)  # cam-2 itself gets its job ...
    fleet_view.wait_for(1)
    time.sleep(0.5)
    fleet.disconnect()
    fleet.loop_stop()
    assert [m.topic for m in own.messages] == ["edgefleet/v1/cam-2/jobs/notify"]
    assert [m.topic for m in fleet_view.messages] == ["edgefleet/v1/cam-2/jobs/notify"], (
        "cam-1's forged alert never reached the broker's subscribers"
    )
    assert snoop.messages == [], "... and cam-1 cannot read it"


def test_a_full_outbox_drops_telemetry_before_alerts_and_reports_it(tmp_path, mqtt_broker, agent_package):
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-1/alerts")
    telemetry = mqtt_broker.subscriber("edgefleet/v1/cam-1/telemetry")
    mqtt_broker.stop()  # the device starts during an outage
    config = agent_config(
        tmp_path, mqtt_broker, agent_package, outbox={"max_messages": 12}, telemetry={"interval_s": 0.1}
    )
    config["mqtt"]["inflight"] = 2
    agent = Agent(parse_config(config), RunOptions(drain_s=5))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    names = [f"f{i:03d}.jpg" for i in range(8)]
    try:
        for name in names:
            drop_frame(tmp_path / "incoming", name, jpeg(240))
        wait_until(lambda: agent.metrics.totals["ok"] == 8)
        wait_until(lambda: agent.outbox.stats()["dropped"].get("telemetry", 0) >= 5)
        assert "alert" not in agent.outbox.stats()["dropped"]
        mqtt_broker.start()
        alerts.wait_for(8, timeout=30)
        wait_until(lambda: any(m.json()["outbox"]["dropped"].get("telemetry") for m in telemetry.messages), timeout=30)
    finally:
        agent.request_stop()
        thread.join(15)
    assert_complete_in_order(alerts.messages, names)
