"""Shadow rollouts end to end with real processes: `edgefleet fleet serve`, mosquitto whose
authorisation the fleet manages (dynamic security: each device is granted on enrollment) and two
`edgefleet agent run` processes installed and enrolled as in test_fleet_e2e.py. The models are two
real compiled brightness classifiers (tests/agent_shadow): v1 says 'bright' over a mean pixel of
0.5, v2 over 0.3, so on a solid grey frame their agreement is known before the frame is fed."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
from support.broker import Broker
from test_fleet_e2e import World

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))
sys.path.insert(0, str(Path(__file__).parents[1] / "agent_shadow"))
from agent_support import LABELS, brightness_onnx, drop_frame, jpeg  # noqa: E402
from shadow_support import _compile  # noqa: E402
from test_shadow_agent import top_label  # noqa: E402

pytestmark = [pytest.mark.mqtt, pytest.mark.slow]
CAMERAS = ["cam-a", "cam-b"]
# Every frame compared (no budget skips), short windows: reports arrive within a second or two.
SHADOW = {"sample_share": 1.0, "cpu_share": 1.0, "max_fps_drop_percent": 100.0, "window_s": 1.0}
# What a promotion's staged rollout does; its health gate is off (the frames are chosen to make
# the two models disagree, which that gate would rightly judge).
STAGED = {"canary": 1, "waves": [100], "bake_time_s": 1, "health": {"enabled": False}}
# Solid grey frames per camera: v1 (0.5) and v2 (0.3) disagree on 90, 100, 95, 110 and 85 only.
FRAMES = {"cam-a": [20, 60, 100, 140, 200, 240, 90, 170], "cam-b": [30, 95, 110, 180, 250, 85]}


@pytest.fixture(scope="module")
def brightness_packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The fleet's signing key ("key") and the packages it signed: "v1" and "v2", "brightness" 1
    (threshold 0.5) and 2 (0.3)."""
    from edgefleet.signing import create_signing_key

    root = tmp_path_factory.mktemp("brightness")
    key = create_signing_key(root / "fleet.key").path
    return {
        "key": key,
        "v1": _compile(root, key, brightness_onnx, "1", LABELS, 16),
        "v2": _compile(root, key, lambda p: brightness_onnx(p, threshold=0.3), "2", LABELS, 16),
    }


class ShadowFleet(World):
    """test_fleet_e2e's World with cameras that alert on 'bright' and are fed chosen frames."""

    label = "bright"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fed = dict.fromkeys(CAMERAS, 0)

    def feed(self, device: str, values: list[int]) -> None:
        """Solid grey frames into the camera's folder source, in name order."""
        for value in values:
            drop_frame(self.root / device / "incoming", f"{self.fed[device]:05d}.jpg", jpeg(value))
            self.fed[device] += 1

    def shadow_rollout(self, promotion: dict) -> int:
        plan = {"mode": "shadow", "shadow": SHADOW, "promotion": promotion, **STAGED}
        body = {"group": "brightness", "version": "2", "selection": {"devices": CAMERAS}, "plan": plan}
        r = self.http.post("/rollouts", json=body)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def view(self, rid: int) -> dict:
        return self.http.get(f"/rollouts/{rid}/shadow").json()

    def wait_frames(self, rid: int, frames: int) -> dict:
        """The shadow view once it counts `frames` compared frames (never more: fed frames are all there is)."""
        view = self.wait(lambda: self.view(rid)["total"]["frames"] >= frames and self.view(rid), 60, f"{frames} frames")
        assert view["total"]["frames"] == frames, view["total"]
        return view

    def shadow_files(self, device: str) -> list[str]:
        shadow = self.root / device / "shadow"
        return sorted(p.name for folder in ("packages", "jobs") for p in (shadow / folder).iterdir())

    def alerts(self) -> list[dict]:
        return self.http.get("/alerts", params={"limit": 500}).json()["items"]

    def models(self) -> dict[str, str]:
        """What the fleet's device list says each online camera runs (from its status messages)."""
        items = self.http.get("/devices").json()["items"]
        return {d["id"]: d["model"]["version"] for d in items if d["status"] == "online" and d["model"]}

    def deployments(self, rid: int) -> list[tuple[str, str, str]]:
        return sorted((d["device"], d["kind"], d["state"]) for d in self.jobs(rid))


