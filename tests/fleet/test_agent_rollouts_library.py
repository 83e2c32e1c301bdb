"""Agent releases in the fleet library on SQLite: registry, the refusals at rollout creation, jobs per
architecture, the agent health gate and the abort. Devices are simulated in-process as in
test_fleet_library.py; test_agent_rollouts.py runs the same with real agents."""

from __future__ import annotations

import json
import uuid

import pytest
from test_fleet_library import answer

from edgefleet.agent_release import build_release, device_sources
from edgefleet.errors import ConflictError
from edgefleet.fleet import devices, registry, rollouts
from edgefleet.fleet.ingest import Ingest, Message
from edgefleet.signing import load_signing_key

INSTALL = ["downloading", "verifying", "staged", "switching", "probation", "committed"]


@pytest.fixture
def releases(tmp_path, tiny_packages) -> dict:
    key = load_signing_key(tiny_packages["key"])
    code = device_sources()
    out = {}
    for name, version, arch, files in (
        ("x86", "9.1", "x86_64", code),
        ("arm", "9.1", "aarch64", code),
        ("arm-other", "9.1", "aarch64", code[:-1]),
    ):
        out[name] = tmp_path / f"{name}.tar.gz"
        build_release(out[name], version, key, arch=arch, code=files)
    return out


def online(fleet, device: str, agent: str | None, arch: str | None) -> None:
    body = {"schema": 1, "state": "online", "model": {"name": "tiny", "version": "1"}}
    body |= {"agent_version": agent} if agent else {}
    body |= {"arch": arch} if arch else {}
    Ingest(fleet).handle_batch([Message(f"edgefleet/v1/{device}/status", json.dumps(body).encode(), fleet.clock())])


def offline(fleet, device: str) -> None:
    Ingest(fleet).handle_batch(
        [Message(f"edgefleet/v1/{device}/status", b'{"schema": 1, "state": "offline"}', fleet.clock())]
    )


def telemetry(fleet, device: str) -> None:
    body = {
        "schema": 1,
        "id": uuid.uuid4().hex,  # each message its own id: the fleet stores one per id
        "model": {"name": "tiny", "version": "1"},
        "frames": {"ok": 10, "bad": 0, "error": 0},
        "alerts": {},
    }
    Ingest(fleet).handle_batch([Message(f"edgefleet/v1/{device}/telemetry", json.dumps(body).encode(), fleet.clock())])


def fleet_with_cameras(fleet, releases, cameras: dict[str, tuple]) -> None:
    for path in (releases["x86"], releases["arm"]):
        registry.upload_package(fleet, path)
    registry.set_approval(fleet, "edgefleet-agent", "9.1", "Approved")
    for device, (agent, arch) in cameras.items():
        devices.register_device(fleet, device, "x86_64", group="lobby")
        if agent:
            online(fleet, device, agent, arch)


def test_releases_register_one_build_per_architecture_of_the_same_code(fleet, releases):
    registry.upload_package(fleet, releases["x86"])
    version = registry.upload_package(fleet, releases["arm"])
    assert (version.group, version.version) == ("edgefleet-agent", "9.1")
    assert [(b.target, b.arch) for b in version.builds] == [
        ("agent-aarch64", "aarch64"),
        ("agent-x86_64", "x86_64"),
    ]
    assert version.approval == "PendingManualApproval"
    with pytest.raises(ConflictError, match="registered from another source"):
        registry.upload_package(fleet, releases["arm-other"])


@pytest.mark.parametrize(
    "camera, error",
    [
        (("0.1.0", None), "cam-old runs agent 0.1.0, which cannot update itself over the air"),
        ((None, None), "cam-old has not reported its agent version yet"),
        (("0.2.0", "armv7"), "edgefleet-agent 9.1 has no build for target(s) agent-armv7"),
    ],
)
def test_rollouts_refuse_cameras_that_cannot_take_the_release(fleet, releases, camera, error):
    fleet_with_cameras(fleet, releases, {"cam-a": ("0.2.0", "x86_64"), "cam-old": camera})
    with pytest.raises(ConflictError, match=error.replace("(", r"\(").replace(")", r"\)")):
        rollouts.create_rollout(fleet, "edgefleet-agent", "9.1", {"group": "lobby"}, {})
    assert rollouts.create_rollout(fleet, "edgefleet-agent", "9.1", {"devices": ["cam-a"]}, {}).kind == "agent"


