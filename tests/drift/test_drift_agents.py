"""Injected drift end to end: a real agent process, a real mosquitto, the fleet's MQTT bridge.

Frames are dropped into the agent's folder source: normal scenes, then the same kind of
scenes darkened (night) or blurred, then normal again. The agent sends its real telemetry
windows; the fleet judges them against the package's baseline and publishes alarms.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "agent"))
from agent_support import agent_config, start_agent, wait_until, write_config  # noqa: E402
from drift_support import blur, darken, jpeg, scene  # noqa: E402
from support.broker import mqtt_broker  # noqa: E402,F401  (the fixture)

pytestmark = pytest.mark.mqtt
BATCH = 60


@pytest.fixture
def fleet_on_broker(request, tmp_path: Path, edgefleet_home: Path, baseline_package, mqtt_broker):
    """The fleet's ingest on the broker, devices cam-1 and cam-2; parametrize (indirect) to change [drift]."""
    from edgefleet.fleet import devices, registry
    from edgefleet.fleet.bridge import Bridge
    from edgefleet.fleet.config import BrokerConfig, FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.drift import DriftConfig
    from edgefleet.fleet.ingest import Ingest
    from edgefleet.signing import load_public_key

    package, pub, _ = baseline_package
    broker = BrokerConfig(
        host=mqtt_broker.host,
        port=mqtt_broker.port,
        ca_file=mqtt_broker.pki.ca_file,
        cert_file=mqtt_broker.fleet_cert,
        key_file=mqtt_broker.fleet_key,
    )
    fleet = open_fleet(
        FleetConfig(
            data_dir=tmp_path / "fleet",
            signing_key=tmp_path / "none.key",
            broker=broker,
            drift=DriftConfig(
                **({"windows_to_alarm": 2, "windows_to_clear": 2, "min_frames": 40} | getattr(request, "param", {}))
            ),
        )
    )
    fleet.trusted.append(load_public_key(pub))
    registry.upload_package(fleet, package)
    devices.register_device(fleet, "cam-1", "x86_64")
    devices.register_device(fleet, "cam-2", "x86_64")
    ingest = Ingest(fleet)
    bridge = Bridge(broker, ingest, client_id="fleet-drift-test")
    bridge.start()
    ingest.drift.use_mqtt(bridge.client)  # as `edgefleet fleet serve` does
    fleet.ingest = ingest
    try:
        yield fleet
    finally:
        bridge.stop()


def drift_windows(fleet, device: str | None = None) -> list:
    """Every drift window (of `device`), oldest first: the API's pages come newest first."""
    from edgefleet.fleet.drift_routes import drift_windows as page

    return page(fleet, device).items[::-1]


def frames_per_message(fleet, device: str = "cam-1") -> list[int]:
    from sqlalchemy import select

    from edgefleet.fleet.db import Telemetry

    with fleet.session() as s:
        return list(s.scalars(select(Telemetry.frames).where(Telemetry.device_id == device).order_by(Telemetry.id)))


def frames_seen(fleet, device: str = "cam-1") -> int:
    return sum(frames_per_message(fleet, device))


def alarm_state(fleet, device: str = "cam-1") -> str | None:
    from sqlalchemy import select

    from edgefleet.fleet.drift_tables import DriftAlarm

    with fleet.session() as s:
        return s.scalar(select(DriftAlarm.state).where(DriftAlarm.device_id == device))