def agreement(values: dict[str, list[int]]) -> tuple[int, int]:
    """(frames, agreeing frames) worked out from the decoded pixels and the two thresholds."""
    frames = [v for vs in values.values() for v in vs]
    return len(frames), sum(top_label(v, 0.5) == top_label(v, 0.3) for v in frames)


@pytest.fixture
def shadow_fleet(tmp_path, brightness_packages, edgefleet_home):
    broker = Broker(tmp_path / "broker", dynsec=True)
    broker.start()
    w = None
    try:
        w = ShadowFleet(tmp_path, broker, brightness_packages, edgefleet_home)
        for version in ("v1", "v2"):
            up = w.http.post("/packages", content=brightness_packages[version].read_bytes())
            assert up.status_code == 201, up.text
            w.http.post(f"/models/brightness/versions/{up.json()['version']}/approval", json={"state": "Approved"})
        for device in CAMERAS:
            w.install_agent(device)
            w.start_agent(device)
        w.wait(lambda: w.models() == dict.fromkeys(CAMERAS, "1"), 60, "both cameras online on v1")
        yield w
    finally:
        if w is not None:
            w.close()
        broker.close()


def test_shadow_beside_v1_agrees_as_computed_survives_a_kill_and_stops(shadow_fleet):
    fleet = shadow_fleet
    rid = fleet.shadow_rollout({"min_agreement": 0.5, "min_frames": 10, "max_latency_ratio": 100.0})
    fleet.wait(lambda: fleet.deployments(rid) == [(d, "shadow_install", "committed") for d in CAMERAS], 60, "commits")
    # 1. The candidate sits beside the active model, which is unchanged.
    for job in fleet.jobs(rid):
        assert fleet.shadow_files(job["device"]) == ["brightness-2", "current", f"{job['job']}.json"]
        assert fleet.active(job["device"]) == "brightness-1"
    for device, values in FRAMES.items():
        fleet.feed(device, values)
    frames, agree = agreement(FRAMES)
    assert (frames, agree) == (14, 9)  # cam-a 6 of 8, cam-b 3 of 6
    view = fleet.wait_frames(rid, frames)
    total = view["total"]
    assert total["agreement"] == pytest.approx(agree / frames)
    assert (total["devices"], total["frames_seen"], total["skipped_budget"]) == (2, frames, 0)
    assert [(g["active"]["version"], g["candidate"]["version"], g["group"]) for g in view["groups"]] == [
        ("1", "2", "lobby")
    ]
    assert view["state"] == "shadowing" and view["verdict"]["passed"], view["verdict"]
    # Alerts come from v1 alone: one per frame v1 finds bright (cooldown 0), none for the frames only v2 does.
    bright = sum(top_label(v, 0.5) == "bright" for vs in FRAMES.values() for v in vs)
    fleet.wait(lambda: len(fleet.alerts()) >= bright, 30, f"{bright} alerts")
    assert sorted((a["device"], a["model"]["version"]) for a in fleet.alerts()) == sorted(
        (d, "1") for d, vs in FRAMES.items() for v in vs if top_label(v, 0.5) == "bright"
    )
    telemetry = fleet.http.get("/telemetry").json()["items"]
    assert telemetry and {t["model"]["version"] for t in telemetry} == {"1"}
    assert fleet.models() == dict.fromkeys(CAMERAS, "1")

    # 4. cam-a SIGKILLed while holding the shadow model: back with v1 active, the shadow runs again.
    fleet.agents["cam-a"].send_signal(signal.SIGKILL)
    assert fleet.agents["cam-a"].wait(timeout=20) == -signal.SIGKILL
    fleet.start_agent("cam-a")
    more = {"cam-a": [100, 150]}
    fleet.feed("cam-a", more["cam-a"])
    frames, agree = agreement({"cam-a": FRAMES["cam-a"] + more["cam-a"], "cam-b": FRAMES["cam-b"]})
    view = fleet.wait_frames(rid, frames)
    assert view["total"]["agreement"] == pytest.approx(agree / frames)
    assert fleet.active("cam-a") == "brightness-1"
    fleet.wait(lambda: fleet.models() == dict.fromkeys(CAMERAS, "1"), 30, "cam-a online again on v1")
    assert fleet.deployments(rid) == [(d, "shadow_install", "committed") for d in CAMERAS]
    assert fleet.state(rid)["state"] == "shadowing"

    # 3. Stop, with cam-a down (SIGKILLed again): cam-b drops the candidate at once, cam-a when it
    # comes back (it resumes the shadow, then finds the removal queued in its broker session).
    fleet.agents["cam-a"].send_signal(signal.SIGKILL)
    fleet.agents["cam-a"].wait(timeout=20)
    stopped = fleet.http.post(f"/rollouts/{rid}/stop", json={"reason": "enough evidence"})
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped", stopped.text
    fleet.wait(lambda: fleet.shadow_files("cam-b") == [], 30, "cam-b's shadow files to go")
    assert fleet.shadow_files("cam-a") != []
    fleet.start_agent("cam-a")
    fleet.wait(lambda: fleet.shadow_files("cam-a") == [], 30, "cam-a's shadow files to go")
    removed = [("cam-a", "shadow_remove", "committed"), ("cam-b", "shadow_remove", "committed")]
    fleet.wait(lambda: [d for d in fleet.deployments(rid) if d[1] == "shadow_remove"] == removed, 30, "removals")
    # The active model keeps running and alerting on both; the stopped candidate compares nothing more.
    alerts = len(fleet.alerts())
    for device in CAMERAS:
        fleet.feed(device, [220])
    fleet.wait(lambda: len(fleet.alerts()) == alerts + 2, 30, "the active model's alerts after the stop")
    assert {(a["device"], a["model"]["version"]) for a in fleet.alerts()[:2]} == {("cam-a", "1"), ("cam-b", "1")}
    assert fleet.view(rid)["total"]["frames"] == frames
    assert {d: fleet.active(d) for d in CAMERAS} == dict.fromkeys(CAMERAS, "brightness-1")


