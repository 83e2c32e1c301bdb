"""The MQTT bridge: one paho client per fleet replica (MQTT v5, mutual TLS, persistent session, QoS 1).

Replicas: each fleet process connects under its own replica id (client id = broker user =
certificate CN, `fleet` or `fleet-<name>`) and subscribes to the device topics as one MQTT v5
shared subscription (`$share/<group>/...`), so the broker hands each message to one replica.
Its session outlives a crash for `session_expiry_s`: messages queued for it, or delivered and
not yet acknowledged, are sent again when a process with the same replica id returns.

Incoming device messages are queued by paho's network thread and stored in batches by a
worker thread (one transaction per batch), so a slow database never stalls the broker link.
Job updates and status go first: under a telemetry backlog, rollouts still move.
Outgoing jobs go to edgefleet/v1/<device>/jobs/notify with QoS 1; the persistent session
keeps them for devices that are offline.

A device message is acknowledged to the broker (PUBACK) only after the batch holding it is
committed; a batch whose commit fails is retried, and one still unacknowledged when the fleet
stops is sent again by the broker on the next connection (at least once, never silently lost).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import secrets
import socket
import ssl
import threading
import time

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgefleet.errors import ServiceError
from edgefleet.fleet.config import REPLICA_ID, BrokerConfig, FleetConfig
from edgefleet.fleet.db import shared_setting
from edgefleet.fleet.devices import BROKER_STATS, FLEET_MQTT_USER, FLEET_VIEWER_USER
from edgefleet.fleet.ingest import Ingest, Message

log = logging.getLogger("edgefleet.fleet.bridge")
DEVICE_TOPICS = [
    "edgefleet/v1/+/status",
    "edgefleet/v1/+/telemetry",
    "edgefleet/v1/+/alerts",
    "edgefleet/v1/+/jobs/+/update",
    "edgefleet/v1/+/shadow",
]
BATCH = 500
MAX_BACKLOG = 100_000  # telemetry beyond this is dropped (and counted) rather than eat all memory
SHARE_GROUP = "mqtt_share_group"  # the settings row all replicas read their share group from
RESUBSCRIBE_S = 5.0  # a refused subscription (the broker has not re-read its ACL yet) is tried again


def new_group() -> str:
    return "edgefleet-" + secrets.token_hex(16)


def certificate_cn(path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def replica_id(config: FleetConfig) -> str:
    """This process's MQTT client id: `replica_id`, else its certificate's CN, else fleet-<hostname>.

    Brokers configured as the fleet's (fleet/local_broker.py) replace the client id by the CN,
    so a configured id that is not the CN would only hide that two replicas share a session."""
    broker = config.broker
    cn = certificate_cn(broker.cert_file) if broker and broker.cert_file else None
    chosen = config.replica_id or cn or "fleet-" + re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:58]
    if cn is not None and chosen != cn:
        raise ServiceError(
            f"replica_id {chosen!r} is not the CN {cn!r} of the fleet's certificate {broker.cert_file}",
            "give each replica a certificate whose CN is its replica id (fleet or fleet-<name>)",
        )
    if chosen == FLEET_VIEWER_USER or not re.match(REPLICA_ID, chosen):
        raise ServiceError(
            f"replica id {chosen!r} is not a fleet identity",
            f"use {FLEET_MQTT_USER!r} or {FLEET_MQTT_USER}-<name> (not {FLEET_VIEWER_USER!r}, the read-only viewer)",
        )
    return chosen


class Bridge:
    def __init__(self, broker: BrokerConfig, ingest: Ingest, client_id: str = FLEET_MQTT_USER) -> None:
        self.broker = broker
        self.client_id = client_id
        group = broker.share_group or shared_setting(ingest.fleet.sessions, SHARE_GROUP, new_group())
        self.group = group
        self.subscriptions = self.shared_subscriptions()
        self.also: list[tuple[str, int]] = []  # keep_subscribed
        self.ingest = ingest
        self.queue: queue.Queue[Message] = queue.Queue()  # telemetry, alerts and shadow reports
        self.urgent: queue.Queue[Message] = queue.Queue()  # job updates and status
        self._wake = threading.Event()
        self.last_message = time.monotonic()  # when the broker last delivered a device message (fleet/adoption.py)
        self.delivered = 0  # device messages the broker delivered on this connection
        self.connected = threading.Event()
        self._stop = threading.Event()
        # The broker replaces client_id by the certificate CN (fleet/local_broker.py); replica_id() makes them equal.
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if broker.ca_file:
            self.client.tls_set(
                ca_certs=str(broker.ca_file),
                certfile=str(broker.cert_file) if broker.cert_file else None,
                keyfile=str(broker.key_file) if broker.key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.5, 10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._worker = threading.Thread(target=self._drain, name="fleet-ingest", daemon=True)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the fleet: %s", reason_code)
            return
        # Sessions of fleets before replicas held plain subscriptions: with both, every message would come twice.
        client.unsubscribe(DEVICE_TOPICS)
        self._subscribe()

    def _subscribe(self) -> None:
        self.client.subscribe(self.subscriptions + [(t, 0) for t in BROKER_STATS] + self.also)

    def keep_subscribed(self, topic: str) -> int:
        """Subscribe to `topic` (QoS 0) now and on every reconnect, as the device topics are: a session
        the broker dropped (expired, or taken by a clean start under this id) keeps no subscription.
        Returns paho's result of the subscription made now."""
        self.also.append((topic, 0))
        result: int = self.client.subscribe(topic, qos=0)[0]
        return result

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [t for (t, _), rc in zip(self.subscriptions, reason_codes) if rc.is_failure]
        if not refused:
            self.connected.set()
            return
        log.error("the broker refused %s to %s; trying again in %.0f s", refused, self.client_id, RESUBSCRIBE_S)
        retry = threading.Timer(RESUBSCRIBE_S, lambda: self._stop.is_set() or self._subscribe())
        retry.daemon = True
        retry.start()

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic in BROKER_STATS:  # the broker's own counters (queue overflow drops), reported as they are
            try:
                self.ingest.counters[BROKER_STATS[msg.topic]] = int(msg.payload)
            except ValueError:
                pass
            return
        bulk = msg.topic.endswith(("/telemetry", "/alerts", "/shadow"))
        if bulk and self.queue.qsize() >= MAX_BACKLOG:
            self.ingest.counters["dropped_backlog"] += 1
            self._ack(msg.mid)  # handled: dropped and counted
            return
        self.last_message = time.monotonic()
        self.delivered += 1
        message = Message(msg.topic, msg.payload, time.time(), msg.mid if msg.qos else 0)
        (self.queue if bulk else self.urgent).put(message)
        self._wake.set()

    def _next_batch(self) -> list[Message]:
        batch: list[Message] = []
        for q in (self.urgent, self.queue):
            while len(batch) < BATCH:
                try:
                    batch.append(q.get_nowait())
                except queue.Empty:
                    break
        return batch

    def _ack(self, mid: int) -> None:
        if mid:
            self.client.ack(mid, 1)

    def _drain(self) -> None:
        while not self._stop.is_set() or not (self.queue.empty() and self.urgent.empty()):
            batch = self._next_batch()
            if not batch:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            self._store(batch)

    def _store(self, batch: list[Message]) -> None:
        """Commit `batch`, then acknowledge it; retry while the database refuses (until stopped)."""
        delay = 0.2
        while True:
            try:
                self.ingest.handle_batch(batch)
                break
            except Exception:  # a database hiccup must not kill the bridge; unacknowledged, the batch is not lost
                log.exception("could not store %d MQTT messages; retrying in %.1f s", len(batch), delay)
                if self._stop.wait(delay):
                    return  # the broker sends them again on the next connection
                delay = min(delay * 2, 10.0)
        for m in batch:
            self._ack(m.mid)

    def start(self, timeout: float = 15.0) -> None:
        self._worker.start()
        try:
            expiry = Properties(PacketTypes.CONNECT)
            expiry.SessionExpiryInterval = self.broker.session_expiry_s
            self.client.connect(self.broker.host, self.broker.port, keepalive=30, clean_start=False, properties=expiry)
        except (OSError, ssl.SSLError) as exc:
            raise ServiceError(
                f"cannot reach the MQTT broker at {self.broker.host}:{self.broker.port}: {exc}",
                "start mosquitto, or fix [broker] in the fleet config",
            ) from None
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise ServiceError(
                f"the MQTT broker at {self.broker.host}:{self.broker.port} did not accept the fleet's connection",
                "check the fleet's client certificate and the broker's ACL",
            )

    def idle(self) -> bool:
        """Nothing waits to be stored (what is stored is acknowledged)."""
        return self.queue.empty() and self.urgent.empty()

    def end_session(self, quiet_s: float) -> None:
        """Leave the share group, store what is still coming, then end this id's session on the
        broker (session expiry 0 on DISCONNECT): the broker deals it nothing more and keeps nothing
        for it. Messages stop coming once the unsubscription is through; what was queued for the
        session before is delivered all the same, so the session ends only after `quiet_s` without
        a message and with every message stored and acknowledged."""
        self.subscriptions = []  # a reconnect meanwhile must not join again
        self.client.unsubscribe([t for t, _ in self.shared_subscriptions()])
        self.last_message = time.monotonic()
        while not (self.idle() and time.monotonic() - self.last_message > quiet_s):
            time.sleep(0.1)
        end = Properties(PacketTypes.DISCONNECT)
        end.SessionExpiryInterval = 0
        self._stop.set()
        self.client.disconnect(properties=end)
        self.client.loop_stop()
        if self._worker.is_alive():
            self._worker.join(timeout=10)

    def shared_subscriptions(self) -> list[tuple[str, int]]:
        return [(f"$share/{self.group}/{t}", 1) for t in DEVICE_TOPICS]

    def notify(self, device_id: str, payload: dict) -> mqtt.MQTTMessageInfo:
        return self.client.publish(f"edgefleet/v1/{device_id}/jobs/notify", json.dumps(payload), qos=1)

    def stop(self) -> None:
        self._stop.set()
        self.client.loop_stop()
        self.client.disconnect()
        if self._worker.is_alive():
            self._worker.join(timeout=10)
