"""Who may publish and subscribe to what on the broker, kept by one backend chosen by
`[broker] authorization` (docs/security.md, "Broker authorisation"):

- `acl_file` (default, the embedded broker): a mosquitto ACL file rewritten from the database,
  then SIGHUP to the local mosquitto named by `mosquitto_pid_file`.
- `dynsec`: mosquitto's dynamic security plugin, managed with commands the fleet publishes over
  its own MQTT connection, so the broker may be remote or run apart from every replica.

Both grant `devices.broker_rights`: users are certificate CNs.
"""

from __future__ import annotations

from typing import Protocol


class BrokerAuthorization(Protocol):
    def sync(self) -> None:
        """Grant every identity the database knows (replicas, viewer, Home Assistant, devices)
        its rights, and take them from devices the fleet no longer has."""

    def add_device(self, device_id: str) -> None:
        """Grant one newly enrolled device its rights."""

    def remove_device(self, device_id: str) -> None:
        """Take every right from a device whose row is gone; the broker refuses it at once."""
