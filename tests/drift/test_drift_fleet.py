"""Drift in the fleet: telemetry windows through the ingest -> alarms in the DB, API, MQTT publisher, webhook, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from drift_support import LiveServer, WebhookReceiver, telemetry_windows
from fastapi.testclient import TestClient
from pydantic import TypeAdapter

from edgefleet.contracts.mqtt import DriftAlarmMessage, DriftAnnouncement
from edgefleet.fleet.drift import DriftConfig


@pytest.fixture
def drift_fleet(tmp_path: Path, edgefleet_home: Path, baseline_package, monkeypatch: pytest.MonkeyPatch):
    """A fleet on SQLite with the baseline package uploaded and approved, one device, and a webhook."""
    from edgefleet.fleet import devices, registry
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.signing import load_public_key

    package, pub, _ = baseline_package
    with WebhookReceiver() as hook:
        monkeypatch.setenv("EDGEFLEET_FLEET_DRIFT_WEBHOOK", hook.url)
        config = FleetConfig(
            data_dir=tmp_path / "fleet",
            signing_key=tmp_path / "none.key",
            drift=DriftConfig(windows_to_alarm=3, windows_to_clear=2),
        )
        fleet = open_fleet(config)
        fleet.trusted.append(load_public_key(pub))
        registry.upload_package(fleet, package)
        devices.register_device(fleet, "cam-1", "x86_64")
        devices.register_device(fleet, "cam-2", "x86_64")
        fleet.hook = hook
        yield fleet


def windows(baseline_package, kind: str, n: int, frames: int = 120, seed: int = 0) -> list[dict]:
    package, pub, _ = baseline_package
    return telemetry_windows(package, pub, kind, n, frames, seed)


def feed(fleet, ingest, device: str, bodies: list[dict]) -> list[str]:
    from sqlalchemy import select

    from edgefleet.fleet.drift_tables import DriftAlarm
    from edgefleet.fleet.ingest import Message

    states = []
    for body in bodies:
        ingest.handle_batch([Message(f"edgefleet/v1/{device}/telemetry", json.dumps(body).encode(), time.time())])
        with fleet.session() as s:
            states.append(s.scalar(select(DriftAlarm.state).where(DriftAlarm.device_id == device)))
    return states


def test_dark_frames_raise_an_alarm_after_k_windows_and_recovery_clears_it(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    published: list[tuple[str, dict]] = []
    ingest.drift.publish = lambda topic, data: published.append((topic, json.loads(data)))
    normal, dark = windows(baseline_package, "normal", 5, seed=1), windows(baseline_package, "dark", 4, seed=2)
    assert feed(drift_fleet, ingest, "cam-1", normal[:3]) == ["ok", "ok", "ok"]
    assert feed(drift_fleet, ingest, "cam-1", dark) == ["pending", "pending", "alarm", "alarm"]
    assert feed(drift_fleet, ingest, "cam-1", normal[3:]) == ["recovering", "ok"]
    assert [(t, p["event"], p["device"]) for t, p in published] == [
        ("edgefleet/v1/cam-1/drift", "raised", "cam-1"),
        ("edgefleet/v1/cam-1/drift", "cleared", "cam-1"),
    ]
    assert published[0][1]["feature"] in (
        "brightness",
        "contrast",
        "predictions",
    )  # night darkens and flattens the frame
    assert published[0][1]["score"] > 0.25 and published[0][1]["model"] == {"name": "brightness", "version": "1"}
    deadline = time.monotonic() + 10
    while len(drift_fleet.hook.bodies) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    # The webhook gets the JSON published on MQTT, and both parse as the alarm contract.
    assert sorted(drift_fleet.hook.bodies, key=str) == sorted((p for _, p in published), key=str)
    alarms = [TypeAdapter(DriftAnnouncement).validate_python(p) for _, p in published]
    assert [(type(a), a.event) for a in alarms] == [(DriftAlarmMessage, "raised"), (DriftAlarmMessage, "cleared")]

    client = TestClient(create_app(drift_fleet, ingest))
    client.headers["Authorization"] = "Bearer " + create_token(drift_fleet, "viewer", "read-only")
    overview = client.get("/api/v1/drift").json()
    assert overview["config"]["windows_to_alarm"] == 3
    assert [(a["device"], a["state"]) for a in overview["alarms"]] == [("cam-1", "ok")]
    assert overview["alarms"][0]["raised_at"] < overview["alarms"][0]["cleared_at"]
    series = client.get("/api/v1/drift/windows", params={"device": "cam-1"}).json()["items"][::-1]  # oldest first
    assert [w["over"] for w in series] == [False] * 3 + [True] * 4 + [False] * 2
    assert all(w["distances"]["brightness"]["psi"] > 0.25 for w in series if w["over"])
    assert [e["event"] for e in client.get("/api/v1/drift/events").json()["items"]] == ["cleared", "raised"]
    assert len(client.get("/api/v1/telemetry", params={"device": "cam-1"}).json()["items"]) == 9
    assert client.get("/api/v1/drift", headers={"Authorization": "Bearer nope"}).status_code == 403


def test_blurred_frames_drift_on_contrast_and_devices_are_judged_apart(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    blurred = windows(baseline_package, "blur", 3, seed=3)
    normal = windows(baseline_package, "normal", 3, seed=4)
    assert feed(drift_fleet, ingest, "cam-2", blurred) == ["pending", "pending", "alarm"]
    assert feed(drift_fleet, ingest, "cam-1", normal) == ["ok", "ok", "ok"]
    from edgefleet.fleet.drift_routes import drift_overview

    overview = drift_overview(drift_fleet, ingest.drift)
    alarms = {a.device: a for a in overview.alarms}
    assert alarms["cam-2"].state == "alarm" and alarms["cam-2"].feature == "contrast" and alarms["cam-1"].state == "ok"
    # The fleet as a whole: the newest window of each device, summed: half the frames are blurred.
    (whole,) = overview.fleet
    assert (whole.model.name, whole.model.version, whole.devices, whole.frames) == ("brightness", "1", 2, 240)
    assert whole.over and whole.feature == "contrast" and whole.score < alarms["cam-2"].score


def test_bad_or_thin_summaries_are_counted_not_fatal(drift_fleet, baseline_package) -> None:
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    good = windows(baseline_package, "normal", 1, seed=5)[0]
    thin = windows(baseline_package, "normal", 1, frames=3, seed=6)[0]
    broken = {**good, "drift": {**good["drift"], "brightness": {"edges": [0, 1], "counts": [1, 2]}}}
    unknown_model = {**good, "model": {"name": "other", "version": "9"}}
    assert feed(drift_fleet, ingest, "cam-1", [broken, thin, unknown_model]) == [None, None, None]
    stats = ingest.stats()
    assert stats["telemetry"] == 3  # the health numbers are still stored
    # A thin window is not judged alone: its frames wait in the device's pool.
    assert (stats["drift_malformed"], stats["drift_collecting"], stats["drift_no_baseline"]) == (1, 1, 1)


def test_cli_shows_states_and_sparklines(drift_fleet, baseline_package) -> None:
    from click.testing import CliRunner

    from edgefleet.cli import cli
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.ingest import Ingest

    ingest = Ingest(drift_fleet)
    feed(
        drift_fleet,
        ingest,
        "cam-1",
        windows(baseline_package, "normal", 2, seed=7) + windows(baseline_package, "dark", 3, seed=8),
    )
    feed(drift_fleet, ingest, "cam-2", windows(baseline_package, "normal", 1, frames=40, seed=9))  # too few to judge
    token = create_token(drift_fleet, "viewer", "read-only")
    with LiveServer(create_app(drift_fleet, ingest)) as server:
        result = CliRunner().invoke(
            cli, ["fleet", "--url", server.url, "--token", token, "drift"], env={"COLUMNS": "200"}
        )
        as_json = CliRunner().invoke(cli, ["fleet", "--url", server.url, "--token", token, "drift", "--json"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "cam-1" in line)
    cells = [c.strip() for c in line.split("│") if c.strip()]
    assert cells[:3] == ["cam-1", "brightness 1", "alarm"], cells
    pool = next(line for line in result.output.splitlines() if "cam-2" in line)
    assert [c.strip() for c in pool.split("│") if c.strip()] == ["cam-2", "brightness 1", "40 of 100 frames"]
    report = json.loads(as_json.output)
    scores = report["alarms"][0]["recent_scores"]
    assert len(scores) == 5 and scores[0] < 0.25 < scores[-1]
    # Normal windows sit low, dark ones are full bars (the sparkline spans 0 .. 2 x threshold).
    assert cells[-1][-3:] == "███" and set(cells[-1][:2]) <= set("▁▂▃")


def test_drift_section_of_the_fleet_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.errors import UsageError
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.drift_webhook import webhook_url

    monkeypatch.delenv("EDGEFLEET_FLEET_DRIFT_WEBHOOK", raising=False)
    (tmp_path / "hook").write_text("https://hooks.example/T000/secret\n")
    good = tmp_path / "fleet.toml"
    good.write_text(
        f'[drift]\nmetric = "js"\nthreshold = 0.2\nwindows_to_alarm = 4\nwebhook_url_file = "{tmp_path / "hook"}"\n'
    )
    cfg = load_config(good).drift
    assert (cfg.metric, cfg.threshold, cfg.windows_to_alarm, cfg.windows_to_clear) == ("js", 0.2, 4, 3)
    assert webhook_url(cfg) == "https://hooks.example/T000/secret"
    bad = tmp_path / "bad.toml"
    bad.write_text('[drift]\nwebhook_url = "https://hooks.example/T000/secret"\n')  # secrets never inline
    with pytest.raises(UsageError, match="drift.webhook_url"):
        load_config(bad)
