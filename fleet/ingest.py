"""What the fleet does with MQTT messages from devices (topics v1, payloads with "schema": 1).

    edgefleet/v1/<device>/status               online/offline, current model, last seen
    edgefleet/v1/<device>/telemetry            health numbers for rollout gates (frames, alerts, confidence, p95)
    edgefleet/v1/<device>/alerts               parsed as a whole AlertMessage -> an alert event (fleet/alert_events.py)
    edgefleet/v1/<device>/jobs/<job>/update    the update state machine's progress -> deployments
    edgefleet/v1/<device>/shadow               a shadow model's window (ShadowReport) -> shadow_reports (fleet/shadow.py)

Messages from devices the fleet does not know, and malformed ones, are dropped and counted
(`counters`); nothing a device sends can raise out of `handle_batch`. A batch is one
transaction: telemetry rows go in with one insert-or-ignore on (device, message id), so a
message delivered again (at least once: the bridge acknowledges only committed batches) is
stored once and counted as `duplicate`; shadow reports likewise. Status and job updates are applied one by one, each in
its own savepoint, as are alerts, so a message the database refuses is dropped alone and its batch is kept.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter as Tally
from dataclasses import dataclass

from sqlalchemy import BigInteger, bindparam, case, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from edgefleet.contracts.mqtt import AlertMessage, DeviceMessage, JobUpdate, StatusMessage, TelemetryMessage
from edgefleet.contracts.shadow import ShadowReport
from edgefleet.fleet import alert_events, shadow
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Counter, Device, Telemetry, insert_or_ignore
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.local_broker import MAX_PACKET_BYTES
from edgefleet.fleet.metrics import ingested
from edgefleet.fleet.order import advanced, advanced_sql, later, later_sql
from edgefleet.fleet.rollouts import apply_job_update, apply_job_updates

log = logging.getLogger("edgefleet.fleet.ingest")
PREFIX = "edgefleet/v1/"


MAX_PAYLOAD_BYTES = MAX_PACKET_BYTES  # an external broker may not enforce ours


@dataclass
class Message:
    topic: str
    payload: bytes
    received_at: float
    mid: int = 0  # the MQTT message id, acknowledged once the message is committed (fleet/bridge.py)


class Malformed(ValueError):
    """A message that is not what its topic promises; dropped and counted as dropped_malformed."""


def _no_constant(name: str):
    raise Malformed(f"JSON constant {name} is not a number a device sends")


def parse_body(payload: bytes) -> object:
    """Strict JSON: no NaN/Infinity, bounded size; deep nesting fails as Malformed, not RecursionError."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise Malformed(f"payload of {len(payload)} bytes")
    try:
        return json.loads(payload, parse_constant=_no_constant)
    except RecursionError:
        raise Malformed("JSON nested too deeply") from None


# What each topic suffix promises (edgefleet/contracts/mqtt.py); an alert is parsed whole, as it
# becomes an alert event.
CONTRACTS: dict[str, type[DeviceMessage]] = {
    "status": StatusMessage,
    "telemetry": TelemetryMessage,
    "alerts": AlertMessage,
    "jobs": JobUpdate,
    "shadow": ShadowReport,
}


@dataclass
class Parsed:
    """A message whose topic names a device and a known kind; `body` is None when its payload is malformed."""

    message: Message
    device_id: str
    kind: str
    job: str
    body: DeviceMessage | None


def parse_topic(m: Message) -> tuple[str, str, str] | None:
    """(device, kind, job) of a v1 uplink topic, or None for anything else."""
    if not m.topic.startswith(PREFIX):
        return None
    device_id, _, suffix = m.topic[len(PREFIX) :].partition("/")
    parts = suffix.split("/")
    if suffix in ("status", "telemetry", "alerts", "shadow"):
        return device_id, suffix, ""
    if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "update":
        return device_id, "jobs", parts[1]
    return None


def parse(m: Message, device_id: str, kind: str, job: str) -> Parsed:
    """The message as its contract model (body None: malformed, whatever the device sent)."""
    try:
        if kind == "status" and m.payload.strip() in (b"offline", b'"offline"'):
            body: DeviceMessage = StatusMessage(state="offline")  # a bare last will
        else:
            body = CONTRACTS[kind].model_validate(parse_body(m.payload))
    except Exception as exc:  # noqa: BLE001 - a payload is data: any failure to read it is this message's
        log.debug("dropping malformed message on %s: %s", m.topic, exc)
        return Parsed(m, device_id, kind, job, None)
    if body.device not in (None, device_id):
        return Parsed(m, device_id, kind, job, None)
    return Parsed(m, device_id, kind, job, body)


