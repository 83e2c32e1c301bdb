"""The fleet library on SQLite: registry, enrollment, ingest and the rollout engine.

Devices here are simulated in-process (they answer jobs by calling the same function the
MQTT ingest calls); tests/fleet/test_fleet_e2e.py runs the same flows with real agents.
"""

from __future__ import annotations

import json
import tarfile
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.contracts.rest import RolloutOut
from edgefleet.errors import (
    BadInputError,
    ConflictError,
    InvalidTransitionError,
    PackageIntegrityError,
    PermissionDeniedError,
)
from edgefleet.fleet import devices, registry, rollouts
from edgefleet.fleet.db import Telemetry
from edgefleet.fleet.ingest import Ingest, Message
from edgefleet.fleet.rollouts import RolloutPlan, wave_bounds


def register(fleet, n: int, group: str = "lobby", version: str = "1") -> list[str]:
    ids = [f"cam-{i:02d}" for i in range(n)]
    ingest = Ingest(fleet)
    for dev in ids:
        devices.register_device(fleet, dev, "x86_64", group=group, tags=["door"] if dev.endswith(("0", "2")) else [])
        ingest.handle_batch(
            [
                Message(
                    f"edgefleet/v1/{dev}/status",
                    json.dumps(
                        {"schema": 1, "state": "online", "model": {"name": "tiny", "version": version}}
                    ).encode(),
                    fleet.clock(),
                )
            ]
        )
    return ids


def upload_approved(fleet, *packages) -> None:
    for p in packages:
        v = registry.upload_package(fleet, p)
        if v.approval != "Approved":
            registry.set_approval(fleet, v.group, v.version, "Approved")


def answer(fleet, device: str, payload: dict, states: list[str]) -> None:
    for state in states:
        assert rollouts.record_job_update(
            fleet, device, payload["job"], {"schema": 1, "id": "x", "job": payload["job"], "state": state}
        )


def telemetry(fleet, device: str, version: str, *, frames=100, alerts=5, conf_bin=9, p95=10.0) -> None:
    counts = [0] * 10
    counts[conf_bin] = frames
    body = {
        "schema": 1,
        "id": uuid.uuid4().hex,  # each message its own id: the fleet stores one per id
        "model": {"name": "tiny", "version": version},
        "frames": {"ok": frames, "bad": 0, "error": 0},
        "alerts": {"person": alerts},
        "latency_ms": {"count": frames, "p50": p95 / 2, "p95": p95},
        "drift": {"confidence": {"edges": [i / 10 for i in range(11)], "counts": counts}},
    }
    Ingest(fleet).handle_batch([Message(f"edgefleet/v1/{device}/telemetry", json.dumps(body).encode(), fleet.clock())])


def jobs_since(fleet, start: int) -> list[tuple[str, dict]]:
    return fleet.sent[start:]


@pytest.mark.parametrize(
    "plan, n, expected",
    [
        ({"canary": 1, "waves": [100]}, 10, [1, 10]),
        ({"canary": 2, "waves": [50, 100]}, 10, [2, 5, 10]),
        ({"canary_percent": 10, "waves": [10, 60, 100]}, 20, [2, 12, 20]),
        ({"canary": 5, "waves": [25, 100]}, 4, [4]),
        ({"canary": 1, "waves": [1, 100]}, 10_000, [1, 100, 10_000]),
    ],
)
def test_wave_bounds(plan, n, expected):
    assert wave_bounds(RolloutPlan.model_validate(plan), n) == expected


@pytest.mark.parametrize(
    "plan",
    [{"waves": [50]}, {"waves": [60, 40, 100]}, {"waves": []}, {"canary": 0}, {"success_threshold": 0}, {"bogus": 1}],
)
def test_bad_plans_are_refused_with_a_reason(fleet, tiny_packages, plan):
    upload_approved(fleet, tiny_packages["v2"])
    register(fleet, 2)
    with pytest.raises(BadInputError, match="rollout"):
        rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, plan)


