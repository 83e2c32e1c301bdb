"""Shadow rollouts in the fleet library on SQLite (and on PostgreSQL, tests/fleet/test_fleet_postgres.py):
simulated devices report ShadowReports through the same ingest the MQTT bridge feeds; the sums are
computed by hand here. tests/fleet/test_shadow_mqtt.py runs the same through mosquitto and `fleet serve`."""

from __future__ import annotations

import json
import uuid

import pytest
from test_fleet_library import answer, upload_approved

from edgefleet.contracts.rest import RolloutPlan
from edgefleet.errors import BadInputError, ConflictError, InvalidTransitionError
from edgefleet.fleet import devices, rollouts, shadow
from edgefleet.fleet.drift_service import DriftMonitor
from edgefleet.fleet.ingest import Ingest, Message

SHADOW_PLAN = {
    "mode": "shadow",
    "shadow": {"sample_share": 0.5, "window_s": 30},
    "promotion": {"min_agreement": 0.8, "min_frames": 100, "max_latency_ratio": 1.5},
    "health": {"enabled": False},
    "bake_time_s": 0,
}


def status(device: str, features: list[str] | None, version: str = "1") -> dict:
    body = {"schema": 1, "state": "online", "agent_version": "0.9.0", "model": {"name": "tiny", "version": version}}
    return body | ({"features": features} if features is not None else {})


def report(device: str, job: str, rollout: int | None, *, frames: int, agree: int, active_ms: float, cand_ms: float):
    """A simulated device's ShadowReport of one classification window."""
    return {
        "schema": 1,
        "id": uuid.uuid4().hex,
        "device": device,
        "job": job,
        "rollout": rollout,
        "window_s": 30.0,
        "active": {"name": "tiny", "version": "1"},
        "candidate": {"name": "tiny", "version": "2"},
        "frames_seen": frames * 2,
        "skipped_budget": 1,
        "agreement": {"task": "classification", "frames": frames, "agree": agree},
        "active_latency_ms": {"count": frames, "p50": active_ms, "p95": active_ms * 2},
        "candidate_latency_ms": {"count": frames, "p50": cand_ms, "p95": cand_ms * 2},
        "active_confidence": 0.9,
        "candidate_confidence": 0.8,
        "candidate_cpu_share": 0.1,
    }


def send(fleet, ingest: Ingest, device: str, kind: str, body: dict | bytes) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    ingest.handle_batch([Message(f"edgefleet/v1/{device}/{kind}", payload, fleet.clock())])


def setup(fleet, tiny_packages) -> tuple:
    """Simulated devices cam-a, cam-b (group lobby) and cam-c (group yard) on tiny 1 with the shadow
    feature, cam-old without it; tiny 2 approved."""
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ingest = Ingest(fleet)
    for dev, group in (("cam-a", "lobby"), ("cam-b", "lobby"), ("cam-c", "yard"), ("cam-old", "yard")):
        devices.register_device(fleet, dev, "x86_64", group=group)
        send(fleet, ingest, dev, "status", status(dev, None if dev == "cam-old" else ["shadow"]))
    return fleet, ingest


def start_shadow(fleet, plan: dict = SHADOW_PLAN, devs=("cam-a", "cam-b", "cam-c")) -> tuple[int, dict[str, str]]:
    rid = rollouts.create_rollout(fleet, "tiny", "2", {"devices": list(devs)}, plan).id
    start = len(fleet.sent)
    rollouts.tick(fleet)
    jobs = {device: payload for device, payload in fleet.sent[start:]}
    assert {p["kind"] for p in jobs.values()} == {"shadow_install"} and set(jobs) == set(devs)
    for device, payload in jobs.items():
        assert payload["shadow"]["sample_share"] == 0.5 and payload["package"]["version"] == "2"
        assert payload["package"]["url"].startswith("http")
        answer(fleet, device, payload, ["downloading", "verifying", "committed"])
    return rid, {d: p["job"] for d, p in jobs.items()}


