"""Alert events in the fleet library: one event per alert id, alerts of agents before snapshots,
listeners told only after the commit, paging, and retention by age and count (snapshots
deleted from the store with the last event naming them). Also run on PostgreSQL
(test_fleet_postgres.py)."""

from __future__ import annotations

import hashlib
import io
import json

from PIL import Image

DAY = 86400.0


def jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (shade, shade, shade)).save(buf, format="JPEG")
    return buf.getvalue()


def alert_body(n: int, *, label: str = "person", version: str = "1", snapshot: bytes | None = None) -> bytes:
    body = {
        "schema": 1,
        "id": f"alert-{n}-{label}",
        "device": "cam-1",
        "label": label,
        "score": 0.8,
        "consecutive": 2,
        "source": "cam",
        "frame": f"f{n}",
        "model": {"name": "det", "version": version},
        "latency_ms": 3.0,
    }
    if snapshot is not None:
        sha = hashlib.sha256(snapshot).hexdigest()
        body |= {"snapshot": {"sha256": sha, "size": len(snapshot), "width": 64, "height": 48}, "rule": "r"}
    return json.dumps(body).encode()


def ingest_alerts(fleet, bodies: list[tuple[bytes, float]]):
    from edgefleet.fleet import devices
    from edgefleet.fleet.ingest import Ingest, Message

    if devices.list_devices(fleet, None, None, None).items == []:
        devices.register_device(fleet, "cam-1", "x86_64")
    ingest = Ingest(fleet)
    ingest.handle_batch([Message("edgefleet/v1/cam-1/alerts", b, at) for b, at in bodies])
    return ingest


def upload(fleet, data: bytes, device: str = "cam-1"):
    from edgefleet.device_auth import sign_headers
    from edgefleet.fleet import alert_events, devices

    key, cert = devices.ca(fleet).issue_key_and_cert(device)
    sha = hashlib.sha256(data).hexdigest()
    return alert_events.store_snapshot(
        fleet, device, sha, data, sign_headers(key, cert, device, sha, int(fleet.clock()))
    )


def test_an_alert_is_one_event_however_often_it_arrives_and_old_agents_alerts_are_kept(fleet) -> None:
    from edgefleet.fleet.alert_events import list_events

    old = json.loads(alert_body(2))  # an agent before revision 2: no snapshot, no rule
    now = fleet.clock()
    ingest = ingest_alerts(fleet, [(alert_body(1, snapshot=jpeg(10)), now), (json.dumps(old).encode(), now + 1)])
    ingest.handle_batch([ingest_message(alert_body(1, snapshot=jpeg(10)), now + 2)])  # the broker sent it again
    page = list_events(fleet)
    assert len(page.items) == 2 and page.next is None and ingest.counters["alerts"] == 3
    newest, first = page.items
    assert newest.alert_id == "alert-2-person" and newest.snapshot is None and newest.rule is None
    assert first.snapshot is not None and first.snapshot.stored is False and first.rule == "r"
    assert upload(fleet, jpeg(10)).events == 1
    assert list_events(fleet).items[1].snapshot.stored is True


def ingest_message(body: bytes, at: float):
    from edgefleet.fleet.ingest import Message

    return Message("edgefleet/v1/cam-1/alerts", body, at)


def test_listeners_hear_an_event_once_its_batch_is_committed(fleet) -> None:
    """Ingest keeps a savepoint per message; releasing one is not the batch's commit."""
    from edgefleet.fleet import alert_events
    from edgefleet.fleet.alert_tables import AlertEvent

    heard = []

    def listener(kind, item) -> None:
        with fleet.session() as s:  # what a listener reads is committed
            heard.append((kind, item.label, s.get(AlertEvent, item.id) is not None))

    alert_events.add_listener(fleet, listener)
    now = fleet.clock()
    ingest_alerts(fleet, [(alert_body(1), now), (b'{"schema": 1, "label": 5}', now), (alert_body(2, label="car"), now)])
    assert heard == [("alert", "person", True), ("alert", "car", True)]


