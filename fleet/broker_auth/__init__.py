"""Who may publish and subscribe to what on the broker, kept by one backend chosen by
`[broker] authorization` (docs/security.md, "Broker authorisation"):

- `acl_file` (default, the embedded broker): a mosquitto ACL file rewritten from the database,
  then SIGHUP to the local mosquitto named by `mosquitto_pid_file`.
- `dynsec`: mosquitto's dynamic security plugin, managed with commands the fleet publishes over
  its own MQTT connection, so the broker may be remote or run apart from every replica.

Both grant `devices.broker_rights`: users are certificate CNs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from sqlalchemy import select, text

from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Device, Replica

# The advisory lock one replica at a time changes the broker's rights under (fleet/leader.py has the scheduler's).
BROKER_AUTH_LOCK = 0x6564_6765_666C_7432  # "edgeflt2"
_LOCAL = threading.Lock()  # the same within one process (SQLite has no advisory locks)


class BrokerAuthorization(Protocol):
    def sync(self) -> None:
        """Grant every identity the database knows (replicas, viewer, Home Assistant, devices)
        its rights, and take them from devices the fleet no longer has."""

    def add_device(self, device_id: str) -> None:
        """Grant one newly enrolled device its rights."""

    def remove_device(self, device_id: str) -> None:
        """Take every right from a device that is revoked; the broker refuses it at once."""


@contextmanager
def one_writer(fleet: Fleet) -> Iterator[None]:
    """Hold while changing the broker's rights, and read the database inside it: replicas then
    change them one at a time, each from what the others committed. Without it a replica's
    start-up sync that read the devices before another replica enrolled one would take the new
    device's rights away again, or give a device revoked meanwhile its rights back. Callers
    commit their device change first, then take it."""
    with _LOCAL, fleet.session() as s:
        if s.get_bind().dialect.name != "postgresql":
            yield  # one process: the thread lock is all (a SQLite transaction here would stop ingest)
            return
        with s.begin():
            s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BROKER_AUTH_LOCK})
            yield  # released with the transaction


def identities(fleet: Fleet) -> tuple[list[str], list[str]]:
    """The devices that hold broker rights (enrolled, not revoked) and the replicas: read under one_writer."""
    with fleet.session() as s:
        devices = list(s.scalars(select(Device.id).where(Device.revoked_at.is_(None))))
        replicas = list(s.scalars(select(Replica.id)))
    return devices, replicas
