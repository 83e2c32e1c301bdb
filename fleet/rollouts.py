"""Rollouts: one approved model version to a selection of devices, in waves, with gates.

A rollout is a state machine written as a transition table (TRANSITIONS). `tick()` is the
only place that moves rollouts forward; it runs every `tick_seconds` in the service and is
called directly by tests with a controlled clock. Every transition and every device job
update is stored as a RolloutEvent.

Waves: a canary (N devices or P percent), then cumulative percents of the selection. A wave
is done when `success_threshold` of all touched devices have committed; the rollout aborts
when more than `failure_threshold` of them failed, when a wave takes longer than
`wave_timeout_s`, or when the model-health gate fails after the bake time. Abort sends every
touched device a rollback job (signed by the fleet, so the device accepts the older version).

Shadow rollouts (plan mode "shadow", fleet/shadow.py): the first tick sends every selected
device a shadow_install job at once and the rollout stays `shadowing`; stop or abort sends
each a shadow_remove job, and a promotion (fleet/shadow.py) ends it and starts a staged rollout.
"""

from __future__ import annotations

import base64
import logging
import math
import time
import uuid
from typing import Any

from pydantic import ValidationError
from sqlalchemy import BigInteger, and_, case, func, literal, or_, select
from sqlalchemy import insert as sa_insert
from sqlalchemy import update as sa_update  # `update` names the job update below
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from edgefleet.agent_release import RELEASE_NAME
from edgefleet.contracts.jobs import JobDocument, JobPackage, JobProbation, RollbackAuthorization
from edgefleet.contracts.mqtt import TERMINAL_STATES, UPDATE_STATES, JobUpdate
from edgefleet.contracts.rest import (
    DeploymentOut,
    DeploymentPage,
    HealthGate,
    RolloutDetail,
    RolloutEventOut,
    RolloutEventPage,
    RolloutModel,
    RolloutOut,
    RolloutPage,
    RolloutPlan,
    Selection,
)
from edgefleet.contracts.shadow import SHADOW_FEATURE, ShadowSettings
from edgefleet.errors import BadInputError, ConflictError, InvalidTransitionError, NotFoundError, ServiceError
from edgefleet.fleet.core import Fleet
from edgefleet.fleet.db import Build, Deployment, Device, ModelGroup, ModelVersion, Rollout, RolloutEvent, Telemetry
from edgefleet.fleet.order import advanced_sql, later_sql
from edgefleet.fleet.paging import MAX_PAGE, keyset
from edgefleet.fleet.registry import APPROVED, agent_target, get_version_row
from edgefleet.package import parse_version
from edgefleet.strict import first_error

log = logging.getLogger("edgefleet.fleet.rollouts")
ACTIVE = ("created", "deploying", "baking", "paused", "aborting", "shadowing")
TRANSITIONS: dict[tuple[str, str], str] = {
    ("created", "start"): "deploying",
    ("deploying", "wave_committed"): "baking",
    ("baking", "next_wave"): "deploying",
    ("baking", "completed"): "succeeded",
    ("deploying", "failure_threshold"): "aborting",
    ("baking", "failure_threshold"): "aborting",
    ("baking", "health_gate_failed"): "aborting",
    ("deploying", "wave_timeout"): "aborting",
    ("baking", "wave_timeout"): "aborting",
    ("created", "pause"): "paused",
    ("deploying", "pause"): "paused",
    ("baking", "pause"): "paused",
    ("paused", "resume"): "deploying",
    ("created", "abort"): "aborting",
    ("deploying", "abort"): "aborting",
    ("baking", "abort"): "aborting",
    ("paused", "abort"): "aborting",
    ("aborting", "rolled_back"): "aborted",
    ("created", "shadow_start"): "shadowing",
    ("shadowing", "stop"): "stopped",
    ("shadowing", "abort"): "aborted",
    ("shadowing", "promote"): "promoted",
}
INSTALLS = ("install", "shadow_install")  # the job kinds that bring a rollout's version to a device
FAILED = ("failed", "rolled_back")


def wave_bounds(plan: RolloutPlan, n: int) -> list[int]:
    """Cumulative device counts at the end of each wave, strictly increasing, ending at n."""
    first = plan.canary if plan.canary is not None else math.ceil(plan.canary_percent / 100 * n)
    bounds = [min(max(1, first), n)]
    for pct in plan.waves:
        count = min(n, math.ceil(pct / 100 * n - 1e-9))
        if count > bounds[-1]:
            bounds.append(count)
    if bounds[-1] != n:
        bounds.append(n)
    return bounds


def _transition(s: Session, r: Rollout, event: str, now: float, detail: str = "") -> None:
    new = TRANSITIONS.get((r.state, event))
    if new is None:
        raise InvalidTransitionError(
            f"rollout {r.id} is {r.state}; '{event}' is not allowed there", "see the rollout states in docs/fleet.md"
        )
    s.add(RolloutEvent(rollout_id=r.id, at=now, event=event, from_state=r.state, to_state=new, detail=detail))
    r.state = new
    r.updated_at = now
    if detail and new in ("aborting", "aborted", "succeeded", "paused", "stopped", "promoted"):
        r.reason = detail


# The first agent that updates itself over the air; older ones must be reinstalled (docs/agent.md).
FIRST_OTA_AGENT = "0.2.0"


def build_target(device: Device, name: str) -> str | None:
    """The build a device runs of `name`: agent releases are per reported architecture, models per target."""
    if name != RELEASE_NAME:
        return device.target
    return agent_target(device.arch) if device.arch else None


