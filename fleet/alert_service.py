"""What `fleet serve` runs for alert events besides ingest: the retention sweep and, when
enabled, Home Assistant discovery (fleet/homeassistant.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from edgefleet.fleet.alert_events import prune
from edgefleet.fleet.core import Fleet

log = logging.getLogger("edgefleet.fleet.alerts")
SWEEP_S = 300.0


class Retention(threading.Thread):
    """Deletes events (and snapshots) past alerts.retention_days and alerts.max_events every `interval` s."""

    def __init__(self, fleet: Fleet, interval: float = SWEEP_S) -> None:
        super().__init__(name="alert-retention", daemon=True)
        self.fleet, self.interval = fleet, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                gone = prune(self.fleet, self.fleet.clock())
                if gone:
                    log.info("retention deleted %d alert events", gone)
            except Exception:  # the next sweep retries; the store or database may be back by then
                log.exception("alert retention sweep failed")
            if self.stopped.wait(self.interval):
                return


def start(fleet: Fleet, mqtt_client: Any | None) -> Callable[[], None]:
    """Start the sweep (and HA discovery when enabled and the fleet has a broker); returns a stop function."""
    retention = Retention(fleet)
    retention.start()
    ha = None
    if fleet.config.homeassistant.enabled and mqtt_client is not None:
        from edgefleet.fleet.homeassistant import HomeAssistant

        ha = HomeAssistant(fleet, mqtt_client, fleet.config.homeassistant)
        ha.start()

    def stop() -> None:
        retention.stopped.set()
        if ha is not None:
            ha.stop()

    return stop
