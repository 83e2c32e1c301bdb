"""`edgefleet fleet serve`: the REST API, the MQTT bridge and the rollout ticker in one process."""

from __future__ import annotations

import logging
import threading

from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import Fleet, open_fleet
from edgefleet.fleet.ingest import Ingest
from edgefleet.fleet.leader import SchedulerLease
from edgefleet.fleet.rollouts import tick

log = logging.getLogger("edgefleet.fleet")


class Ticker(threading.Thread):
    """Moves rollouts forward every `interval` seconds until stopped, while this replica holds
    the scheduler lease (fleet/leader.py); the others keep asking for it."""

    def __init__(self, fleet: Fleet, interval: float) -> None:
        super().__init__(name="rollout-ticker", daemon=True)
        self.fleet = fleet
        self.interval = interval
        self.stopped = threading.Event()
        self.lease = SchedulerLease(fleet.sessions.kw["bind"])

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if self.lease.held():
                    tick(self.fleet)
            except Exception:  # keep ticking; a failing rollout step is logged and retried
                log.exception("rollout tick failed")
        self.lease.release()


def serve(config: FleetConfig) -> None:
    """Run the fleet service until interrupted (uvicorn handles SIGINT/SIGTERM)."""
    import uvicorn

    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.bridge import Bridge
    from edgefleet.fleet.devices import write_acl

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    fleet = open_fleet(config)
    ingest = Ingest(fleet)
    bridge = None
    if config.broker is not None:
        write_acl(fleet)
        bridge = Bridge(config.broker, ingest)
        bridge.start()
        fleet.notify = bridge.notify
        ingest.drift.use_mqtt(bridge.client)  # drift alarms on edgefleet/v1/<device>/drift
    ticker = Ticker(fleet, config.tick_seconds)
    ticker.start()
    try:
        uvicorn.run(create_app(fleet, ingest), host=config.listen_host, port=config.listen_port, log_level="warning")
    finally:
        ticker.stopped.set()
        if bridge:
            bridge.stop()
