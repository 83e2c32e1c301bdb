"""Drift windows pooled until they hold enough frames (any frame rate is judged), and the
fleet-wide alarm per model version: the ingest, the alarm tables, the API and the publisher."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from test_drift_fleet import drift_fleet, feed, windows  # noqa: F401  (drift_fleet is a fixture)

from edgefleet.contracts.mqtt import DriftAnnouncement, FleetDriftAlarmMessage
from edgefleet.contracts.rest import DriftOverview


def with_ts(body: dict, at: float) -> dict:
    """The agent stamps each telemetry window with its own clock (payloads.now_iso)."""
    from datetime import datetime, timezone

    return {**body, "ts": datetime.fromtimestamp(at, timezone.utc).isoformat().replace("+00:00", "Z")}


def overview(fleet, ingest) -> DriftOverview:
    from edgefleet.fleet.drift_routes import drift_overview

    return drift_overview(fleet, ingest.drift)


def test_small_windows_are_pooled_until_min_frames_and_the_api_says_how_far(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    # 25 frames per telemetry message: a 1 fps camera sending every 25 s; min_frames is 100.
    small = windows(baseline_package, "normal", 5, frames=25, seed=21)
    assert feed(drift_fleet, ingest, "cam-1", small[:3]) == [None, None, None]  # nothing judged yet
    client = TestClient(create_app(drift_fleet, ingest))
    client.headers["Authorization"] = "Bearer " + create_token(drift_fleet, "viewer", "read-only")
    body = client.get("/api/v1/drift").json()
    pools = [(c["device"], c["frames"], c["target"], c["messages"]) for c in body["collecting"]]
    assert pools == [("cam-1", 75, 100, 3)]
    assert body["alarms"] == [] and client.get("/api/v1/drift/windows").json() == {"items": [], "next": None}
    assert feed(drift_fleet, ingest, "cam-1", small[3:]) == ["ok", "ok"]  # the 4th message completes 100 frames
    (judged,) = client.get("/api/v1/drift/windows").json()["items"]
    assert judged["frames"] == 100 and not judged["over"]
    # The 5th message starts the next pool.
    assert [c["frames"] for c in client.get("/api/v1/drift").json()["collecting"]] == [25]

    # Dark frames at the same low rate: judged every 4 messages, alarmed on the 3rd judged window.
    dark = windows(baseline_package, "dark", 12, frames=25, seed=22)
    states = feed(drift_fleet, ingest, "cam-1", dark)
    assert states[-1] == "alarm" and states[:7].count("alarm") == 0, states
    over = [w for w in client.get("/api/v1/drift/windows").json()["items"] if w["over"]]
    assert len(over) == 3 and all(w["frames"] == 100 for w in over)


def test_frames_older_than_max_age_are_dropped_not_mixed_with_the_present(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    age = drift_fleet.config.drift.max_age_s
    t0 = time.time() - 3 * age
    dark = windows(baseline_package, "dark", 2, frames=40, seed=23)
    normal = windows(baseline_package, "normal", 2, frames=60, seed=24)
    # 80 dark frames in the evening; the camera then sends nothing for longer than max_age_s.
    feed(drift_fleet, ingest, "cam-1", [with_ts(b, t0 + i) for i, b in enumerate(dark)])
    assert [c.frames for c in overview(drift_fleet, ingest).collecting] == [80]
    # The next morning's 60 frames start a new pool instead of completing the old one.
    states = feed(drift_fleet, ingest, "cam-1", [with_ts(normal[0], t0 + age + 10)])
    assert states == [None] and ingest.stats()["drift_window_expired"] == 1
    assert [c.frames for c in overview(drift_fleet, ingest).collecting] == [60]
    assert feed(drift_fleet, ingest, "cam-1", [with_ts(normal[1], t0 + age + 20)]) == ["ok"]


def test_fleet_wide_alarm_follows_the_share_of_drifting_devices(drift_fleet, baseline_package) -> None:
    """windows_to_alarm 3, windows_to_clear 2 (the fixture), fleet_share 0.5 of at least 2 devices."""
    from edgefleet.fleet import devices
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.drift_service import FLEET_TOPIC
    from edgefleet.fleet.ingest import Ingest

    devices.register_device(drift_fleet, "cam-3", "x86_64")
    ingest = Ingest(drift_fleet)
    published: list[tuple[str, dict]] = []
    ingest.drift.publish = lambda topic, data: published.append((topic, json.loads(data)))
    normal, dark = windows(baseline_package, "normal", 6, seed=25), windows(baseline_package, "dark", 3, seed=26)

    def rounds(dark_devices: set[str], n: int) -> list[str]:
        """n windows from each device, in turn; the fleet alarm's state after each round."""
        states = []
        for i in range(n):
            for j, dev in enumerate(("cam-1", "cam-2", "cam-3")):
                feed(drift_fleet, ingest, dev, [dark[i % 3] if dev in dark_devices else normal[(i + j) % 6]])
            (alarm,) = overview(drift_fleet, ingest).fleet_alarms
            states.append(alarm.state)
        return states

    # One camera of three goes dark: its own alarm is raised, the fleet's is not (1/3 < 0.5).
    assert rounds({"cam-1"}, 3) == ["ok", "ok", "ok"]
    assert {a.device: a.state for a in overview(drift_fleet, ingest).alarms}["cam-1"] == "alarm"
    assert [p["type"] for _, p in published] == ["drift_alarm"]
    # A second one: 2/3 drifting from cam-2's dark window on, so over on every judged window after
    # it; raised on the 3rd such window (cam-2, cam-3, then cam-1 in the next round).
    assert rounds({"cam-1", "cam-2"}, 2) == ["pending", "alarm"]
    raised = [p for t, p in published if t == FLEET_TOPIC]
    assert [(p["event"], p["state"], p["devices"], p["drifting"]) for p in raised] == [("raised", "alarm", 3, 2)]
    assert raised[0]["model"] == {"name": "brightness", "version": "1"} and raised[0]["share"] == pytest.approx(0.6667)
    assert isinstance(TypeAdapter(DriftAnnouncement).validate_python(raised[0]), FleetDriftAlarmMessage)
    view = overview(drift_fleet, ingest)
    assert view.fleet[0].state == "alarm" and view.config.fleet_share == 0.5
    # Recovery: two judged windows under the share clear it, by the same transition table.
    assert rounds(set(), 1) == ["ok"]
    fleet_events = [(p["event"], p["drifting"]) for t, p in published if t == FLEET_TOPIC]
    assert fleet_events == [("raised", 2), ("cleared", 0)]
    client = TestClient(create_app(drift_fleet, ingest))
    client.headers["Authorization"] = "Bearer " + create_token(drift_fleet, "viewer", "read-only")
    events = client.get("/api/v1/drift/events").json()["items"]
    assert [e["event"] for e in events if e["scope"] == "fleet"] == ["cleared", "raised"]
    assert client.get("/api/v1/drift").json()["fleet_alarms"][0]["cleared_at"] is not None


def test_a_single_device_has_no_fleet_wide_alarm_of_its_own(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    assert feed(drift_fleet, ingest, "cam-1", windows(baseline_package, "dark", 3, seed=27))[-1] == "alarm"
    assert overview(drift_fleet, ingest).fleet_alarms == []  # fleet_min_devices = 2


def test_a_window_on_other_bin_edges_is_refused_before_it_is_pooled(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    thin = windows(baseline_package, "normal", 1, frames=30, seed=28)[0]
    hist = thin["drift"]["brightness"]
    other = {**thin, "drift": {**thin["drift"], "brightness": {**hist, "edges": [e * 2 for e in hist["edges"]]}}}
    assert feed(drift_fleet, ingest, "cam-1", [other]) == [None]
    assert ingest.stats()["drift_malformed"] == 1 and overview(drift_fleet, ingest).collecting == []