def test_devices_without_the_shadow_feature_are_refused_with_a_fix(fleet, tiny_packages):
    fleet, _ = setup(fleet, tiny_packages)
    with pytest.raises(ConflictError, match="cam-old runs agent 0.9.0, which does not list the 'shadow' feature") as e:
        rollouts.create_rollout(fleet, "tiny", "2", {"devices": ["cam-a", "cam-old"]}, SHADOW_PLAN)
    assert "update its agent" in e.value.fix
    with pytest.raises(BadInputError, match="agent release cannot run in shadow mode"):
        rollouts._check_shadow_devices([], "edgefleet-agent")


def test_aggregation_equals_hand_sums_and_promotion_starts_a_staged_rollout(fleet, tiny_packages):
    fleet, ingest = setup(fleet, tiny_packages)
    rid, jobs = start_shadow(fleet)
    assert fleet_state(fleet, rid) == ("shadowing", {"committed": 3})
    # The installed shadow model is not the active one: the devices still run tiny 1.
    assert {devices.get_device(fleet, d).model.version for d in jobs} == {"1"}
    windows = {"cam-a": (40, 36, 10.0, 12.0), "cam-b": (60, 50, 20.0, 22.0), "cam-c": (50, 45, 10.0, 14.0)}
    for dev, (frames, agree, a_ms, c_ms) in windows.items():
        body = report(dev, jobs[dev], rid, frames=frames, agree=agree, active_ms=a_ms, cand_ms=c_ms)
        send(fleet, ingest, dev, "shadow", body)
        send(fleet, ingest, dev, "shadow", body)  # a resend: stored once
    view = shadow.shadow_view(fleet, DriftMonitor(fleet), rid)
    frames, agree = 40 + 60 + 50, 36 + 50 + 45
    active = (40 * 10.0 + 60 * 20.0 + 50 * 10.0) / frames
    cand = (40 * 12.0 + 60 * 22.0 + 50 * 14.0) / frames
    assert (view.total.frames, view.total.reports, view.total.devices) == (frames, 3, 3)
    assert view.total.agreement == pytest.approx(agree / frames)
    assert view.total.latency_ratio == pytest.approx(cand / active)
    assert view.total.frames_seen == 2 * frames and view.total.skipped_budget == 3
    lobby = next(g for g in view.groups if g.group == "lobby")
    assert lobby.stats.agreement == pytest.approx(86 / 100) and lobby.stats.frames == 100
    assert [p.device for p in view.series] == ["cam-a", "cam-b", "cam-c"]
    assert ingest.counters["duplicate"] == 3 and ingest.counters["shadow"] == 3
    assert view.verdict.passed, view.verdict
    start = len(fleet.sent)
    staged = shadow.promote(fleet, DriftMonitor(fleet), rid)
    assert staged.source == rid and staged.plan.mode == "install" and staged.state == "created"
    removed = fleet.sent[start:]
    assert sorted(d for d, p in removed if p["kind"] == "shadow_remove") == sorted(jobs)
    assert fleet_state(fleet, rid)[0] == "promoted"
    assert shadow.shadow_view(fleet, DriftMonitor(fleet), rid).promoted_to == staged.id
    with pytest.raises(InvalidTransitionError, match="is promoted; 'promote' is not allowed"):
        shadow.promote(fleet, DriftMonitor(fleet), rid)  # once only
    start = len(fleet.sent)
    rollouts.tick(fleet)
    assert [p["kind"] for _, p in fleet.sent[start:]] == ["install"]  # the canary of the staged rollout


@pytest.mark.parametrize(
    ("windows", "failed"),
    [
        ((50, 30, 10.0, 11.0), "agreement 0.600 (at least 0.800)"),
        ((20, 20, 10.0, 11.0), "60 compared frames (at least 100)"),
        ((50, 49, 10.0, 30.0), "candidate/active p50 latency 3.000 (at most 1.500)"),
    ],
    ids=["agreement", "frames", "latency"],
)
def test_each_failed_gate_condition_refuses_the_promotion_with_its_number(fleet, tiny_packages, windows, failed):
    fleet, ingest = setup(fleet, tiny_packages)
    rid, jobs = start_shadow(fleet)
    frames, agree, a_ms, c_ms = windows
    for dev in ("cam-a", "cam-b", "cam-c"):
        send(
            fleet,
            ingest,
            dev,
            "shadow",
            report(dev, jobs[dev], rid, frames=frames, agree=agree, active_ms=a_ms, cand_ms=c_ms),
        )
    with pytest.raises(BadInputError, match="its plan's mode is install"):
        shadow.promote(fleet, DriftMonitor(fleet), rid, RolloutPlan(mode="shadow"))
    with pytest.raises(ConflictError, match="does not pass its promotion gate") as e:
        shadow.promote(fleet, DriftMonitor(fleet), rid)
    assert failed in str(e.value) and fleet_state(fleet, rid)[0] == "shadowing"


