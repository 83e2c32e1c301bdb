"""What `fleet serve` runs for alert events besides ingest: the retention sweep, the optional
webhook (each new event POSTed as its AlertEventOut JSON, through the drift webhook's sender)
and, when enabled, Home Assistant discovery (fleet/homeassistant.py)."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from edgefleet.contracts.rest import AlertEventOut
from edgefleet.fleet.alert_events import add_listener, prune
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.drift_webhook import post_alarm, url_from

log = logging.getLogger("edgefleet.fleet.alerts")
SWEEP_S = 300.0
WEBHOOK_ENV = "EDGEFLEET_FLEET_ALERT_WEBHOOK"


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


def add_webhook(fleet: Fleet, counters: Counter[str]) -> str | None:
    """POST each new alert event to the configured webhook (off the ingest thread); the URL, or None."""
    cfg = fleet.config.alerts
    url = url_from(WEBHOOK_ENV, cfg.webhook_url_file, "alerts.webhook_url_file")
    if url is None:
        return None

    def send(kind: str, item: Any) -> None:
        if kind == "alert" and isinstance(item, AlertEventOut):
            args = (url, item.model_dump_json().encode(), cfg.webhook_timeout_s, counters, "alert_webhook")
            threading.Thread(target=post_alarm, args=args, name="alert-webhook", daemon=True).start()

    add_listener(fleet, send)
    return url


def start(fleet: Fleet, mqtt_client: Any | None, counters: Counter[str]) -> Callable[[], None]:
    """Start the sweep, the webhook (`counters` counts its posts) and HA discovery when enabled and
    the fleet has a broker; returns a stop function."""
    retention = Retention(fleet)
    retention.start()
    add_webhook(fleet, counters)
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
