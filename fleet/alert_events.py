"""Alert events: every alert a camera sends, kept with the snapshot it names (docs/fleet.md).

Ingest calls `observe` on each message it stored (inside its transaction): an alert becomes
one AlertEvent row (one per alert id, however often the broker delivers it), a status keeps
the labels the camera watches. The camera uploads the alert's JPEG over HTTPS, signed with
its own certificate (edgefleet/device_auth.py); `store_snapshot` checks it against the alert
that names it and puts it on the package store's backend. `prune` applies the retention.

What happened is handed to listeners (Home Assistant, the webhook) after the transaction
commits, so they never announce an event that was rolled back.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from edgefleet.contracts.mqtt import AlertMessage, DeviceMessage, StatusMessage
from edgefleet.contracts.rest import AlertEventOut, AlertEventPage, SnapshotStored
from edgefleet.device_auth import DeviceAuthError, verify_headers
from edgefleet.errors import BadInputError, ConflictError, NotFoundError, PermissionDeniedError
from edgefleet.fleet.alert_tables import AlertEvent
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Counter, Device
from edgefleet.fleet.paging import MAX_PAGE, keyset

log = logging.getLogger("edgefleet.fleet.alerts")
SNAPSHOT_PREFIX = "alert-snapshots"  # store keys: alert-snapshots/<device>/<sha256>.jpg
JPEG_MAGIC = b"\xff\xd8\xff"
NOTES = "edgefleet_alert_notes"  # session.info key: what to tell listeners after the commit
# listener(kind, payload): ("alert", AlertEventOut), ("status", device id), ("snapshot", AlertEventOut)
Listener = Callable[[str, Any], None]


def observe(s: Session, device: Device, msg: DeviceMessage, received_at: float) -> None:
    """Ingest's hook for a message it handled: alerts are recorded, listeners told of a status
    (ingest keeps its labels in `device.watching`)."""
    if isinstance(msg, AlertMessage):
        row = _record(s, device.id, msg, received_at)
        if row is not None:
            s.info.setdefault(NOTES, []).append(("alert", row))
    elif isinstance(msg, StatusMessage):
        s.info.setdefault(NOTES, []).append(("status", device.id))


def _record(s: Session, device_id: str, msg: AlertMessage, received_at: float) -> AlertEvent | None:
    # no_autoflush: the device row's pending update is flushed once, with the event, by ingest.
    with s.no_autoflush:
        if msg.id is not None and s.scalar(select(AlertEvent.id).where(AlertEvent.alert_id == msg.id)) is not None:
            return None  # delivered again (at least once): one event per alert
        # A camera uploads a JPEG once: an alert naming a snapshot that an earlier alert's upload
        # already stored (two alerts on the same frame, or identical frames) shares its stored file.
        stored = (
            s.scalar(
                select(AlertEvent.snapshot_key)
                .where(
                    AlertEvent.device_id == device_id,
                    AlertEvent.snapshot_sha256 == msg.snapshot.sha256,
                    AlertEvent.snapshot_key.is_not(None),
                )
                .limit(1)
            )
            if msg.snapshot
            else None
        )
    row = AlertEvent(
        alert_id=msg.id,
        device_id=device_id,
        received_at=received_at,
        ts=msg.ts,
        label=msg.label,
        score=msg.score,
        consecutive=msg.consecutive,
        rule=msg.rule,
        source=msg.source,
        frame=msg.frame[:256],
        model_name=msg.model and msg.model.name,
        model_version=msg.model and msg.model.version,
        boxes=[d.wire() for d in msg.detections or []],
        frame_size=msg.frame_size,
        snapshot=msg.snapshot.wire() if msg.snapshot else None,
        snapshot_sha256=msg.snapshot.sha256 if msg.snapshot else None,
        snapshot_key=stored,
    )
    s.add(row)  # ingest flushes each message in its savepoint; the row gets its id there
    return row


def add_listener(fleet: Fleet, listener: Listener) -> None:
    """Call `listener` with what each committed write transaction recorded (in the committing thread)."""

    def committed(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint (ingest keeps one per message) was released: the batch is not committed yet
        for kind, item in session.info.pop(NOTES, []):
            if isinstance(item, AlertEvent) and item.id is None:
                continue  # its message's savepoint was rolled back
            try:
                listener(kind, event_out(item) if isinstance(item, AlertEvent) else item)
            except Exception:  # a listener (a webhook, the broker) must never fail ingest
                log.exception("alert listener failed on %s", kind)

    def ended(session: Session, transaction: Any) -> None:
        if transaction.parent is None:  # the outermost ended without a commit (else `committed` took the notes)
            session.info.pop(NOTES, None)

    # Not after_rollback: it also fires when ingest rolls back one message's savepoint, and the
    # notes of the batch's other messages must stay.
    sa_event.listen(fleet.sessions, "after_commit", committed)
    sa_event.listen(fleet.sessions, "after_transaction_end", ended)


def event_out(row: AlertEvent) -> AlertEventOut:
    snap = row.snapshot
    return AlertEventOut.model_validate(
        {
            "id": row.id,
            "alert_id": row.alert_id,
            "device": row.device_id,
            "received_at": row.received_at,
            "ts": row.ts,
            "label": row.label,
            "score": row.score,
            "consecutive": row.consecutive,
            "rule": row.rule,
            "source": row.source,
            "frame": row.frame,
            "model": {"name": row.model_name, "version": row.model_version} if row.model_name else None,
            "boxes": [{"box_px": None, "zones": None} | b for b in row.boxes],
            "frame_size": row.frame_size,
            "snapshot": snap | {"stored": row.snapshot_key is not None} if snap else None,
        }
    )


def list_events(
    fleet: Fleet,
    *,
    device: str | None = None,
    label: str | None = None,
    since: float | None = None,
    until: float | None = None,
    model_version: str | None = None,
    limit: int = MAX_PAGE,
    cursor: str | None = None,
) -> AlertEventPage:
    """One page of the events matching every filter given, newest first (by id: the order they were
    stored in); since/until bound received_at (epoch s)."""
    query = select(AlertEvent)
    for column, value in (
        (AlertEvent.device_id, device),
        (AlertEvent.label, label),
        (AlertEvent.model_version, model_version),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AlertEvent.received_at >= since)
    if until is not None:
        query = query.where(AlertEvent.received_at < until)
    with fleet.session() as s:
        rows, after = keyset(s, query, AlertEvent.id, limit, cursor, newest_first=True)
        return AlertEventPage(items=[event_out(r) for r in rows], next=after)


def get_event(fleet: Fleet, event_id: int) -> AlertEvent:
    with fleet.session() as s:
        row = s.get(AlertEvent, event_id)
    if row is None:
        raise NotFoundError(f"alert event {event_id} does not exist", "list them with `edgefleet fleet alerts list`")
    return row


def count(fleet: Fleet, name: str) -> None:
    """One more of a persisted counter (shown by /api/v1/metrics as `persisted`)."""
    with fleet.writer() as s, s.begin():
        row = s.get(Counter, name)
        if row is None:
            s.add(Counter(name=name, value=1))
        else:
            row.value += 1


def snapshot_key(device_id: str, sha256: str) -> str:
    return f"{SNAPSHOT_PREFIX}/{device_id}/{sha256}.jpg"


def device_ca(fleet: Fleet):
    """The CA whose certificates identify devices: the broker's, else the fleet's own."""
    from cryptography import x509

    from edgefleet.fleet.devices import ca

    broker = fleet.config.broker
    if broker is not None and broker.ca_file is not None:
        return x509.load_pem_x509_certificate(Path(broker.ca_file).read_bytes())
    return ca(fleet).cert


def _refuse(fleet: Fleet, counter: str, error: Exception) -> Exception:
    count(fleet, counter)
    return error


def authenticate_upload(fleet: Fleet, device_id: str, sha256: str, headers: dict[str, str]) -> None:
    """Refuse (PermissionDeniedError, counted) an upload not signed by `device_id` for `sha256`:
    checked on the headers alone, before the body is read."""
    with fleet.session() as s:
        device = s.get(Device, device_id)
    if device is None or device.revoked_at is not None:
        raise _refuse(
            fleet,
            "snapshots_refused_auth",
            PermissionDeniedError(f"unknown or revoked device {device_id!r}", "enroll the device first"),
        )
    try:
        verify_headers(headers, device_ca(fleet), device_id, sha256, fleet.clock(), device.cert_serial)
    except DeviceAuthError as exc:
        raise _refuse(
            fleet, "snapshots_refused_auth", PermissionDeniedError(str(exc), "sign with the device's own key")
        ) from None


def store_snapshot(fleet: Fleet, device_id: str, sha256: str, data: bytes, headers: dict[str, str]) -> SnapshotStored:
    """Check an uploaded snapshot against its device's identity and the alert naming it, then store it."""
    authenticate_upload(fleet, device_id, sha256, headers)
    with fleet.session() as s:
        named = s.scalars(
            select(AlertEvent).where(AlertEvent.snapshot_sha256 == sha256, AlertEvent.device_id == device_id)
        ).all()
        others = not named and s.scalar(select(AlertEvent.id).where(AlertEvent.snapshot_sha256 == sha256).limit(1))
    cap = fleet.config.alerts.snapshot_max_bytes
    if len(data) > cap:
        raise _refuse(
            fleet,
            "snapshots_refused_size",
            BadInputError(f"the snapshot is over {cap} bytes", "lower [snapshots] max_bytes on the camera"),
        )
    if hashlib.sha256(data).hexdigest() != sha256 or not data.startswith(JPEG_MAGIC):
        raise _refuse(
            fleet,
            "snapshots_refused_hash",
            BadInputError(
                "the body is not the JPEG whose sha256 the URL names", "send the snapshot's bytes as they were hashed"
            ),
        )
    if others:
        raise _refuse(
            fleet,
            "snapshots_refused_other_device",
            PermissionDeniedError(
                "this snapshot is named by another device's alert", "a camera uploads only its own snapshots"
            ),
        )
    if not named:
        raise _refuse(
            fleet,
            "snapshots_refused_unnamed",
            ConflictError("no alert of this device names this snapshot (yet)", "send the alert first; retry later"),
        )
    key = snapshot_key(device_id, sha256)
    _put(fleet, key, data)
    with fleet.writer() as s, s.begin():
        rows = s.scalars(
            select(AlertEvent).where(AlertEvent.snapshot_sha256 == sha256, AlertEvent.device_id == device_id)
        ).all()
        for row in rows:
            row.snapshot_key = key
        s.info.setdefault(NOTES, []).extend(("snapshot", row) for row in rows)
    return SnapshotStored(sha256=sha256, size=len(data), events=len(rows))


def _put(fleet: Fleet, key: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snapshot.jpg"
        path.write_bytes(data)
        fleet.store.put(key, path)


def prune(fleet: Fleet, now: float) -> int:
    """Delete events past the retention (age, then count, oldest first) and the snapshots no event names."""
    cfg = fleet.config.alerts
    with fleet.writer() as s, s.begin():
        cutoff = now - cfg.retention_days * 86400
        total = s.scalar(select(func.count(AlertEvent.id))) or 0
        if total > cfg.max_events:
            nth = s.scalar(
                select(AlertEvent.received_at).order_by(AlertEvent.received_at.desc()).offset(cfg.max_events).limit(1)
            )
            cutoff = max(cutoff, (nth or 0) + 1e-6)
        doomed = s.scalars(select(AlertEvent.snapshot_key).where(AlertEvent.received_at < cutoff)).all()
        gone = s.execute(delete(AlertEvent).where(AlertEvent.received_at < cutoff)).rowcount
        kept = set(s.scalars(select(AlertEvent.snapshot_key).where(AlertEvent.snapshot_key.in_(set(doomed)))))
    for key in {k for k in doomed if k is not None} - kept:
        fleet.store.delete(key)
    return int(gone or 0)