class Camera:
    """A real agent process and its folder source; frames are scenes, darkened or blurred on demand."""

    def __init__(self, tmp_path: Path, broker, package, device: str, seed: int, interval_s: float = 0.7) -> None:
        self.device, self.rng, self.dropped = device, np.random.default_rng(seed), 0
        root = tmp_path / device
        self.incoming = root / "incoming"
        self.incoming.mkdir(parents=True)
        source = {"type": "folder", "path": str(self.incoming), "max_fps": 200.0, "poll_s": 0.05}
        config = agent_config(
            root,
            broker,
            package,
            device=device,
            sources=[source],
            telemetry={"interval_s": interval_s},
            rules={"labels": ["never"], "min_score": 0.99},
        )
        self.process = start_agent(write_config(root / "agent.toml", config), log=root / "agent.log")

    def drop(self, n: int, change=None) -> None:
        """n frames, each written under a temporary name and renamed (the folder source's contract)."""
        for _ in range(n):
            image = scene(self.rng)
            tmp = self.incoming / f".f{self.dropped}.tmp"
            tmp.write_bytes(jpeg(change(image) if change else image))
            tmp.rename(self.incoming / f"f{self.dropped:05d}.jpg")
            self.dropped += 1

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=20)


@pytest.mark.parametrize("fault", ["dark", "blur"])
def test_injected_drift_alarms_within_k_windows_and_recovery_clears_it(
    tmp_path: Path, mqtt_broker, baseline_package, fleet_on_broker, fault: str
) -> None:

    fleet = fleet_on_broker
    package, pub, _ = baseline_package
    alarms = mqtt_broker.subscriber("edgefleet/v1/+/drift", client_id=f"drift-watch-{fault}")
    cam = Camera(tmp_path, mqtt_broker, (package, pub), "cam-1", seed=11)
    change = {"dark": darken, "blur": blur}[fault]

    def phase(kind: str, until, max_batches: int) -> int:
        """Drop batches of frames until `until()` holds; each batch is fully reported before the next."""
        for n in range(1, max_batches + 1):
            cam.drop(BATCH, change if kind == "fault" else None)
            wait_until(lambda: frames_seen(fleet) >= cam.dropped, timeout=60)
            if until():
                return n
        raise AssertionError(
            f"{kind} phase: condition not met after {max_batches} batches; windows: {drift_windows(fleet)}"
        )

    try:
        phase("normal", lambda: len(drift_windows(fleet)) >= 3, 8)
        # Normal frames do not alarm (a single noisy window may go pending; K = 2 keeps it quiet).
        assert alarm_state(fleet) in ("ok", "pending") and not alarms.messages
        before = len(drift_windows(fleet))
        phase("fault", lambda: alarm_state(fleet) == "alarm", 8)
        windows = drift_windows(fleet)
        raised_at = next(i for i, w in enumerate(windows) if w.state == "alarm")
        # Raised on the K-th consecutive window over the threshold, within the first K fault windows.
        assert (
            raised_at >= before
            and raised_at - before < 2
            and all(w.over for w in windows[raised_at - 1 : raised_at + 1])
        )
        raised = json.loads(wait_until_message(alarms, "raised"))
        assert (
            raised["device"] == "cam-1"
            and raised["model"] == {"name": "brightness", "version": "1"}
            and raised["score"] > 0.25
        )
        assert raised["feature"] in (
            ("brightness", "contrast", "predictions", "confidence") if fault == "dark" else ("contrast",)
        )
        phase("normal", lambda: alarm_state(fleet) == "ok", 8)
        cleared = json.loads(wait_until_message(alarms, "cleared"))
        assert cleared["state"] == "ok"
    finally:
        cam.stop()


def wait_until_message(subscriber, event: str, timeout: float = 15.0) -> bytes:
    found: list[bytes] = []

    def check() -> bool:
        found[:] = [m.payload for m in subscriber.messages if json.loads(m.payload).get("event") == event]
        return bool(found)

    wait_until(check, timeout=timeout)
    return found[-1]