def _check_agent_devices(devices: list[Device]) -> None:
    """Refuse devices that cannot take an agent release, saying what to do instead."""
    for d in devices:
        if d.agent_version is None:
            raise ConflictError(
                f"device {d.id} has not reported its agent version yet",
                "wait until it is online, or leave it out of the selection",
            )
        if parse_version(d.agent_version) < parse_version(FIRST_OTA_AGENT):
            raise ConflictError(
                f"device {d.id} runs agent {d.agent_version}, which cannot update itself over the air",
                f"install the edgefleet-agent Debian package {FIRST_OTA_AGENT} or newer on it (docs/agent.md), or leave it out of the selection",
            )


def _check_shadow_devices(devices: list[Device], group: str) -> None:
    """Refuse devices that cannot run `group`'s candidate beside their active model, saying what to do."""
    if group == RELEASE_NAME:
        raise BadInputError(
            "an agent release cannot run in shadow mode", "roll agent releases out in mode install (the default)"
        )
    for d in devices:
        if SHADOW_FEATURE not in (d.features or []):
            raise ConflictError(
                f"device {d.id} runs agent {d.agent_version or 'of unknown version'}, which does not list the "
                f"{SHADOW_FEATURE!r} feature in its status",
                "update its agent to one with shadow models (`edgefleet fleet rollouts create edgefleet-agent ...`),"
                " wait until it reports online, or leave it out of the selection",
            )
        if d.model_name != group:
            raise ConflictError(
                f"device {d.id} runs {d.model_name or 'no model'}, so it has no {group} model to compare the candidate with",
                f"install a {group} version on it first, or leave it out of the selection",
            )


def rollout_out(s: Session, r: Rollout) -> RolloutOut:
    v = s.get(ModelVersion, r.model_version_id)
    g = s.get(ModelGroup, v.group_id)
    counts = dict(
        s.execute(
            select(Deployment.state, func.count())
            .where(Deployment.rollout_id == r.id, Deployment.kind.in_(INSTALLS))
            .group_by(Deployment.state)
        ).all()
    )
    plan = RolloutPlan.model_validate(r.plan)
    return RolloutOut(
        id=r.id,
        model=RolloutModel(group=g.name, version=v.version),
        kind="agent" if g.name == RELEASE_NAME else "model",
        state=r.state,
        wave=r.wave,
        waves=wave_bounds(plan, len(r.devices)),
        devices=len(r.devices),
        installs=counts,
        reason=r.reason,
        selection=Selection.model_validate(r.selection),
        plan=plan,
        created_at=r.created_at,
        updated_at=r.updated_at,
        source=r.source_rollout_id,
    )


def _select_devices(s: Session, sel: Selection) -> list[Device]:
    q = select(Device).order_by(Device.id)
    if sel.group:
        q = q.where(Device.group == sel.group)
    if sel.devices is not None:
        q = q.where(Device.id.in_(sel.devices))
    rows = [d for d in s.scalars(q) if set(sel.tags) <= set(d.tags or [])]
    if sel.devices is not None:
        missing = sorted(set(sel.devices) - {d.id for d in rows})
        if missing:
            raise BadInputError(
                f"devices not found or outside the selection: {', '.join(missing[:10])}",
                "list devices with `edgefleet fleet devices list`",
            )
    return rows


def create_rollout(
    fleet: Fleet, group: str, version: str, selection: Selection | dict[str, Any], plan: RolloutPlan | dict[str, Any]
) -> RolloutOut:
    """Validate and store a rollout (state `created`); the next tick starts its canary."""
    try:
        sel = Selection.model_validate(selection)
        parsed = RolloutPlan.model_validate(plan)
    except ValidationError as exc:
        first = first_error(exc, top="plan")
        raise BadInputError(f"rollout {first.where}: {first.msg}", "see the rollout plan in docs/fleet.md") from None
    with fleet.lock, fleet.writer() as s, s.begin():
        return rollout_out(s, insert_rollout(fleet, s, group, version, sel, parsed))


def insert_rollout(
    fleet: Fleet, s: Session, group: str, version: str, sel: Selection, parsed: RolloutPlan, source: int | None = None
) -> Rollout:
    """Check and add a rollout in the caller's transaction (hold fleet.lock); `source`: the shadow
    rollout it is promoted from."""
    mv = get_version_row(s, group, version)
    if mv.approval != APPROVED:
        raise ConflictError(
            f"{group} {version} is {mv.approval}, not Approved",
            f"approve it first: `edgefleet fleet models approve {group} {version}`",
        )
    devices = _select_devices(s, sel)
    if not devices:
        raise BadInputError(
            "the selection matches no devices",
            "check --group/--tag, or list devices with `edgefleet fleet devices list`",
        )
    if parsed.mode == "shadow":
        _check_shadow_devices(devices, group)
    elif group == RELEASE_NAME:
        _check_agent_devices(devices)
    targets = {b.target for b in s.scalars(select(Build).where(Build.model_version_id == mv.id))}
    missing = sorted({build_target(d, group) for d in devices} - targets)
    if missing:
        fix = (
            "build and upload an agent release for each architecture (`edgefleet agent release build --arch ...`)"
            if group == RELEASE_NAME
            else "compile and upload a package for each target in the selection"
        )
        raise ConflictError(f"{group} {version} has no build for target(s) {', '.join(missing)}", fix)
    ids = [d.id for d in devices]
    busy = s.scalars(
        select(Deployment.device_id)
        .join(Rollout, Rollout.id == Deployment.rollout_id)
        .where(Rollout.state.in_(ACTIVE), Deployment.device_id.in_(ids))
    ).first()
    busy = busy or next(
        (d for r in s.scalars(select(Rollout).where(Rollout.state == "created")) for d in r.devices if d in set(ids)),
        None,
    )
    if busy:
        raise ConflictError(f"device {busy} is already in an active rollout", "wait for it to finish, or abort it")
    r = Rollout(
        model_version_id=mv.id,
        selection=sel.model_dump(),
        plan=parsed.model_dump(),
        devices=ids,
        created_at=fleet.clock(),
        updated_at=fleet.clock(),
        source_rollout_id=source,
    )
    s.add(r)
    s.flush()
    s.add(
        RolloutEvent(
            rollout_id=r.id,
            at=fleet.clock(),
            event="create",
            from_state="",
            to_state="created",
            detail=f"{len(ids)} devices" + (f", promoted from shadow rollout {source}" if source else ""),
        )
    )
    return r


