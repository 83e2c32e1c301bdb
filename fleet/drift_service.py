"""Drift in the running fleet: telemetry windows -> baseline comparison -> alarms.

For every telemetry message with a drift summary, `DriftMonitor.observe` (called by the
MQTT ingest, in its transaction) finds the baseline of the device's model version (the
`baseline.json` of its package in the store), judges the window (edgefleet.fleet.drift),
stores it in `drift_windows` and advances the alarm of (device, model, version) in
`drift_alarms`. Raised and cleared alarms are kept in `drift_events` and, once the
transaction has committed, announced:

    MQTT   edgefleet/v1/<device>/drift   fleet -> subscribers, QoS 1, retained (the last change)
    HTTP   POST <webhook> with the same JSON, if a webhook is configured

Alarm payload (schema 1): {"schema": 1, "type": "drift_alarm", "event": "raised"|"cleared",
"device", "model": {"name", "version"}, "state", "metric", "threshold", "score",
"feature", "at"}.

REST (scope read-only): GET /api/v1/drift, /api/v1/drift/windows, /api/v1/drift/events and
/api/v1/telemetry (the health numbers over time, for the dashboard's plots).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.contracts.mqtt import TelemetryMessage
from edgefleet.errors import BadInputError, EdgefleetError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Base, Build, Device, ModelGroup, ModelVersion, Telemetry, now
from edgefleet.fleet.drift import (AlarmState, Baseline, DriftConfig, DriftSummary, check_edges, judge,
                                   merge_summaries, parse_baseline, parse_summary, step)

log = logging.getLogger("edgefleet.fleet.drift")
ALARM_SCHEMA = 1
WEBHOOK_ENV = "EDGEFLEET_FLEET_DRIFT_WEBHOOK"
FLEET_TOPIC = "edgefleet/v1/fleet/drift"  # "fleet" is reserved: no device can take it (fleet/devices.py)
Publisher = Callable[[str, bytes], None]  # (topic, payload): QoS 1, retained


class DriftWindow(Base):
    """One judged telemetry window."""

    __tablename__ = "drift_windows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[float] = mapped_column(Float, default=now, index=True)
    frames: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    feature: Mapped[str | None] = mapped_column(String(32), nullable=True)
    over: Mapped[bool] = mapped_column(Boolean)
    state: Mapped[str] = mapped_column(String(16))  # the alarm's state after this window
    distances: Mapped[dict[str, Any]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)  # the window itself, for the fleet-wide view


class DriftAlarm(Base):
    """The alarm state machine of one (device, model, version)."""

    __tablename__ = "drift_alarms"
    __table_args__ = (UniqueConstraint("device_id", "model_name", "model_version"),
                      Index("ix_drift_alarms_version_updated", "model_name", "model_version", "updated_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="ok")
    over_streak: Mapped[int] = mapped_column(Integer, default=0)
    under_streak: Mapped[int] = mapped_column(Integer, default=0)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    feature: Mapped[str | None] = mapped_column(String(32), nullable=True)
    raised_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cleared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class DriftEvent(Base):
    """Every raised and cleared alarm, in order."""

    __tablename__ = "drift_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    feature: Mapped[str | None] = mapped_column(String(32), nullable=True)


class DriftCollecting(Base):
    """Frames of (device, model, version) pooled towards its next judged window (frames 0: none)."""

    __tablename__ = "drift_collecting"
    __table_args__ = (UniqueConstraint("device_id", "model_name", "model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # the device's clock (telemetry ts)
    updated_at: Mapped[float] = mapped_column(Float, default=now)  # the fleet's clock
    messages: Mapped[int] = mapped_column(Integer, default=0)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class DriftFleetAlarm(Base):
    """The fleet-wide alarm state machine of one (model, version): the same table as a device's."""

    __tablename__ = "drift_fleet_alarms"
    __table_args__ = (UniqueConstraint("model_name", "model_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="ok")
    over_streak: Mapped[int] = mapped_column(Integer, default=0)
    under_streak: Mapped[int] = mapped_column(Integer, default=0)
    devices: Mapped[int] = mapped_column(Integer, default=0)
    drifting: Mapped[int] = mapped_column(Integer, default=0)
    raised_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    cleared_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float, default=now)


class DriftFleetEvent(Base):
    """Every raised and cleared fleet-wide alarm, in order."""

    __tablename__ = "drift_fleet_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Float, default=now, index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(16))
    devices: Mapped[int] = mapped_column(Integer)
    drifting: Mapped[int] = mapped_column(Integer)


def window_span(msg: TelemetryMessage, received_at: float) -> tuple[float, float]:
    """(start, end) of a telemetry window on the device's clock: its ts minus window_s. Only
    differences between one device's windows are used, so a skewed device clock does no harm;
    without a usable ts the fleet's receive time stands in."""
    from datetime import datetime

    try:
        end = datetime.fromisoformat(str(msg.ts).replace("Z", "+00:00")).timestamp()
    except ValueError:
        end = received_at
    return end - (msg.window_s or 0.0), end


def alarm_topic(payload: dict) -> str:
    """A device's alarms on its own topic; fleet-wide ones under the fleet's reserved identity."""
    if payload["type"] == "fleet_drift_alarm":
        return FLEET_TOPIC
    return f"edgefleet/v1/{payload['device']}/drift"


def webhook_url(config: DriftConfig) -> str | None:
    url = os.environ.get(WEBHOOK_ENV)
    if url is None and config.webhook_url_file:
        try:
            url = Path(config.webhook_url_file).read_text().strip()
        except OSError as exc:
            raise BadInputError(f"cannot read drift.webhook_url_file {config.webhook_url_file}: {exc.strerror}", "check the path in the fleet config") from None
    return url or None


class DriftMonitor:
    def __init__(self, fleet: Fleet, publish: Publisher | None = None) -> None:
        self.fleet = fleet
        self.config: DriftConfig = fleet.config.drift
        self.publish = publish
        self.webhook = webhook_url(self.config)
        self.counters: Tally[str] = Tally()
        self._baselines: dict[tuple[str, str], Baseline | None] = {}  # (model, version) once a build exists
        self._batch: list[dict] | None = None
        # This batch's rows, flushed or not (see _cached).
        self._alarms: dict[tuple[str, str, str], DriftAlarm | None] = {}
        self._collecting: dict[tuple[str, str, str], DriftCollecting | None] = {}
        self._fleet_alarms: dict[tuple[str, str], DriftFleetAlarm | None] = {}
        self._versions: dict[tuple[str, str], dict[str, DriftAlarm]] = {}

    def use_mqtt(self, client) -> None:
        """Publish alarms through the fleet's paho client (QoS 1, retained: the last change per device)."""
        self.publish = lambda topic, data: client.publish(topic, data, qos=1, retain=True)

    # -- baselines ------------------------------------------------------------------------
    def _read_baseline(self, build: Build) -> Baseline | None:
        from edgefleet.package import open_package

        name = (build.manifest or {}).get("baseline")
        if not name:
            return None
        tmp = Path(tempfile.mkdtemp(prefix="edgefleet-baseline-"))
        try:
            local = self.fleet.store.path(build.store_key)
            if local is None:  # S3: fetch the package once
                local = tmp / "package.tar.gz"
                store = self.fleet.store
                store.client.download_file(store.bucket, store._key(build.store_key), str(local))
            with open_package(local, self.fleet.trusted, dest=tmp / "pkg") as opened:
                return parse_baseline(json.loads(opened.path(name).read_text()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def baseline_for(self, s: Session, model_name: str, version: str, target: str) -> Baseline | None:
        key = (model_name, version)
        if key in self._baselines:
            return self._baselines[key]
        with s.no_autoflush:
            builds = s.scalars(
                select(Build).join(ModelVersion, ModelVersion.id == Build.model_version_id).join(ModelGroup, ModelGroup.id == ModelVersion.group_id)
                .where(ModelGroup.name == model_name, ModelVersion.version == version)
            ).all()
        if not builds:
            return None  # not uploaded (yet): asked again next time
        build = next((b for b in builds if b.target == target), builds[0])  # the builds of a version share one source model and baseline
        try:
            self._baselines[key] = self._read_baseline(build)
        except (EdgefleetError, OSError, ValueError) as exc:
            log.warning("no usable baseline in build %s of %s %s: %s", build.id, model_name, version, exc)
            self._baselines[key] = None
        return self._baselines[key]

    # -- ingest ---------------------------------------------------------------------------
    @contextmanager
    def batch(self) -> Iterator[None]:
        """Wrap one ingest transaction: alarm changes are announced only if it commits."""
        self._batch, self._alarms, self._collecting, self._fleet_alarms, self._versions = [], {}, {}, {}, {}
        try:
            yield
            changes = self._batch
        finally:
            self._batch, self._alarms, self._collecting, self._fleet_alarms, self._versions = None, {}, {}, {}, {}
        self.announce(changes)

    def observe(self, s: Session, device_id: str, msg: TelemetryMessage, at: float) -> None:
        """Pool the drift summary of one telemetry message, and judge the pool once it holds enough
        frames (never raises for what a device sends)."""
        if msg.drift_error is not None:
            self.counters["drift_malformed"] += 1
            return
        if msg.drift is None or msg.model is None:
            self.counters["drift_no_summary"] += 1
            return
        name, version, part = msg.model.name, msg.model.version, msg.drift
        device = s.get(Device, device_id)
        baseline = self.baseline_for(s, name, version, device.target if device else "")
        if baseline is None:
            self.counters["drift_no_baseline"] += 1
            return
        try:
            check_edges(baseline.summary, part)
        except BadInputError:
            self.counters["drift_malformed"] += 1
            return
        window = self._collect(s, (device_id, name, version), part, window_span(msg, at), at)
        if window is None:
            return
        verdict = judge(baseline.summary, window, self.config)
        self._record(s, (device_id, name, version), window, verdict, at)
        self._step_fleet(s, name, version, at)

    def _cached(self, cache: dict, key: tuple, load: Callable[[], Any]) -> Any:
        """This batch's row for `key`: rows added in the batch are not flushed yet, so a query
        would miss them (one flush per batch, not per message: 10x the ingest rate)."""
        if key not in cache:
            cache[key] = load()
        return cache[key]

    def _collecting_row(self, s: Session, key: tuple[str, str, str]) -> DriftCollecting | None:
        device_id, name, version = key
        q = select(DriftCollecting).where(DriftCollecting.device_id == device_id, DriftCollecting.model_name == name,
                                          DriftCollecting.model_version == version)
        with s.no_autoflush:
            return self._cached(self._collecting, key, lambda: s.scalar(q))

    def _collect(self, s: Session, key: tuple[str, str, str], part: DriftSummary, span: tuple[float, float],
                 at: float) -> DriftSummary | None:
        """Add one telemetry window to the device's pool; the pooled window once it holds min_frames."""
        row = self._collecting_row(s, key)
        if (row is None or not row.frames) and part.frames >= self.config.min_frames:
            return part  # large enough on its own: no pool row is written
        if row is None:
            row = DriftCollecting(device_id=key[0], model_name=key[1], model_version=key[2], messages=0, frames=0)
            s.add(row)
            self._collecting[key] = row
        if row.frames and span[1] - row.started_at > self.config.max_age_s:
            self.counters["drift_window_expired"] += 1  # too old to judge with the present: start afresh
            row.frames = 0
        pooled = merge_summaries([parse_summary(row.summary), part]) if row.frames else part
        if not row.frames:
            row.started_at, row.messages = span[0], 0
        row.updated_at = at
        if pooled.frames >= self.config.min_frames:
            row.frames, row.messages, row.summary, row.started_at = 0, 0, None, None
            return pooled
        row.frames, row.messages, row.summary = pooled.frames, row.messages + 1, pooled.model_dump(mode="json")
        self.counters["drift_collecting"] += 1
        return None

    def _alarm_row(self, s: Session, key: tuple[str, str, str]) -> DriftAlarm:
        device_id, name, version = key
        q = select(DriftAlarm).where(DriftAlarm.device_id == device_id, DriftAlarm.model_name == name,
                                     DriftAlarm.model_version == version)
        with s.no_autoflush:
            alarm = self._cached(self._alarms, key, lambda: s.scalar(q))
        if alarm is None:
            alarm = DriftAlarm(device_id=device_id, model_name=name, model_version=version, state="ok", over_streak=0,
                               under_streak=0)
            s.add(alarm)
            self._alarms[key] = alarm
        return alarm

    def _record(self, s: Session, key: tuple[str, str, str], window: DriftSummary, verdict, at: float) -> None:
        """Store a judged window and advance its device's alarm."""
        device_id, name, version = key
        alarm = self._alarm_row(s, key)
        new, change = step(AlarmState(alarm.state, alarm.over_streak, alarm.under_streak), verdict.over, self.config)
        alarm.state, alarm.over_streak, alarm.under_streak = new.state, new.over_streak, new.under_streak
        alarm.score, alarm.feature, alarm.updated_at = verdict.score, verdict.worst, at
        distances = {f: {"psi": d.psi, "js": d.js} for f, d in verdict.distances.items()}
        s.add(DriftWindow(device_id=device_id, model_name=name, model_version=version, received_at=at, frames=window.frames,
                          score=verdict.score, feature=verdict.worst, over=verdict.over, state=new.state, distances=distances,
                          summary=window.model_dump(mode="json")))
        self.counters["drift_windows"] += 1
        if not change:
            return
        if change == "raised":
            alarm.raised_at, alarm.cleared_at = at, None
        else:
            alarm.cleared_at = at
        s.add(DriftEvent(at=at, device_id=device_id, model_name=name, model_version=version, event=change,
                         score=verdict.score, feature=verdict.worst))
        self.counters[f"drift_alarms_{change}"] += 1
        self._announce_later({"schema": ALARM_SCHEMA, "type": "drift_alarm", "event": change, "device": device_id,
                              "model": {"name": name, "version": version}, "state": new.state,
                              "metric": self.config.metric, "threshold": self.config.threshold, "score": verdict.score,
                              "feature": verdict.worst, "at": at})

    def _announce_later(self, payload: dict) -> None:
        if self._batch is not None:
            self._batch.append(payload)

    # -- the fleet-wide alarm ---------------------------------------------------------------
    def _version_alarms(self, s: Session, name: str, version: str, since: float) -> list[DriftAlarm]:
        """The device alarms of a model version updated since `since`, this batch's included."""
        q = select(DriftAlarm).where(DriftAlarm.model_name == name, DriftAlarm.model_version == version,
                                     DriftAlarm.updated_at >= since)
        with s.no_autoflush:  # once per batch: the rows it loads are the ones this batch updates
            rows = dict(self._cached(self._versions, (name, version), lambda: {a.device_id: a for a in s.scalars(q)}))
        rows |= {key[0]: a for key, a in self._alarms.items() if a is not None and key[1:] == (name, version)}
        return [a for a in rows.values() if a.updated_at >= since and a.score is not None]

    def _step_fleet(self, s: Session, name: str, version: str, at: float) -> None:
        """Advance the fleet-wide alarm of a model version by one judged device window: over when
        at least fleet_share of its recently seen devices have a newest window over the threshold."""
        cfg = self.config
        alarms = self._version_alarms(s, name, version, at - cfg.fleet_horizon_s)
        if len(alarms) < cfg.fleet_min_devices:
            return
        drifting = sum(a.score > cfg.threshold for a in alarms)
        q = select(DriftFleetAlarm).where(DriftFleetAlarm.model_name == name, DriftFleetAlarm.model_version == version)
        with s.no_autoflush:
            row = self._cached(self._fleet_alarms, (name, version), lambda: s.scalar(q))
        if row is None:
            row = DriftFleetAlarm(model_name=name, model_version=version, state="ok", over_streak=0, under_streak=0)
            s.add(row)
            self._fleet_alarms[(name, version)] = row
        over = drifting >= cfg.fleet_share * len(alarms)
        new, change = step(AlarmState(row.state, row.over_streak, row.under_streak), over, cfg)
        row.state, row.over_streak, row.under_streak = new.state, new.over_streak, new.under_streak
        row.devices, row.drifting, row.updated_at = len(alarms), drifting, at
        if not change:
            return
        if change == "raised":
            row.raised_at, row.cleared_at = at, None
        else:
            row.cleared_at = at
        s.add(DriftFleetEvent(at=at, model_name=name, model_version=version, event=change, devices=len(alarms),
                              drifting=drifting))
        self.counters[f"drift_fleet_alarms_{change}"] += 1
        self._announce_later({"schema": ALARM_SCHEMA, "type": "fleet_drift_alarm", "event": change,
                              "model": {"name": name, "version": version}, "state": new.state, "devices": len(alarms),
                              "drifting": drifting, "share": round(drifting / len(alarms), 4),
                              "fleet_share": cfg.fleet_share, "metric": cfg.metric, "threshold": cfg.threshold,
                              "at": at})

    # -- announcing -----------------------------------------------------------------------
    def announce(self, changes: list[dict]) -> None:
        for payload in changes:
            data = json.dumps(payload).encode()
            if self.publish is not None:
                try:
                    self.publish(alarm_topic(payload), data)
                except Exception:  # the broker being away must not lose the stored alarm
                    log.exception("could not publish a drift alarm on %s", alarm_topic(payload))
            if self.webhook:
                threading.Thread(target=self._post, args=(data,), name="drift-webhook", daemon=True).start()

    def _post(self, data: bytes) -> None:
        try:
            resp = httpx.post(self.webhook, content=data, headers={"Content-Type": "application/json"}, timeout=self.config.webhook_timeout_s)
            resp.raise_for_status()
            self.counters["drift_webhook_sent"] += 1
        except httpx.HTTPError as exc:
            self.counters["drift_webhook_failed"] += 1
            log.warning("drift webhook failed: %s", exc)


# ---- queries (the REST API and the dashboard) -------------------------------------------

def alarm_dict(a: DriftAlarm) -> dict:
    return {"device": a.device_id, "model": {"name": a.model_name, "version": a.model_version}, "state": a.state, "score": a.score,
            "feature": a.feature, "raised_at": a.raised_at, "cleared_at": a.cleared_at, "updated_at": a.updated_at}


def collecting_dict(c: DriftCollecting, target: int) -> dict:
    return {"device": c.device_id, "model": {"name": c.model_name, "version": c.model_version}, "frames": c.frames,
            "target": target, "messages": c.messages, "updated_at": c.updated_at}


def fleet_alarm_dict(a: DriftFleetAlarm) -> dict:
    return {"model": {"name": a.model_name, "version": a.model_version}, "state": a.state, "devices": a.devices,
            "drifting": a.drifting, "share": round(a.drifting / a.devices, 4) if a.devices else None,
            "raised_at": a.raised_at, "cleared_at": a.cleared_at, "updated_at": a.updated_at}


def drift_overview(fleet: Fleet, monitor: DriftMonitor, device: str | None = None, state: str | None = None) -> dict:
    """The drift config, every alarm (optionally of one device / in one state), the windows still
    collecting frames, the fleet-wide alarms and the fleet-wide view."""
    cfg = fleet.config.drift
    with fleet.session() as s:
        q = select(DriftAlarm).order_by(DriftAlarm.device_id, DriftAlarm.model_name, DriftAlarm.model_version)
        c = select(DriftCollecting).where(DriftCollecting.frames > 0,
                                          DriftCollecting.updated_at >= fleet.clock() - cfg.max_age_s)
        if device:
            q, c = q.where(DriftAlarm.device_id == device), c.where(DriftCollecting.device_id == device)
        if state:
            q = q.where(DriftAlarm.state == state)
        rows = [alarm_dict(a) for a in s.scalars(q)]
        collecting = [collecting_dict(r, cfg.min_frames) for r in s.scalars(c.order_by(DriftCollecting.device_id))]
        f = select(DriftFleetAlarm).order_by(DriftFleetAlarm.model_name, DriftFleetAlarm.model_version)
        fleet_alarms = [fleet_alarm_dict(a) for a in s.scalars(f)]
    config = {"metric": cfg.metric, "threshold": cfg.threshold, "windows_to_alarm": cfg.windows_to_alarm,
              "windows_to_clear": cfg.windows_to_clear, "features": list(cfg.features), "min_frames": cfg.min_frames,
              "max_age_s": cfg.max_age_s, "fleet_share": cfg.fleet_share, "fleet_min_devices": cfg.fleet_min_devices}
    return {"config": config, "alarms": rows, "collecting": collecting, "fleet_alarms": fleet_alarms,
            "fleet": fleet_drift(fleet, monitor, cfg.fleet_horizon_s)}


def fleet_drift(fleet: Fleet, monitor: DriftMonitor, horizon_s: float = 600.0) -> list[dict]:
    """The fleet as a whole: per model version, the newest judged window of every device seen in
    the last `horizon_s` seconds, summed into one window and judged against the baseline."""
    cfg = fleet.config.drift
    since = fleet.clock() - horizon_s
    with fleet.session() as s:
        newest = select(DriftWindow.device_id, DriftWindow.model_name, DriftWindow.model_version, func.max(DriftWindow.id).label("id")) \
            .where(DriftWindow.received_at >= since).group_by(DriftWindow.device_id, DriftWindow.model_name, DriftWindow.model_version).subquery()
        rows = s.scalars(select(DriftWindow).join(newest, newest.c.id == DriftWindow.id)).all()
        groups: dict[tuple[str, str], list[DriftWindow]] = {}
        for w in rows:
            groups.setdefault((w.model_name, w.model_version), []).append(w)
        out = []
        for (name, version), ws in sorted(groups.items()):
            baseline = monitor.baseline_for(s, name, version, "")
            if baseline is None:
                continue
            total = merge_summaries([parse_summary(w.summary) for w in ws])
            verdict = judge(baseline.summary, total, cfg)
            alarm = s.scalar(select(DriftFleetAlarm.state).where(DriftFleetAlarm.model_name == name,
                                                                 DriftFleetAlarm.model_version == version))
            out.append({"model": {"name": name, "version": version}, "state": alarm or "ok", "devices": len(ws),
                        "frames": total.frames, "score": verdict.score,
                        "feature": verdict.worst, "over": verdict.over, "distances": {f: {"psi": d.psi, "js": d.js} for f, d in verdict.distances.items()}})
    return out


def drift_windows(fleet: Fleet, device: str | None = None, since: float | None = None, limit: int = 500) -> list[dict]:
    """The newest `limit` windows (oldest first)."""
    with fleet.session() as s:
        q = select(DriftWindow).order_by(DriftWindow.id.desc()).limit(limit)
        if device:
            q = q.where(DriftWindow.device_id == device)
        if since is not None:
            q = q.where(DriftWindow.received_at >= since)
        rows = list(s.scalars(q))[::-1]
        return [{"device": w.device_id, "model": {"name": w.model_name, "version": w.model_version}, "at": w.received_at, "frames": w.frames,
                 "score": w.score, "feature": w.feature, "over": w.over, "state": w.state, "distances": w.distances} for w in rows]


def drift_events(fleet: Fleet, limit: int = 100) -> list[dict]:
    """The newest `limit` raised/cleared events of devices (scope "device") and of the fleet-wide
    alarms (scope "fleet", device null), newest first."""
    with fleet.session() as s:
        rows = s.scalars(select(DriftEvent).order_by(DriftEvent.id.desc()).limit(limit))
        out = [{"at": e.at, "scope": "device", "device": e.device_id,
                "model": {"name": e.model_name, "version": e.model_version}, "event": e.event, "score": e.score,
                "feature": e.feature} for e in rows]
        fleet_rows = s.scalars(select(DriftFleetEvent).order_by(DriftFleetEvent.id.desc()).limit(limit))
        out += [{"at": e.at, "scope": "fleet", "device": None,
                 "model": {"name": e.model_name, "version": e.model_version}, "event": e.event, "devices": e.devices,
                 "drifting": e.drifting} for e in fleet_rows]
    return sorted(out, key=lambda e: e["at"], reverse=True)[:limit]


def telemetry_series(fleet: Fleet, device: str | None = None, since: float | None = None, limit: int = 500) -> list[dict]:
    """The newest `limit` telemetry rows (oldest first): frames, alerts, confidence, p95 latency."""
    with fleet.session() as s:
        q = select(Telemetry).order_by(Telemetry.id.desc()).limit(limit)
        if device:
            q = q.where(Telemetry.device_id == device)
        if since is not None:
            q = q.where(Telemetry.received_at >= since)
        rows = list(s.scalars(q))[::-1]
        return [{"device": t.device_id, "at": t.received_at, "model": {"name": t.model_name, "version": t.model_version}, "frames": t.frames,
                 "alerts": t.alerts, "confidence_mean": t.confidence_mean, "latency_p95_ms": t.latency_p95_ms} for t in rows]


def add_routes(app, fleet: Fleet, monitor: DriftMonitor | None = None) -> None:
    """The drift and telemetry endpoints (scope read-only), on the fleet's FastAPI app; `monitor`
    (the ingest's, whose baseline cache it shares) is made if not given."""
    monitor = monitor or DriftMonitor(fleet)
    from fastapi import Depends, Header, Query

    from edgefleet.fleet import auth

    def read_scope(authorization: str | None = Header(None)) -> str:
        token = authorization[7:] if authorization and authorization.lower().startswith("bearer ") else None
        return auth.authorize(fleet, token, "read-only")

    read = [Depends(read_scope)]

    @app.get("/api/v1/drift", dependencies=read)
    def get_drift(device: str | None = None, state: str | None = None) -> dict:
        return drift_overview(fleet, monitor, device, state)

    @app.get("/api/v1/drift/windows", dependencies=read)
    def get_windows(device: str | None = None, since: float | None = None, limit: int = Query(500, ge=1, le=5000)) -> list[dict]:
        return drift_windows(fleet, device, since, limit)

    @app.get("/api/v1/drift/events", dependencies=read)
    def get_events(limit: int = Query(100, ge=1, le=1000)) -> list[dict]:
        return drift_events(fleet, limit)

    @app.get("/api/v1/telemetry", dependencies=read)
    def get_telemetry(device: str | None = None, since: float | None = None, limit: int = Query(500, ge=1, le=5000)) -> list[dict]:
        return telemetry_series(fleet, device, since, limit)