def test_stop_and_abort_send_shadow_remove(fleet, tiny_packages):
    fleet, _ = setup(fleet, tiny_packages)
    for action in ("stop", "abort"):
        rid, jobs = start_shadow(fleet)
        start = len(fleet.sent)
        out = rollouts.control(fleet, rid, action, "test")
        assert out.state == {"stop": "stopped", "abort": "aborted"}[action]
        assert sorted((d, p["kind"]) for d, p in fleet.sent[start:]) == [(d, "shadow_remove") for d in sorted(jobs)]
    with pytest.raises(Exception, match="'stop' is not allowed"):
        rollouts.control(fleet, rollouts.create_rollout(fleet, "tiny", "2", {"devices": ["cam-a"]}, {}).id, "stop")


def test_forged_unknown_and_malformed_reports_are_refused_and_counted(fleet, tiny_packages):
    fleet, ingest = setup(fleet, tiny_packages)
    rid, jobs = start_shadow(fleet)
    good = report("cam-a", jobs["cam-a"], rid, frames=10, agree=9, active_ms=1, cand_ms=1)
    send(fleet, ingest, "cam-a", "shadow", good | {"device": "cam-b"})  # wrong device field
    send(fleet, ingest, "cam-b", "shadow", good | {"device": "cam-b", "id": uuid.uuid4().hex})  # cam-a's job
    send(fleet, ingest, "cam-a", "shadow", good | {"job": "r99-sh-unknown"})  # no such job
    send(fleet, ingest, "cam-a", "shadow", good | {"rollout": rid + 100})  # another rollout
    send(fleet, ingest, "cam-a", "shadow", good | {"agreement": {"task": "classification", "frames": -1}})
    send(fleet, ingest, "cam-a", "shadow", b"not json")
    assert ingest.counters["dropped_malformed"] == 3 and ingest.counters["dropped_unknown_shadow"] == 3
    assert shadow.shadow_view(fleet, DriftMonitor(fleet), rid).total.reports == 0


def fleet_state(fleet, rid: int) -> tuple[str, dict[str, int]]:
    out = rollouts.get_rollout(fleet, rid)
    return out.state, out.installs


def test_detection_windows_sum_boxes_matches_and_score_deltas_by_hand(fleet, tiny_packages):
    fleet, ingest = setup(fleet, tiny_packages)
    rid, jobs = start_shadow(fleet)
    # (frames, active boxes, candidate boxes, matched, label agree, score delta sum, |delta| sum) per device
    windows = {"cam-a": (30, 40, 44, 36, 33, 1.8, 3.0), "cam-b": (20, 25, 21, 20, 20, -0.6, 1.2)}
    for dev, (frames, act, cand, matched, agree, delta, abs_delta) in windows.items():
        body = report(dev, jobs[dev], rid, frames=frames, agree=0, active_ms=10.0, cand_ms=10.0)
        body["agreement"] = {
            "task": "detection",
            "frames": frames,
            "active_boxes": act,
            "candidate_boxes": cand,
            "matched": matched,
            "label_agree": agree,
            "score_delta_sum": delta,
            "score_abs_delta_sum": abs_delta,
        }
        send(fleet, ingest, dev, "shadow", body)
    total = shadow.shadow_view(fleet, DriftMonitor(fleet), rid).total
    boxes, matched = 40 + 44 + 25 + 21, 36 + 20
    assert total.frames == 50 and total.match_rate == pytest.approx(2 * matched / boxes)
    assert total.agreement == pytest.approx(2 * (33 + 20) / boxes)
    assert total.label_agreement == pytest.approx((33 + 20) / matched)
    assert total.mean_score_delta == pytest.approx((1.8 - 0.6) / matched)
    assert total.mean_abs_score_delta == pytest.approx((3.0 + 1.2) / matched)
