"""The dashboard's shadow rollout panel in a real headless chromium: champion vs challenger as the
API sums it, agreement and latency plotted per window, and promotion from the page."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "agent_update"))
sys.path.insert(0, str(Path(__file__).parents[1] / "fleet"))
from test_dashboard_browser import api, open_dashboard, severe_console_entries, wait_for  # noqa: E402
from test_shadow_library import SHADOW_PLAN, report, send, start_shadow, status  # noqa: E402
from tests_fleet_util import fleet  # noqa: E402,F401
from update_support import tiny_packages  # noqa: E402,F401

pytestmark = pytest.mark.browser
WINDOWS = {"cam-a": [(50, 45, 10.0, 12.0), (50, 48, 11.0, 12.5)], "cam-b": [(60, 54, 20.0, 21.0)]}


@pytest.fixture
def shadow_fleet(fleet, tiny_packages):
    """Simulated devices cam-a and cam-b in a shadow rollout of tiny 2 beside tiny 1, with reports, served by uvicorn."""
    from drift_support import LiveServer
    from test_fleet_library import upload_approved

    from edgefleet.fleet import devices
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.ingest import Ingest

    upload_approved(fleet, tiny_packages["v1"], tiny_packages["v2"])
    ingest = Ingest(fleet)
    for dev in WINDOWS:
        devices.register_device(fleet, dev, "x86_64", group="lobby")
        send(fleet, ingest, dev, "status", status(dev, ["shadow"]))
    rid, jobs = start_shadow(fleet, SHADOW_PLAN, tuple(WINDOWS))
    for dev, windows in WINDOWS.items():
        for frames, agree, a_ms, c_ms in windows:
            fleet.clock.advance(30)
            body = report(dev, jobs[dev], rid, frames=frames, agree=agree, active_ms=a_ms, cand_ms=c_ms)
            send(fleet, ingest, dev, "shadow", body)
    tokens = {scope: create_token(fleet, scope, scope) for scope in ("read-only", "operator")}
    with LiveServer(create_app(fleet, ingest)) as server:
        yield fleet, server, tokens, rid


def test_champion_vs_challenger_matches_the_api_plots_each_window_and_promotes(browser, shadow_fleet) -> None:
    fleet, server, tokens, rid = shadow_fleet
    open_dashboard(browser, server, tokens["read-only"])
    view = api(server, tokens["read-only"], f"/rollouts/{rid}/shadow")
    total = view["total"]
    wait_for(
        lambda: browser.find_element("id", "shadow").get_attribute("data-rollout") == str(rid), what="shadow panel"
    )
    champion = browser.find_element("css selector", '#shadow-table tr[data-side="champion"]')
    challenger = browser.find_element("css selector", '#shadow-table tr[data-side="challenger"]')
    assert champion.find_element("css selector", ".latency").text == f"{total['active_latency_p50_ms']:.1f}"
    assert challenger.find_element("css selector", ".latency").text == f"{total['candidate_latency_p50_ms']:.1f}"
    assert challenger.find_element("css selector", ".confidence").text == "0.800"
    agreement = (45 + 48 + 54) / (50 + 50 + 60)
    assert browser.find_element("css selector", "#shadow-summary .agreement").text == f"agreement {agreement:.3f}"
    assert browser.find_element("css selector", "#shadow-gate .verdict").text == "passes its promotion gate"
    # One agreement line per device (with the gate's minimum dashed), one latency line per model.
    lines = browser.find_elements("css selector", "#shadow-agreement-plot polyline")
    assert {p.get_attribute("data-series") for p in lines} == {"cam-a", "cam-b"}
    cam_a = next(p for p in lines if p.get_attribute("data-series") == "cam-a")
    assert len(cam_a.get_attribute("points").split()) == 2  # its two windows
    assert browser.find_elements("css selector", '#shadow-agreement-plot circle[data-series="cam-b"]')  # its one window
    assert browser.find_elements("css selector", "#shadow-agreement-plot line.threshold")
    latency = browser.find_elements("css selector", "#shadow-latency-plot polyline")
    assert {p.get_attribute("data-series") for p in latency} == {"active", "candidate"}
    assert severe_console_entries(browser) == []
    # An operator promotes from the page: the shadow rollout ends and a staged rollout is linked to it.
    browser.execute_script("sessionStorage.clear()")
    browser.find_element("id", "token").clear()
    open_dashboard(browser, server, tokens["operator"])
    browser.find_element("css selector", f'#rollouts tr[data-rollout="{rid}"] button[data-action="promote"]').click()
    wait_for(lambda: api(server, tokens["operator"], f"/rollouts/{rid}")["state"] == "promoted", what="promoted")
    staged = api(server, tokens["operator"], f"/rollouts/{rid}/shadow")["promoted_to"]
    assert api(server, tokens["operator"], f"/rollouts/{staged}")["source"] == rid
    wait_for(lambda: f"promoted to rollout {staged}" in browser.find_element("id", "shadow-title").text, what="shown")