def _load(s: Session, rollout_id: int) -> Rollout:
    r = s.get(Rollout, rollout_id, with_for_update=True)
    if r is None:
        raise NotFoundError(f"no rollout {rollout_id}", "list rollouts with `edgefleet fleet rollouts list`")
    return r


def control(fleet: Fleet, rollout_id: int, action: str, reason: str = "") -> RolloutOut:
    """pause | resume | abort | stop (shadow rollouts), as an operator asks."""
    if action not in ("pause", "resume", "abort", "stop"):
        raise BadInputError(f"unknown rollout action {action!r}", "use pause, resume, abort or stop")
    outbox: list[tuple[str, JobDocument]] = []
    with fleet.lock:
        with fleet.writer() as s, s.begin():
            r = _load(s, rollout_id)
            now = fleet.clock()
            _transition(s, r, action, now, reason or f"operator {action}")
            if action == "resume":
                r.wave_started_at = now
                r.bake_started_at = None
            if r.state in ("stopped", "aborted"):  # a shadow rollout: its candidate leaves the cameras
                send_shadow_jobs(fleet, s, r, "shadow_remove", now, outbox)
            elif action == "abort":
                _abort_step(fleet, s, r, now, outbox)
            out = rollout_out(s, r)
    _flush(fleet, outbox)  # outside the lock, as in tick()
    return out


def list_rollouts(
    fleet: Fleet, state: str | None = None, limit: int = MAX_PAGE, cursor: str | None = None
) -> RolloutPage:
    with fleet.session() as s:
        q = select(Rollout)
        if state:
            q = q.where(Rollout.state == state)
        rows, after = keyset(s, q, Rollout.id, limit, cursor)
        return RolloutPage(items=[rollout_out(s, r) for r in rows], next=after)


def get_rollout(fleet: Fleet, rollout_id: int) -> RolloutDetail:
    with fleet.session() as s:
        r = s.get(Rollout, rollout_id)
        if r is None:
            raise NotFoundError(f"no rollout {rollout_id}", "list rollouts with `edgefleet fleet rollouts list`")
        return RolloutDetail(**dict(rollout_out(s, r)))


def rollout_deployments(
    fleet: Fleet, rollout_id: int, state: str | None = None, limit: int = MAX_PAGE, cursor: str | None = None
) -> DeploymentPage:
    """A rollout's deployments (optionally in one state), in the order they were created."""
    with fleet.session() as s:
        if s.get(Rollout, rollout_id) is None:
            raise NotFoundError(f"no rollout {rollout_id}", "list rollouts with `edgefleet fleet rollouts list`")
        q = select(Deployment).where(Deployment.rollout_id == rollout_id)
        if state:
            q = q.where(Deployment.state == state)
        rows, after = keyset(s, q, Deployment.id, limit, cursor)
        items = [
            DeploymentOut(
                job=d.job_id,
                device=d.device_id,
                kind=d.kind,
                wave=d.wave,
                state=d.state,
                previous_version=d.previous_version,
                detail=d.detail,
            )
            for d in rows
        ]
        return DeploymentPage(items=items, next=after)


def rollout_events(fleet: Fleet, rollout_id: int, limit: int = MAX_PAGE, cursor: str | None = None) -> RolloutEventPage:
    with fleet.session() as s:
        if s.get(Rollout, rollout_id) is None:
            raise NotFoundError(f"no rollout {rollout_id}", "list rollouts with `edgefleet fleet rollouts list`")
        rows, after = keyset(
            s, select(RolloutEvent).where(RolloutEvent.rollout_id == rollout_id), RolloutEvent.id, limit, cursor
        )
        items = [
            RolloutEventOut(
                at=e.at,
                event=e.event,
                to=e.to_state,
                device=e.device_id,
                detail=e.detail,
                **{"from": e.from_state},  # `from` is a Python keyword: the field is from_, aliased
            )
            for e in rows
        ]
        return RolloutEventPage(items=items, next=after)


# ---- jobs ---------------------------------------------------------------------------------


def _job_document(
    fleet: Fleet, dep: Deployment, name: str, version: str, build: Build | None, plan: RolloutPlan
) -> JobDocument:
    package = JobPackage(name=name, version=version)
    if build is not None:
        package = JobPackage(
            name=name,
            version=version,
            target=build.target,
            sha256=build.sha256,
            size=build.size,
            url=fleet.download_url(build.id, build.store_key),
        )
    # Agents tell their own jobs by kind: an agent before 0.2 ignores an agent_* job instead of taking it for a model.
    kind = f"agent_{dep.kind}" if name == RELEASE_NAME else dep.kind
    authorization = sign_rollback(fleet, dep.device_id, dep.job_id, name, version) if dep.kind == "rollback" else None
    shadow = ShadowSettings.model_validate(plan.shadow.model_dump()) if dep.kind == "shadow_install" else None
    return JobDocument(
        id=uuid.uuid4().hex,
        job=dep.job_id,
        kind=kind,
        rollout=dep.rollout_id,
        package=package,
        probation=JobProbation(**plan.probation.model_dump()),
        rollback_authorization=authorization,
        shadow=shadow,
    )


