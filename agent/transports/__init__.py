"""MQTT transports behind one interface: paho-mqtt (default) and AWS IoT Core via awsiotsdk."""

from __future__ import annotations

import ssl
from pathlib import Path

from edgefleet.agent.config import MqttConfig
from edgefleet.agent.transports.base import Transport
from edgefleet.errors import UsageError


def check_tls_files(cfg: MqttConfig) -> None:
    """Fail before connecting, with a fix, when the CA, certificate or key is missing or unusable."""
    tls = cfg.tls
    for what, path in (
        ("CA certificate", tls.ca_file),
        ("device certificate", tls.cert_file),
        ("device key", tls.key_file),
    ):
        if not Path(path).is_file():
            fix = (
                "enroll the device (have the fleet CA sign identity/device.csr) or pass --cert to `edgefleet agent install`"
                if what == "device certificate"
                else "check mqtt.tls in the agent config"
            )
            raise UsageError(f"{what} {path} does not exist", fix)
    try:
        ssl.create_default_context(cafile=str(tls.ca_file)).load_cert_chain(str(tls.cert_file), str(tls.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise UsageError(
            f"cannot use the TLS files in mqtt.tls: {exc}",
            "the certificate must match the key, and all three must be PEM",
        ) from None


def make_transport(cfg: MqttConfig, will_topic: str, will_payload: bytes) -> Transport:
    """The transport the config's `mqtt.transport` names; awsiotsdk is imported only when chosen."""
    check_tls_files(cfg)
    if cfg.transport == "awsiot":
        from edgefleet.agent.transports.awsiot import AwsIotTransport

        return AwsIotTransport(cfg, will_topic, will_payload)
    from edgefleet.agent.transports.paho import PahoTransport

    return PahoTransport(cfg, will_topic, will_payload)
