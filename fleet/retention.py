"""Telemetry retention: rows older than `telemetry_retention_s` are deleted, in batches.

At 10,000 cameras sending every 60 s the telemetry table grows by ~14M rows a day; the health
gate reads only the telemetry of running rollouts. Deleting in batches of `BATCH` rows, each
in its own short transaction, keeps ingest (which waits for SQLite's write lock, or for the
index pages on PostgreSQL) from stalling behind one huge DELETE.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import delete, select

from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Telemetry

log = logging.getLogger("edgefleet.fleet.retention")
BATCH = 5_000


def prune_telemetry(fleet: Fleet, max_age_s: float, batch: int = BATCH) -> int:
    """Delete telemetry received more than `max_age_s` ago; returns how many rows went."""
    cutoff = fleet.clock() - max_age_s
    total = 0
    while True:
        with fleet.writer() as s, s.begin():
            oldest = select(Telemetry.id).where(Telemetry.received_at < cutoff).limit(batch)
            gone = s.execute(delete(Telemetry).where(Telemetry.id.in_(oldest.scalar_subquery()))).rowcount
        total += gone
        if gone < batch:
            return total


class Pruner(threading.Thread):
    """Prunes telemetry every `interval` seconds until stopped (every replica may: deletes commute)."""

    def __init__(self, fleet: Fleet, max_age_s: float, interval: float) -> None:
        super().__init__(name="telemetry-pruner", daemon=True)
        self.fleet, self.max_age_s, self.interval = fleet, max_age_s, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                gone = prune_telemetry(self.fleet, self.max_age_s)
            except Exception:  # the database may be away for a while; the next round catches up
                log.exception("telemetry pruning failed")
                continue
            if gone:
                log.info("pruned %d telemetry rows older than %.0f s", gone, self.max_age_s)