def sign_rollback(fleet: Fleet, device_id: str, job: str, name: str, version: str) -> RollbackAuthorization:
    """A fleet-signed permission for one device to install an older version, for one job."""
    if fleet.signing_key is None:
        raise ConflictError(
            "the fleet has no signing key, so it cannot authorize a rollback",
            "create one with `edgefleet keys create` and restart the fleet",
        )
    doc = RollbackAuthorization(device=device_id, job=job, name=name, version=version, key_id=fleet.signing_key.key_id)
    return doc.model_copy(update={"signature": base64.b64encode(fleet.signing_key.sign(doc.signed_bytes())).decode()})


def _send_wave(fleet: Fleet, s: Session, r: Rollout, wave: int, in_progress: int, now: float, outbox: list) -> None:
    """Start wave `wave` with as many of its jobs as `max_jobs_in_progress` leaves room for
    (`in_progress`: jobs of earlier waves not finished yet); `_step` sends the rest as jobs finish."""
    bounds = wave_bounds(RolloutPlan.model_validate(r.plan), len(r.devices))
    start = 0 if wave == 0 else bounds[wave - 1]
    r.wave = wave
    r.wave_started_at = now
    r.bake_started_at = None
    s.add(
        RolloutEvent(
            rollout_id=r.id,
            at=now,
            event="wave_sent",
            from_state=r.state,
            to_state=r.state,
            detail=f"wave {wave}: devices {start + 1}-{bounds[wave]} of {len(r.devices)}",
        )
    )
    _send_jobs(fleet, s, r, start, bounds[wave], in_progress, now, outbox)


def _send_jobs(
    fleet: Fleet, s: Session, r: Rollout, first: int, end: int, in_progress: int, now: float, outbox: list
) -> None:
    """Install jobs for r.devices[first:end], no more than `max_jobs_in_progress` unfinished at once.
    A device gets one install per rollout, in r.devices order, so `first` is the count sent so far."""
    ids = r.devices[first : min(end, first + max(0, fleet.config.max_jobs_in_progress - in_progress))]
    if not ids:
        return
    plan = RolloutPlan.model_validate(r.plan)
    mv = s.get(ModelVersion, r.model_version_id)
    name = s.get(ModelGroup, mv.group_id).name
    builds = {b.target: b for b in s.scalars(select(Build).where(Build.model_version_id == mv.id))}
    # One query per chunk and one flush per slice: a 5,000-job slice is a few statements, not 10,000.
    devices = {
        d.id: d
        for i in range(0, len(ids), SEND_CHUNK)
        for d in s.scalars(select(Device).where(Device.id.in_(ids[i : i + SEND_CHUNK])))
    }
    deps = []
    for device_id in ids:
        device = devices[device_id]
        deps.append(
            Deployment(
                job_id=f"r{r.id}-{uuid.uuid4().hex[:12]}",
                rollout_id=r.id,
                device_id=device_id,
                kind="install",
                wave=r.wave,
                build_id=builds[build_target(device, name)].id,
                previous_version=_running(device, name),
                updated_at=now,
            )
        )
    s.add_all(deps)
    s.flush()
    for dep in deps:
        outbox.append(
            (
                dep.device_id,
                _job_document(fleet, dep, name, mv.version, builds[build_target(devices[dep.device_id], name)], plan),
            )
        )


def send_shadow_jobs(fleet: Fleet, s: Session, r: Rollout, kind: str, now: float, outbox: list) -> None:
    """shadow_install (with the candidate's build) or shadow_remove to every device of shadow rollout `r`.

    A removal goes to devices whose install was sent, whatever its state: a camera that failed the
    install has nothing to remove and says so, and one that is offline gets it from its session."""
    plan = RolloutPlan.model_validate(r.plan)
    mv = s.get(ModelVersion, r.model_version_id)
    name = s.get(ModelGroup, mv.group_id).name
    builds = {b.target: b for b in s.scalars(select(Build).where(Build.model_version_id == mv.id))}
    if kind == "shadow_install":
        ids = list(r.devices)
    else:
        sent = select(Deployment.device_id).where(Deployment.rollout_id == r.id, Deployment.kind == "shadow_install")
        ids = sorted(s.scalars(sent))
    devices = {d.id: d for d in s.scalars(select(Device).where(Device.id.in_(ids)))}
    deps = [
        Deployment(
            job_id=f"r{r.id}-{'sh' if kind == 'shadow_install' else 'shrm'}-{uuid.uuid4().hex[:12]}",
            rollout_id=r.id,
            device_id=device_id,
            kind=kind,
            wave=0,
            build_id=builds[build_target(devices[device_id], name)].id if kind == "shadow_install" else None,
            previous_version=devices[device_id].model_version,
            updated_at=now,
        )
        for device_id in ids
    ]
    s.add_all(deps)
    s.flush()
    for dep in deps:
        build = s.get(Build, dep.build_id) if dep.build_id is not None else None
        outbox.append((dep.device_id, _job_document(fleet, dep, name, mv.version, build, plan)))
    r.wave, r.wave_started_at = 0, now
    s.add(
        RolloutEvent(
            rollout_id=r.id,
            at=now,
            event=f"{kind}_sent",
            from_state=r.state,
            to_state=r.state,
            detail=f"{kind} to {len(ids)} devices",
        )
    )


def _running(device: Device, name: str) -> str | None:
    """The version of `name` the device runs now: its agent's for agent releases."""
    if name == RELEASE_NAME:
        return device.agent_version
    return device.model_version if device.model_name == name else None


