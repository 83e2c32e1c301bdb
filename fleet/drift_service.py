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
from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, String, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgefleet.errors import BadInputError, EdgefleetError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Base, Build, Device, ModelGroup, ModelVersion, Telemetry, now
from edgefleet.fleet.drift import AlarmState, Baseline, DriftConfig, judge, merge_summaries, parse_baseline, parse_summary, step

log = logging.getLogger("edgefleet.fleet.drift")
ALARM_SCHEMA = 1
WEBHOOK_ENV = "EDGEFLEET_FLEET_DRIFT_WEBHOOK"
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
    __table_args__ = (UniqueConstraint("device_id", "model_name", "model_version"),)
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
        self._alarms: dict[tuple[str, str, str], DriftAlarm] = {}  # this batch's alarm rows, flushed or not

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
        self._batch, self._alarms = [], {}
        try:
            yield
            changes = self._batch
        finally:
            self._batch, self._alarms = None, {}
        self.announce(changes)

    def observe(self, s: Session, device_id: str, body: dict, at: float) -> None:
        """Judge the drift summary of one telemetry body (never raises for what a device sends)."""
        model = body.get("model") if isinstance(body.get("model"), dict) else {}
        if not isinstance(body.get("drift"), dict) or not model.get("name") or model.get("version") is None:
            self.counters["drift_no_summary"] += 1
            return
        name, version = str(model["name"]), str(model["version"])
        try:
            window = parse_summary(body["drift"])
        except BadInputError:
            self.counters["drift_malformed"] += 1
            return
        if window.frames < self.config.min_frames:
            self.counters["drift_too_few_frames"] += 1
            return
        device = s.get(Device, device_id)
        baseline = self.baseline_for(s, name, version, device.target if device else "")
        if baseline is None:
            self.counters["drift_no_baseline"] += 1
            return
        try:
            verdict = judge(baseline.summary, window, self.config)
        except BadInputError:
            self.counters["drift_malformed"] += 1
            return
        key = (device_id, name, version)
        alarm = self._alarms.get(key)
        if alarm is None:
            with s.no_autoflush:  # one flush per batch, not per message (10x the ingest rate)
                alarm = s.scalar(select(DriftAlarm).where(DriftAlarm.device_id == device_id, DriftAlarm.model_name == name, DriftAlarm.model_version == version))
            if alarm is None:
                alarm = DriftAlarm(device_id=device_id, model_name=name, model_version=version, state="ok", over_streak=0, under_streak=0)
                s.add(alarm)
            self._alarms[key] = alarm
        new, change = step(AlarmState(alarm.state, alarm.over_streak, alarm.under_streak), verdict.over, self.config)
        alarm.state, alarm.over_streak, alarm.under_streak = new.state, new.over_streak, new.under_streak
        alarm.score, alarm.feature, alarm.updated_at = verdict.score, verdict.worst, at
        distances = {f: {"psi": d.psi, "js": d.js} for f, d in verdict.distances.items()}
        s.add(DriftWindow(device_id=device_id, model_name=name, model_version=version, received_at=at, frames=window.frames,
                          score=verdict.score, feature=verdict.worst, over=verdict.over, state=new.state, distances=distances,
                          summary=window.model_dump(mode="json")))
        self.counters["drift_windows"] += 1
        if change:
            if change == "raised":
                alarm.raised_at, alarm.cleared_at = at, None
            else:
                alarm.cleared_at = at
            s.add(DriftEvent(at=at, device_id=device_id, model_name=name, model_version=version, event=change, score=verdict.score, feature=verdict.worst))
            self.counters[f"drift_alarms_{change}"] += 1
            payload = {"schema": ALARM_SCHEMA, "type": "drift_alarm", "event": change, "device": device_id, "model": {"name": name, "version": version},
                       "state": new.state, "metric": self.config.metric, "threshold": self.config.threshold, "score": verdict.score, "feature": verdict.worst, "at": at}
            if self._batch is not None:
                self._batch.append(payload)

    # -- announcing -----------------------------------------------------------------------
    def announce(self, changes: list[dict]) -> None:
        for payload in changes:
            data = json.dumps(payload).encode()
            if self.publish is not None:
                try:
                    self.publish(f"edgefleet/v1/{payload['device']}/drift", data)
                except Exception:  # the broker being away must not lose the stored alarm
                    log.exception("could not publish a drift alarm for %s", payload["device"])
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


def drift_overview(fleet: Fleet, monitor: DriftMonitor, device: str | None = None, state: str | None = None) -> dict:
    """The drift config, every alarm (optionally of one device / in one state), and the fleet-wide view."""
    cfg = fleet.config.drift
    with fleet.session() as s:
        q = select(DriftAlarm).order_by(DriftAlarm.device_id, DriftAlarm.model_name, DriftAlarm.model_version)
        if device:
            q = q.where(DriftAlarm.device_id == device)
        if state:
            q = q.where(DriftAlarm.state == state)
        rows = [alarm_dict(a) for a in s.scalars(q)]
    return {"config": {"metric": cfg.metric, "threshold": cfg.threshold, "windows_to_alarm": cfg.windows_to_alarm,
                       "windows_to_clear": cfg.windows_to_clear, "features": list(cfg.features)}, "alarms": rows, "fleet": fleet_drift(fleet, monitor)}


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
            out.append({"model": {"name": name, "version": version}, "devices": len(ws), "frames": total.frames, "score": verdict.score,
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
    """The newest `limit` raised/cleared events (newest first)."""
    with fleet.session() as s:
        rows = s.scalars(select(DriftEvent).order_by(DriftEvent.id.desc()).limit(limit))
        return [{"at": e.at, "device": e.device_id, "model": {"name": e.model_name, "version": e.model_version}, "event": e.event,
                 "score": e.score, "feature": e.feature} for e in rows]


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