def test_registry_versions_builds_approval_and_lineage(fleet, tiny_packages, tmp_path):
    v = registry.upload_package(fleet, tiny_packages["v1"])
    assert (v.group, v.version, v.approval) == ("tiny", "1", "PendingManualApproval")
    assert [b.target for b in v.builds] == ["x86_64"] and v.lineage.source_uri.endswith("tiny-good.onnx")
    with pytest.raises(ConflictError, match="already has a build"):
        registry.upload_package(fleet, tiny_packages["v1"])
    with pytest.raises(InvalidTransitionError):
        registry.set_approval(fleet, "tiny", "1", "Pending")
    assert registry.set_approval(fleet, "tiny", "1", "Rejected").approval == "Rejected"
    with pytest.raises(ConflictError, match="not Approved"):
        register(fleet, 1)
        rollouts.create_rollout(fleet, "tiny", "1", {"group": "lobby"}, {})
    assert registry.set_approval(fleet, "tiny", "1", "Approved").approval == "Approved"
    # A package altered after signing is refused and nothing is registered.
    work = tmp_path / "t"
    with tarfile.open(tiny_packages["v3"]) as tar:
        tar.extractall(work, filter="data")
    manifest = json.loads((work / "manifest.json").read_text())
    manifest["labels"] = ["evil", "x", "y"]
    (work / "manifest.json").write_text(json.dumps(manifest))
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        for f in work.iterdir():
            tar.add(f, arcname=f.name)
    with pytest.raises(PackageIntegrityError, match="signature"):
        registry.upload_package(fleet, bad)
    assert [r.version for r in registry.list_versions(fleet, "tiny").items] == ["1"]


def test_rollout_succeeds_across_waves(fleet, tiny_packages):
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 5)
    r = rollouts.create_rollout(
        fleet, "tiny", "2", {"group": "lobby"}, {"canary": 1, "waves": [60, 100], "bake_time_s": 30}
    )
    assert r.waves == [1, 3, 5]
    for wave_devices in (ids[:1], ids[1:3], ids[3:]):
        start = len(fleet.sent)
        rollouts.tick(fleet)
        sent = jobs_since(fleet, start)
        assert [d for d, _ in sent] == wave_devices
        for dev, job in sent:
            assert job["kind"] == "install" and job["package"]["version"] == "2" and "rollback_authorization" not in job
            answer(fleet, dev, job, ["downloading", "verifying", "staged", "switching", "probation", "committed"])
        rollouts.tick(fleet)
        assert rollouts.get_rollout(fleet, r.id).state == "baking"
        for dev in wave_devices:
            telemetry(fleet, dev, "2")
        fleet.clock.advance(10)
        rollouts.tick(fleet)
        assert rollouts.get_rollout(fleet, r.id).state == "baking"  # bake time not over
        fleet.clock.advance(25)
    rollouts.tick(fleet)
    final = rollouts.get_rollout(fleet, r.id)
    assert final.state == "succeeded" and final.installs == {"committed": 5}
    events = [(e.event, e.to) for e in rollouts.rollout_events(fleet, r.id).items if e.device is None]
    assert events == [
        ("create", "created"),
        ("start", "deploying"),
        ("wave_sent", "deploying"),
        ("wave_committed", "baking"),
        ("next_wave", "deploying"),
        ("wave_sent", "deploying"),
        ("wave_committed", "baking"),
        ("next_wave", "deploying"),
        ("wave_sent", "deploying"),
        ("wave_committed", "baking"),
        ("completed", "succeeded"),
    ]
    assert {d.model.version for d in devices.list_devices(fleet).items} == {"2"}


