"""Broker authorisation by a mosquitto ACL file the fleet rewrites, then SIGHUP (the default)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from edgefleet.fleet.broker_auth import identities, one_writer
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.devices import acl_text


class AclFile:
    """The whole file is written each time: mosquitto reads nothing else, and one rename is atomic."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def sync(self) -> None:
        write_acl(self.fleet)

    def add_device(self, device_id: str) -> None:
        write_acl(self.fleet)

    def remove_device(self, device_id: str) -> None:
        write_acl(self.fleet)


def write_acl(fleet: Fleet) -> Path | None:
    broker = fleet.config.broker
    if broker is None or broker.acl_file is None:
        return None
    with one_writer(fleet):
        ids, replicas = identities(fleet)
        tmp = broker.acl_file.with_name(broker.acl_file.name + ".tmp")
        tmp.write_text(acl_text(ids, replicas, fleet.config.homeassistant))
        os.replace(tmp, broker.acl_file)
    if broker.mosquitto_pid_file and broker.mosquitto_pid_file.exists():
        try:
            os.kill(int(broker.mosquitto_pid_file.read_text().strip()), signal.SIGHUP)  # mosquitto re-reads its ACL
        except (ValueError, ProcessLookupError):
            pass
    return broker.acl_file
