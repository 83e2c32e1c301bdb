"""The fleet dashboard in a real headless chromium: loads cleanly, shows what the API says, acts with the token's scope."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` (the page re-renders every 3 s, so elements come and go) until it is truthy."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (NoSuchElementException, StaleElementReferenceException):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout} s")


@pytest.fixture
def live_fleet(tmp_path: Path, edgefleet_home: Path, baseline_package):
    """A fleet with 3 devices (one drifting), the package uploaded (pending approval), served by uvicorn."""
    from drift_support import LiveServer, telemetry_windows

    from edgefleet.fleet import devices, registry
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.drift import DriftConfig
    from edgefleet.fleet.ingest import Ingest, Message
    from edgefleet.signing import load_public_key

    package, pub, _ = baseline_package
    fleet = open_fleet(
        FleetConfig(
            data_dir=tmp_path / "fleet", signing_key=tmp_path / "none.key", drift=DriftConfig(windows_to_alarm=2)
        )
    )
    fleet.trusted.append(load_public_key(pub))
    registry.upload_package(fleet, package)
    ingest = Ingest(fleet)
    for dev in ("cam-1", "cam-2", "cam-3"):
        devices.register_device(fleet, dev, "x86_64", group="lobby")
    now = time.time()
    msgs = [
        Message(
            f"edgefleet/v1/{d}/status",
            json.dumps({"schema": 1, "state": s, "model": {"name": "brightness", "version": "1"}}).encode(),
            now - 60,
        )
        for d, s in (("cam-1", "online"), ("cam-2", "online"), ("cam-3", "offline"))
    ]
    # Telemetry from the agent's own window code and the real model: cam-1 goes dark (drift alarm), cam-2 stays normal.
    normal, dark = (
        telemetry_windows(package, pub, "normal", 4, seed=1),
        telemetry_windows(package, pub, "dark", 3, seed=2),
    )
    for i, (n_body, d_body) in enumerate(zip(normal, [normal[0]] + dark)):
        for dev, body in (("cam-1", d_body), ("cam-2", n_body)):
            body = {**body, "latency_ms": {**body["latency_ms"], "p95": 4.0 + i + (dev == "cam-2")}}
            msgs.append(Message(f"edgefleet/v1/{dev}/telemetry", json.dumps(body).encode(), now - 50 + 10 * i))
    # Then a window too small to judge alone: cam-2 collects frames towards its next one.
    (thin,) = telemetry_windows(package, pub, "normal", 1, frames=30, seed=3)
    msgs.append(Message("edgefleet/v1/cam-2/telemetry", json.dumps(thin).encode(), now - 5))
    ingest.handle_batch(msgs)
    app = create_app(fleet, ingest)
    tokens = {scope: create_token(fleet, scope, scope) for scope in ("read-only", "operator", "admin")}
    with LiveServer(app) as server:
        yield fleet, server, tokens


def open_dashboard(browser, server, token: str) -> None:
    browser.get(server.url + "/dashboard")
    browser.find_element("id", "token").send_keys(token)
    browser.find_element("css selector", "#token-form button").click()
    wait_for(lambda: browser.execute_script("return document.body.dataset.loaded === 'true'"), what="dashboard loaded")


def severe_console_entries(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def api(server, token: str, path: str):
    import httpx

    return httpx.get(server.url + "/api/v1" + path, headers={"Authorization": f"Bearer {token}"}).json()


def test_pages_load_without_console_errors_and_numbers_match_the_api(browser, live_fleet) -> None:
    fleet, server, tokens = live_fleet
    open_dashboard(browser, server, tokens["read-only"])
    devices = api(server, tokens["read-only"], "/devices")["items"]
    drift = api(server, tokens["read-only"], "/drift")
    assert browser.find_element("id", "count-online").text == str(sum(d["status"] == "online" for d in devices)) == "2"
    assert browser.find_element("id", "count-offline").text == "1"
    alarms = [a for a in drift["alarms"] if a["state"] in ("alarm", "recovering")]
    assert browser.find_element("id", "count-alarms").text == str(len(alarms)) == "1"
    for d in devices:
        row = browser.find_element("css selector", f'#devices tr[data-device="{d["id"]}"]')
        assert row.find_element("css selector", ".status").text == d["status"]
        assert row.find_element("css selector", ".version").text == f"{d['model']['name']} {d['model']['version']}"
    cam1 = browser.find_element("css selector", '#devices tr[data-device="cam-1"] .drift').text
    assert cam1.startswith("alarm (") and f"{alarms[0]['score']:.3f}" in cam1
    cam2 = browser.find_element("css selector", '#devices tr[data-device="cam-2"] .drift').text
    assert cam2.startswith("ok (") and cam2.endswith(" · collecting: 30 of 100 frames")
    assert browser.find_element("css selector", '#devices tr[data-device="cam-3"] .drift').text == "-"
    # Plots: one line per device, the drift plot with its threshold; the feed shows the raised alarm.
    assert {p.get_attribute("data-series") for p in browser.find_elements("css selector", "#drift-plot polyline")} == {
        "cam-1",
        "cam-2",
    }
    assert {
        p.get_attribute("data-series") for p in browser.find_elements("css selector", "#latency-plot polyline")
    } == {"cam-1", "cam-2"}
    assert browser.find_elements("css selector", "#drift-plot line.threshold")
    feed = browser.find_element("id", "alerts-feed").text
    assert "drift alarm raised on cam-1" in feed
    # One of the two reporting devices drifts: the fleet-wide alarm (fleet_share 0.5) is up too.
    assert "fleet-wide drift alarm raised on brightness 1 (1 of 2 devices drifting)" in feed
    (whole,) = drift["fleet"]
    fleet_row = '#fleet-drift tr[data-model="brightness/1"]'
    assert browser.find_element("css selector", fleet_row + " .score").text == f"{whole['score']:.3f}"
    assert browser.find_element("css selector", fleet_row + " .alarm").text == whole["state"] == "alarm"
    assert (
        browser.find_element("css selector", '#models tr[data-model="brightness/1"] .approval').text
        == "PendingManualApproval"
    )
    assert severe_console_entries(browser) == []


def test_actions_follow_the_token_scope_approve_and_pause_a_rollout(browser, live_fleet) -> None:
    from edgefleet.fleet import rollouts

    fleet, server, tokens = live_fleet
    # An operator cannot approve (admin only): the page shows the API's refusal.
    open_dashboard(browser, server, tokens["operator"])
    browser.find_element("css selector", '#models tr[data-model="brightness/1"] button[data-action="approve"]').click()
    wait_for(lambda: "approve brightness 1 failed" in browser.find_element("id", "error").text, what="refusal shown")
    assert "admin" in browser.find_element("id", "error").text
    assert api(server, tokens["admin"], "/models/brightness/versions/1")["approval"] == "PendingManualApproval"
    # The admin approves from the page.
    browser.execute_script("sessionStorage.clear()")
    browser.find_element("id", "token").clear()
    open_dashboard(browser, server, tokens["admin"])
    browser.find_element("css selector", '#models tr[data-model="brightness/1"] button[data-action="approve"]').click()
    wait_for(
        lambda: api(server, tokens["admin"], "/models/brightness/versions/1")["approval"] == "Approved", what="approved"
    )
    wait_for(
        lambda: (
            browser.find_element("css selector", '#models tr[data-model="brightness/1"] .approval').text == "Approved"
        ),
        what="page shows Approved",
    )
    # A rollout starts; the page shows its wave, and pauses it.
    rollout = rollouts.create_rollout(fleet, "brightness", "1", {"group": "lobby"}, {"canary": 1, "waves": [100]})
    rollouts.tick(fleet)
    assert rollouts.get_rollout(fleet, rollout.id).state == "deploying"
    row = f'#rollouts tr[data-rollout="{rollout.id}"]'
    wait_for(lambda: browser.find_element("css selector", row + " .state").text == "deploying", what="rollout shown")
    assert browser.find_element("css selector", row + " .wave").text.startswith("1 / 2")
    browser.find_element("css selector", row + ' button[data-action="pause"]').click()
    wait_for(lambda: rollouts.get_rollout(fleet, rollout.id).state == "paused", what="rollout paused")
    wait_for(lambda: browser.find_element("css selector", row + " .state").text == "paused", what="page shows paused")
    events = rollouts.rollout_events(fleet, rollout.id).items
    assert events[-1].event == "pause" and events[-1].detail == "from the dashboard"
    # The one console error is the network log of the operator's refused (403) approval.
    errors = severe_console_entries(browser)
    assert (
        len(errors) == 1
        and errors[0]["source"] == "network"
        and "/approval" in errors[0]["message"]
        and "403" in errors[0]["message"]
    )
