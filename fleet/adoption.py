"""A replica dead for good: another one drains and ends its broker session.

mosquitto keeps dealing a share of the device messages to a replica's session while it is away,
and delivers them (with those it had received and not yet acknowledged) only to a client under
the same id; when the session expires they are dropped (docs/fleet.md, measured 2,500 of 5,000).
So with `[broker] peer_identities_dir` (every replica id's certificate and key), each replica
watches the others on PostgreSQL:

- every replica holds a session-level advisory lock on its own id (its slot) for as long as it
  runs; PostgreSQL frees it the moment the process dies (SIGKILL included) or, with TCP
  keepalives, about 11 s after its host vanished;
- every ADOPT_EVERY_S each replica tries the slots of the other ids in the `replicas` table. One
  it gets is dead: it connects under that id (the peer's certificate), so the broker delivers
  the session's queued and unacknowledged messages, stores them through its own ingest, leaves
  the share group, and ends the session (expiry 0) once QUIET_S pass without a message. The
  id's row goes from `replicas`; a replica that comes back under it later registers again.
- a replica that loses its own slot (its database session ended) stops, so that it does not
  fight an adopter for its client id: its supervisor starts it again, and it waits for its slot.

The scheduler lease is the same kind of lock (fleet/leader.py): it moves within a tick.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import zlib

from sqlalchemy import create_engine, delete, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from edgefleet.errors import ServiceError
from edgefleet.fleet.bridge import Bridge
from edgefleet.fleet.config import BrokerConfig
from edgefleet.fleet.db import Replica
from edgefleet.fleet.ingest import Ingest
from edgefleet.fleet.leader import KEEPALIVES

log = logging.getLogger("edgefleet.fleet.adoption")
SLOT_LOCKS = 0x6566_6C74  # "eflt": the first key of the two-key advisory locks on replica ids
ADOPT_EVERY_S = 5.0
QUIET_S = 2.0  # a drained session: this long without a message, everything stored
WAIT_FOR_SLOT_S = 120.0  # at start, how long an adopter may hold this replica's slot


def slot_key(replica: str) -> int:
    return zlib.crc32(replica.encode()) - 2**31  # an int4, as the two-key form wants


def peer_watch(ingest: Ingest, broker: BrokerConfig, replica: str) -> Slots | None:
    """The replica's Slots on PostgreSQL; None on SQLite, which is one process."""
    if ingest.fleet.sessions.kw["bind"].dialect.name != "postgresql":
        return None
    return Slots(ingest, broker, replica)


class Slots:
    """This replica's slot and its watch over the others' (PostgreSQL only)."""

    def __init__(self, ingest: Ingest, broker: BrokerConfig, replica: str) -> None:
        self.ingest, self.broker, self.replica = ingest, broker, replica
        url = ingest.fleet.sessions.kw["bind"].url  # as fleet/leader.py: connections of its own
        self._engine = create_engine(url, poolclass=NullPool, connect_args=KEEPALIVES)
        self._own: Connection | None = None
        self._stop = threading.Event()

    def take_own(self) -> None:
        """Hold this replica's slot; waits while an adopter drains this id's session."""
        deadline = WAIT_FOR_SLOT_S
        while (conn := self._try(self.replica)) is None:
            if deadline <= 0:
                raise ServiceError(
                    f"replica id {self.replica!r} is held by another running process",
                    "give every replica its own replica_id (and certificate)",
                )
            self._stop.wait(1.0)
            deadline -= 1.0
        self._own = conn

    def start(self) -> None:
        threading.Thread(target=self._watch, name="fleet-adoption", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _try(self, replica: str) -> Connection | None:
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        got = conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": SLOT_LOCKS, "b": slot_key(replica)})
        if got.scalar():
            return conn
        conn.close()
        return None

    def _watch(self) -> None:
        while not self._stop.wait(ADOPT_EVERY_S):
            try:
                assert self._own is not None
                self._own.execute(text("SELECT 1"))
            except Exception:  # noqa: BLE001 - whatever ended the session, the slot may be another's now
                log.error("lost this replica's slot (its database session ended): stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                self._adopt_dead()
            except Exception:  # noqa: BLE001 - tried again next round
                log.exception("could not take over a dead replica's session")

    def _adopt_dead(self) -> None:
        with self.ingest.fleet.session() as s:
            others = [r for r in s.scalars(select(Replica.id)) if r != self.replica]
        folder = self.broker.peer_identities_dir
        for replica in others:
            if folder is None or not (folder / f"{replica}.pem").exists():
                continue
            conn = self._try(replica)
            if conn is None:
                continue  # alive
            try:
                self._drain(replica)
            finally:
                conn.close()

    def _drain(self, replica: str) -> None:
        folder = self.broker.peer_identities_dir
        assert folder is not None
        peer = self.broker.model_copy(
            update={"cert_file": folder / f"{replica}.pem", "key_file": folder / f"{replica}.key"}
        )
        bridge = Bridge(peer, self.ingest, replica)
        bridge.start()
        bridge.end_session(QUIET_S)
        with self.ingest.fleet.writer() as s, s.begin():
            s.execute(delete(Replica).where(Replica.id == replica))
        log.warning(
            "replica %s is gone: stored the %d messages its broker session held, and ended it",
            replica,
            bridge.delivered,
        )