def test_filters_and_pages(fleet) -> None:
    from edgefleet.fleet.alert_events import list_events

    now = fleet.clock()
    ingest_alerts(
        fleet, [(alert_body(n, label=("person", "car")[n % 2], version=str(1 + n // 4)), now + n) for n in range(8)]
    )
    assert len(list_events(fleet, label="car").items) == 4
    assert len(list_events(fleet, model_version="2").items) == 4
    assert len(list_events(fleet, since=now + 2, until=now + 5).items) == 3
    pages, cursor = [], None
    for _ in range(3):  # keyset pages: each starts after the last event of the one before
        page = list_events(fleet, limit=3, cursor=cursor)
        pages.append(page.items)
        cursor = page.next
    assert [len(p) for p in pages] == [3, 3, 2] and cursor is None
    assert [e.frame for p in pages for e in p] == [f"f{n}" for n in range(7, -1, -1)]


def test_an_alert_naming_a_snapshot_already_uploaded_shares_it(fleet) -> None:
    """The camera uploads a JPEG once; an alert on an identical frame that arrives after that upload
    names the same sha256 and must show the stored snapshot too."""
    from edgefleet.fleet.alert_events import list_events, snapshot_key

    shot, now = jpeg(90), fleet.clock()
    ingest_alerts(fleet, [(alert_body(1, snapshot=shot), now)])
    assert upload(fleet, shot).events == 1
    ingest_alerts(fleet, [(alert_body(2, snapshot=shot), now + 1)])
    key = snapshot_key("cam-1", hashlib.sha256(shot).hexdigest())
    assert [(e.frame, e.snapshot.stored if e.snapshot else None) for e in list_events(fleet).items] == [
        ("f2", True),
        ("f1", True),
    ]
    assert (fleet.store.root / key).exists()


def test_retention_deletes_old_and_surplus_events_and_the_snapshots_no_event_names(fleet) -> None:
    from edgefleet.fleet.alert_events import list_events, prune, snapshot_key

    fleet.config.alerts.retention_days = 1.0
    fleet.config.alerts.max_events = 3
    now = fleet.clock()
    shots = [jpeg(40 * i) for i in range(5)]
    # Events 0 and 1 are two days old; 2..5 recent; 5 names event 4's snapshot (two labels, one frame).
    bodies = [(alert_body(i, snapshot=shots[i]), now - 2 * DAY + i if i < 2 else now - 100 + i) for i in range(5)]
    bodies.append((alert_body(4, label="car", snapshot=shots[4]), now - 10))
    ingest_alerts(fleet, bodies)
    for shot in shots:
        upload(fleet, shot)
    store = fleet.store.root
    sha = [hashlib.sha256(s).hexdigest() for s in shots]
    assert all((store / snapshot_key("cam-1", h)).exists() for h in sha)
    assert prune(fleet, now) == 3  # two too old, then one over the count
    assert [e.frame for e in list_events(fleet).items] == ["f4", "f4", "f3"]
    assert [(store / snapshot_key("cam-1", h)).exists() for h in sha] == [False, False, False, True, True]
    assert prune(fleet, now) == 0


def test_each_new_event_is_posted_to_the_webhook_once(fleet, tmp_path) -> None:
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "drift"))
    from drift_support import WebhookReceiver

    from edgefleet.fleet import alert_service

    counters: Counter[str] = Counter()
    with WebhookReceiver() as hook:
        (tmp_path / "hook").write_text(hook.url + "\n")
        fleet.config.alerts.webhook_url_file = tmp_path / "hook"
        assert alert_service.add_webhook(fleet, counters) == hook.url
        now = fleet.clock()
        ingest = ingest_alerts(fleet, [(alert_body(1, snapshot=jpeg(10)), now)])
        ingest.handle_batch([ingest_message(alert_body(1, snapshot=jpeg(10)), now + 1)])  # again: no second post
        end = time.monotonic() + 10
        while counters["alert_webhook_sent"] < 1 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(0.3)  # would a second post follow?
    assert counters == Counter({"alert_webhook_sent": 1})
    (body,) = hook.bodies
    assert body["alert_id"] == "alert-1-person" and body["device"] == "cam-1" and body["snapshot"]["stored"] is False
