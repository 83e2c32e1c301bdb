"""GET /metrics: Prometheus text with the ingest counters of this process and gauges read from the
database at scrape time (in-process app, FastAPI's TestClient), and its optional bearer token."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.errors import UsageError
from edgefleet.fleet import devices, drift_tables, registry, rollouts
from edgefleet.fleet.api import create_app
from edgefleet.fleet.ingest import Ingest, Message


def scrape(client: TestClient, headers: dict | None = None) -> dict[tuple[str, tuple], float]:
    answer = client.get("/metrics", headers=headers or {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def status(device: str, state: str, t: float) -> Message:
    body = {"schema": 1, "state": state, "model": {"name": "tiny", "version": "1"}}
    return Message(f"edgefleet/v1/{device}/status", json.dumps(body).encode(), t)


def telemetry(device: str, t: float) -> Message:
    body = {
        "schema": 1,
        "id": "t",
        "model": {"name": "tiny", "version": "1"},
        "frames": {"ok": 5, "bad": 0, "error": 0},
    }
    return Message(f"edgefleet/v1/{device}/telemetry", json.dumps(body).encode(), t)


def test_metrics_count_ingest_and_read_fleet_state_at_scrape_time(fleet, tiny_packages):
    ingest = Ingest(fleet)
    client = TestClient(create_app(fleet, ingest))
    before = scrape(client)
    assert before[("edgefleet_fleet_devices", (("status", "online"),))] == 0
    assert before[("edgefleet_fleet_rollouts", (("state", "deploying"),))] == 0
    assert ("edgefleet_fleet_telemetry_age_seconds", ()) not in before  # no telemetry yet

    for dev in ("cam-0", "cam-1", "cam-2"):
        devices.register_device(fleet, dev, "x86_64", group="lobby")
    t = fleet.clock()
    batch = [
        status("cam-0", "online", t),
        status("cam-1", "online", t),
        status("cam-2", "offline", t),
        telemetry("cam-0", t - 2.0),  # waited 2 s between arrival and commit
        Message("edgefleet/v1/intruder/telemetry", b'{"schema": 1}', t),
        Message("edgefleet/v1/cam-0/alerts", b"not json", t),
        Message("somewhere/else", b"{}", t),
    ]
    ingest.handle_batch(batch)
    fleet.clock.advance(30)
    registry.set_approval(fleet, *_uploaded(fleet, tiny_packages["v1"]), "Approved")
    rollouts.create_rollout(fleet, "tiny", "1", {"group": "lobby"}, {"canary": 1})
    rollouts.tick(fleet)  # created -> deploying
    with fleet.writer() as s, s.begin():
        s.add(drift_tables.DriftAlarm(device_id="cam-0", model_name="tiny", model_version="1", state="alarm"))

    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert delta("edgefleet_fleet_ingest_received_total", kind="status") == 3
    assert delta("edgefleet_fleet_ingest_received_total", kind="telemetry") == 2
    assert delta("edgefleet_fleet_ingest_received_total", kind="alerts") == 1
    assert delta("edgefleet_fleet_ingest_received_total", kind="other") == 1
    assert delta("edgefleet_fleet_ingest_messages_total", outcome="status") == 3
    assert delta("edgefleet_fleet_ingest_messages_total", outcome="telemetry") == 1
    assert delta("edgefleet_fleet_ingest_messages_total", outcome="dropped_unknown_device") == 1
    assert delta("edgefleet_fleet_ingest_messages_total", outcome="dropped_malformed") == 2
    assert delta("edgefleet_fleet_ingest_lag_seconds_count") == len(batch)
    assert delta("edgefleet_fleet_ingest_lag_seconds_sum") == pytest.approx(2.0)
    assert delta("edgefleet_fleet_ingest_lag_seconds_bucket", le="1.0") == len(batch) - 1  # all but the late one

    assert after[("edgefleet_fleet_devices", (("status", "online"),))] == 2
    assert after[("edgefleet_fleet_devices", (("status", "offline"),))] == 1
    assert after[("edgefleet_fleet_rollouts", (("state", "deploying"),))] == 1
    assert after[("edgefleet_fleet_rollouts", (("state", "created"),))] == 0
    assert after[("edgefleet_fleet_drift_alarms", (("state", "alarm"),))] == 1
    assert after[("edgefleet_fleet_drift_fleet_alarms", (("state", "alarm"),))] == 0
    assert after[("edgefleet_fleet_telemetry_age_seconds", ())] == pytest.approx(32.0)
    assert after[("process_resident_memory_bytes", ())] > 10e6


def _uploaded(fleet, package) -> tuple[str, str]:
    v = registry.upload_package(fleet, package)
    return v.group, v.version


def test_a_second_replica_reports_the_same_fleet_state(fleet):
    """Gauges come from the database, so an app that ingested nothing (another replica) agrees."""
    devices.register_device(fleet, "cam-0", "x86_64")
    Ingest(fleet).handle_batch([status("cam-0", "online", fleet.clock())])
    replica = TestClient(create_app(fleet, None))
    assert scrape(replica)[("edgefleet_fleet_devices", (("status", "online"),))] == 1


def test_metrics_token_is_required_when_configured(fleet, tmp_path):
    token_file = tmp_path / "metrics.token"
    token_file.write_text("s3cret-scrape\n")
    fleet.config.metrics_token_file = token_file
    client = TestClient(create_app(fleet, Ingest(fleet)))
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["code"] == "permission_denied"
    assert (
        scrape(client, {"Authorization": "Bearer s3cret-scrape"})[("edgefleet_fleet_devices", (("status", "online"),))]
        == 0
    )


@pytest.mark.parametrize("content, match", [(None, "cannot read metrics_token_file"), ("  \n", "is empty")])
def test_a_bad_metrics_token_file_fails_at_start(fleet, tmp_path, content, match):
    token_file = tmp_path / "metrics.token"
    if content is not None:
        token_file.write_text(content)
    fleet.config.metrics_token_file = token_file
    with pytest.raises(UsageError, match=match):
        create_app(fleet, None)


def test_fleet_serve_logs_json_lines_and_serves_metrics(tmp_path, edgefleet_home, tiny_packages):
    """A real `fleet serve --log-format json`: every line it writes is a JSON object; /metrics answers."""
    import httpx
    from tests_fleet_util import fleet_process

    with fleet_process(tmp_path, edgefleet_home, tiny_packages["key"], "--log-format", "json") as (url, _, server, _):
        families = {f.name for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
        assert {"edgefleet_fleet_devices", "edgefleet_fleet_rollouts", "edgefleet_fleet_ingest_lag_seconds"} <= families
    lines = [json.loads(line) for line in server.stdout.read().decode().splitlines() if line.strip()]
    serving = next(line for line in lines if line["message"].startswith("serving the API on"))
    assert serving["level"] == "INFO" and serving["logger"] == "edgefleet.fleet"
    assert serving["listen_port"] == int(url.rsplit(":", 1)[1])
