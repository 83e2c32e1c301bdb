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
def fleet_on_broker(tmp_path: Path, edgefleet_home: Path, baseline_package, mqtt_broker):
    from edgefleet.fleet import devices, registry
    from edgefleet.fleet.bridge import Bridge
    from edgefleet.fleet.config import BrokerConfig, FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.drift import DriftConfig
    from edgefleet.fleet.ingest import Ingest
    from edgefleet.signing import load_public_key

    package, pub, _ = baseline_package
    broker = BrokerConfig(host=mqtt_broker.host, port=mqtt_broker.port, ca_file=mqtt_broker.pki.ca_file, cert_file=mqtt_broker.fleet_cert, key_file=mqtt_broker.fleet_key)
    fleet = open_fleet(FleetConfig(data_dir=tmp_path / "fleet", signing_key=tmp_path / "none.key", broker=broker,
                                   drift=DriftConfig(windows_to_alarm=2, windows_to_clear=2, min_frames=40)))
    fleet.trusted.append(load_public_key(pub))
    registry.upload_package(fleet, package)
    devices.register_device(fleet, "cam-1", "x86_64")
    ingest = Ingest(fleet)
    bridge = Bridge(broker, ingest, client_id="fleet-drift-test")
    bridge.start()
    ingest.drift.use_mqtt(bridge.client)  # as `edgefleet fleet serve` does
    try:
        yield fleet
    finally:
        bridge.stop()


def frames_seen(fleet) -> int:
    from sqlalchemy import func, select

    from edgefleet.fleet.db import Telemetry

    with fleet.session() as s:
        return int(s.scalar(select(func.coalesce(func.sum(Telemetry.frames), 0)).where(Telemetry.device_id == "cam-1")))


def alarm_state(fleet) -> str | None:
    from sqlalchemy import select

    from edgefleet.fleet.drift_service import DriftAlarm

    with fleet.session() as s:
        return s.scalar(select(DriftAlarm.state).where(DriftAlarm.device_id == "cam-1"))


@pytest.mark.parametrize("fault", ["dark", "blur"])
def test_injected_drift_alarms_within_k_windows_and_recovery_clears_it(tmp_path: Path, mqtt_broker, baseline_package, fleet_on_broker, fault: str) -> None:
    from edgefleet.fleet.drift_service import drift_windows

    fleet = fleet_on_broker
    package, pub, _ = baseline_package
    alarms = mqtt_broker.subscriber("edgefleet/v1/+/drift", client_id=f"drift-watch-{fault}")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    config = agent_config(tmp_path, mqtt_broker, (package, pub), telemetry={"interval_s": 0.7}, rules={"labels": ["never"], "min_score": 0.99})
    agent = start_agent(write_config(tmp_path / "agent.toml", config), log=tmp_path / "agent.log")
    rng = np.random.default_rng(11)
    change = {"dark": darken, "blur": blur}[fault]
    dropped = 0

    def phase(kind: str, until, max_batches: int) -> int:
        """Drop batches of frames until `until()` holds; each batch is fully reported before the next."""
        nonlocal dropped
        for n in range(1, max_batches + 1):
            for _ in range(BATCH):
                image = scene(rng)
                (incoming / f".f{dropped}.tmp").write_bytes(jpeg(change(image) if kind == "fault" else image))
                (incoming / f".f{dropped}.tmp").rename(incoming / f"f{dropped:05d}.jpg")
                dropped += 1
            wait_until(lambda: frames_seen(fleet) >= dropped, timeout=60)
            if until():
                return n
        raise AssertionError(f"{kind} phase: condition not met after {max_batches} batches; windows: {drift_windows(fleet)}")

    try:
        phase("normal", lambda: len(drift_windows(fleet)) >= 3, 8)
        # Normal frames do not alarm (a single noisy window may go pending; K = 2 keeps it quiet).
        assert alarm_state(fleet) in ("ok", "pending") and not alarms.messages
        before = len(drift_windows(fleet))
        phase("fault", lambda: alarm_state(fleet) == "alarm", 8)
        windows = drift_windows(fleet)
        raised_at = next(i for i, w in enumerate(windows) if w["state"] == "alarm")
        # Raised on the K-th consecutive window over the threshold, within the first K fault windows.
        assert raised_at >= before and raised_at - before < 2 and all(w["over"] for w in windows[raised_at - 1:raised_at + 1])
        raised = json.loads(wait_until_message(alarms, "raised"))
        assert raised["device"] == "cam-1" and raised["model"] == {"name": "brightness", "version": "1"} and raised["score"] > 0.25
        assert raised["feature"] in (("brightness", "contrast", "predictions", "confidence") if fault == "dark" else ("contrast",))
        phase("normal", lambda: alarm_state(fleet) == "ok", 8)
        cleared = json.loads(wait_until_message(alarms, "cleared"))
        assert cleared["state"] == "ok"
    finally:
        agent.terminate()
        agent.wait(timeout=20)


def wait_until_message(subscriber, event: str, timeout: float = 15.0) -> bytes:
    found: list[bytes] = []

    def check() -> bool:
        found[:] = [m.payload for m in subscriber.messages if json.loads(m.payload).get("event") == event]
        return bool(found)

    wait_until(check, timeout=timeout)
    return found[-1]
