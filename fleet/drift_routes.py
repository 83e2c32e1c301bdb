"""The queries behind the drift REST API (fleet/routers/drift.py): the drift overview, judged
windows, alarm events, and the telemetry health numbers over time (for the dashboard's plots),
as the answer models in edgefleet/contracts/rest.py."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from edgefleet.contracts.rest import (
    DeviceDriftEventOut,
    DeviceModel,
    Distance,
    DriftAlarmOut,
    DriftCollectingOut,
    DriftConfigOut,
    DriftEventOut,
    DriftEventPage,
    DriftOverview,
    DriftWindowOut,
    DriftWindowPage,
    FleetDriftAlarmOut,
    FleetDriftEventOut,
    FleetDriftOut,
    ModelName,
    TelemetryPage,
    TelemetryPoint,
)
from edgefleet.errors import BadInputError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Telemetry
from edgefleet.fleet.drift import DriftConfig, judge, merge_summaries, parse_summary
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.drift_tables import (
    DriftAlarm,
    DriftCollecting,
    DriftEvent,
    DriftFleetAlarm,
    DriftFleetEvent,
    DriftWindow,
)
from edgefleet.fleet.paging import MAX_PAGE, keyset


def alarm_out(a: DriftAlarm) -> DriftAlarmOut:
    return DriftAlarmOut(
        device=a.device_id,
        model=ModelName(name=a.model_name, version=a.model_version),
        state=a.state,
        score=a.score,
        feature=a.feature,
        raised_at=a.raised_at,
        cleared_at=a.cleared_at,
        updated_at=a.updated_at,
    )


def collecting_out(c: DriftCollecting, target: int) -> DriftCollectingOut:
    return DriftCollectingOut(
        device=c.device_id,
        model=ModelName(name=c.model_name, version=c.model_version),
        frames=c.frames,
        target=target,
        messages=c.messages,
        updated_at=c.updated_at,
    )


def fleet_alarm_out(a: DriftFleetAlarm) -> FleetDriftAlarmOut:
    return FleetDriftAlarmOut(
        model=ModelName(name=a.model_name, version=a.model_version),
        state=a.state,
        devices=a.devices,
        drifting=a.drifting,
        share=round(a.drifting / a.devices, 4) if a.devices else None,
        raised_at=a.raised_at,
        cleared_at=a.cleared_at,
        updated_at=a.updated_at,
    )


def config_out(cfg: DriftConfig) -> DriftConfigOut:
    return DriftConfigOut(
        metric=cfg.metric,
        threshold=cfg.threshold,
        windows_to_alarm=cfg.windows_to_alarm,
        windows_to_clear=cfg.windows_to_clear,
        features=list(cfg.features),
        min_frames=cfg.min_frames,
        max_age_s=cfg.max_age_s,
        fleet_share=cfg.fleet_share,
        fleet_min_devices=cfg.fleet_min_devices,
    )


def drift_overview(
    fleet: Fleet, monitor: DriftMonitor, device: str | None = None, state: str | None = None
) -> DriftOverview:
    """The drift config, every alarm (optionally of one device / in one state), the windows still
    collecting frames, the fleet-wide alarms and the fleet-wide view."""
    cfg = fleet.config.drift
    with fleet.session() as s:
        q = select(DriftAlarm).order_by(DriftAlarm.device_id, DriftAlarm.model_name, DriftAlarm.model_version)
        c = select(DriftCollecting).where(
            DriftCollecting.frames > 0, DriftCollecting.updated_at >= fleet.clock() - cfg.max_age_s
        )
        if device:
            q, c = q.where(DriftAlarm.device_id == device), c.where(DriftCollecting.device_id == device)
        if state:
            q = q.where(DriftAlarm.state == state)
        alarms = [alarm_out(a) for a in s.scalars(q)]
        collecting = [collecting_out(r, cfg.min_frames) for r in s.scalars(c.order_by(DriftCollecting.device_id))]
        f = select(DriftFleetAlarm).order_by(DriftFleetAlarm.model_name, DriftFleetAlarm.model_version)
        fleet_alarms = [fleet_alarm_out(a) for a in s.scalars(f)]
    return DriftOverview(
        config=config_out(cfg),
        alarms=alarms,
        collecting=collecting,
        fleet_alarms=fleet_alarms,
        fleet=fleet_drift(fleet, monitor, cfg.fleet_horizon_s),
    )


def fleet_drift(fleet: Fleet, monitor: DriftMonitor, horizon_s: float = 600.0) -> list[FleetDriftOut]:
    """The fleet as a whole: per model version, the newest judged window of every device seen in
    the last `horizon_s` seconds, summed into one window and judged against the baseline."""
    cfg = fleet.config.drift
    since = fleet.clock() - horizon_s
    with fleet.session() as s:
        newest = (
            select(
                DriftWindow.device_id,
                DriftWindow.model_name,
                DriftWindow.model_version,
                func.max(DriftWindow.id).label("id"),
            )
            .where(DriftWindow.received_at >= since)
            .group_by(DriftWindow.device_id, DriftWindow.model_name, DriftWindow.model_version)
            .subquery()
        )
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
            alarm = s.scalar(
                select(DriftFleetAlarm.state).where(
                    DriftFleetAlarm.model_name == name, DriftFleetAlarm.model_version == version
                )
            )
            out.append(
                FleetDriftOut(
                    model=ModelName(name=name, version=version),
                    state=alarm or "ok",
                    devices=len(ws),
                    frames=total.frames,
                    score=verdict.score,
                    feature=verdict.worst,
                    over=verdict.over,
                    distances={f: Distance(psi=d.psi, js=d.js) for f, d in verdict.distances.items()},
                )
            )
    return out


def drift_windows(
    fleet: Fleet,
    device: str | None = None,
    since: float | None = None,
    limit: int = MAX_PAGE,
    cursor: str | None = None,
) -> DriftWindowPage:
    """One page of drift windows, newest first."""
    with fleet.session() as s:
        q = select(DriftWindow)
        if device:
            q = q.where(DriftWindow.device_id == device)
        if since is not None:
            q = q.where(DriftWindow.received_at >= since)
        rows, after = keyset(s, q, DriftWindow.id, limit, cursor, newest_first=True)
        items = [
            DriftWindowOut(
                device=w.device_id,
                model=ModelName(name=w.model_name, version=w.model_version),
                at=w.received_at,
                frames=w.frames,
                score=w.score,
                feature=w.feature,
                over=w.over,
                state=w.state,
                distances={f: Distance.model_validate(d) for f, d in w.distances.items()},
            )
            for w in rows
        ]
        return DriftWindowPage(items=items, next=after)


def drift_events(fleet: Fleet, limit: int = MAX_PAGE, cursor: str | None = None) -> DriftEventPage:
    """One page of the raised/cleared events of devices (scope "device") and of the fleet-wide
    alarms (scope "fleet", device null), newest first. Two tables: the cursor is the id of the
    last event of each that the pages so far gave, `<device id>.<fleet id>`."""
    device_after, fleet_after = _two_cursors(cursor)
    with fleet.session() as s:
        devices, device_more = keyset(s, select(DriftEvent), DriftEvent.id, limit, device_after, newest_first=True)
        fleets, fleet_more = keyset(
            s, select(DriftFleetEvent), DriftFleetEvent.id, limit, fleet_after, newest_first=True
        )
        merged = sorted(
            [(e.at, "device", e) for e in devices] + [(e.at, "fleet", e) for e in fleets],
            key=lambda t: (t[0], t[1] == "device", t[2].id),
            reverse=True,
        )
        page = merged[:limit]
        out: list[DriftEventOut] = [_drift_event(scope, e) for _, scope, e in page]
        for _, scope, e in page:
            device_after = str(e.id) if scope == "device" else device_after
            fleet_after = str(e.id) if scope == "fleet" else fleet_after
        more = len(merged) > limit or device_more is not None or fleet_more is not None
        return DriftEventPage(items=out, next=f"{device_after or ''}.{fleet_after or ''}" if more else None)


def _two_cursors(cursor: str | None) -> tuple[str | None, str | None]:
    if cursor is None:
        return None, None
    device_after, dot, fleet_after = cursor.partition(".")
    if not dot or not all(c.isdigit() for c in (device_after or "0", fleet_after or "0")):
        raise BadInputError(f"cursor {cursor[:40]!r} is not one this list gave", "pass the `next` of the previous page")
    return device_after or None, fleet_after or None


def _drift_event(scope: str, e: Any) -> DriftEventOut:
    model = ModelName(name=e.model_name, version=e.model_version)
    if scope == "device":
        return DeviceDriftEventOut(
            at=e.at, scope="device", device=e.device_id, model=model, event=e.event, score=e.score, feature=e.feature
        )
    return FleetDriftEventOut(
        at=e.at, scope="fleet", model=model, event=e.event, devices=e.devices, drifting=e.drifting
    )


def telemetry_series(
    fleet: Fleet,
    device: str | None = None,
    since: float | None = None,
    limit: int = MAX_PAGE,
    cursor: str | None = None,
) -> TelemetryPage:
    """One page of telemetry rows, newest first: frames, alerts, confidence, p95 latency."""
    with fleet.session() as s:
        q = select(Telemetry)
        if device:
            q = q.where(Telemetry.device_id == device)
        if since is not None:
            q = q.where(Telemetry.received_at >= since)
        rows, after = keyset(s, q, Telemetry.id, limit, cursor, newest_first=True)
        items = [
            TelemetryPoint(
                device=t.device_id,
                at=t.received_at,
                model=DeviceModel(name=t.model_name, version=t.model_version),
                frames=t.frames,
                alerts=t.alerts,
                confidence_mean=t.confidence_mean,
                latency_p95_ms=t.latency_p95_ms,
            )
            for t in rows
        ]
        return TelemetryPage(items=items, next=after)