def test_a_wave_goes_out_in_slices_of_max_jobs_in_progress(fleet, tiny_packages):
    """Each job comes back as ~8 messages queued by the broker for the fleet, and mosquitto drops
    what overflows that queue after acknowledging it to the camera (measured: a 25,000-device wave
    of benchmarks/fleet_rollout.py lost the updates of 12,011 jobs); so jobs go out as others finish."""
    fleet.config = fleet.config.model_copy(update={"max_jobs_in_progress": 2})
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 6)
    r = rollouts.create_rollout(
        fleet,
        "tiny",
        "2",
        {"group": "lobby"},
        {"canary": 1, "waves": [100], "bake_time_s": 0, "health": {"enabled": False}},
    )
    assert r.waves == [1, 6]
    start = len(fleet.sent)
    rollouts.tick(fleet)
    canary = jobs_since(fleet, start)
    answer(fleet, canary[0][0], canary[0][1], ["committed"])
    rollouts.tick(fleet)  # canary committed: baking (bake time 0, no gate); the next tick starts wave 1
    slices = []
    for _ in range(6):
        start = len(fleet.sent)
        rollouts.tick(fleet)
        sent = jobs_since(fleet, start)
        slices.append([d for d, _ in sent])
        # One of the two in progress finishes: room for one more next tick.
        for dev, job in sent[:1]:
            answer(fleet, dev, job, ["committed"])
        assert rollouts.get_rollout(fleet, r.id).state == "deploying"
        if sum(map(len, slices)) == 5:
            break
    assert slices == [ids[1:3], ids[3:4], ids[4:5], ids[5:6]]
    pending = rollouts.rollout_deployments(fleet, r.id, "notified").items
    for d in pending:
        assert rollouts.record_job_update(
            fleet, d.device, d.job, {"schema": 1, "id": "y", "job": d.job, "state": "committed"}
        )
    rollouts.tick(fleet)
    rollouts.tick(fleet)
    final = rollouts.get_rollout(fleet, r.id)
    assert final.state == "succeeded" and final.installs == {"committed": 6}
    sent_events = [e for e in rollouts.rollout_events(fleet, r.id).items if e.event == "wave_sent"]
    assert len(sent_events) == 2  # one per wave, however many slices


def test_a_silent_job_stops_holding_its_slot_after_quiet_after_s(fleet, tiny_packages):
    """An offline camera sends nothing for the broker to queue: its job must not hold a slot of
    max_jobs_in_progress until the wave times out, or a wave with more offline cameras than slots stalls."""
    fleet.config = fleet.config.model_copy(update={"max_jobs_in_progress": 2})
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 4)
    plan = {"canary": 4, "waves": [100], "bake_time_s": 0, "health": {"enabled": False}}
    r = rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, plan)
    start = len(fleet.sent)
    rollouts.tick(fleet)
    assert [d for d, _ in jobs_since(fleet, start)] == ids[:2]
    fleet.clock.advance(rollouts.QUIET_AFTER_S - 1)
    start = len(fleet.sent)
    rollouts.tick(fleet)
    assert jobs_since(fleet, start) == []  # both may still answer
    fleet.clock.advance(2)
    rollouts.tick(fleet)
    assert [d for d, _ in jobs_since(fleet, start)] == ids[2:]
    assert rollouts.get_rollout(fleet, r.id).state == "deploying"


def test_failing_canary_aborts_and_rolls_back_every_touched_device(fleet, tiny_packages):
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 6)
    r = rollouts.create_rollout(
        fleet, "tiny", "2", {"group": "lobby"}, {"canary": 2, "waves": [100], "failure_threshold": 0.0}
    )
    rollouts.tick(fleet)
    (d0, j0), (d1, j1) = fleet.sent
    answer(fleet, d0, j0, ["downloading", "verifying", "staged", "switching", "probation", "committed"])
    answer(
        fleet, d1, j1, ["downloading", "verifying", "staged", "switching", "probation", "rolling_back", "rolled_back"]
    )
    start = len(fleet.sent)
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborting" and "1 of 2 devices failed" in out.reason
    rb = jobs_since(fleet, start)
    # Only the device that is on the new model needs a rollback; the other undid it itself.
    assert [d for d, _ in rb] == [d0]
    job = rb[0][1]
    assert job["kind"] == "rollback" and job["package"]["version"] == "1" and job["package"]["url"]
    auth = job["rollback_authorization"]
    assert (auth["device"], auth["job"], auth["version"]) == (d0, job["job"], "1")
    answer(fleet, d0, job, ["downloading", "verifying", "staged", "switching", "probation", "committed"])
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborted"
    jobs = rollouts.rollout_deployments(fleet, r.id).items
    assert {d.job: d.state for d in jobs}[job["job"]] == "committed"
    assert {d.id: d.model.version for d in devices.list_devices(fleet).items} == dict.fromkeys(ids, "1")
    assert len([d for d in jobs if d.kind == "install"]) == 2  # the rest were never touched


