"""The default transport: paho-mqtt 2.x, MQTT 3.1.1 with a persistent session (clean_session=False)."""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from edgefleet.agent.config import MqttConfig
from edgefleet.agent.transports.base import Handler, Transport

log = logging.getLogger("edgefleet.agent.mqtt")


class PahoTransport(Transport):
    def __init__(self, cfg: MqttConfig, will_topic: str, will_payload: bytes) -> None:
        super().__init__(cfg, will_topic, will_payload)
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=cfg.device_id, clean_session=False, protocol=mqtt.MQTTv311
        )
        client.tls_set(
            ca_certs=str(cfg.tls.ca_file),
            certfile=str(cfg.tls.cert_file),
            keyfile=str(cfg.tls.key_file),
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        client.reconnect_delay_set(
            min_delay=max(1, round(cfg.reconnect_min_s)), max_delay=max(1, round(cfg.reconnect_max_s))
        )
        # The outbox bounds what is handed over; paho may hold all of it in flight.
        client.max_inflight_messages_set(cfg.inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._lock = threading.Lock()
        self._acks: dict[int, Callable[[], None]] = {}
        self._early: set[int] = set()  # PUBACKs that arrived before publish() returned the mid
        self._subscriptions: dict[str, Handler] = {}

    def start(self) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("broker refused the connection: %s", reason_code)
            return
        log.info("connected to %s:%s (session present: %s)", self.cfg.host, self.cfg.port, flags.session_present)
        for topic in self._subscriptions:
            client.subscribe(topic, qos=1)
        self._connected()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected.clear()
        log.warning("disconnected from the broker (%s); paho reconnects with backoff", reason_code)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            callback = self._acks.pop(mid, None)
            if callback is None:
                self._early.add(mid)
        if callback is not None:
            callback()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, on_ack: Callable[[], None] | None = None
    ) -> None:
        on_ack = on_ack or _nothing
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._lock:
            early = info.mid in self._early
            if early:
                self._early.discard(info.mid)
            else:
                self._acks[info.mid] = on_ack
        if early:
            on_ack()

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._subscriptions[topic] = handler
        self.client.message_callback_add(topic, lambda client, userdata, msg: handler(msg.topic, msg.payload))
        if self.connected.is_set():
            self.client.subscribe(topic, qos=1)

    def stop(self, final_topic: str | None = None, final_payload: bytes | None = None, timeout: float = 3.0) -> None:
        if final_topic is not None and self.connected.is_set():
            info = self.client.publish(final_topic, final_payload, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass  # lost the connection meanwhile; the broker sends the last will instead
        self.client.disconnect()
        self.client.loop_stop()


def _nothing() -> None:
    """Every publish registers a callback, so a stray mid never counts as an early ack."""
