"""`edgefleet fleet serve`: the REST API, the MQTT bridge and the rollout ticker in one process."""

from __future__ import annotations

import logging
import threading

from edgefleet.fleet import alert_service
from edgefleet.fleet.adoption import peer_watch
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import Fleet, open_fleet
from edgefleet.fleet.ingest import Ingest
from edgefleet.fleet.leader import SchedulerLease
from edgefleet.fleet.retention import Pruner
from edgefleet.fleet.rollouts import tick
from edgefleet.fleet.tls import uvicorn_tls_options
from edgefleet.logs import setup_logging

log = logging.getLogger("edgefleet.fleet")
TLS_STOP_GRACE_S = 10


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
    from edgefleet.fleet.bridge import Bridge, replica_id
    from edgefleet.fleet.devices import register_replica

    setup_logging("info", config.log_format)
    tls = uvicorn_tls_options(config)  # before anything starts: a bad pair stops here, named
    logging.getLogger("alembic").setLevel(logging.WARNING)
    fleet = open_fleet(config)
    ingest = Ingest(fleet)
    bridge = None
    slots = None
    if config.broker is not None:
        replica = replica_id(config)
        if slots := peer_watch(ingest, config.broker, replica):
            slots.take_own()  # first: an adopter may be draining this id's session (fleet/adoption.py)
        register_replica(fleet, replica)  # before the rights are synced: they let this replica read the devices
        if config.broker.authorization == "acl_file":
            fleet.broker_auth.sync()  # before connecting: the ACL must let this replica subscribe
        bridge = Bridge(config.broker, ingest, replica)
        bridge.start()
        if slots:
            slots.start()
        if config.broker.authorization == "dynsec":  # over the bridge's connection (its identity is dynsec admin)
            from edgefleet.fleet.broker_auth.dynsec import Dynsec

            fleet.broker_auth = Dynsec(fleet, bridge, replica)
            fleet.broker_auth.sync()
        fleet.notify = bridge.notify
        ingest.drift.use_mqtt(bridge.client)  # drift alarms on edgefleet/v1/<device>/drift
    ticker = Ticker(fleet, config.tick_seconds)
    ticker.start()
    stop_alerts = alert_service.start(fleet, bridge.client if bridge else None, ingest.counters)  # docs/fleet.md
    Pruner(fleet, config.telemetry_retention_s, config.prune_interval_s).start()
    address = {"listen_host": config.listen_host, "listen_port": config.listen_port}
    scheme = "https" if tls else "http"
    log.info(
        "serving the API on %s://%s:%d", scheme, *address.values(), extra=address | {"scheme": scheme}
    )  # extra: JSON log fields
    try:
        # log_config=None: uvicorn's records go through the root handler above, in the same format.
        uvicorn.run(
            create_app(fleet, ingest),
            host=config.listen_host,
            port=config.listen_port,
            log_level="warning",
            log_config=None,
            # An idle HTTPS keep-alive client that never answers the TLS close would hold the stop
            # for asyncio's 30 s SSL shutdown timeout; requests still running get this long instead.
            timeout_graceful_shutdown=TLS_STOP_GRACE_S if tls else None,
            **tls,
        )
    finally:
        ticker.stopped.set()
        stop_alerts()
        if slots:
            slots.stop()
        if bridge:
            bridge.stop()