def test_health_gate_stops_a_model_that_installs_fine_but_behaves_badly(fleet, tiny_packages):
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 4)
    for dev in ids:
        telemetry(fleet, dev, "1", conf_bin=9, alerts=5)  # the old model: confident
    r = rollouts.create_rollout(
        fleet,
        "tiny",
        "2",
        {"group": "lobby"},
        {"canary": 1, "waves": [100], "bake_time_s": 60, "health": {"confidence_min_ratio": 0.8}},
    )
    rollouts.tick(fleet)
    dev, job = fleet.sent[0]
    answer(fleet, dev, job, ["downloading", "verifying", "staged", "switching", "probation", "committed"])
    rollouts.tick(fleet)
    fleet.clock.advance(61)
    rollouts.tick(fleet)
    assert (
        "waiting for telemetry" in rollouts.rollout_events(fleet, r.id).items[-1].detail
        or rollouts.get_rollout(fleet, r.id).state == "baking"
    )
    telemetry(fleet, dev, "2", conf_bin=3, alerts=5)  # installs fine, but unsure of everything
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborting" and "mean confidence 0.350 vs 0.950" in out.reason
    assert (
        fleet.sent[-1][1]["kind"] == "rollback"
        and len([d for d in rollouts.rollout_deployments(fleet, r.id).items if d.kind == "install"]) == 1
    )


def test_health_gate_passes_within_bounds_and_checks_latency(fleet, tiny_packages):
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 2)
    for dev in ids:
        telemetry(fleet, dev, "1", p95=10.0)
    r = rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, {"canary": 1, "waves": [100], "bake_time_s": 5})
    rollouts.tick(fleet)
    dev, job = fleet.sent[0]
    answer(fleet, dev, job, ["committed"])
    rollouts.tick(fleet)
    telemetry(fleet, dev, "2", p95=14.0)  # 1.4x: inside the default 1.5x + 5 ms
    fleet.clock.advance(6)
    rollouts.tick(fleet)
    assert rollouts.get_rollout(fleet, r.id).state == "deploying"
    dev2, job2 = fleet.sent[1]
    answer(fleet, dev2, job2, ["committed"])
    rollouts.tick(fleet)
    telemetry(fleet, dev2, "2", p95=60.0)  # now p95 averages 37 ms against 10 ms
    fleet.clock.advance(6)
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborting" and "p95 latency" in out.reason


def test_pause_resume_abort_and_wave_timeout(fleet, tiny_packages):
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    register(fleet, 3)
    r = rollouts.create_rollout(
        fleet, "tiny", "2", {"group": "lobby", "tags": ["door"]}, {"canary": 1, "waves": [100], "wave_timeout_s": 100}
    )
    assert r.devices == 2  # cam-00 and cam-02 carry the tag
    with pytest.raises(ConflictError, match="already in an active rollout"):
        rollouts.create_rollout(fleet, "tiny", "2", {"devices": ["cam-00"]}, {})
    assert rollouts.control(fleet, r.id, "pause").state == "paused"
    rollouts.tick(fleet)
    assert fleet.sent == []  # paused: nothing goes out
    with pytest.raises(InvalidTransitionError):
        rollouts.control(fleet, r.id, "pause")
    assert rollouts.control(fleet, r.id, "resume").state == "deploying"
    rollouts.tick(fleet)
    assert [d for d, _ in fleet.sent] == ["cam-00"]
    fleet.clock.advance(101)  # the canary never answers
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborting" and "after 100 s" in out.reason
    assert fleet.sent[-1][1]["kind"] == "rollback"
    with pytest.raises(InvalidTransitionError):
        rollouts.control(fleet, r.id, "resume")
    answer(fleet, "cam-00", fleet.sent[-1][1], ["committed"])
    rollouts.tick(fleet)
    assert rollouts.get_rollout(fleet, r.id).state == "aborted"
    history = [(e.from_, e.event, e.to) for e in rollouts.rollout_events(fleet, r.id).items if e.device is None]
    assert ("paused", "resume", "deploying") in history and history[-1] == ("aborting", "rolled_back", "aborted")


