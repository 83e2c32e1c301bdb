"""MQTT transports behind one interface: paho-mqtt (default) and AWS IoT Core via awsiotsdk."""

from __future__ import annotations

from edgefleet.agent.config import MqttConfig
from edgefleet.agent.transports.base import Transport


def make_transport(cfg: MqttConfig, will_topic: str, will_payload: bytes) -> Transport:
    """The transport the config's `mqtt.transport` names; awsiotsdk is imported only when chosen."""
    if cfg.transport == "awsiot":
        from edgefleet.agent.transports.awsiot import AwsIotTransport

        return AwsIotTransport(cfg, will_topic, will_payload)
    from edgefleet.agent.transports.paho import PahoTransport

    return PahoTransport(cfg, will_topic, will_payload)
