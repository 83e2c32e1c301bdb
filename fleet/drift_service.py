"""Drift in the running fleet: telemetry windows -> baseline comparison -> alarms.

For every telemetry message with a drift summary, `DriftMonitor.observe` (called by the
MQTT ingest, in its transaction) finds the baseline of the device's model version (the
`baseline.json` of its package in the store), judges the window (edgefleet.fleet.drift),
stores it in `drift_windows` and advances the alarm of (device, model, version) in
`drift_alarms`. Raised and cleared alarms are kept in `drift_events` and, once the
transaction has committed, announced:

    MQTT   edgefleet/v1/<device>/drift   fleet -> subscribers, QoS 1, retained (the last change)
    HTTP   POST <webhook> with the same JSON, if a webhook is configured

The alarm payloads are DriftAlarmMessage and FleetDriftAlarmMessage (schema 1,
edgefleet/contracts/mqtt.py); MQTT and the webhook carry the same JSON, the model's `wire()`.

The tables are in drift_tables.py, the webhook in drift_webhook.py, the REST API in
routers/drift.py (its queries in drift_routes.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.contracts.mqtt import DriftAlarmMessage, FleetDriftAlarmMessage, ModelRef, TelemetryMessage
from edgefleet.errors import BadInputError, EdgefleetError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Build, Device, ModelGroup, ModelVersion
from edgefleet.fleet.drift import (
    AlarmState,
    Baseline,
    DriftConfig,
    DriftSummary,
    check_edges,
    judge,
    merge_summaries,
    parse_baseline,
    parse_summary,
    step,
)
from edgefleet.fleet.drift_tables import (
    DriftAlarm,
    DriftCollecting,
    DriftEvent,
    DriftFleetAlarm,
    DriftFleetEvent,
    DriftWindow,
)
from edgefleet.fleet.drift_webhook import post_alarm, webhook_url

log = logging.getLogger("edgefleet.fleet.drift")
FLEET_TOPIC = "edgefleet/v1/fleet/drift"  # "fleet" is reserved: no device can take it (fleet/devices.py)
Publisher = Callable[[str, bytes], None]  # (topic, payload): QoS 1, retained


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


Alarm = DriftAlarmMessage | FleetDriftAlarmMessage


def alarm_topic(alarm: Alarm) -> str:
    """A device's alarms on its own topic; fleet-wide ones under the fleet's reserved identity."""
    if isinstance(alarm, FleetDriftAlarmMessage):
        return FLEET_TOPIC
    return f"edgefleet/v1/{alarm.device}/drift"


class DriftMonitor:
    def __init__(self, fleet: Fleet, publish: Publisher | None = None) -> None:
        self.fleet = fleet
        self.config: DriftConfig = fleet.config.drift
        self.publish = publish
        self.webhook = webhook_url(self.config)
        self.counters: Tally[str] = Tally()
        self._baselines: dict[tuple[str, str], Baseline | None] = {}  # (model, version) once a build exists
        self._batch: list[Alarm] | None = None
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
                select(Build)
                .join(ModelVersion, ModelVersion.id == Build.model_version_id)
                .join(ModelGroup, ModelGroup.id == ModelVersion.group_id)
                .where(ModelGroup.name == model_name, ModelVersion.version == version)
            ).all()
        if not builds:
            return None  # not uploaded (yet): asked again next time
        build = next(
            (b for b in builds if b.target == target), builds[0]
        )  # the builds of a version share one source model and baseline
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
        q = select(DriftCollecting).where(
            DriftCollecting.device_id == device_id,
            DriftCollecting.model_name == name,
            DriftCollecting.model_version == version,
        )
        with s.no_autoflush:
            return self._cached(self._collecting, key, lambda: s.scalar(q))

    def _collect(
        self, s: Session, key: tuple[str, str, str], part: DriftSummary, span: tuple[float, float], at: float
    ) -> DriftSummary | None:
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
        q = select(DriftAlarm).where(
            DriftAlarm.device_id == device_id, DriftAlarm.model_name == name, DriftAlarm.model_version == version
        )
        with s.no_autoflush:
            alarm = self._cached(self._alarms, key, lambda: s.scalar(q))
        if alarm is None:
            alarm = DriftAlarm(
                device_id=device_id, model_name=name, model_version=version, state="ok", over_streak=0, under_streak=0
            )
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
        s.add(
            DriftWindow(
                device_id=device_id,
                model_name=name,
                model_version=version,
                received_at=at,
                frames=window.frames,
                score=verdict.score,
                feature=verdict.worst,
                over=verdict.over,
                state=new.state,
                distances=distances,
                summary=window.model_dump(mode="json"),
            )
        )
        self.counters["drift_windows"] += 1
        if not change:
            return
        if change == "raised":
            alarm.raised_at, alarm.cleared_at = at, None
        else:
            alarm.cleared_at = at
        s.add(
            DriftEvent(
                at=at,
                device_id=device_id,
                model_name=name,
                model_version=version,
                event=change,
                score=verdict.score,
                feature=verdict.worst,
            )
        )
        self.counters[f"drift_alarms_{change}"] += 1
        self._announce_later(
            DriftAlarmMessage(
                event=change,
                device=device_id,
                model=ModelRef(name=name, version=version),
                state=new.state,
                metric=self.config.metric,
                threshold=self.config.threshold,
                score=verdict.score,
                feature=verdict.worst,
                at=at,
            )
        )

    def _announce_later(self, alarm: Alarm) -> None:
        if self._batch is not None:
            self._batch.append(alarm)

    # -- the fleet-wide alarm ---------------------------------------------------------------
    def _version_alarms(self, s: Session, name: str, version: str, since: float) -> list[DriftAlarm]:
        """The device alarms of a model version updated since `since`, this batch's included."""
        q = select(DriftAlarm).where(
            DriftAlarm.model_name == name, DriftAlarm.model_version == version, DriftAlarm.updated_at >= since
        )
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
        s.add(
            DriftFleetEvent(
                at=at, model_name=name, model_version=version, event=change, devices=len(alarms), drifting=drifting
            )
        )
        self.counters[f"drift_fleet_alarms_{change}"] += 1
        self._announce_later(
            FleetDriftAlarmMessage(
                event=change,
                model=ModelRef(name=name, version=version),
                state=new.state,
                devices=len(alarms),
                drifting=drifting,
                share=round(drifting / len(alarms), 4),
                fleet_share=cfg.fleet_share,
                metric=cfg.metric,
                threshold=cfg.threshold,
                at=at,
            )
        )

    # -- announcing -----------------------------------------------------------------------
    def announce(self, changes: list[Alarm]) -> None:
        for alarm in changes:
            data = json.dumps(alarm.wire()).encode()
            if self.publish is not None:
                try:
                    self.publish(alarm_topic(alarm), data)
                except Exception:  # the broker being away must not lose the stored alarm
                    log.exception("could not publish a drift alarm on %s", alarm_topic(alarm))
            if self.webhook:
                threading.Thread(
                    target=post_alarm,
                    args=(self.webhook, data, self.config.webhook_timeout_s, self.counters),
                    name="drift-webhook",
                    daemon=True,
                ).start()