def test_enrollment_is_one_time_and_writes_the_acl(fleet, tmp_path):
    from edgefleet.fleet.config import BrokerConfig

    fleet.config.broker = BrokerConfig(port=18883, acl_file=tmp_path / "acl")
    token = devices.create_enrollment_token(fleet, "cam-7", "x86_64", group="dock", tags=["gate"])
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-7")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(PermissionDeniedError, match="unknown enrollment token"):
        devices.enroll(fleet, "efe_wrong", "cam-7", csr)
    with pytest.raises(PermissionDeniedError, match="unknown enrollment token"):
        devices.enroll(fleet, token, "cam-8", csr)
    out = devices.enroll(fleet, token, "cam-7", csr)
    cert = x509.load_pem_x509_certificate(out.certificate.encode())
    ca = x509.load_pem_x509_certificate(out.ca_certificate.encode())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-7"
    assert out.broker.port == 18883 and out.trusted_keys
    with pytest.raises(PermissionDeniedError, match="already used"):
        devices.enroll(fleet, token, "cam-7", csr)
    acl = (tmp_path / "acl").read_text()
    assert (
        "user cam-7\ntopic write edgefleet/v1/cam-7/status" in acl
        and "topic read edgefleet/v1/cam-7/jobs/notify" in acl
    )
    assert [d.id for d in devices.list_devices(fleet, tag="gate").items] == ["cam-7"]
    moved = devices.update_device(fleet, "cam-7", group="yard", add_tags=["night"], remove_tags=["gate"])
    assert (moved.group, moved.tags) == ("yard", ["night"]) and devices.list_devices(fleet, tag="gate").items == []
    other = devices.create_enrollment_token(fleet, "cam-9", "x86_64")
    wrong_cn = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cam-7")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    with pytest.raises(BadInputError, match="not device 'cam-9'"):
        devices.enroll(fleet, other, "cam-9", wrong_cn)
    with pytest.raises(BadInputError):
        devices.create_enrollment_token(fleet, "cam/+", "x86_64")


def test_ingest_drops_and_counts_unknown_devices_and_malformed_messages(fleet):
    register(fleet, 1)
    ingest = Ingest(fleet)
    t = fleet.clock()
    ingest.handle_batch(
        [
            Message("edgefleet/v1/intruder/telemetry", b'{"schema": 1}', t),
            Message("edgefleet/v1/intruder/status", b'{"schema": 1, "state": "online"}', t),
            Message("edgefleet/v1/cam-00/telemetry", b"not json", t),
            Message("edgefleet/v1/cam-00/telemetry", b'{"schema": 7}', t),
            Message("edgefleet/v1/cam-00/status", b'{"schema": 1, "state": "offline", "device": "cam-00"}', t + 1),
            Message("edgefleet/v1/cam-00/jobs/nope/update", b'{"schema": 1, "job": "nope", "state": "committed"}', t),
            Message("edgefleet/v1/cam-00/whatever", b'{"schema": 1}', t),
        ]
    )
    assert ingest.stats() == {
        "received": 7,
        "dropped_unknown_device": 2,
        "dropped_malformed": 3,
        "status": 1,
        "dropped_unknown_job": 1,
    }
    d = devices.get_device(fleet, "cam-00")
    assert d.status == "offline" and d.last_seen == t + 1
    with fleet.session() as s:
        assert s.query(Telemetry).count() == 0


def _canary_committed(fleet, tiny_packages, plan: dict) -> tuple[RolloutOut, str]:
    """Two devices on v1 with 20 frames of telemetry each, a v2 rollout whose canary has committed."""
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 2)
    for dev in ids:
        telemetry(fleet, dev, "1", frames=20, alerts=0)
    r = rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, plan)
    rollouts.tick(fleet)
    dev, job = fleet.sent[0]
    answer(fleet, dev, job, ["committed"])
    rollouts.tick(fleet)
    return r, dev


