"""Helpers for the attack suite: raw MQTT clients with a given certificate and client id, and a
broker with the fleet's production ACL (fleet/devices.py acl_text) for a few enrolled cameras."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from support.broker import OBSERVERS, Broker

from edgefleet.fleet.devices import acl_text

CAMERAS = ["cam-1", "cam-2", "cam-3"]


def production_broker(root: Path) -> Broker:
    """A started Broker whose ACL is what the fleet writes for CAMERAS, plus read-all observers."""
    broker = Broker(root)
    observers = "".join(
        f"user fleet-observer-{i}\ntopic read #\ntopic read $SYS/#\ntopic write edgefleet/v1/#\n\n"
        for i in range(OBSERVERS)
    )
    broker.acl_file.write_text(acl_text(CAMERAS) + "\n\n" + observers)
    broker.start()
    return broker


class Client:
    """A paho client that records what it receives and how often the broker dropped it."""

    def __init__(
        self,
        broker: Broker,
        identity: str,
        client_id: str = "",
        *,
        clean: bool = True,
        cert: tuple[Path, Path] | None = None,
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.disconnects = 0
        self.connected = threading.Event()
        self._cond = threading.Condition()
        cert_file, key_file = cert or broker.pki.issue(identity)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{identity}-{uuid.uuid4().hex[:6]}",
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.client.tls_set_context(broker.ssl_context(cert_file, key_file))
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)

    def _on_disconnect(self, *args) -> None:
        self.connected.clear()
        self.disconnects += 1

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def start(self, broker: Broker, timeout: float = 5.0) -> Client:
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            self.stop()
            raise ConnectionError("the broker did not accept the connection")
        return self

    def subscribe(self, topic: str) -> list[int]:
        granted: list[int] = []
        done = threading.Event()
        self.client.on_subscribe = lambda c, u, mid, codes, p: (granted.extend(rc.value for rc in codes), done.set())
        self.client.subscribe(topic, qos=1)
        assert done.wait(5), f"no SUBACK for {topic}"
        return granted

    def publish(self, topic: str, payload: bytes | str, timeout: float = 5.0) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(timeout)

    def payloads(self) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages]

    def wait_for_payload(self, payload: bytes, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while payload not in [m.payload for m in self.messages]:
                left = deadline - time.monotonic()
                assert left > 0, f"{payload!r} did not arrive within {timeout} s"
                self._cond.wait(left)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def nonce() -> bytes:
    return uuid.uuid4().hex.encode()


def fleet_broker_config(broker: Broker):
    """The fleet's connection to `broker` with the fleet's own certificate (CN fleet)."""
    from edgefleet.fleet.config import BrokerConfig

    return BrokerConfig(
        host=broker.host,
        port=broker.port,
        ca_file=broker.pki.ca_file,
        cert_file=broker.fleet_cert,
        key_file=broker.fleet_key,
    )