class Ingest:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.counters: Tally[str] = Tally()
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self.drift = DriftMonitor(fleet)  # judges telemetry drift summaries (fleet/drift_service.py)

    def handle_batch(self, messages: list[Message]) -> None:
        """Store a batch of messages in one transaction; job updates go through the rollout engine.

        Returns once the batch is committed (then every message in it is handled: stored, a
        duplicate, or dropped and counted); raises only if the commit itself fails (the database is down).
        """
        outcomes: Tally[str] = Tally(received=len(messages))
        parsed: list[Parsed] = []
        for m in messages:  # parsed before the transaction: no database lock is held for it
            where = parse_topic(m)
            if where is None:
                outcomes["dropped_malformed"] += 1
            else:
                parsed.append(parse(m, *where))
        # One transaction per batch, job updates included (fleet.lock: the rollout ticker waits).
        with self._lock, self.fleet.lock, self.drift.batch(), self.fleet.writer() as s, s.begin():
            try:
                known = self._known_devices(s, {p.device_id for p in parsed})
                outcomes["dropped_unknown_device"] += sum(p.device_id not in known for p in parsed)
                ours = [p for p in parsed if p.device_id in known]
                outcomes["dropped_malformed"] += sum(p.body is None for p in ours)
                outcomes.update(self._store([p for p in ours if p.body is not None], s))
                self._count_unknown(s, outcomes["dropped_unknown_device"])
            except BaseException:
                self._known.clear()  # the cache may hold reads of a transaction that is rolled back
                raise
        # Counted once committed (zeros left out): a failed batch is retried, not counted twice.
        self.counters.update(+outcomes)
        ingested(messages, outcomes, self.fleet.clock())  # Prometheus counters (fleet/metrics.py)

    def _known_devices(self, s: Session, ids: set[str]) -> set[str]:
        missing = ids - self._known
        if missing:
            # A revoked device is unknown (the broker refuses it; a replica that knew it before keeps it until restart).
            self._known.update(s.scalars(select(Device.id).where(Device.id.in_(missing), Device.revoked_at.is_(None))))
        return ids & self._known

    def _store(self, parsed: list[Parsed], s: Session) -> Tally[str]:
        # Status and job updates first, in order (the bridge puts them at the head of a batch):
        # telemetry or an alert after an `offline` last will means the device is back.
        # Alerts become alert events one by one (fleet/alert_events.py), each in its own savepoint.
        firsts = [p for p in parsed if p.kind in ("status", "alerts")]
        if firsts:  # their devices locked in id order, as in every replica; then applied in arrival order
            ids = sorted({p.device_id for p in firsts})
            s.execute(select(Device.id).where(Device.id.in_(ids)).order_by(Device.id).with_for_update())
        outcomes: Tally[str] = Tally(self._isolated(s, p) for p in firsts)
        applied = self._job_updates(s, [p for p in parsed if p.kind == "jobs"], outcomes)
        fresh = self._insert_telemetry(s, [p for p in parsed if p.kind == "telemetry"], outcomes)
        for p in fresh:
            self._observe_drift(s, p)
        outcomes["telemetry"] += len(fresh)
        reports = [(p.device_id, p.body, p.message.received_at) for p in parsed if isinstance(p.body, ShadowReport)]
        shadowed = set(shadow.store_reports(s, reports, outcomes))
        # A job update marks its device online unless the batch also holds its status (a last will
        # after the update must win).
        statused = {p.device_id for p in parsed if p.kind == "status"}
        seen = [p for p in parsed if p.kind == "shadow" and p.device_id in shadowed and p.device_id not in statused]
        self._mark_seen(s, fresh + seen + [p for p in applied if p.device_id not in statused])
        return outcomes

    def _job_updates(self, s: Session, jobs: list[Parsed], outcomes: Tally[str]) -> list[Parsed]:
        """The batch's job updates in one go (rollouts.apply_job_updates: a statement or two per job
        instead of several per update); returns those applied. Should the database refuse the batch,
        each update is tried alone, so only the one it refuses is dropped."""
        if not jobs:
            return []
        savepoint = s.begin_nested()
        try:
            updates = [(p.device_id, p.job, p.body) for p in jobs if isinstance(p.body, JobUpdate)]
            known = apply_job_updates(self.fleet, s, updates)
            s.flush()
            savepoint.commit()
        except OperationalError:
            savepoint.rollback()
            raise  # deadlock, lost connection: the whole batch is retried, nothing is acknowledged
        except Exception:  # noqa: BLE001 - one update the database refuses: find it, keep the others
            savepoint.rollback()
            alone = [(p, self._isolated(s, p)) for p in jobs]
            outcomes.update(outcome for _, outcome in alone)
            return [p for p, outcome in alone if outcome == "jobs"]
        outcomes.update("jobs" if ok else "dropped_unknown_job" for ok in known)
        return [p for p, ok in zip(jobs, known) if ok]

    def _insert_telemetry(self, s: Session, telemetry: list[Parsed], outcomes: Tally[str]) -> list[Parsed]:
        """Insert every telemetry message not stored before; returns those that were new."""
        seen: set[tuple[str, str]] = set()
        rows: list[Parsed] = []
        for p in telemetry:
            key = (p.device_id, p.body.id) if p.body and p.body.id else None
            if key in seen:
                outcomes["duplicate"] += 1  # the same message twice in one batch
                continue
            if key is not None:
                seen.add(key)
            rows.append(p)
        if not rows:
            return []
        savepoint = s.begin_nested()
        try:
            inserted = insert_or_ignore(s, Telemetry, ["device_id", "message_id"], [_row(p) for p in rows])
            savepoint.commit()
        except Exception:  # noqa: BLE001 - one row the database refuses: find it, keep the others
            savepoint.rollback()
            return self._insert_one_by_one(s, rows, outcomes)
        new = {key for key in inserted if key[1] is not None}
        fresh = [p for p in rows if p.body and (p.body.id is None or (p.device_id, p.body.id) in new)]
        outcomes["duplicate"] += len(rows) - len(fresh)
        return fresh

    def _insert_one_by_one(self, s: Session, rows: list[Parsed], outcomes: Tally[str]) -> list[Parsed]:
        fresh = []
        for p in rows:
            savepoint = s.begin_nested()
            try:
                inserted = insert_or_ignore(s, Telemetry, ["device_id", "message_id"], [_row(p)])
                savepoint.commit()
            except Exception as exc:  # noqa: BLE001 - whatever a device sent, only this message is lost
                savepoint.rollback()
                log.debug("dropping telemetry the database refused on %s: %s", p.message.topic, exc)
                outcomes["dropped_malformed"] += 1
                continue
            if inserted:
                fresh.append(p)
            else:
                outcomes["duplicate"] += 1
        return fresh

    def _observe_drift(self, s: Session, p: Parsed) -> None:
        assert isinstance(p.body, TelemetryMessage)
        if p.body.drift is None:  # counted as drift_no_summary / drift_malformed, nothing to write
            self.drift.observe(s, p.device_id, p.body, p.message.received_at)
            return
        savepoint = s.begin_nested()
        try:
            self.drift.observe(s, p.device_id, p.body, p.message.received_at)
            savepoint.commit()
        except Exception:  # noqa: BLE001 - the drift judgement is lost, the health numbers are kept
            savepoint.rollback()
            log.exception("drift summary of %s not judged", p.message.topic)
            self.drift.counters["drift_failed"] += 1

    @staticmethod
    def _mark_seen(s: Session, seen: list[Parsed]) -> None:
        """Telemetry and job updates mark their device seen, and online unless a later message of it
        (its last will) said otherwise (fleet/order.py): one UPDATE per device and batch."""
        latest: dict[str, float] = {}
        place: dict[str, int | None] = {}
        for p in seen:
            latest[p.device_id] = max(latest.get(p.device_id, 0.0), p.message.received_at)
            order = p.body.order if p.body else None
            # An unnumbered message (an older agent) marks its device online whatever came before.
            numbered = order is not None and place.get(p.device_id, 0) is not None
            place[p.device_id] = max(order or 0, place.get(p.device_id) or 0) if numbered else None
        if not latest:
            return
        s.flush()  # changes to Device objects so far go first; the objects are expired after
        table = Device.__table__
        at, numbered_at = bindparam("at"), bindparam("order", type_=BigInteger)
        s.execute(
            table.update()
            .where(table.c.id == bindparam("device"))
            .values(
                status=case((later_sql(table.c.status_order, numbered_at), "online"), else_=table.c.status),
                status_order=advanced_sql(table.c.status_order, numbered_at),
                last_seen=case(
                    (table.c.last_seen.is_(None), at), (table.c.last_seen < at, at), else_=table.c.last_seen
                ),
            ),
            # one lock order in every replica
            [{"device": d, "at": t, "order": place[d]} for d, t in sorted(latest.items())],
        )
        for obj in list(s.identity_map.values()):
            if isinstance(obj, Device):
                s.expire(obj)  # read again if needed: the update above changed their rows

    def _isolated(self, s: Session, p: Parsed) -> str:
        savepoint = s.begin_nested()
        try:
            outcome = self._apply(s, p)
            s.flush()  # the database's own refusals (overflow, types) surface here, inside the savepoint
            savepoint.commit()
            return outcome
        except OperationalError:
            savepoint.rollback()
            raise  # not the message's fault (deadlock, lost connection): the batch is retried, not acknowledged
        except Exception as exc:  # noqa: BLE001 - whatever a device sent, only this message is lost
            savepoint.rollback()
            log.debug("dropping malformed message on %s: %s", p.message.topic, exc)
            return "dropped_malformed"

    def _apply(self, s: Session, p: Parsed) -> str:
        # Locked and read afresh: another replica may be storing a message of this device, and the
        # later of the two must be judged against what the other wrote (fleet/order.py).
        device = s.get(Device, p.device_id, with_for_update=True, populate_existing=True)
        if isinstance(p.body, StatusMessage):
            self._status(device, p.body)
        elif isinstance(p.body, JobUpdate) and not apply_job_update(self.fleet, s, p.device_id, p.job, p.body):
            return "dropped_unknown_job"
        elif isinstance(p.body, AlertMessage) and later(device.status_order, p.body.order):
            device.status = "online"  # an alert: the device is seen
            device.status_order = advanced(device.status_order, p.body.order)
        assert p.body is not None
        alert_events.observe(s, device, p.body, p.message.received_at)  # alert events, watched labels
        device.last_seen = max(device.last_seen or 0.0, p.message.received_at)
        return p.kind

    @staticmethod
    def _status(device: Device, msg: StatusMessage) -> None:
        """Apply a status unless a later message of the device already set what it says (fleet/order.py)."""
        if later(device.status_order, msg.order):
            device.status, device.status_order = msg.state, advanced(device.status_order, msg.order)
        says = msg.model is not None or msg.agent_version is not None or msg.watching is not None
        if not says or not later(device.model_order, msg.order):
            return  # a last will says nothing of the model; an earlier message's word is not news
        device.model_order = advanced(device.model_order, msg.order)
        if msg.model is not None:
            device.model_name, device.model_version = msg.model.name, msg.model.version
        if msg.state == "online" and msg.agent_version is not None:
            device.agent_version = msg.agent_version
            # Agents before 0.2 do not say; they cannot update themselves anyway.
            device.arch = msg.arch if msg.arch is not None else device.arch
            device.features = msg.features  # what it can run ("shadow"); an agent that does not say has none
        if msg.watching is not None:  # the labels Home Assistant shows (fleet/homeassistant.py)
            device.watching = list(msg.watching)

    def _count_unknown(self, s: Session, new: int) -> None:
        dropped = self.counters["dropped_unknown_device"] + new
        row = s.get(Counter, "dropped_unknown_device")
        if row is None:
            s.add(Counter(name="dropped_unknown_device", value=dropped))
        elif new:
            row.value = max(row.value, dropped)

    def stats(self) -> dict:
        return dict(self.counters) | dict(self.drift.counters)


def _row(p: Parsed) -> dict:
    msg = p.body
    assert isinstance(msg, TelemetryMessage)
    return {
        "device_id": p.device_id,
        "message_id": msg.id,
        "received_at": p.message.received_at,
        "model_name": msg.model and msg.model.name,
        "model_version": msg.model and msg.model.version,
        "frames": msg.frames_ok,
        "alerts": msg.alert_count,
        "confidence_mean": msg.confidence_mean,
        "latency_p95_ms": msg.latency_p95_ms,
    }
