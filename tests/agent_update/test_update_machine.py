"""The on-device update state machine (agent/update.py) with real packages, real model loads
and a real HTTP server; the fault table kills a real process in every state and restarts it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support.packages import broken_copy
from update_support import DEVICE, Device, device  # noqa: F401

from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.update import AGENT_STATES, EVENTS, RESUME, TERMINAL_STATES, TRANSITIONS, UpdateManager
from edgefleet.signing import public_path

HERE = Path(__file__).parent


def test_transition_table_is_closed_and_every_state_is_reachable_and_resumable():
    assert {s for pair in TRANSITIONS for s in pair[:1]} | set(TRANSITIONS.values()) == set(AGENT_STATES)
    assert {e for _, e in TRANSITIONS} <= EVENTS
    assert not any(state in TERMINAL_STATES for state, _ in TRANSITIONS)
    assert set(RESUME) == set(AGENT_STATES)
    # From the switch on, anything interrupted rolls back; before it, the job continues.
    assert [RESUME[s] for s in ("switching", "probation", "rolling_back")] == ["roll_back"] * 3
    assert [RESUME[s] for s in ("idle", "downloading", "verifying", "staged")] == ["continue"] * 4


def test_install_commits_and_drops_the_previous_package(device):
    assert device.manager.handle_notify(device.job("j1", "v2", "2")) == "committed"
    assert device.states("j1") == ["idle", "downloading", "verifying", "staged", "switching", "probation", "committed"]
    assert device.slot.manifest.version == "2" and device.dirs() == {"current", "tiny-2"}
    assert all(p["schema"] == 1 and p["id"] for _, p in device.published)
    # QoS 1 may deliver the notification again: the finished job does not run twice.
    assert device.manager.handle_notify(device.job("j1", "v2", "2")) is None and device.states("j1")[-1] == "committed"


def test_interrupted_download_resumes_with_a_range_request(device, tiny_packages):
    job = device.job("j2", "v2", "2")
    data = tiny_packages["v2"].read_bytes()
    device.manager.fault = lambda state: (_ for _ in ()).throw(KeyboardInterrupt()) if state == "downloading" else None
    with pytest.raises(KeyboardInterrupt):
        device.manager.handle_notify(job)
    (device.state / "journal" / "downloads" / "j2.tar.part").write_bytes(data[: len(data) // 2])
    device.server.requests.clear()
    device.manager.fault = lambda state: None
    assert device.manager.resume() == "committed"
    assert [r.get("range") for r in device.server.requests] == [f"bytes={len(data) // 2}-"]
    assert device.slot.manifest.version == "2"


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "unsigned",
        "older_replayed",
        "authorization_for_another_job",
        "authorization_for_another_device",
        "wrong_sha256",
        "nan_model_fails_probation",
    ],
)
def test_refused_or_failed_updates_leave_the_working_model(device, tmp_path, case):
    if case == "nan_model_fails_probation":
        job = device.job("bad", "v2-nan", "2")
        expected, states_tail = "rolled_back", ["switching", "probation", "rolling_back", "rolled_back"]
    elif case in ("tampered", "unsigned"):
        device.packages[case] = broken_copy(device.packages["v2"], case, tmp_path)
        job = device.job("bad", case, "2")
        expected, states_tail = "failed", ["verifying", "failed"]
    else:
        assert device.manager.handle_notify(device.job("up", "v3", "3")) == "committed"
        auth = {
            "authorization_for_another_job": device.authorization("other-job", "1"),
            "authorization_for_another_device": device.authorization("bad", "1", device="cam-2"),
        }.get(case)
        job = device.job(
            "bad",
            "v1",
            "1",
            kind="rollback" if auth else "install",
            **({"rollback_authorization": auth} if auth else {}),
        )
        expected, states_tail = "failed", ["verifying", "failed"]
    if case == "wrong_sha256":
        job["package"]["sha256"] = "0" * 64
        states_tail = ["downloading", "failed"]
    before = device.slot.manifest.version
    assert device.manager.handle_notify(job) == expected
    assert device.states("bad")[-len(states_tail) :] == states_tail
    assert device.slot.manifest.version == before and device.dirs() == {"current", f"tiny-{before}"}
    detail = device.published[-1][1]["detail"]
    assert {
        "tampered": "sha256",
        "unsigned": "unsigned",
        "older_replayed": "not newer",
        "authorization_for_another_job": "not newer",
        "authorization_for_another_device": "not newer",
        "wrong_sha256": "sha256",
        "nan_model_fails_probation": "back on tiny-1",
    }[case] in detail
    out = device.slot.model.run([np.zeros(s.shape, s.dtype) for s in device.slot.manifest.inputs])
    assert np.all(np.isfinite(out[0]))


def test_fleet_signed_rollback_installs_the_older_version(device):
    assert device.manager.handle_notify(device.job("up", "v3", "3")) == "committed"
    job = device.job("rb", "v1", "1", kind="rollback", rollback_authorization=device.authorization("rb", "1"))
    assert device.manager.handle_notify(job) == "committed"
    assert device.slot.manifest.version == "1" and device.dirs() == {"current", "tiny-1"}


# ---- faults: killed in each state and restarted (in-process for every state, SIGKILL for the switch) ----

FAULTS = [
    # (state to be killed in, package offered, version, final state after restart, active model after)
    ("idle", "v2", "2", "committed", "tiny-2"),
    ("downloading", "v2", "2", "committed", "tiny-2"),
    ("verifying", "v2", "2", "committed", "tiny-2"),
    ("staged", "v2", "2", "committed", "tiny-2"),
    ("switching", "v2", "2", "rolled_back", "tiny-1"),
    ("probation", "v2", "2", "rolled_back", "tiny-1"),
    ("committed", "v2", "2", "committed", "tiny-2"),
    ("rolling_back", "v2-nan", "2", "rolled_back", "tiny-1"),
    ("rolled_back", "v2-nan", "2", "rolled_back", "tiny-1"),
    ("failed", "v1", "1", "failed", "tiny-2"),  # on 2 and offered 1 without authorization: refused
]


class SimulatedKill(BaseException):
    """Raised by the fault hook: unwinds like a kill (no handler in the update code catches it)."""


@pytest.mark.parametrize("state, package, version, final, active", FAULTS, ids=[f[0] for f in FAULTS])
def test_killed_in_each_state_then_restarted_in_process(device, state, package, version, final, active):
    if state == "failed":
        assert device.manager.handle_notify(device.job("up", "v2", "2")) == "committed"

    def die(entered: str) -> None:
        if entered == state:
            raise SimulatedKill(entered)

    device.manager.fault = die
    with pytest.raises(SimulatedKill):
        device.manager.handle_notify(device.job("kill", package, version))
    # A new process: a fresh slot and manager over the same state directory.
    slot = ModelSlot(device.state, device.trusted)
    try:
        slot.reload()
    except Exception:
        pass  # resume() must repair this
    manager = UpdateManager(device.state, slot, lambda t, p: None, device.trusted, DEVICE)
    assert manager.resume() == final
    assert f"{slot.manifest.name}-{slot.manifest.version}" == active
    out = slot.model.run([np.random.default_rng(0).random(s.shape).astype(s.dtype) for s in slot.manifest.inputs])
    assert np.all(np.isfinite(out[0]))
    assert device.dirs() == {"current", active}


def _run(device: Device, job: Path | None, fault: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("EDGEFLEET_UPDATE_FAULT", None)
    if fault:
        env["EDGEFLEET_UPDATE_FAULT"] = fault
    args = [
        sys.executable,
        str(HERE / "update_proc.py"),
        str(device.state),
        str(public_path(device.packages["key"])),
        DEVICE,
    ] + ([str(job)] if job else [])
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


REAL_KILLS = [f for f in FAULTS if f[0] in ("staged", "switching", "probation")]  # each costs two TVM process starts


@pytest.mark.parametrize("state, package, version, final, active", REAL_KILLS, ids=[f[0] for f in REAL_KILLS])
def test_agent_process_sigkilled_mid_update_ends_committed_or_rolled_back(
    device, tmp_path, state, package, version, final, active
):
    if state == "failed":
        assert device.manager.handle_notify(device.job("up", "v2", "2")) == "committed"
    payload = device.job("kill", package, version)
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(payload))
    killed = _run(device, job_file, state)
    assert killed.returncode == -9, killed.stderr[-2000:]
    journal = json.loads((device.state / "journal" / "current.json").read_text())
    assert journal["state"] == state
    restarted = _run(device, None, None)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    out = json.loads(restarted.stdout.strip().splitlines()[-1])
    assert json.loads((device.state / "journal" / "current.json").read_text())["state"] == final
    assert out["active"] == active and out["output_ok"]
    # Only the active package (plus nothing half-done) is left on disk.
    assert device.dirs() == {"current", out["active"]}


def test_rollback_to_the_version_already_active_commits_without_downloading(device):
    device.server.requests.clear()
    job = device.job("rb-noop", "v1", "1", kind="rollback", rollback_authorization=device.authorization("rb-noop", "1"))
    assert device.manager.handle_notify(job) == "committed"
    assert device.states("rb-noop") == ["idle", "committed"] and device.server.requests == []
    assert device.slot.manifest.version == "1" and device.dirs() == {"current", "tiny-1"}
