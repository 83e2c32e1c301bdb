"""The disk-backed outbox: every alert, telemetry and job update waits here until the broker acks it.

SQLite in WAL mode at <state>/outbox.sqlite (schema version in `PRAGMA user_version`).
Messages are delivered in `seq` order. A row is marked delivered only when its PUBACK
arrives, so broker outages, network cuts and agent restarts lose nothing; after a crash the
unacknowledged rows are sent again (QoS 1 at-least-once; each payload carries an `id`).
Inserting a message whose id is already stored is a no-op, which makes re-handling the
same frame after a crash idempotent.

When the outbox is over its caps, telemetry goes first (oldest first), then the oldest
other messages; what was dropped is counted per kind and reported in telemetry.

Alert snapshots (JPEGs the alerts name) wait in the `snapshots` table, stored in the same
transaction as their alerts, until the fleet accepts the upload (agent/snapshots.py); over
`max_snapshot_bytes` the oldest go first (counted as "snapshot"). The table is an addition
an older agent ignores, so the schema version stays 1 (an agent rolled back still opens it).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
# Delivered rows are kept (without payload) this long so duplicate ids are still caught.
KEEP_DELIVERED = 5_000
DROP_FIRST = ("telemetry",)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB,
    size INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pending ON messages (delivered, seq);
CREATE TABLE IF NOT EXISTS dropped (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    size INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class Message:
    seq: int
    id: str
    kind: str
    topic: str
    payload: bytes


class Outbox:
    """Thread-safe: the inference loop puts, the sender thread takes and acks."""

    def __init__(
        self,
        path: Path,
        *,
        max_messages: int = 10_000,
        max_bytes: int = 50 * 1024 * 1024,
        max_snapshot_bytes: int = 20 * 1024 * 1024,
    ) -> None:
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_snapshot_bytes = max_snapshot_bytes
        self._lock = threading.Lock()
        self._handed = 0  # rows up to this seq are with the transport; caps never drop them
        self._has_pending = threading.Condition(self._lock)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a row the agent was told is stored survives power loss, not only a crash.
        self._db.execute("PRAGMA synchronous=FULL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(f"outbox schema {version} is newer than this agent ({SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def put(self, kind: str, topic: str, payload: dict) -> bool:
        """Store one message (payload must carry a unique "id"). False if that id is already stored."""
        return self.put_many([(kind, topic, payload)])[0]

    def put_many(self, messages: list[tuple[str, str, dict]], snapshots: list[tuple[str, bytes]] = ()) -> list[bool]:
        """Store several messages, and the (sha256, JPEG) snapshots they name, in one transaction
        (one fsync), in order; True for each message added."""
        rows = [
            (payload["id"], kind, topic, json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
            for kind, topic, payload in messages
        ]
        added = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for id_, kind, topic, data in rows:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO messages (id, kind, topic, payload, size) VALUES (?, ?, ?, ?, ?)",
                        (id_, kind, topic, data, len(data)),
                    )
                    added.append(cur.rowcount == 1)
                for sha, jpeg in snapshots:
                    self._db.execute(
                        "INSERT OR IGNORE INTO snapshots (sha256, data, size) VALUES (?, ?, ?)", (sha, jpeg, len(jpeg))
                    )
                if any(added):
                    self._enforce_caps()
                if snapshots:
                    self._enforce_snapshot_cap()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if any(added):
                self._has_pending.notify_all()
        return added

    def _enforce_caps(self) -> None:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE delivered = 0"
        ).fetchone()
        while count > self.max_messages or size > self.max_bytes:
            row = None
            for kind in DROP_FIRST:
                row = self._db.execute(
                    "SELECT seq, kind, size FROM messages WHERE delivered = 0 AND seq > ? AND kind = ? ORDER BY seq LIMIT 1",
                    (self._handed, kind),
                ).fetchone()
                if row:
                    break
            if row is None:
                row = self._db.execute(
                    "SELECT seq, kind, size FROM messages WHERE delivered = 0 AND seq > ? ORDER BY seq LIMIT 1",
                    (self._handed,),
                ).fetchone()
            if row is None:
                return  # everything left is already with the transport
            seq, kind, row_size = row
            self._db.execute("DELETE FROM messages WHERE seq = ?", (seq,))
            self._count_dropped(kind)
            count -= 1
            size -= row_size

    def _enforce_snapshot_cap(self) -> None:
        while True:
            (size,) = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM snapshots").fetchone()
            if size <= self.max_snapshot_bytes:
                return
            self._db.execute("DELETE FROM snapshots WHERE rowid = (SELECT MIN(rowid) FROM snapshots)")
            self._count_dropped("snapshot")

    def _count_dropped(self, kind: str) -> None:
        self._db.execute(
            "INSERT INTO dropped (kind, count) VALUES (?, 1) ON CONFLICT(kind) DO UPDATE SET count = count + 1", (kind,)
        )

    def due_snapshot(self, now: float) -> tuple[str, bytes, int] | None:
        """The oldest snapshot whose next try is due: (sha256, JPEG, attempts so far)."""
        with self._lock:
            row = self._db.execute(
                "SELECT sha256, data, attempts FROM snapshots WHERE next_try <= ? ORDER BY rowid LIMIT 1", (now,)
            ).fetchone()
        return None if row is None else (row[0], bytes(row[1]), row[2])

    def snapshot_done(self, sha256: str, dropped: bool = False) -> None:
        """Forget a snapshot: the fleet has it, or refused it for good (then counted as dropped)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM snapshots WHERE sha256 = ?", (sha256,))
            if dropped:
                self._count_dropped("snapshot")
            self._db.execute("COMMIT")

    def snapshot_retry(self, sha256: str, next_try: float) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE snapshots SET attempts = attempts + 1, next_try = ? WHERE sha256 = ?", (next_try, sha256)
            )

    def pending(self, after_seq: int = 0, limit: int = 100) -> list[Message]:
        """Undelivered messages with seq > after_seq, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, id, kind, topic, payload FROM messages WHERE delivered = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return [Message(*row) for row in rows]

    def wake(self) -> None:
        """Wake a sender waiting in wait_for_pending (acks to write, or stopping)."""
        with self._lock:
            self._has_pending.notify_all()

    def mark_handed(self, seq: int) -> None:
        with self._lock:
            self._handed = max(self._handed, seq)

    def wait_for_pending(self, after_seq: int, timeout: float) -> None:
        with self._lock:
            exists = self._db.execute(
                "SELECT 1 FROM messages WHERE delivered = 0 AND seq > ? LIMIT 1", (after_seq,)
            ).fetchone()
            if not exists:
                self._has_pending.wait(timeout)

    def ack(self, seq: int) -> None:
        self.ack_many([seq])

    def ack_many(self, seqs: list[int]) -> None:
        """Mark messages delivered, in one transaction. Losing this on a crash only means a resend."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE messages SET delivered = 1, payload = NULL WHERE seq = ?", [(s,) for s in seqs]
            )
            # Forget delivered rows beyond the de-duplication window.
            self._db.execute(
                "DELETE FROM messages WHERE delivered = 1 AND seq <= (SELECT MAX(seq) FROM messages WHERE delivered = 1) - ?",
                (KEEP_DELIVERED,),
            )
            self._db.execute("COMMIT")

    def stats(self) -> dict:
        with self._lock:
            pending, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM messages WHERE delivered = 0"
            ).fetchone()
            dropped = dict(self._db.execute("SELECT kind, count FROM dropped").fetchall())
            (snapshots,) = self._db.execute("SELECT COUNT(*) FROM snapshots").fetchone()
        return {"pending": pending, "pending_bytes": size, "dropped": dropped, "snapshots": snapshots}

    def close(self) -> None:
        with self._lock:
            self._db.close()
