"""The promotion gate's drift condition: the candidate's drift summaries in ShadowReports, judged
against the candidate package's own baseline (a real compiled model and the agent's window code on
real frames, tests/drift/drift_support.py), raise its alarm and refuse the promotion."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest
from test_fleet_library import answer
from test_shadow_library import send, status

sys.path.insert(0, str(Path(__file__).parents[1] / "drift"))
from drift_support import compile_with_baseline, telemetry_windows  # noqa: E402

from edgefleet.errors import ConflictError  # noqa: E402
from edgefleet.fleet import devices, registry, rollouts, shadow  # noqa: E402
from edgefleet.fleet.config import FleetConfig  # noqa: E402
from edgefleet.fleet.core import open_fleet  # noqa: E402
from edgefleet.fleet.drift import DriftConfig  # noqa: E402
from edgefleet.fleet.drift_service import DriftMonitor  # noqa: E402
from edgefleet.fleet.ingest import Ingest  # noqa: E402
from edgefleet.signing import load_public_key  # noqa: E402

GATE = {"min_agreement": 0.0, "min_frames": 100, "max_latency_ratio": 10.0}


def shadow_report(window: dict, job: dict, active: str) -> dict:
    """A simulated device's report whose candidate drift summary is an agent telemetry window's."""
    frames = window["frames"]["ok"]
    return {
        "schema": 1,
        "id": uuid.uuid4().hex,
        "job": job["job"],
        "rollout": job["rollout"],
        "window_s": 60.0,
        "active": {"name": job["package"]["name"], "version": active},
        "candidate": window["model"],
        "frames_seen": frames,
        "agreement": {"task": "classification", "frames": frames, "agree": frames},
        "active_latency_ms": {"count": frames, "p50": 2.0},
        "candidate_latency_ms": {"count": frames, "p50": 2.0},
        "drift": window["drift"],
    }


def test_a_candidate_drift_alarm_fails_the_gate_and_refuses_the_promotion(tmp_path, edgefleet_home):
    package, pub, _ = compile_with_baseline(tmp_path / "package", n_images=100)
    sent: list[dict] = []  # the jobs the fleet sends
    fleet = open_fleet(
        FleetConfig(
            data_dir=tmp_path / "fleet", signing_key=tmp_path / "none.key", drift=DriftConfig(windows_to_alarm=2)
        ),
        notify=lambda device, payload: sent.append(payload),
    )
    fleet.trusted.append(load_public_key(pub))
    version = registry.upload_package(fleet, package)
    registry.set_approval(fleet, version.group, version.version, "Approved")
    ingest = Ingest(fleet)
    devices.register_device(fleet, "cam-1", "x86_64")
    send(
        fleet,
        ingest,
        "cam-1",
        "status",
        status("cam-1", ["shadow"]) | {"model": {"name": version.group, "version": "0"}},
    )
    plan = {"mode": "shadow", "promotion": GATE}
    rid = rollouts.create_rollout(fleet, version.group, version.version, {"devices": ["cam-1"]}, plan).id
    rollouts.tick(fleet)
    (job,) = sent
    answer(fleet, "cam-1", job, ["committed"])
    monitor = DriftMonitor(fleet)
    for window in telemetry_windows(package, pub, "normal", 2, seed=1):
        send(fleet, ingest, "cam-1", "shadow", shadow_report(window, job, "0"))
    view = shadow.shadow_view(fleet, monitor, rid)
    assert view.verdict.passed and not view.total.drift_alarm, view.verdict
    for window in telemetry_windows(package, pub, "dark", 2, seed=2):
        send(fleet, ingest, "cam-1", "shadow", shadow_report(window, job, "0"))
    view = shadow.shadow_view(fleet, monitor, rid)
    assert view.total.drift_devices == ["cam-1"] and view.groups[0].stats.drift_alarm
    assert [c.name for c in view.verdict.checks if not c.ok] == ["drift"]
    with pytest.raises(ConflictError, match=r"candidate drift alarm on 1 devices \(cam-1\)"):
        shadow.promote(fleet, monitor, rid)