def test_health_gate_waits_for_evidence_per_bound_instead_of_judging_a_few_frames(fleet, tiny_packages):
    r, canary = _canary_committed(fleet, tiny_packages, {"canary": 1, "waves": [100], "bake_time_s": 5})
    # 6 alerts in 20 frames against none in 40 before: a failure on the old gate, noise here.
    telemetry(fleet, canary, "2", frames=20, alerts=6)
    fleet.clock.advance(6)
    rollouts.tick(fleet)
    assert rollouts.get_rollout(fleet, r.id).state == "baking"
    last = rollouts.rollout_events(fleet, r.id).items[-1]
    assert last.event == "health_gate_waiting"
    assert "alert rate 20 of 100 frames on the new model, 40 of 100 frames before" in last.detail
    # The device still on v1 adds evidence from the old model while the gate waits.
    telemetry(fleet, "cam-01", "1", frames=80, alerts=24)  # old: 24 alerts in 120 frames = 0.2
    telemetry(fleet, canary, "2", frames=80, alerts=18)  # new: 24 in 100 = 0.24 <= 0.2 * 1.5 + 0.02
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "deploying", rollouts.rollout_events(fleet, r.id).items[-1]
    assert rollouts.rollout_events(fleet, r.id).items[-2].detail == "model health within bounds (2 samples)"


def test_health_gate_without_evidence_waits_no_longer_than_the_wave_timeout(fleet, tiny_packages):
    plan = {"canary": 1, "waves": [100], "bake_time_s": 5, "wave_timeout_s": 100}
    r, canary = _canary_committed(fleet, tiny_packages, plan)
    telemetry(fleet, canary, "2", frames=20, alerts=6)
    fleet.clock.advance(100)
    rollouts.tick(fleet)
    assert rollouts.get_rollout(fleet, r.id).state == "baking"
    fleet.clock.advance(6)
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborting" and out.reason.startswith("not enough evidence: alert rate 20 of 100 frames")


def test_the_fleets_own_identity_cannot_be_a_device(fleet):
    # A device named "fleet" would get a certificate with the fleet's broker user as its CN.
    for register_it in (
        lambda: devices.create_enrollment_token(fleet, "fleet", "x86_64"),
        lambda: devices.register_device(fleet, "fleet", "x86_64"),
    ):
        with pytest.raises(BadInputError, match="reserved for the fleet"):
            register_it()


def test_sqlite_is_one_process_so_its_scheduler_always_holds_the_lease(fleet):
    from edgefleet.fleet.leader import SchedulerLease

    assert SchedulerLease(fleet.sessions.kw["bind"]).held()


def test_job_updates_only_move_forward_and_a_batch_folds_each_job_into_one_write(fleet, tiny_packages):
    """Replicas ingest one device's updates in parallel: a late `switching` after `probation`
    changes nothing, a terminal state is never left, and unknown or foreign jobs are refused."""
    from edgefleet.contracts.mqtt import JobUpdate

    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 2)
    r = rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, {"canary": 2, "bake_time_s": 0})
    rollouts.tick(fleet)
    jobs = {device: payload["job"] for device, payload in fleet.sent}

    def up(device: str, state: str, job: str | None = None) -> tuple[str, str, JobUpdate]:
        job = job or jobs[device]
        return device, job, JobUpdate(id=uuid.uuid4().hex, job=job, state=state, detail=state)

    with fleet.writer() as s, s.begin():
        known = rollouts.apply_job_updates(
            fleet,
            s,
            [
                up(ids[0], "probation"),
                up(ids[0], "switching"),  # out of order: behind probation
                up(ids[1], "downloading"),
                up(ids[0], "committed"),
                up(ids[0], "rolling_back"),  # after a terminal state
                up(ids[1], "idle", job="r1-nope"),  # no such job
                up(ids[1], "staged", job=jobs[ids[0]]),  # another device's job
            ],
        )
    assert known == [True, True, True, True, True, False, False]
    jobs = rollouts.rollout_deployments(fleet, r.id).items
    assert {d.device: d.state for d in jobs} == {ids[0]: "committed", ids[1]: "downloading"}
    assert [d.device for d in rollouts.rollout_deployments(fleet, r.id, "committed").items] == [ids[0]]
    steps = [(e.device, e.from_, e.to) for e in rollouts.rollout_events(fleet, r.id).items if e.device]
    assert steps == [
        (ids[0], "notified", "probation"),
        (ids[0], "probation", "committed"),
        (ids[1], "notified", "downloading"),
    ]
    assert devices.get_device(fleet, ids[0]).model.version == "2"


