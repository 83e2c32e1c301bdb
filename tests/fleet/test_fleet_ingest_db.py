"""Ingest on both databases (in process): telemetry retention (rows older than it deleted in
batches), a message id stored once per device, a row the database refuses dropped alone, and
alerts read as whole AlertMessages."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import func, select
from tests_fleet_util import Clock

from edgefleet.fleet import devices
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import open_fleet
from edgefleet.fleet.db import Telemetry
from edgefleet.fleet.ingest import Ingest, Message
from edgefleet.fleet.retention import prune_telemetry

DAY = 24 * 3600.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_fleet(request, tmp_path, edgefleet_home):
    url = request.getfixturevalue("postgres_database") if request.param == "postgresql" else None
    fleet = open_fleet(FleetConfig(data_dir=tmp_path / "fleet", database_url=url))
    fleet.clock = Clock()
    devices.register_device(fleet, "cam-1", "x86_64")
    devices.register_device(fleet, "cam-2", "x86_64")
    yield fleet
    fleet.readers.kw["bind"].dispose()


def telemetry(device: str, at: float, message_id: str | None = None) -> Message:
    body = {"schema": 1, "frames": {"ok": 1}} | ({"id": message_id} if message_id else {})
    return Message(f"edgefleet/v1/{device}/telemetry", json.dumps(body).encode(), at)


def rows(fleet) -> int:
    with fleet.session() as s:
        return s.scalar(select(func.count(Telemetry.id)))


def test_telemetry_older_than_the_retention_is_pruned_in_batches(any_fleet):
    now = any_fleet.clock()
    old = [telemetry("cam-1", now - 8 * DAY - i, uuid.uuid4().hex) for i in range(23)]
    fresh = [telemetry("cam-2", now - 6 * DAY, uuid.uuid4().hex) for _ in range(5)]
    Ingest(any_fleet).handle_batch(old + fresh)
    assert rows(any_fleet) == 28
    assert prune_telemetry(any_fleet, 7 * DAY, batch=10) == 23  # three batches: 10, 10, 3
    with any_fleet.session() as s:
        assert set(s.scalars(select(Telemetry.device_id))) == {"cam-2"}
    assert prune_telemetry(any_fleet, 7 * DAY, batch=10) == 0


def test_a_message_id_is_stored_once_per_device_and_messages_without_one_every_time(any_fleet):
    ingest = Ingest(any_fleet)
    t = any_fleet.clock()
    ingest.handle_batch([telemetry("cam-1", t, "m1"), telemetry("cam-1", t, "m1"), telemetry("cam-2", t, "m1")])
    ingest.handle_batch([telemetry("cam-1", t + 1, "m1"), telemetry("cam-1", t, None), telemetry("cam-1", t, None)])
    with any_fleet.session() as s:
        stored = sorted((d, m or "") for d, m in s.execute(select(Telemetry.device_id, Telemetry.message_id)))
    assert stored == [("cam-1", ""), ("cam-1", ""), ("cam-1", "m1"), ("cam-2", "m1")]
    assert ingest.counters["duplicate"] == 2 and ingest.counters["telemetry"] == 4


def test_a_message_id_longer_than_64_characters_is_malformed(any_fleet):
    ingest = Ingest(any_fleet)
    ingest.handle_batch([telemetry("cam-1", any_fleet.clock(), "x" * 65), telemetry("cam-1", 1.0, "y" * 64)])
    assert ingest.counters["dropped_malformed"] == 1 and rows(any_fleet) == 1


def test_a_row_the_database_refuses_is_dropped_alone_from_its_batch(any_fleet):
    """PostgreSQL refuses a model name over VARCHAR(128) (SQLite does not check lengths): the
    batch's one insert fails, and the rows are inserted one by one to keep the others."""
    long = json.dumps({"schema": 1, "id": "long", "model": {"name": "n" * 200, "version": "1"}}).encode()
    ingest = Ingest(any_fleet)
    t = any_fleet.clock()
    ingest.handle_batch(
        [telemetry("cam-1", t, "a"), Message("edgefleet/v1/cam-2/telemetry", long, t), telemetry("cam-2", t, "b")]
    )
    postgres = any_fleet.config.resolved_database_url().startswith("postgresql")
    assert rows(any_fleet) == (2 if postgres else 3)
    assert ingest.counters["dropped_malformed"] == (1 if postgres else 0)


def test_an_alert_is_read_as_a_whole_alert_message(any_fleet):
    alert = {
        "schema": 1,
        "id": "a1",
        "label": "person",
        "score": 0.9,
        "consecutive": 3,
        "source": "cam",
        "frame": "f1",
        "model": {"name": "tiny", "version": "1"},
        "latency_ms": 8.0,
    }
    partial = {k: v for k, v in alert.items() if k != "score"}
    ingest = Ingest(any_fleet)
    t = any_fleet.clock()
    ingest.handle_batch(
        [Message("edgefleet/v1/cam-1/alerts", json.dumps(body).encode(), t) for body in (alert, partial)]
    )
    assert ingest.counters["alerts"] == 1 and ingest.counters["dropped_malformed"] == 1
    assert devices.get_device(any_fleet, "cam-1").last_seen == t


def job_update(device: str, job: str, at: float) -> Message:
    body = {"schema": 1, "state": "downloading", "id": uuid.uuid4().hex}
    return Message(f"edgefleet/v1/{device}/jobs/{job}/update", json.dumps(body).encode(), at)


def test_a_database_failure_fails_the_batch_so_nothing_is_acknowledged(any_fleet, monkeypatch):
    """A deadlock or a lost connection is not the message's fault: the batch raises (the bridge then
    acknowledges none of it, and the broker delivers it again) instead of dropping the update."""
    from sqlalchemy.exc import OperationalError

    from edgefleet.fleet import ingest as ingest_module

    def deadlock(*_args, **_kwargs):
        raise OperationalError("UPDATE deployments ...", {}, Exception("deadlock detected"))

    monkeypatch.setattr(ingest_module, "apply_job_updates", deadlock)
    ingest = Ingest(any_fleet)
    t = any_fleet.clock()
    with pytest.raises(OperationalError):
        ingest.handle_batch([telemetry("cam-1", t, "before"), job_update("cam-1", "job-1", t)])
    assert rows(any_fleet) == 0  # the telemetry of the failed batch is not stored either: it comes again
    assert ingest.counters["dropped_malformed"] == 0 and ingest.counters["received"] == 0


def test_job_updates_for_unknown_jobs_are_counted_in_one_batch(any_fleet):
    ingest = Ingest(any_fleet)
    t = any_fleet.clock()
    ingest.handle_batch([job_update("cam-1", "nope-1", t), job_update("cam-2", "nope-2", t)])
    assert ingest.counters["dropped_unknown_job"] == 2
