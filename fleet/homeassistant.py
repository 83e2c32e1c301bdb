"""Home Assistant MQTT discovery: every camera as an HA device (off unless [homeassistant] enabled).

The fleet publishes it on behalf of every camera, over its own MQTT link: cameras keep
their ACL (they write only under edgefleet/v1/<id>/) and need no knowledge of HA. Per camera
(node id `edgefleet_<id>`), retained under <discovery_prefix>/<component>/<node>/<object>/config:

    binary_sensor  <label>         ON when the camera alerts on <label>, OFF alert_off_s later
    image          snapshot        the last alert snapshot (JPEG bytes on an image_topic)
    sensor         model_version   the model version the camera runs

Their state topics are under <state_prefix>/<id>/ (retained, written by the fleet); their
availability is the camera's own retained status topic, edgefleet/v1/<id>/status, whose last
will says "offline" when the camera dies. HA's identity (`user`, its certificate CN) may read
only those topics (fleet/devices.py acl_text).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any

from sqlalchemy import select

from edgefleet.contracts.rest import AlertEventOut
from edgefleet.fleet import alert_events
from edgefleet.fleet.alert_tables import AlertEvent
from edgefleet.fleet.config import HomeAssistantConfig
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Device
from edgefleet.fleet.local_broker import MAX_PACKET_BYTES

log = logging.getLogger("edgefleet.fleet.homeassistant")
IMAGE_MAX_BYTES = MAX_PACKET_BYTES - 1024  # room for the topic and the MQTT header


def object_id(name: str) -> str:
    """HA's node and object ids admit [a-zA-Z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def entity_slug(name: str) -> str:
    """An entity id's part after the domain: [a-z0-9_], no leading, trailing or double '_'."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", name.lower())).strip("_")


class HomeAssistant:
    def __init__(self, fleet: Fleet, client: Any, cfg: HomeAssistantConfig) -> None:
        self.fleet, self.client, self.cfg = fleet, client, cfg
        self._labels: dict[str, list[str]] = {}  # what discovery announced per device
        self._off_at: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._switch_off, name="homeassistant", daemon=True)

    # -- topics ---------------------------------------------------------------------------
    def state_topic(self, device: str, name: str) -> str:
        return f"{self.cfg.state_prefix}/{device}/{name}"

    def config_topic(self, component: str, device: str, name: str) -> str:
        return f"{self.cfg.discovery_prefix}/{component}/edgefleet_{object_id(device)}/{object_id(name)}/config"

    def _base(self, d: Device, component: str, name: str) -> dict[str, Any]:
        """What every entity of the camera carries: its ids, HA's device block and the camera's availability.

        `default_entity_id` (domain.slug) replaced `object_id` in HA 2025.10 (object_id is gone in 2026.4)."""
        slug = f"edgefleet_{object_id(d.id)}_{object_id(name)}"
        return {
            "unique_id": slug,
            "default_entity_id": f"{component}.{entity_slug(slug)}",
            "device": {
                "identifiers": [f"edgefleet_{d.id}"],
                "name": d.id,
                "manufacturer": "edgefleet",
                "model": d.model_name or d.target,
                "sw_version": d.agent_version or "unknown",
            },
            "availability_topic": f"edgefleet/v1/{d.id}/status",
            "availability_template": "{{ value_json.state if value_json is defined else value }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    def discovery(self, d: Device) -> dict[str, dict[str, Any]]:
        """Config topic -> config, for each entity of camera `d`."""
        configs = {
            self.config_topic("binary_sensor", d.id, label): self._base(d, "binary_sensor", label)
            | {
                "name": label,
                "state_topic": self.state_topic(d.id, f"{object_id(label)}/state"),
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "occupancy",
            }
            for label in d.watching or []
        }
        configs[self.config_topic("image", d.id, "snapshot")] = self._base(d, "image", "snapshot") | {
            "name": "last alert",
            "image_topic": self.state_topic(d.id, "snapshot"),
            "content_type": "image/jpeg",
        }
        configs[self.config_topic("sensor", d.id, "model_version")] = self._base(d, "sensor", "model_version") | {
            "name": "model version",
            "state_topic": self.state_topic(d.id, "model_version"),
            "entity_category": "diagnostic",
        }
        return configs

    # -- publishing -----------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes | str, retain: bool = True) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    def announce(self, device_id: str) -> None:
        """(Re)publish the camera's discovery configs and model version; drop sensors of labels it stopped watching."""
        with self.fleet.session() as s:
            d = s.get(Device, device_id)
        if d is None:
            return
        for label in set(self._labels.get(d.id, [])) - set(d.watching or []):
            self._publish(self.config_topic("binary_sensor", d.id, label), b"")  # empty retained: HA removes it
        for topic, config in self.discovery(d).items():
            self._publish(topic, json.dumps(config, sort_keys=True))
        self._labels[d.id] = list(d.watching or [])
        for label in d.watching or []:
            if (d.id, label) not in self._off_at:
                self._publish(self.state_topic(d.id, f"{object_id(label)}/state"), "OFF")
        self._publish(self.state_topic(d.id, "model_version"), d.model_version or "none")

    def _last_snapshot(self, device_id: str) -> None:
        with self.fleet.session() as s:
            key = s.scalar(
                select(AlertEvent.snapshot_key)
                .where(AlertEvent.device_id == device_id, AlertEvent.snapshot_key.is_not(None))
                .order_by(AlertEvent.received_at.desc())
                .limit(1)
            )
        if key is None:
            return
        jpeg = self.fleet.store.read(key)
        if len(jpeg) > IMAGE_MAX_BYTES:  # over the broker's packet limit it would drop the fleet's own link
            log.warning(
                "snapshot %s of %s is %d bytes: too large for MQTT, not sent to Home Assistant",
                key,
                device_id,
                len(jpeg),
            )
            return
        self._publish(self.state_topic(device_id, "snapshot"), jpeg)

    def on_event(self, kind: str, item: Any) -> None:
        """An alert_events listener: what ingest or an upload committed."""
        if kind == "status":
            self.announce(item)
        elif kind == "alert" and isinstance(item, AlertEventOut):
            with self._lock:
                self._off_at[(item.device, item.label)] = time.monotonic() + self.cfg.alert_off_s
            self._publish(self.state_topic(item.device, f"{object_id(item.label)}/state"), "ON")
        elif kind == "snapshot" and isinstance(item, AlertEventOut):
            self._last_snapshot(item.device)

    def _switch_off(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                due = [key for key, at in self._off_at.items() if at <= now]
                for key in due:
                    del self._off_at[key]
            for device, label in due:
                self._publish(self.state_topic(device, f"{object_id(label)}/state"), "OFF")

    def start(self) -> None:
        """Announce every known camera, then follow what ingest records."""
        with self.fleet.session() as s:
            ids = list(s.scalars(select(Device.id)))
        for device_id in ids:
            self.announce(device_id)
            self._last_snapshot(device_id)
        alert_events.add_listener(self.fleet, self.on_event)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