def _abort_step(fleet: Fleet, s: Session, r: Rollout, now: float, outbox: list) -> None:
    """Send rollback jobs to touched devices that need one; finish the abort once all answered."""
    plan = RolloutPlan.model_validate(r.plan)
    mv = s.get(ModelVersion, r.model_version_id)
    name = s.get(ModelGroup, mv.group_id).name
    deps = s.scalars(select(Deployment).where(Deployment.rollout_id == r.id)).all()
    rollbacks = {d.device_id: d for d in deps if d.kind == "rollback"}
    pending = []
    for d in (d for d in deps if d.kind == "install"):
        if d.state in FAILED:
            continue  # the agent never switched, or already rolled itself back
        rb = rollbacks.get(d.device_id)
        if rb is None:
            if d.previous_version is None:
                d.detail = "no previous model to roll back to"
                continue
            prev = s.scalar(
                select(ModelVersion).where(
                    ModelVersion.group_id == mv.group_id, ModelVersion.version == d.previous_version
                )
            )
            device = s.get(Device, d.device_id)
            # None: an agent version never uploaded (the installed one), which the camera still has
            build = (
                s.scalar(
                    select(Build).where(Build.model_version_id == prev.id, Build.target == build_target(device, name))
                )
                if prev
                else None
            )
            rb = Deployment(
                job_id=f"r{r.id}-rb-{uuid.uuid4().hex[:12]}",
                rollout_id=r.id,
                device_id=d.device_id,
                kind="rollback",
                wave=d.wave,
                build_id=build.id if build else None,
                previous_version=mv.version,
                updated_at=now,
            )
            s.add(rb)
            s.flush()
            outbox.append((d.device_id, _job_document(fleet, rb, name, d.previous_version, build, plan)))
            pending.append(rb)
        elif rb.state not in TERMINAL_STATES:
            pending.append(rb)
    if not pending:
        failed = [d.device_id for d in rollbacks.values() if d.state != "committed"]
        _transition(s, r, "rolled_back", now, f"rollback failed on {', '.join(failed)}" if failed else "")


def _stats(s: Session, cond: list) -> tuple[int, dict[str, float | None]]:
    """Telemetry count, and per bound its value and the evidence behind it, over rows matching `cond`."""
    t = Telemetry
    row = s.execute(
        select(
            func.count(t.id),
            func.sum(t.frames),
            func.sum(t.alerts),
            func.sum(t.confidence_mean * t.frames),
            func.sum(case((t.confidence_mean.is_not(None), t.frames), else_=0)),
            func.avg(t.latency_p95_ms),
            func.count(t.latency_p95_ms),
        ).where(*cond)
    ).one()
    count, frames, alerts, conf_weighted, conf_frames, p95, p95_samples = row
    return count, {
        "alert_rate": (alerts or 0) / frames if frames else None,
        "alert_rate_evidence": frames or 0,
        "confidence": conf_weighted / conf_frames if conf_frames else None,
        "confidence_evidence": conf_frames or 0,
        "latency_p95_ms": float(p95) if p95 is not None else None,
        "latency_p95_ms_evidence": p95_samples or 0,
    }


def _new_stats(s: Session, r: Rollout, name: str, version: str) -> tuple[int, dict[str, float | None]]:
    """Telemetry of this rollout's committed devices on the new version."""
    d, t = Deployment, Telemetry
    committed = select(d.device_id).where(d.rollout_id == r.id, d.kind == "install", d.state == "committed")
    return _stats(s, [t.device_id.in_(committed), t.model_name == name, t.model_version == version])


def _old_stats(s: Session, r: Rollout, name: str, version: str) -> tuple[int, dict[str, float | None]]:
    """Telemetry of this rollout's devices on the version each ran before it: for the devices not
    switched yet that evidence keeps growing while the gate waits."""
    previous = {
        d.device_id: d.previous_version
        for d in s.scalars(select(Deployment).where(Deployment.rollout_id == r.id, Deployment.kind == "install"))
    }
    rest = [dev for dev in r.devices if dev not in previous]
    current = select(Device.id, Device.model_version).where(Device.id.in_(rest), Device.model_name == name)
    previous |= dict(s.execute(current).all())
    by_version: dict[str, list[str]] = {}
    for dev, old in previous.items():
        if old is not None and old != version:
            by_version.setdefault(old, []).append(dev)
    if not by_version:
        return 0, {}
    t = Telemetry
    either = or_(*(and_(t.model_version == v, t.device_id.in_(devs)) for v, devs in by_version.items()))
    return _stats(s, [t.model_name == name, either])


# Each bound: (what, key, unit of its evidence, the gate's minimum, the limit from the old value, upper?, format).
def _bounds(gate: HealthGate) -> list[tuple]:
    return [
        (
            "alert rate",
            "alert_rate",
            "frames",
            gate.alert_rate_min_frames,
            lambda old: old * gate.alert_rate_max_ratio + gate.alert_rate_slack,
            True,
            "{:.3f}",
        ),
        (
            "mean confidence",
            "confidence",
            "frames",
            gate.confidence_min_frames,
            lambda old: old * gate.confidence_min_ratio,
            False,
            "{:.3f}",
        ),
        (
            "p95 latency",
            "latency_p95_ms",
            "samples",
            gate.latency_min_samples,
            lambda old: old * gate.latency_p95_max_ratio + gate.latency_p95_slack_ms,
            True,
            "{:.1f} ms",
        ),
    ]


def _judge_bound(bound: tuple, new: dict, old: dict) -> tuple[str, str]:
    """("fail" | "thin" | "pass", why) for one bound."""
    what, key, unit, minimum, limit, upper, fmt = bound
    thin = [
        f"{n} of {minimum} {unit} {side}"
        for side, n in (("on the new model", new[key + "_evidence"]), ("before", old[key + "_evidence"]))
        if n < minimum
    ]
    if thin:
        return "thin", f"{what} " + ", ".join(thin)
    worse = new[key] > limit(old[key]) if upper else new[key] < limit(old[key])
    return ("fail" if worse else "pass"), f"{what} {fmt.format(new[key])} vs {fmt.format(old[key])} before"


