"""The S3 package store against moto's S3 server (a fake: AWS itself cannot run here).

Upload goes through boto3; a device's download link redirects to a presigned URL that the
server answers with range requests, so a download can resume.
"""

from __future__ import annotations

import boto3
import httpx
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from edgefleet.fleet import registry
from edgefleet.fleet.api import create_app
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import open_fleet
from edgefleet.fleet.db import Build
from edgefleet.net import free_port


@pytest.fixture
def fake_s3(monkeypatch):
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for k, v in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3").create_bucket(Bucket="models")
    yield
    server.stop()


def test_s3_store_upload_and_ranged_download_via_presigned_url_fake_s3(
    fake_s3, tmp_path, edgefleet_home, tiny_packages
):
    fleet = open_fleet(
        FleetConfig(data_dir=tmp_path / "fleet", package_store="s3://models/edge", signing_key=tiny_packages["key"])
    )
    v = registry.upload_package(fleet, tiny_packages["v1"])
    key = boto3.client("s3").list_objects_v2(Bucket="models")["Contents"][0]["Key"]
    assert key.startswith("edge/tiny/1/x86_64-") and v.builds[0].size == tiny_packages["v1"].stat().st_size
    with fleet.session() as s:
        build = s.get(Build, v.builds[0].id)
    url = fleet.download_url(build.id, build.store_key)
    assert url.startswith("http://127.0.0.1:") and "Signature" in url
    data = tiny_packages["v1"].read_bytes()
    part = httpx.get(url, headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == data[10:]
    # Through the API, a signed fleet link redirects to S3.
    api = TestClient(create_app(fleet), raise_server_exceptions=False, follow_redirects=False)
    expires = int(fleet.clock()) + 60
    r = api.get(
        f"/api/v1/builds/{build.id}/download",
        params={"expires": expires, "sig": fleet.download_signature(build.id, expires)},
    )
    assert r.status_code == 307 and httpx.get(r.headers["location"]).content == data


def snapshot_keys() -> list[str]:
    """The bucket's snapshot objects (moto keeps one store per process: other tests' packages are there too)."""
    listing = boto3.client("s3").list_objects_v2(Bucket="models", Prefix="edge/alert-snapshots/")
    return [o["Key"] for o in listing.get("Contents", [])]


def test_alert_snapshots_live_on_s3_served_by_redirect_and_go_with_retention_fake_s3(fake_s3, tmp_path, edgefleet_home):
    import time

    from test_alert_events_library import alert_body, ingest_alerts, jpeg, upload

    from edgefleet.fleet import auth
    from edgefleet.fleet.alert_events import list_events, prune

    fleet = open_fleet(FleetConfig(data_dir=tmp_path / "fleet", package_store="s3://models/edge"))
    now = time.time()
    shot = jpeg(77)
    ingest_alerts(fleet, [(alert_body(1, snapshot=shot), now)])
    upload(fleet, shot)
    (event,) = list_events(fleet).items
    assert snapshot_keys() == [f"edge/alert-snapshots/cam-1/{event.snapshot.sha256}.jpg"]
    api = TestClient(create_app(fleet), raise_server_exceptions=False, follow_redirects=False)
    token = auth.create_token(fleet, "r", "read-only")
    r = api.get(f"/api/v1/alerts/{event.id}/snapshot", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 307 and httpx.get(r.headers["location"]).content == shot
    assert prune(fleet, now + 31 * 86400) == 1  # past the default 30 days
    assert snapshot_keys() == []
