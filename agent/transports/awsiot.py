"""AWS IoT Core transport: awsiotsdk's MQTT 5 client (awscrt), mutual TLS, rejoined sessions.

Same behaviour as the paho transport: QoS 1, a retained last will, reconnect with
exponential backoff (awscrt's own), QoS 1 publishes kept across disconnects. Works against
AWS IoT Core and against any MQTT 5 broker with client-certificate auth (tests use mosquitto).
Install with the `awsiot` extra.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from edgefleet.agent.config import MqttConfig
from edgefleet.agent.transports.base import Handler, Transport

log = logging.getLogger("edgefleet.agent.mqtt")
SESSION_EXPIRY_S = 7 * 24 * 3600
RETRY_S = 1.0


class AwsIotTransport(Transport):
    def __init__(self, cfg: MqttConfig, will_topic: str, will_payload: bytes) -> None:
        super().__init__(cfg, will_topic, will_payload)
        self._subscriptions: dict[str, Handler] = {}
        self._stopped = threading.Event()
        self._stopping = False
        connect = mqtt5.ConnectPacket(
            client_id=cfg.device_id,
            keep_alive_interval_sec=cfg.keepalive_s,
            session_expiry_interval_sec=SESSION_EXPIRY_S,
            will=mqtt5.PublishPacket(topic=will_topic, payload=will_payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True),
        )
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=cfg.host,
            port=cfg.port,
            cert_filepath=str(cfg.tls.cert_file),
            pri_key_filepath=str(cfg.tls.key_file),
            ca_filepath=str(cfg.tls.ca_file),
            client_id=cfg.device_id,
            connect_options=connect,
            # Rejoin even on the first connect of a process, so jobs queued while the agent was down arrive.
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_NON_QOS1_PUBLISH_ON_DISCONNECT,
            min_reconnect_delay_ms=int(cfg.reconnect_min_s * 1000),
            max_reconnect_delay_ms=int(cfg.reconnect_max_s * 1000),
            on_publish_received=self._on_publish_received,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=lambda data: log.warning(
                "connection to %s:%s failed: %s", cfg.host, cfg.port, data.exception
            ),
            on_lifecycle_disconnection=self._on_disconnection,
            on_lifecycle_stopped=lambda data: self._stopped.set(),
        )

    def start(self) -> None:
        self.client.start()

    def _on_success(self, data) -> None:
        log.info(
            "connected to %s:%s (session present: %s)",
            self.cfg.host,
            self.cfg.port,
            data.connack_packet.session_present,
        )
        for topic in self._subscriptions:
            self._subscribe(topic)
        self._connected()

    def _on_disconnection(self, data) -> None:
        self.connected.clear()
        log.warning("disconnected from the broker (%s); reconnecting with backoff", data.exception)

    def _on_publish_received(self, data) -> None:
        packet = data.publish_packet
        for topic, handler in self._subscriptions.items():
            if _matches(topic, packet.topic):
                handler(packet.topic, bytes(packet.payload or b""))

    def _subscribe(self, topic: str) -> None:
        self.client.subscribe(
            mqtt5.SubscribePacket(subscriptions=[mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)])
        )

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, on_ack: Callable[[], None] | None = None
    ) -> None:
        future = self.client.publish(
            mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=retain)
        )
        future.add_done_callback(lambda f: self._completed(f, topic, payload, retain, on_ack))

    def _completed(
        self, future: Future, topic: str, payload: bytes, retain: bool, on_ack: Callable[[], None] | None
    ) -> None:
        try:
            result = future.result()
        except Exception as exc:  # awscrt fails QoS 1 operations only on stop or ack timeout: send again
            if not self._stopping:
                log.warning("publish to %s failed (%s); retrying", topic, exc)
                threading.Timer(
                    RETRY_S, self.publish, args=(topic, payload), kwargs={"retain": retain, "on_ack": on_ack}
                ).start()
            return
        puback = getattr(result, "puback", None)
        if puback is not None and puback.reason_code not in (
            mqtt5.PubackReasonCode.SUCCESS,
            mqtt5.PubackReasonCode.NO_MATCHING_SUBSCRIBERS,
        ):
            log.warning("broker refused the message on %s: %s", topic, puback.reason_code.name)
        if on_ack is not None:
            on_ack()

    def subscribe(self, topic: str, handler: Handler) -> None:
        self._subscriptions[topic] = handler
        if self.connected.is_set():
            self._subscribe(topic)

    def stop(self, final_topic: str | None = None, final_payload: bytes | None = None, timeout: float = 3.0) -> None:
        self._stopping = True
        if final_topic is not None and self.connected.is_set():
            future = self.client.publish(
                mqtt5.PublishPacket(topic=final_topic, payload=final_payload, qos=mqtt5.QoS.AT_LEAST_ONCE, retain=True)
            )
            try:
                future.result(timeout)
            except Exception:
                pass  # lost the connection meanwhile; the broker sends the last will instead
        self.client.stop(mqtt5.DisconnectPacket())
        self._stopped.wait(timeout)


def _matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (+ one level, # the rest)."""
    p, t = pattern.split("/"), topic.split("/")
    for i, part in enumerate(p):
        if part == "#":
            return True
        if i >= len(t) or (part != "+" and part != t[i]):
            return False
    return len(p) == len(t)