def health_gate(s: Session, r: Rollout, gate: HealthGate, name: str) -> tuple[bool | None, str]:
    """(True, why) pass, (False, why) fail, (None, why) not enough evidence yet: wait."""
    if not gate.enabled:
        return True, "health gate disabled"
    version = s.get(ModelVersion, r.model_version_id).version
    n_new, new = _new_stats(s, r, name, version)
    if n_new < gate.min_samples:
        return None, f"waiting for telemetry from the new model ({n_new}/{gate.min_samples})"
    n_old, old = _old_stats(s, r, name, version)
    if n_old == 0:
        if gate.require_baseline:
            return None, "no telemetry from the previous model to compare with"
        return True, "no telemetry from the previous model; bounds not checked"
    verdicts = [_judge_bound(b, new, old) for b in _bounds(gate)]
    failed = [why for v, why in verdicts if v == "fail"]
    if failed:
        return False, "model health: " + "; ".join(failed)
    thin = [why for v, why in verdicts if v == "thin"]
    if thin:
        return None, "not enough evidence: " + "; ".join(thin)
    return True, f"model health within bounds ({n_new} samples)"


def agent_health_gate(s: Session, r: Rollout, gate: HealthGate) -> tuple[bool | None, str]:
    """An agent release is healthy where every device that committed it is online on it and sends telemetry since."""
    if not gate.enabled:
        return True, "health gate disabled"
    version = s.get(ModelVersion, r.model_version_id).version
    committed = s.scalars(
        select(Deployment).where(
            Deployment.rollout_id == r.id, Deployment.kind == "install", Deployment.state == "committed"
        )
    ).all()
    sick = []
    waiting = []
    for dep in committed:
        device = s.get(Device, dep.device_id)
        if device.status != "online" or device.agent_version != version:
            sick.append(f"{device.id} is {device.status} on agent {device.agent_version}")
            continue
        samples = s.scalar(
            select(func.count(Telemetry.id)).where(
                Telemetry.device_id == device.id, Telemetry.received_at >= dep.updated_at
            )
        )
        if samples < gate.min_samples:
            waiting.append(f"{device.id} {samples}/{gate.min_samples}")
    if sick:
        return False, "agent health: " + "; ".join(sick[:5])
    if waiting:
        return None, "waiting for telemetry from the new agent: " + ", ".join(waiting[:5])
    return True, f"agent {version} online with telemetry on {len(committed)} devices"


WAITING_NOTE_EVERY_S = 10.0  # how often a waiting gate's progress is written to the audit trail


def _note_waiting(s: Session, r: Rollout, now: float, why: str) -> None:
    """Say why the gate waits (events, dashboard), at most every WAITING_NOTE_EVERY_S per rollout."""
    last = s.scalar(
        select(func.max(RolloutEvent.at)).where(
            RolloutEvent.rollout_id == r.id,
            RolloutEvent.event == "health_gate_waiting",
            RolloutEvent.at >= r.bake_started_at,
        )
    )
    if last is None or now - last >= WAITING_NOTE_EVERY_S:
        s.add(
            RolloutEvent(
                rollout_id=r.id, at=now, event="health_gate_waiting", from_state=r.state, to_state=r.state, detail=why
            )
        )


def _step(fleet: Fleet, s: Session, r: Rollout, now: float, outbox: list) -> None:
    plan = RolloutPlan.model_validate(r.plan)
    if r.state == "created" and plan.mode == "shadow":
        _transition(s, r, "shadow_start", now)
        send_shadow_jobs(fleet, s, r, "shadow_install", now, outbox)
        return
    if r.state == "created":
        _transition(s, r, "start", now)
        _send_wave(fleet, s, r, 0, 0, now, outbox)
        return
    if r.state == "aborting":
        _abort_step(fleet, s, r, now, outbox)
        return
    if r.state not in ("deploying", "baking"):
        return
    if r.wave < 0:  # paused before the canary went out, then resumed
        _send_wave(fleet, s, r, 0, 0, now, outbox)
        return
    mine = (Deployment.rollout_id == r.id, Deployment.kind == "install")
    counts = dict(s.execute(select(Deployment.state, func.count()).where(*mine).group_by(Deployment.state)).all())
    # Jobs that may still answer soon: a device silent this long (offline) sends nothing to queue,
    # and must not hold a slot of `max_jobs_in_progress` until the wave times out.
    in_progress = s.scalar(
        select(func.count()).where(
            *mine, Deployment.state.not_in(("committed", *FAILED)), Deployment.updated_at >= now - QUIET_AFTER_S
        )
    )
    touched = sum(counts.values())
    failed = sum(counts.get(state, 0) for state in FAILED)
    committed = counts.get("committed", 0)
    if failed > plan.failure_threshold * touched:
        some = s.scalars(
            select(Deployment.device_id).where(*mine, Deployment.state.in_(FAILED)).order_by(Deployment.id).limit(5)
        ).all()
        _transition(s, r, "failure_threshold", now, f"{failed} of {touched} devices failed ({', '.join(some)})")
        _abort_step(fleet, s, r, now, outbox)
        return
    if r.state == "deploying":
        end = wave_bounds(plan, len(r.devices))[r.wave]
        if touched < end:  # the wave's rest, as its first jobs finish
            _send_jobs(fleet, s, r, touched, end, in_progress, now, outbox)
        elif committed >= math.ceil(plan.success_threshold * touched - 1e-9):
            _transition(s, r, "wave_committed", now, f"wave {r.wave}: {committed}/{touched} committed")
            r.bake_started_at = now
            return
        if now - (r.wave_started_at or now) > plan.wave_timeout_s:
            _transition(
                s,
                r,
                "wave_timeout",
                now,
                f"wave {r.wave}: only {committed}/{end} committed after {plan.wave_timeout_s:.0f} s",
            )
            _abort_step(fleet, s, r, now, outbox)
        return
    if now - (r.bake_started_at or now) < plan.bake_time_s:
        return
    name = s.get(ModelGroup, s.get(ModelVersion, r.model_version_id).group_id).name
    ok, why = agent_health_gate(s, r, plan.health) if name == RELEASE_NAME else health_gate(s, r, plan.health, name)
    if ok is None:
        if now - r.bake_started_at > plan.bake_time_s + plan.wave_timeout_s:
            _transition(s, r, "wave_timeout", now, why)
            _abort_step(fleet, s, r, now, outbox)
        else:
            _note_waiting(s, r, now, why)
        return
    if not ok:
        _transition(s, r, "health_gate_failed", now, why)
        _abort_step(fleet, s, r, now, outbox)
        return
    if r.wave + 1 >= len(wave_bounds(plan, len(r.devices))):
        _transition(s, r, "completed", now, why)
    else:
        _transition(s, r, "next_wave", now, why)
        _send_wave(fleet, s, r, r.wave + 1, in_progress, now, outbox)


