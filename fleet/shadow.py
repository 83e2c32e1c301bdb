"""Shadow rollouts: what cameras report about a candidate running beside the active model, summed
over stored reports, the promotion gate on those sums, and the promotion itself.

Reports (ShadowReport, edgefleet/v1/<device>/shadow) are stored one row each by the MQTT ingest
(`store_reports`), deduplicated on (device, message id) as telemetry is, and only when they name
a shadow_install job the fleet sent that device. Everything shown or gated on is computed from
those rows by the database (sums per model version pair and device group), so every replica
answers the same whichever of them ingested the reports.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from edgefleet.contracts.rest import (
    GateCheck,
    GateVerdict,
    ModelName,
    PromotionGate,
    RolloutOut,
    RolloutPlan,
    Selection,
    ShadowGroupOut,
    ShadowOut,
    ShadowPoint,
    ShadowStats,
)
from edgefleet.contracts.shadow import ClassificationAgreement, ShadowReport
from edgefleet.errors import BadInputError, ConflictError, NotFoundError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Deployment, Device, ModelGroup, ModelVersion, Rollout, ShadowRow, insert_or_ignore
from edgefleet.fleet.drift import ALARMED, AlarmState, DriftSummary, check_edges, judge, merge_summaries, step
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.rollouts import _flush, _transition, insert_rollout, rollout_out, send_shadow_jobs

log = logging.getLogger("edgefleet.fleet.shadow")
SERIES_POINTS = 2000  # the newest reports a shadow view plots


# ---- ingest ---------------------------------------------------------------------------------


def store_reports(s: Session, reports: list[tuple[str, ShadowReport, float]], outcomes: Tally[str]) -> list[str]:
    """Store (device, report, received at) in the caller's transaction; returns the devices of the
    reports stored. A report whose job is not a shadow_install the fleet sent that device (or whose
    rollout is not that job's) is ignored and counted as dropped_unknown_shadow."""
    jobs = {r.job for _, r, _ in reports}
    sent = {
        row.job_id: row
        for row in s.execute(
            select(Deployment.job_id, Deployment.device_id, Deployment.rollout_id).where(
                Deployment.job_id.in_(jobs), Deployment.kind == "shadow_install"
            )
        )
    }
    rows, seen = [], set()
    for device_id, report, at in reports:
        job = sent.get(report.job)
        if job is None or job.device_id != device_id or report.rollout not in (None, job.rollout_id):
            outcomes["dropped_unknown_shadow"] += 1
        elif report.id is not None and (device_id, report.id) in seen:
            outcomes["duplicate"] += 1  # the same report twice in one batch
        else:
            seen.add((device_id, report.id))
            rows.append(_row(device_id, job.rollout_id, report, at))
    stored = _insert(s, rows, outcomes)
    outcomes["shadow"] += len(stored)
    return stored


def _insert(s: Session, rows: list[dict[str, Any]], outcomes: Tally[str]) -> list[str]:
    """Insert-or-ignore `rows` at once; should the database refuse one, each alone (only it is lost)."""
    if not rows:
        return []
    savepoint = s.begin_nested()
    try:
        inserted = insert_or_ignore(s, ShadowRow, ["device_id", "message_id"], rows)
        savepoint.commit()
    except OperationalError:
        savepoint.rollback()
        raise  # not the reports' fault: the batch is retried
    except Exception:  # noqa: BLE001 - one row the database refuses: find it, keep the others
        savepoint.rollback()
        return [device for row in rows for device in _insert_alone(s, row, outcomes)]
    fresh = [row for row in rows if row["message_id"] is None or (row["device_id"], row["message_id"]) in inserted]
    outcomes["duplicate"] += len(rows) - len(fresh)
    return [row["device_id"] for row in fresh]


def _insert_alone(s: Session, row: dict[str, Any], outcomes: Tally[str]) -> list[str]:
    savepoint = s.begin_nested()
    try:
        inserted = insert_or_ignore(s, ShadowRow, ["device_id", "message_id"], [row])
        savepoint.commit()
    except Exception as exc:  # noqa: BLE001 - whatever a device sent, only this report is lost
        savepoint.rollback()
        log.debug("dropping a shadow report the database refused from %s: %s", row["device_id"], exc)
        outcomes["dropped_malformed"] += 1
        return []
    if not inserted:
        outcomes["duplicate"] += 1
        return []
    return [row["device_id"]]


def _row(device_id: str, rollout_id: int, r: ShadowReport, at: float) -> dict[str, Any]:
    a = r.agreement
    classification = isinstance(a, ClassificationAgreement)
    return {
        "device_id": device_id,
        "message_id": r.id,
        "rollout_id": rollout_id,
        "job_id": r.job,
        "received_at": at,
        "window_s": r.window_s,
        "active_name": r.active.name,
        "active_version": r.active.version,
        "candidate_name": r.candidate.name,
        "candidate_version": r.candidate.version,
        "task": a.task,
        "frames_seen": r.frames_seen,
        "skipped_budget": r.skipped_budget,
        "frames": a.frames,
        "agree": a.agree if classification else 0,
        "active_boxes": 0 if classification else a.active_boxes,
        "candidate_boxes": 0 if classification else a.candidate_boxes,
        "matched": 0 if classification else a.matched,
        "label_agree": 0 if classification else a.label_agree,
        "score_delta_sum": 0.0 if classification else a.score_delta_sum,
        "score_abs_delta_sum": 0.0 if classification else a.score_abs_delta_sum,
        "active_latency_count": r.active_latency_ms.count,
        "active_latency_p50": r.active_latency_ms.p50,
        "candidate_latency_count": r.candidate_latency_ms.count,
        "candidate_latency_p50": r.candidate_latency_ms.p50,
        "active_confidence": r.active_confidence,
        "candidate_confidence": r.candidate_confidence,
        "candidate_cpu_share": r.candidate_cpu_share,
        "drift": r.drift.model_dump(mode="json") if r.drift is not None else None,
    }


# ---- aggregation ------------------------------------------------------------------------------


def _weighted(value: Any, weight: Any) -> tuple[Any, Any]:
    """sum(value x weight) and sum(weight) over the rows that have a value."""
    return func.sum(value * weight), func.sum(case((value.is_not(None), weight), else_=0))


t = ShadowRow
SUMS = {
    "devices": func.count(func.distinct(t.device_id)),
    "reports": func.count(t.id),
    "frames_seen": func.sum(t.frames_seen),
    "frames": func.sum(t.frames),
    "skipped_budget": func.sum(t.skipped_budget),
    "classification_frames": func.sum(case((t.task == "classification", t.frames), else_=0)),
    "agree": func.sum(t.agree),
    "active_boxes": func.sum(t.active_boxes),
    "candidate_boxes": func.sum(t.candidate_boxes),
    "matched": func.sum(t.matched),
    "label_agree": func.sum(t.label_agree),
    "score_delta_sum": func.sum(t.score_delta_sum),
    "score_abs_delta_sum": func.sum(t.score_abs_delta_sum),
    "cpu_share": func.avg(t.candidate_cpu_share),
}
WEIGHTED = {
    "active_latency": _weighted(t.active_latency_p50, t.active_latency_count),
    "candidate_latency": _weighted(t.candidate_latency_p50, t.candidate_latency_count),
    "active_confidence": _weighted(t.active_confidence, t.frames),
    "candidate_confidence": _weighted(t.candidate_confidence, t.frames),
}
COLUMNS = [
    *(c.label(k) for k, c in SUMS.items()),
    *(c.label(f"{k}_{i}") for k, p in WEIGHTED.items() for i, c in enumerate(p)),
]


def _ratio(num: float | None, den: float | None) -> float | None:
    return float(num) / float(den) if num is not None and den else None


def _stats(row: Any, drifting: list[str]) -> ShadowStats:
    """ShadowStats from one row of SUMS and WEIGHTED (see ShadowStats for the definitions)."""
    boxes = (row.active_boxes or 0) + (row.candidate_boxes or 0)
    # Classification windows count agreeing frames; detection windows count agreeing boxes on both sides.
    agreeing = (row.agree or 0) + 2 * (row.label_agree or 0)
    compared = (row.classification_frames or 0) + boxes
    active = _ratio(row.active_latency_0, row.active_latency_1)
    candidate = _ratio(row.candidate_latency_0, row.candidate_latency_1)
    return ShadowStats(
        devices=row.devices or 0,
        reports=row.reports or 0,
        frames_seen=row.frames_seen or 0,
        frames=row.frames or 0,
        skipped_budget=row.skipped_budget or 0,
        agreement=_ratio(agreeing, compared),
        match_rate=_ratio(2 * (row.matched or 0), boxes),
        label_agreement=_ratio(row.label_agree, row.matched),
        mean_score_delta=_ratio(row.score_delta_sum, row.matched),
        mean_abs_score_delta=_ratio(row.score_abs_delta_sum, row.matched),
        active_latency_p50_ms=active,
        candidate_latency_p50_ms=candidate,
        latency_ratio=_ratio(candidate, active),
        active_confidence=_ratio(row.active_confidence_0, row.active_confidence_1),
        candidate_confidence=_ratio(row.candidate_confidence_0, row.candidate_confidence_1),
        candidate_cpu_share=float(row.cpu_share) if row.cpu_share is not None else None,
        drift_alarm=bool(drifting),
        drift_devices=drifting,
    )


def candidate_drift(s: Session, monitor: DriftMonitor, rollout_id: int) -> list[str]:
    """Devices whose candidate drift alarm is up: each device's drift summaries, in order, pooled to
    the fleet's min_frames and judged against the candidate's baseline with the alarm's hysteresis
    ([drift] config), as the fleet judges an active model's telemetry (fleet/drift_service.py)."""
    config = monitor.config
    by_device: dict[str, list[Any]] = {}
    q = select(t.device_id, t.candidate_name, t.candidate_version, t.drift).where(
        t.rollout_id == rollout_id, t.drift.is_not(None)
    )
    for row in s.execute(q.order_by(t.received_at, t.id)):
        by_device.setdefault(row.device_id, []).append(row)
    drifting = []
    for device_id, rows in sorted(by_device.items()):
        device = s.get(Device, device_id)
        baseline = monitor.baseline_for(s, rows[0].candidate_name, rows[0].candidate_version, device.target)
        if baseline is None:
            continue  # the candidate's package has no baseline: nothing to judge against
        state, pool = AlarmState(), []
        for row in rows:
            summary = DriftSummary.model_validate(row.drift)
            try:
                check_edges(baseline.summary, summary)
            except Exception:  # noqa: BLE001 - a window on other edges cannot be judged; it is skipped
                continue
            pool.append(summary)
            window = merge_summaries(pool)
            if window.frames >= config.min_frames:
                state, _ = step(state, judge(baseline.summary, window, config).over, config)
                pool = []
        if state.state in ALARMED:
            drifting.append(device_id)
    return drifting


def gate_verdict(stats: ShadowStats, gate: PromotionGate) -> GateVerdict:
    """Each condition of the promotion gate with its number and limit."""
    agreement, ratio = stats.agreement, stats.latency_ratio
    checks = [
        GateCheck(
            name="frames",
            ok=stats.frames >= gate.min_frames,
            value=stats.frames,
            limit=gate.min_frames,
            detail=f"{stats.frames} compared frames (at least {gate.min_frames})",
        ),
        GateCheck(
            name="agreement",
            ok=agreement is not None and agreement >= gate.min_agreement,
            value=agreement,
            limit=gate.min_agreement,
            detail=f"agreement {_fmt(agreement)} (at least {gate.min_agreement:.3f})",
        ),
        GateCheck(
            name="latency_ratio",
            ok=ratio is not None and ratio <= gate.max_latency_ratio,
            value=ratio,
            limit=gate.max_latency_ratio,
            detail=f"candidate/active p50 latency {_fmt(ratio)} (at most {gate.max_latency_ratio:.3f})",
        ),
    ]
    if gate.no_drift_alarm:
        checks.append(
            GateCheck(
                name="drift",
                ok=not stats.drift_alarm,
                value=len(stats.drift_devices),
                limit=0,
                detail=f"candidate drift alarm on {len(stats.drift_devices)} devices"
                + (f" ({', '.join(stats.drift_devices[:5])})" if stats.drift_devices else ""),
            )
        )
    return GateVerdict(passed=all(c.ok for c in checks), checks=checks)


def _fmt(value: float | None) -> str:
    return "unknown (no data)" if value is None else f"{value:.3f}"


def _shadow_rollout(s: Session, rollout_id: int, lock: bool = False) -> tuple[Rollout, RolloutPlan]:
    """The rollout and its plan; `lock`: SELECT ... FOR UPDATE (two promotions of one rollout cannot both pass)."""
    r = s.get(Rollout, rollout_id, with_for_update=lock)
    if r is None:
        raise NotFoundError(f"no rollout {rollout_id}", "list rollouts with `edgefleet fleet rollouts list`")
    plan = RolloutPlan.model_validate(r.plan)
    if plan.mode != "shadow":
        raise ConflictError(
            f"rollout {rollout_id} is not a shadow rollout (mode {plan.mode})",
            'create one with a plan of mode "shadow" (docs/fleet.md, "Shadow rollouts")',
        )
    return r, plan


def _view(s: Session, monitor: DriftMonitor, r: Rollout, plan: RolloutPlan) -> ShadowOut:
    mine = ShadowRow.rollout_id == r.id
    drifting = candidate_drift(s, monitor, r.id)
    total = _stats(s.execute(select(*COLUMNS).where(mine)).one(), drifting)
    keys = (t.active_name, t.active_version, t.candidate_name, t.candidate_version, Device.group)
    grouped = s.execute(select(*keys, *COLUMNS).join(Device, Device.id == t.device_id).where(mine).group_by(*keys))
    groups = []
    for row in grouped:
        members = set(
            s.scalars(
                select(Device.id).where(Device.group.is_(None) if row.group is None else Device.group == row.group)
            )
        )
        groups.append(
            ShadowGroupOut(
                active=ModelName(name=row.active_name, version=row.active_version),
                candidate=ModelName(name=row.candidate_name, version=row.candidate_version),
                group=row.group,
                stats=_stats(row, [d for d in drifting if d in members]),
            )
        )
    columns = (t.received_at, t.device_id, t.task, t.frames, t.agree, t.label_agree, t.active_boxes, t.candidate_boxes)
    latencies = (t.active_latency_p50, t.candidate_latency_p50)
    newest = select(*columns, *latencies).where(mine).order_by(t.received_at.desc(), t.id.desc()).limit(SERIES_POINTS)
    series = [_point(row) for row in reversed(s.execute(newest).all())]
    mv = s.get(ModelVersion, r.model_version_id)
    promoted = s.scalar(select(Rollout.id).where(Rollout.source_rollout_id == r.id))
    return ShadowOut(
        rollout=r.id,
        state=r.state,
        candidate=ModelName(name=s.get(ModelGroup, mv.group_id).name, version=mv.version),
        settings=plan.shadow,
        gate=plan.promotion,
        verdict=gate_verdict(total, plan.promotion),
        total=total,
        groups=groups,
        series=series,
        promoted_to=promoted,
    )


def _point(row: Any) -> ShadowPoint:
    if row.task == "classification":
        agreement = _ratio(row.agree, row.frames)
    else:
        agreement = _ratio(2 * row.label_agree, row.active_boxes + row.candidate_boxes)
    return ShadowPoint(
        at=row.received_at,
        device=row.device_id,
        frames=row.frames,
        agreement=agreement,
        active_latency_p50_ms=row.active_latency_p50,
        candidate_latency_p50_ms=row.candidate_latency_p50,
    )


def shadow_view(fleet: Fleet, monitor: DriftMonitor, rollout_id: int) -> ShadowOut:
    """GET /rollouts/{id}/shadow: champion vs challenger, summed over the stored reports."""
    with fleet.session() as s:
        r, plan = _shadow_rollout(s, rollout_id)
        return _view(s, monitor, r, plan)


def promote(
    fleet: Fleet, monitor: DriftMonitor, rollout_id: int, plan: RolloutPlan | None = None, reason: str = ""
) -> RolloutOut:
    """Check the promotion gate on the stored reports; if it holds, end the shadow rollout (its
    cameras get shadow_remove) and start a staged rollout of the candidate to the same devices,
    linked to it. A failed gate is a ConflictError naming each failed condition with its number."""
    if plan is not None and plan.mode == "shadow":
        raise BadInputError(
            "a promotion starts a staged rollout: its plan's mode is install", 'leave "mode" out of the plan'
        )
    outbox: list = []
    with fleet.lock:
        with fleet.writer() as s, s.begin():
            r, shadow_plan = _shadow_rollout(s, rollout_id, lock=True)
            view = _view(s, monitor, r, shadow_plan)
            failed = [c.detail for c in view.verdict.checks if not c.ok]
            if failed:
                raise ConflictError(
                    f"rollout {rollout_id} does not pass its promotion gate: " + "; ".join(failed),
                    "wait for more evidence (`edgefleet fleet rollouts shadow ID`), or stop the shadow rollout",
                )
            now = fleet.clock()
            _transition(s, r, "promote", now, reason or "promotion gate passed")
            send_shadow_jobs(fleet, s, r, "shadow_remove", now, outbox)
            staged = plan or RolloutPlan.model_validate(shadow_plan.model_dump() | {"mode": "install"})
            mv = s.get(ModelVersion, r.model_version_id)
            group = s.get(ModelGroup, mv.group_id).name
            new = insert_rollout(fleet, s, group, mv.version, Selection(devices=list(r.devices)), staged, source=r.id)
            out = rollout_out(s, new)
        _flush(fleet, outbox)
    return out