def test_the_gate_refuses_then_a_promotion_rolls_v2_out_in_place_of_the_shadow(shadow_fleet):
    fleet = shadow_fleet
    frames, agree = agreement(FRAMES)
    # 2. The gate wants more frames than the first batch: refused, the failed condition named.
    rid = fleet.shadow_rollout({"min_agreement": 0.5, "min_frames": frames + 4, "max_latency_ratio": 100.0})
    fleet.wait(lambda: fleet.deployments(rid) == [(d, "shadow_install", "committed") for d in CAMERAS], 60, "commits")
    for device, values in FRAMES.items():
        fleet.feed(device, values)
    fleet.wait_frames(rid, frames)
    refused = fleet.http.post(f"/rollouts/{rid}/promote", json={"reason": "early"})
    assert refused.status_code == 409, refused.text
    assert f"{frames} compared frames (at least {frames + 4})" in refused.json()["error"]
    assert [c["name"] for c in fleet.view(rid)["verdict"]["checks"] if not c["ok"]] == ["frames"]
    # Four more frames, all agreeing (bright to both): the gate passes.
    fleet.feed("cam-b", [200, 210, 230, 40])
    view = fleet.wait_frames(rid, frames + 4)
    assert view["total"]["agreement"] == pytest.approx((agree + 4) / (frames + 4)) and view["verdict"]["passed"]
    promoted = fleet.http.post(f"/rollouts/{rid}/promote", json={"reason": "evidence"})
    assert promoted.status_code == 201, promoted.text
    staged = promoted.json()
    assert staged["source"] == rid
    fleet.wait(lambda: all(fleet.shadow_files(d) == [] for d in CAMERAS), 30, "the shadow files to go")
    final = fleet.wait(
        lambda: fleet.state(staged["id"])["state"] in ("succeeded", "aborted") and fleet.state(staged["id"]),
        120,
        "the staged rollout to finish",
    )
    assert final["state"] == "succeeded" and final["installs"] == {"committed": 2}, final
    assert {d: fleet.active(d) for d in CAMERAS} == dict.fromkeys(CAMERAS, "brightness-2")
    fleet.wait(lambda: fleet.models() == dict.fromkeys(CAMERAS, "2"), 30, "both cameras to report v2")
    assert fleet.state(rid)["state"] == "promoted" and fleet.view(rid)["promoted_to"] == staged["id"]
    removals = [(d, s) for d, kind, s in fleet.deployments(rid) if kind == "shadow_remove"]
    assert removals == [(d, "committed") for d in CAMERAS], fleet.deployments(rid)
