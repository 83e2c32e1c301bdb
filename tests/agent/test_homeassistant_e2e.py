"""Home Assistant MQTT discovery against a real mosquitto whose ACL the real `edgefleet fleet serve`
writes: a client with HA's identity reads homeassistant/# and every state and availability topic
the configs name, as HA would, while a real agent alerts, uploads its snapshot and dies."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import ssl
import threading
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from agent_support import drop_frame, start_agent, wait_until, write_config
from support.broker import Broker
from test_alert_events_e2e import FleetServe, bright_frame

pytestmark = pytest.mark.mqtt
# What HA's MQTT discovery needs in each config (and what the issue asks every entity to carry).
REQUIRED = {"unique_id", "device", "availability_topic", "name"}
HA_USER = "fleet-homeassistant"  # [homeassistant] user's default
STATE_KEY = {"binary_sensor": "state_topic", "sensor": "state_topic", "image": "image_topic"}


class HomeAssistantClient:
    """Subscribes as HA does (its own certificate CN) and keeps the last payload per topic."""

    def __init__(self, broker: Broker, filters: list[str]) -> None:
        cert, key = broker.pki.issue(HA_USER)
        self.last: dict[str, bytes] = {}
        self.history: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.granted: list[int] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=HA_USER)
        ctx = ssl.create_default_context(cafile=str(broker.pki.ca_file))
        ctx.load_cert_chain(str(cert), str(key))
        self.client.tls_set_context(ctx)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in filters])
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.granted = [rc.value for rc in reason_codes]
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self.last[msg.topic] = msg.payload
            self.history.append((msg.topic, msg.payload, bool(msg.retain)))

    def values(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.history if t == topic]

    def configs(self) -> dict[str, dict]:
        with self._lock:
            return {t: json.loads(p) for t, p in self.last.items() if t.startswith("homeassistant/") and p}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def ha_world(tmp_path: Path, edgefleet_home: Path):
    """mosquitto, and `edgefleet fleet serve` with discovery on writing the broker's ACL (and SIGHUPing it)."""
    broker = Broker(tmp_path / "broker")
    broker.start()
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text(f"{broker.process.pid}\n")
    serve = FleetServe(
        tmp_path,
        edgefleet_home,
        broker,
        sections="[homeassistant]\nenabled = true\nalert_off_s = 2.0\n",
        broker_extra=f'acl_file = "{broker.acl_file}"\nmosquitto_pid_file = "{pid_file}"\n',
    )
    serve.start()
    try:
        yield broker, serve
    finally:
        serve.stop()
        broker.close()


def test_every_camera_appears_in_home_assistant_with_live_state_topics(
    tmp_path: Path, ha_world, detection_package
) -> None:
    from agent_support import agent_config

    broker, serve = ha_world
    url = serve.url
    # HA's identity reads what discovery names, nothing else: the alerts filter never delivers.
    filters = ["homeassistant/#", "edgefleet/ha/#", "edgefleet/v1/+/status", "edgefleet/v1/+/alerts"]
    ha = HomeAssistantClient(broker, filters)
    incoming = tmp_path / "incoming"
    config = agent_config(
        tmp_path,
        broker,
        detection_package,
        rules={"labels": ["person", "car"], "min_score": 0.5},
        sources=[{"type": "folder", "path": str(incoming), "max_fps": 200.0, "poll_s": 0.05}],
        fleet={"url": url},
        snapshots={"enabled": True},
    )
    config["mqtt"]["keepalive_s"] = 5  # the broker sends the last will ~1.5 keepalives after a SIGKILL
    agent = start_agent(write_config(tmp_path / "cam-1.toml", config), log=tmp_path / "cam-1.log")
    node = "edgefleet_cam-1"
    expected = {
        f"homeassistant/binary_sensor/{node}/person/config",
        f"homeassistant/binary_sensor/{node}/car/config",
        f"homeassistant/image/{node}/snapshot/config",
        f"homeassistant/sensor/{node}/model_version/config",
    }
    try:
        wait_until(lambda: expected <= set(ha.configs()), timeout=60)
        wait_until(lambda: ha.values("edgefleet/ha/cam-1/model_version")[-1:] == [b"1"], timeout=10)
        # HA restarts: everything it needs is retained (configs, states, availability).
        ha.close()
        ha = HomeAssistantClient(broker, filters)
        wait_until(lambda: expected <= set(ha.configs()), timeout=10)
        configs = ha.configs()
        assert all(retain for t, _, retain in ha.history)
        for topic, config_ in configs.items():
            component, cam = topic.split("/")[1], topic.split("/")[2].removeprefix("edgefleet_")
            assert REQUIRED <= set(config_) and STATE_KEY[component] in config_, topic
            assert {"identifiers", "name", "model", "sw_version"} <= set(config_["device"]), topic
            assert config_["availability_topic"] == f"edgefleet/v1/{cam}/status"
            # HA's entity id rule: domain.slug with [a-z0-9_] only, no leading, trailing or double '_'.
            slug = cam.replace("-", "_")
            assert re.fullmatch(rf"{component}\.edgefleet_{slug}_[a-z0-9]+(_[a-z0-9]+)*", config_["default_entity_id"])
            assert "object_id" not in config_
        assert len({c["unique_id"] for c in configs.values()}) == len(configs)
        # cam-2 is enrolled but never connected: it appears, without label sensors (it has not said
        # what it watches), and stays unavailable (its status topic holds nothing).
        assert {t for t in configs if "cam-2" in t} == {
            t.replace("cam-1", "cam-2") for t in expected if "/binary_sensor/" not in t
        }
        assert not ha.values("edgefleet/v1/cam-2/status")
        configs = {t: c for t, c in configs.items() if t in expected}
        state = {t: c[STATE_KEY[t.split("/")[1]]] for t, c in configs.items()}
        # Every state topic a config names receives a value; availability says online.
        wait_until(lambda: all(ha.values(topic) for topic in state.values() if "snapshot" not in topic), timeout=20)
        assert ha.values(state[f"homeassistant/sensor/{node}/model_version/config"])[-1] == b"1"
        person = state[f"homeassistant/binary_sensor/{node}/person/config"]
        assert ha.values(person)[-1] == b"OFF"
        assert json.loads(ha.values("edgefleet/v1/cam-1/status")[-1])["state"] == "online"

        # An alert: the label's sensor goes ON then OFF after alert_off_s; the snapshot arrives as the image.
        drop_frame(incoming, "f0.jpg", bright_frame())
        wait_until(lambda: b"ON" in ha.values(person), timeout=30)
        wait_until(lambda: ha.values(person)[-1] == b"OFF", timeout=10)
        image = state[f"homeassistant/image/{node}/snapshot/config"]
        wait_until(lambda: bool(ha.values(image)), timeout=30)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {serve.tokens['operator']}"})
        (event,) = api.get("/api/v1/alerts").json()["items"]
        assert hashlib.sha256(ha.values(image)[-1]).hexdigest() == event["snapshot"]["sha256"]
        assert ha.values(state[f"homeassistant/binary_sensor/{node}/car/config"])[-1] == b"OFF"
        assert not ha.values("edgefleet/v1/cam-1/alerts") and event["device"] == "cam-1"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=20)
    # The camera died: its last will makes it unavailable in HA.
    wait_until(lambda: json.loads(ha.values("edgefleet/v1/cam-1/status")[-1])["state"] == "offline", timeout=30)
    ha.close()