def test_waves_send_each_camera_its_architectures_build_and_the_gate_waits_for_the_new_agents_telemetry(
    fleet, releases
):
    fleet_with_cameras(fleet, releases, {"cam-a": ("0.2.0", "aarch64"), "cam-b": ("0.2.0", "x86_64")})
    r = rollouts.create_rollout(
        fleet,
        "edgefleet-agent",
        "9.1",
        {"group": "lobby"},
        {"canary": 1, "waves": [100], "bake_time_s": 5, "health": {"min_samples": 2}},
    )
    rollouts.tick(fleet)
    [(device, job)] = fleet.sent
    assert device == "cam-a" and job["kind"] == "agent_install" and job["package"]["name"] == "edgefleet-agent"
    assert job["package"]["target"] == "agent-aarch64" and job["probation"]["max_boots"] == 3
    answer(fleet, "cam-a", job, INSTALL)
    online(fleet, "cam-a", "9.1", "aarch64")
    rollouts.tick(fleet)
    fleet.clock.advance(6)
    telemetry(fleet, "cam-a")
    rollouts.tick(fleet)
    events = [e.detail for e in rollouts.rollout_events(fleet, r.id).items if e.event == "health_gate_waiting"]
    assert events == ["waiting for telemetry from the new agent: cam-a 1/2"]
    telemetry(fleet, "cam-a")
    rollouts.tick(fleet)
    (device, job) = fleet.sent[-1]
    assert device == "cam-b" and job["package"]["target"] == "agent-x86_64"
    answer(fleet, "cam-b", job, INSTALL)
    online(fleet, "cam-b", "9.1", "x86_64")
    rollouts.tick(fleet)
    fleet.clock.advance(6)
    for device in ("cam-a", "cam-b"):
        telemetry(fleet, device)
        telemetry(fleet, device)
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "succeeded" and "agent 9.1 online with telemetry on 2 devices" in out.reason
    assert {d.id: d.agent.version for d in devices.list_devices(fleet).items} == {"cam-a": "9.1", "cam-b": "9.1"}


def test_a_committed_agent_that_goes_offline_fails_the_gate_and_is_rolled_back_to_the_installed_agent(fleet, releases):
    fleet_with_cameras(fleet, releases, {"cam-a": ("0.2.0", "x86_64"), "cam-b": ("0.2.0", "x86_64")})
    r = rollouts.create_rollout(
        fleet, "edgefleet-agent", "9.1", {"group": "lobby"}, {"canary": 1, "waves": [100], "bake_time_s": 5}
    )
    rollouts.tick(fleet)
    [(device, job)] = fleet.sent
    answer(fleet, device, job, INSTALL)
    rollouts.tick(fleet)
    offline(fleet, device)
    fleet.clock.advance(6)
    rollouts.tick(fleet)
    out = rollouts.get_rollout(fleet, r.id)
    assert out.state == "aborting" and out.reason == f"agent health: {device} is offline on agent 9.1"
    (_, rollback) = fleet.sent[-1]
    # Back to 0.2.0, the installed agent, which the fleet never held: no download, a signed authorization.
    assert rollback["kind"] == "agent_rollback" and rollback["package"] == {
        "name": "edgefleet-agent",
        "version": "0.2.0",
    }
    assert (rollback["rollback_authorization"]["device"], rollback["rollback_authorization"]["version"]) == (
        device,
        "0.2.0",
    )
    answer(fleet, device, rollback, INSTALL)
    rollouts.tick(fleet)
    assert rollouts.get_rollout(fleet, r.id).state == "aborted"
    assert devices.get_device(fleet, device).agent.version == "0.2.0"
