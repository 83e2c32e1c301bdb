"""The dashboard's alert events in a real headless chromium: each event with its snapshot, the
camera's boxes drawn where they are in the frame, filters, and the scope alerts.read_scope asks."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image
from test_dashboard_browser import open_dashboard, severe_console_entries, wait_for

pytestmark = pytest.mark.browser
BOXES = {"cam-1": [[100.0, 60.0, 300.0, 400.0], [400.0, 200.0, 600.0, 460.0]], "cam-2": [[10.0, 10.0, 50.0, 50.0]]}


def frame_jpeg(size=(640, 480)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def alert(device: str, n: int, snapshot: dict | None) -> bytes:
    body = {
        "schema": 1,
        "id": f"{device}-{n}",
        "type": "alert",
        "device": device,
        "ts": "2026-11-29T12:00:00.000Z",
        "label": "person",
        "score": 0.91,
        "consecutive": 1,
        "source": "folder",
        "frame": f"f{n}.jpg",
        "model": {"name": "detector", "version": "3"},
        "latency_ms": 4.2,
        "detections": [{"label": "person", "score": 0.91, "box": [0, 0, 0, 0], "box_px": box} for box in BOXES[device]],
        "frame_size": [640, 480],
        "rule": "person score >= 0.5 in 1 frame(s)",
    }
    return json.dumps(body | ({"snapshot": snapshot} if snapshot else {})).encode()


@pytest.fixture
def alert_fleet(tmp_path: Path, edgefleet_home: Path):
    """cam-1 alerted with an uploaded snapshot, cam-2 with none (an agent before snapshots); operators read alerts."""
    import hashlib

    from drift_support import LiveServer

    from edgefleet.device_auth import sign_headers
    from edgefleet.fleet import alert_events, devices
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.auth import create_token
    from edgefleet.fleet.config import AlertsConfig, FleetConfig
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.ingest import Ingest, Message

    fleet = open_fleet(
        FleetConfig(
            data_dir=tmp_path / "fleet", signing_key=tmp_path / "none.key", alerts=AlertsConfig(read_scope="operator")
        )
    )
    for dev in ("cam-1", "cam-2"):
        devices.register_device(fleet, dev, "x86_64")
    jpeg = frame_jpeg()
    sha = hashlib.sha256(jpeg).hexdigest()
    ref = {"sha256": sha, "size": len(jpeg), "width": 640, "height": 480}
    ingest = Ingest(fleet)
    now = time.time()
    ingest.handle_batch(
        [
            Message("edgefleet/v1/cam-2/alerts", alert("cam-2", 0, None), now - 20),
            Message("edgefleet/v1/cam-1/alerts", alert("cam-1", 1, ref), now - 10),
        ]
    )
    key, cert = devices.ca(fleet).issue_key_and_cert("cam-1")
    alert_events.store_snapshot(fleet, "cam-1", sha, jpeg, sign_headers(key, cert, "cam-1", sha, int(now)))
    tokens = {scope: create_token(fleet, scope, scope) for scope in ("read-only", "operator")}
    with LiveServer(create_app(fleet, ingest)) as server:
        yield server, tokens


def test_alert_events_show_their_snapshot_with_the_boxes_drawn_in_place(browser, alert_fleet) -> None:
    server, tokens = alert_fleet
    open_dashboard(browser, server, tokens["operator"])
    figures = wait_for(lambda: browser.find_elements("css selector", "#events figure[data-event]"), what="events")
    assert len(figures) == 2
    newest = figures[0]
    img = wait_for(
        lambda: (
            newest.find_element("css selector", "img")
            if browser.execute_script("const i = arguments[0].querySelector('img'); return i && i.naturalWidth", newest)
            else None
        ),
        what="snapshot loaded",
    )
    assert browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img) == [640, 480]
    # Each box sits where it is in the frame, scaled to the image as shown.
    shown = img.rect
    rects = newest.find_elements("css selector", "svg.boxes rect")
    assert len(rects) == len(BOXES["cam-1"])
    for rect, (x1, y1, x2, y2) in zip(rects, BOXES["cam-1"]):
        r = browser.execute_script(
            "const b = arguments[0].getBoundingClientRect(); return [b.x, b.y, b.width, b.height]", rect
        )
        scale = shown["width"] / 640
        assert r[0] == pytest.approx(shown["x"] + x1 * scale, abs=2)
        assert r[1] == pytest.approx(shown["y"] + y1 * scale, abs=2)
        assert r[2] == pytest.approx((x2 - x1) * scale, abs=2) and r[3] == pytest.approx((y2 - y1) * scale, abs=2)
        assert rect.get_attribute("data-label") == "person"
    caption = newest.find_element("css selector", "figcaption").text
    assert "person 0.91" in caption and "cam-1" in caption and "detector 3" in caption and "score >= 0.5" in caption
    assert figures[1].find_element("css selector", ".no-snapshot").text == "no snapshot"
    # The filter asks the API again.
    browser.find_element("id", "events-device").send_keys("cam-2")
    wait_for(lambda: len(browser.find_elements("css selector", "#events figure[data-event]")) == 1, what="filtered")
    assert "cam-2" in browser.find_element("css selector", "#events figcaption").text
    assert not severe_console_entries(browser)


def test_a_token_below_the_alert_scope_sees_the_rest_of_the_page(browser, alert_fleet) -> None:
    server, tokens = alert_fleet
    open_dashboard(browser, server, tokens["read-only"])
    message = wait_for(lambda: browser.find_element("id", "events-error").text, what="scope message")
    assert "needs operator" in message
    assert not browser.find_elements("css selector", "#events figure")
    assert browser.find_element("id", "count-online").text == "2"  # their alerts marked both cameras online