def test_a_status_older_than_a_committed_job_does_not_bring_back_the_old_model(fleet, tiny_packages):
    """The camera's `online` status (v1) made at connect, delivered after its job's `committed`
    (v2): the fleet keeps v2; a status made after the commit is applied (fleet/order.py)."""
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    (dev,) = register(fleet, 1)
    rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, {"canary": 1, "bake_time_s": 0})
    rollouts.tick(fleet)
    job = fleet.sent[0][1]["job"]

    def deliver(suffix: str, body: dict) -> str | None:
        body = {"schema": 1, "id": uuid.uuid4().hex, "run": 2} | body
        Ingest(fleet).handle_batch([Message(f"edgefleet/v1/{dev}/{suffix}", json.dumps(body).encode(), fleet.clock())])
        model = devices.get_device(fleet, dev).model
        return model.version if model else None

    assert deliver(f"jobs/{job}/update", {"job": job, "state": "committed", "seq": 10}) == "2"
    assert deliver("status", {"state": "online", "model": {"name": "tiny", "version": "1"}, "seq": 1}) == "2"
    assert deliver("status", {"state": "online", "model": {"name": "tiny", "version": "1"}, "seq": 11}) == "1"


def test_a_job_its_sender_never_got_acknowledged_is_sent_again_under_its_id(fleet, tiny_packages):
    """The rows are committed, the publish fails (the sending replica died or lost the broker):
    the next tick after RESEND_AFTER_S sends the same job again, and a sent job never twice."""
    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ids = register(fleet, 1)
    rollouts.create_rollout(fleet, "tiny", "2", {"group": "lobby"}, {"bake_time_s": 0})
    recorder = fleet.notify

    def broken(device: str, payload: dict) -> None:
        raise OSError("broker gone")

    fleet.notify = broken
    with pytest.raises(OSError):
        rollouts.tick(fleet)
    fleet.notify = recorder
    rollouts.tick(fleet)
    assert fleet.sent == []  # not yet: its sender may still be publishing it
    fleet.clock.advance(rollouts.RESEND_AFTER_S + 1)
    rollouts.tick(fleet)
    assert [d for d, _ in fleet.sent] == ids
    job = fleet.sent[0][1]
    assert job["kind"] == "install" and job["package"]["version"] == "2"
    fleet.clock.advance(rollouts.RESEND_AFTER_S + 1)
    rollouts.tick(fleet)
    assert len(fleet.sent) == 1
    assert [d.job for d in rollouts.rollout_deployments(fleet, 1).items] == [job["job"]]


def test_replicas_share_the_download_secret_from_a_file_and_a_bad_one_is_refused(tmp_path, tiny_packages):
    from edgefleet.errors import UsageError
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet

    secret = tmp_path / "download.secret"
    secret.write_text("ab" * 32)
    a, b = (
        open_fleet(FleetConfig(data_dir=tmp_path / name, signing_key=tiny_packages["key"], download_secret_file=secret))
        for name in ("a", "b")
    )
    url = a.download_url(7, "k")
    expires, sig = (part.split("=")[1] for part in url.split("?")[1].split("&"))
    assert b.check_download(7, int(expires), sig)  # signed by one replica, accepted by another
    secret.write_text("too short")
    with pytest.raises(UsageError, match="64 hex digits"):
        open_fleet(FleetConfig(data_dir=tmp_path / "c", signing_key=tiny_packages["key"], download_secret_file=secret))