@pytest.mark.parametrize("fleet_on_broker", [{"min_frames": 24}], indirect=True)
def test_a_camera_with_fewer_frames_per_message_than_a_window_still_gets_windows_judged(
    tmp_path: Path, mqtt_broker, baseline_package, fleet_on_broker
) -> None:
    """1 fps at the default 60 s interval is 60 frames per message against min_frames 100: no
    message is a window on its own. Scaled down to stay short (same pooling path): about 4 frames
    per 0.5 s message at 8 fps against min_frames 24."""
    import time

    from edgefleet.fleet.drift_routes import drift_overview

    fleet = fleet_on_broker
    package, pub, _ = baseline_package
    cam = Camera(tmp_path, mqtt_broker, (package, pub), "cam-1", seed=12, interval_s=0.5)
    try:
        while len(drift_windows(fleet)) < 3 and cam.dropped < 240:
            cam.drop(1)
            time.sleep(0.125)
        windows, sizes = drift_windows(fleet), [n for n in frames_per_message(fleet) if n]
        assert len(windows) >= 3, (sizes, windows)
        assert all(w.frames >= 24 for w in windows)
        # Most messages are far below a window (a loaded machine may bunch a few frames together).
        assert sorted(sizes)[len(sizes) // 2] < 12, sizes
        assert sum(w.frames for w in windows) <= frames_seen(fleet)
        pools = drift_overview(fleet, fleet.ingest.drift).collecting
        assert all(0 < p.frames < p.target == 24 for p in pools)
    finally:
        cam.stop()


@pytest.mark.parametrize(
    "fleet_on_broker", [{"min_frames": 120, "windows_to_alarm": 2, "windows_to_clear": 2}], indirect=True
)
def test_a_darkened_camera_alarms_and_a_normal_one_never_does_over_20_windows(
    tmp_path: Path, mqtt_broker, baseline_package, fleet_on_broker
) -> None:
    """Two real agents at once: cam-2's scene darkens, cam-1's stays normal. Windows of 120 frames
    against the 300-image baseline (benchmarks/drift_windows.py: normal windows score <= 0.16)."""
    from edgefleet.fleet.drift_service import FLEET_TOPIC

    fleet = fleet_on_broker
    package, pub, _ = baseline_package
    whole = mqtt_broker.subscriber(FLEET_TOPIC, client_id="fleet-drift-watch")
    normal = Camera(tmp_path, mqtt_broker, (package, pub), "cam-1", seed=13, interval_s=0.5)
    night = Camera(tmp_path, mqtt_broker, (package, pub), "cam-2", seed=14, interval_s=0.5)
    try:
        for _ in range(30):
            cams = [normal] + ([night] if alarm_state(fleet, "cam-2") != "alarm" else [])
            for cam in cams:
                cam.drop(2 * BATCH, darken if cam is night else None)  # one window each
            for cam in cams:
                wait_until(lambda cam=cam: frames_seen(fleet, cam.device) >= cam.dropped, timeout=60)
            if len(drift_windows(fleet, "cam-1")) >= 20 and alarm_state(fleet, "cam-2") == "alarm":
                break
        ours, theirs = drift_windows(fleet, "cam-1"), drift_windows(fleet, "cam-2")
        assert len(ours) >= 20 and alarm_state(fleet, "cam-2") == "alarm"
        assert not any(w.over for w in ours), [w.score for w in ours]
        from edgefleet.fleet.drift_routes import drift_events

        raised = [e.device for e in drift_events(fleet).items if e.event == "raised" and e.scope == "device"]
        assert raised == ["cam-2"]
        # Raised on cam-2's 2nd window (windows_to_alarm), each one far over the threshold.
        assert [w.state for w in theirs][:2] == ["pending", "alarm"] and min(w.score for w in theirs) > 1
        # Half the devices of brightness 1 drift: the fleet-wide alarm is raised too (fleet_share 0.5).
        wait_until(lambda: any(json.loads(m.payload)["event"] == "raised" for m in whole.messages), timeout=15)
        first = json.loads(whole.messages[0].payload)
        assert (first["type"], first["devices"], first["drifting"]) == ("fleet_drift_alarm", 2, 1)
    finally:
        normal.stop()
        night.stop()
