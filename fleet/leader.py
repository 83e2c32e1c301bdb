"""One rollout scheduler at a time across the fleet's replicas.

On PostgreSQL the scheduler holds a session-level advisory lock on a connection of its own.
The lock lives as long as that connection: when the holder dies (SIGKILL, crash, lost host)
PostgreSQL ends its session and frees the lock, and the next replica to ask takes it (every
tick, so within about a tick). TCP keepalives end the session of a holder that vanished without
closing its socket within about 10 s. The holder checks its connection every tick and stops
scheduling the moment it is gone. Two schedulers can still overlap for a moment (a holder that
has not noticed yet): rollout rows are locked while stepped (`SELECT ... FOR UPDATE`) and job
states are compare-and-set (fleet/rollouts.py), so the overlap changes nothing twice.

SQLite is one process by design: its scheduler always holds the lease.
"""

from __future__ import annotations

import logging

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

log = logging.getLogger("edgefleet.fleet.leader")
# The advisory lock's key: any 64-bit number other applications on the database do not use.
SCHEDULER_LOCK = 0x6564_6765_666C_7431  # "edgeflt1"
# libpq: first keepalive after 5 s idle, then every 2 s, dead after 3 unanswered (about 11 s).
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}


class SchedulerLease:
    def __init__(self, engine: Engine) -> None:
        self.postgres = engine.dialect.name == "postgresql"
        self._engine = create_engine(engine.url, poolclass=NullPool, connect_args=KEEPALIVES) if self.postgres else None
        self._conn: Connection | None = None

    def held(self) -> bool:
        """Whether this process is the scheduler now: keeps the lease it has, or tries to take it."""
        if self._engine is None:
            return True
        try:
            if self._conn is not None:
                self._conn.execute(text("SELECT 1"))  # still ours while this session lives
                return True
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            if conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": SCHEDULER_LOCK}).scalar():
                self._conn = conn
                log.info("this replica now schedules rollouts")
                return True
            conn.close()
            return False
        except Exception as exc:  # the database is unreachable: whoever can reach it schedules
            if self._conn is not None:
                log.warning("lost the rollout scheduler lease: %s", str(exc).splitlines()[0])
            self.release()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()  # ends the session, which frees the lock
            except Exception:  # noqa: BLE001 - a dead connection is closed already
                pass