QUIET_AFTER_S = 120.0  # a job without an update this long no longer counts as in progress
SEND_CHUNK = 500  # jobs published before waiting for the broker's acknowledgements and marking them sent
SEND_TIMEOUT_S = 30.0
RESEND_AFTER_S = 10.0  # a job still unsent this long after its row was written lost its sender (a replica died)


def _flush(fleet: Fleet, outbox: list[tuple[str, JobDocument]]) -> None:
    """Publish jobs whose rows are committed (so every answer finds its deployment), then mark them
    sent once the broker acknowledged them. A sender that dies in between leaves them unsent, and the
    scheduler sends them again (`_resend_unsent`): a job is never lost, and at most the jobs of one
    chunk whose acknowledgement arrived just before the death go out twice (same job id: the agent
    ignores the second)."""
    for i in range(0, len(outbox), SEND_CHUNK):
        chunk = outbox[i : i + SEND_CHUNK]
        receipts = [fleet.notify(device_id, job.wire()) for device_id, job in chunk]
        deadline = time.monotonic() + SEND_TIMEOUT_S
        for receipt in receipts:
            if receipt is not None:
                receipt.wait_for_publish(max(0.0, deadline - time.monotonic()))
                if not receipt.is_published():
                    raise ServiceError(
                        f"the MQTT broker did not acknowledge a job within {SEND_TIMEOUT_S:.0f} s",
                        "check the broker; unsent jobs are sent again by the next rollout tick",
                    )
        with fleet.writer() as s, s.begin():
            s.execute(
                sa_update(Deployment)
                .where(Deployment.job_id.in_([job.job for _, job in chunk]))
                .values(sent_at=fleet.clock())
                .execution_options(synchronize_session=False)
            )


def _resend_unsent(fleet: Fleet) -> None:
    """Send again the jobs of active rollouts that a dead replica wrote but never got acknowledged."""
    outbox: list[tuple[str, JobDocument]] = []
    with fleet.session() as s:
        stale = s.scalars(
            select(Deployment)
            .join(Rollout, Rollout.id == Deployment.rollout_id)
            .where(
                Rollout.state.in_(ACTIVE),
                Deployment.sent_at.is_(None),
                Deployment.state == "notified",
                Deployment.updated_at < fleet.clock() - RESEND_AFTER_S,
            )
            .order_by(Deployment.id)
        ).all()
        for dep in stale:
            outbox.append((dep.device_id, _job_again(fleet, s, dep)))
    if outbox:
        log.warning("sending %d jobs again that were written but never acknowledged by the broker", len(outbox))
        _flush(fleet, outbox)


def _job_again(fleet: Fleet, s: Session, dep: Deployment) -> JobDocument:
    """The job document of a stored deployment, as its rollout step built it."""
    r = s.get(Rollout, dep.rollout_id)
    mv = s.get(ModelVersion, r.model_version_id)
    name = s.get(ModelGroup, mv.group_id).name
    build = s.get(Build, dep.build_id) if dep.build_id is not None else None
    # A rollback installs the version its install replaced; the other kinds name the rollout's.
    version = (_rolled_back_to(s, dep) or "") if dep.kind == "rollback" else mv.version
    return _job_document(fleet, dep, name, version, build, RolloutPlan.model_validate(r.plan))


def tick(fleet: Fleet) -> None:
    """Move every active rollout one step forward; call it from one scheduler at a time (fleet/leader.py).

    Jobs are published once fleet.lock is released: while the ticker waits for the broker to
    acknowledge them the ingest must go on, or the device messages the broker queues for the fleet
    pile up behind it (measured at 25,000 devices with the lock held: the ingest stood still, the
    broker's queue passed 110,000 messages, and its PUBACKs slowed down with it)."""
    _resend_unsent(fleet)
    with fleet.session() as s:
        ids = list(s.scalars(select(Rollout.id).where(Rollout.state.in_(ACTIVE))))
    for rollout_id in ids:
        outbox: list[tuple[str, JobDocument]] = []
        with fleet.lock, fleet.writer() as s, s.begin():
            r = _load(s, rollout_id)
            _step(fleet, s, r, fleet.clock(), outbox)
        _flush(fleet, outbox)


def record_job_update(fleet: Fleet, device_id: str, job_id: str, payload: dict[str, Any]) -> bool:
    """Store an agent's job update; False when the job is unknown or not this device's."""
    update = JobUpdate.model_validate(payload)
    with fleet.lock, fleet.writer() as s, s.begin():
        return apply_job_update(fleet, s, device_id, job_id, update)


