"""What the agent needs from an MQTT connection, whichever library provides it."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable

from edgefleet.agent.config import MqttConfig

Handler = Callable[[str, bytes], None]


class Transport(ABC):
    """Mutual TLS, QoS 1, a persistent session, a retained last will, reconnect with backoff.

    `publish` never blocks on the network: while disconnected the message is queued by the
    library and sent after reconnecting; `on_ack` runs (on the network thread) once the
    broker's PUBACK arrives. `on_connect` callbacks run after every (re)connection.
    """

    def __init__(self, cfg: MqttConfig, will_topic: str, will_payload: bytes) -> None:
        self.cfg = cfg
        self.will_topic = will_topic
        self.will_payload = will_payload
        self.connected = threading.Event()
        self.on_connect: list[Callable[[], None]] = []
        self.connects = 0

    def _connected(self) -> None:
        self.connects += 1
        self.connected.set()
        for callback in list(self.on_connect):
            callback()

    @abstractmethod
    def start(self) -> None:
        """Begin connecting in the background; returns at once."""

    @abstractmethod
    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, on_ack: Callable[[], None] | None = None
    ) -> None: ...

    @abstractmethod
    def subscribe(self, topic: str, handler: Handler) -> None:
        """Subscribe now and after every reconnection; `handler(topic, payload)` runs on the network thread."""

    @abstractmethod
    def stop(self, final_topic: str | None = None, final_payload: bytes | None = None, timeout: float = 3.0) -> None:
        """Publish the final (retained) message if connected, then disconnect cleanly."""