# How far a job has come: an update behind the stored state arrived out of order (two replicas
# ingest one device's messages in parallel) and changes nothing.
PROGRESS = {state: rank for rank, state in enumerate(("notified",) + UPDATE_STATES[:6] + ("rolling_back",))}
PROGRESS |= {state: len(PROGRESS) for state in TERMINAL_STATES}


def apply_job_update(fleet: Fleet, s: Session, device_id: str, job_id: str, update: JobUpdate) -> bool:
    """record_job_update inside the caller's transaction; hold fleet.lock."""
    return apply_job_updates(fleet, s, [(device_id, job_id, update)])[0]


def apply_job_updates(fleet: Fleet, s: Session, updates: list[tuple[str, str, JobUpdate]]) -> list[bool]:
    """Store (device, job, update) in order inside the caller's transaction (the MQTT ingest batches
    them); per update False when the job is unknown or not that device's. Hold fleet.lock.

    One SELECT for all jobs, one compare-and-set UPDATE per job (`... WHERE state = <read>`) with the
    job's updates folded into it, one INSERT of all their audit events: a device's ~7 updates of a
    rollout cost about one statement. A replica that stored another update of a job meanwhile makes
    its row count 0, and that job's updates are judged again on the new state, so no transition is
    applied twice and a terminal state is never left."""
    d = Deployment.__table__.c
    wanted = sorted({job for _, job, _ in updates})
    rows = {
        row.job_id: row
        for i in range(0, len(wanted), SEND_CHUNK)
        for row in s.execute(
            select(d.id, d.job_id, d.device_id, d.state, d.rollout_id, d.kind).where(
                d.job_id.in_(wanted[i : i + SEND_CHUNK])
            )
        )
    }
    known = [job in rows and rows[job].device_id == device for device, job, _ in updates]
    by_job: dict[str, list[JobUpdate]] = {}
    for (_, job, update), ok in zip(updates, known):
        if ok:
            by_job.setdefault(job, []).append(update)
    now = fleet.clock()
    # Rows are written in device order, the same in every replica's batch, so two batches that
    # touch the same devices wait for each other instead of deadlocking.
    order = sorted(by_job, key=lambda job: (rows[job].device_id, job))
    events = [event for job in order for event in _advance(s, rows[job], by_job[job], now)]
    if events:
        s.execute(sa_insert(RolloutEvent.__table__), events)
    return known


def _progress(seen: str, updates: list[JobUpdate]) -> list[tuple[str, JobUpdate]]:
    """The (from state, update) steps that move a job forward from `seen`; a QoS 1 redelivery, or a
    late or out-of-order update (two replicas ingest one device in parallel) changes nothing."""
    steps = []
    for update in updates:
        if seen not in TERMINAL_STATES and PROGRESS[update.state] > PROGRESS[seen]:
            steps.append((seen, update))
            seen = update.state
    return steps


def _advance(s: Session, row: Any, updates: list[JobUpdate], now: float) -> list[dict[str, Any]]:
    """Compare-and-set one job to the last state its updates reach; its audit events."""
    d = Deployment.__table__.c
    seen = row.state
    while steps := _progress(seen, updates):
        last = steps[-1][1]
        values: dict[str, Any] = {"state": last.state, "detail": last.detail[:500], "updated_at": now}
        if any(update.state == "switching" for _, update in steps):
            values["switched_at"] = func.coalesce(d.switched_at, now)
        if s.execute(sa_update(Deployment.__table__).where(d.id == row.id, d.state == seen).values(**values)).rowcount:
            if last.state == "committed" and row.kind in (
                "install",
                "rollback",
            ):  # a shadow model is not the active one
                _record_installed(s, row, row.device_id, last.order)
            return [
                {
                    "rollout_id": row.rollout_id,
                    "at": now,
                    "device_id": row.device_id,
                    "event": f"{row.kind}_update",
                    "from_state": before,
                    "to_state": update.state,
                    "detail": update.detail[:500],
                }
                for before, update in steps
            ]
        seen = s.scalar(select(d.state).where(d.id == row.id))  # another replica moved it: judge again
    return []


def _record_installed(s: Session, dep: Any, device_id: str, order: int | None) -> None:
    """A committed job: the device now runs the version it installed (or rolled back to), unless a
    later message of the device (at `order`, fleet/order.py) already said what it runs."""
    name, version = s.execute(
        select(ModelGroup.name, ModelVersion.version)
        .join(ModelVersion, ModelVersion.group_id == ModelGroup.id)
        .join(Rollout, Rollout.model_version_id == ModelVersion.id)
        .where(Rollout.id == dep.rollout_id)
    ).one()
    installed = version if dep.kind == "install" else _rolled_back_to(s, dep)
    values = {"agent_version": installed} if name == RELEASE_NAME else {"model_name": name, "model_version": installed}
    c = Device.__table__.c
    s.execute(
        sa_update(Device.__table__)
        .where(c.id == device_id, later_sql(c.model_order, literal(order, BigInteger)))
        .values(**values, model_order=advanced_sql(c.model_order, literal(order, BigInteger)))
    )
    device = s.identity_map.get(identity_key(Device, device_id))
    if device is not None:
        s.expire(device)  # read again: the row changed under it


def _rolled_back_to(s: Session, rollback: Any) -> str | None:
    """The version a rollback job installed: the previous version of the install it undoes."""
    install = s.scalar(
        select(Deployment).where(
            Deployment.rollout_id == rollback.rollout_id,
            Deployment.device_id == rollback.device_id,
            Deployment.kind == "install",
        )
    )
    return install.previous_version if install else None
