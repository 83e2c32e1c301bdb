"""The REST API in-process (FastAPI's TestClient): scopes, 4xx for bad input, range downloads;
and the CLI against a real `edgefleet fleet serve` process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests_fleet_util import h


def test_scopes_are_enforced(api, tiny_packages):
    assert api.get("/api/v1/models").status_code == 401
    assert api.get("/api/v1/models", headers={"Authorization": "Bearer eft_nope"}).status_code == 403
    assert api.get("/api/v1/models", headers=h(api, "read-only")).json() == {"items": [], "next": None}
    body = tiny_packages["v1"].read_bytes()
    r = api.post("/api/v1/packages", content=body, headers=h(api, "read-only"))
    assert r.status_code == 403 and "scope read-only" in r.json()["error"]
    r = api.post("/api/v1/packages", content=body, headers=h(api, "operator"))
    assert r.status_code == 201 and r.json()["approval"] == "PendingManualApproval"
    r = api.post("/api/v1/models/tiny/versions/1/approval", json={"state": "Approved"}, headers=h(api, "operator"))
    assert r.status_code == 403
    assert (
        api.post("/api/v1/models/tiny/versions/1/approval", json={"state": "Approved"}, headers=h(api, "admin")).json()[
            "approval"
        ]
        == "Approved"
    )
    assert (
        api.post("/api/v1/tokens", json={"name": "x", "scope": "admin"}, headers=h(api, "operator")).status_code == 403
    )
    made = api.post("/api/v1/tokens", json={"name": "ci", "scope": "read-only"}, headers=h(api, "admin")).json()
    assert api.get("/api/v1/devices", headers={"Authorization": f"Bearer {made['token']}"}).status_code == 200
    assert api.delete("/api/v1/tokens/ci", headers=h(api, "admin")).json() == {"revoked": 1}
    assert api.get("/api/v1/devices", headers={"Authorization": f"Bearer {made['token']}"}).status_code == 403


@pytest.mark.parametrize(
    "method, path, kwargs, status, reason",
    [
        (
            "post",
            "/api/v1/rollouts",
            {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
            422,
            "JSON",
        ),
        ("post", "/api/v1/rollouts", {"json": {"group": "tiny"}}, 422, "version"),
        ("post", "/api/v1/rollouts", {"json": {"group": "tiny", "version": "1", "surprise": 1}}, 422, "surprise"),
        (
            "post",
            "/api/v1/rollouts",
            {"json": {"group": "tiny", "version": "1", "plan": {"waves": [10]}}},
            400,
            "waves",
        ),
        ("post", "/api/v1/rollouts", {"json": {"group": "tiny", "version": "9"}}, 404, "no model version"),
        (
            "post",
            "/api/v1/rollouts",
            {"json": {"group": "tiny", "version": "1", "selection": {"devices": ["ghost"]}}},
            400,
            "ghost",
        ),
        ("get", "/api/v1/rollouts/abc", {}, 422, "rollout_id"),
        ("get", "/api/v1/rollouts/999", {}, 404, "no rollout"),
        ("get", "/api/v1/rollouts/999/deployments", {}, 404, "no rollout"),
        ("get", "/api/v1/rollouts/99999999999999999999999", {}, 422, "rollout_id"),
        ("get", "/api/v1/builds/99999999999999999999999/download?expires=1&sig=0", {}, 422, "build_id"),
        ("post", "/api/v1/rollouts", {"json": {"group": "tiny", "version": "1", "plan": {"canary": 10**30}}}, 400, ""),
        (
            "post",
            "/api/v1/rollouts",
            {"json": {"group": "tiny", "version": "1", "selection": {"devices": "cam-1"}}},
            400,
            "devices",
        ),
        ("post", "/api/v1/rollouts/1/explode", {}, 400, "unknown rollout action"),
        ("post", "/api/v1/packages", {"content": b""}, 400, "empty"),
        ("post", "/api/v1/packages", {"content": b"\x1f\x8b garbage"}, 400, ""),
        ("post", "/api/v1/packages", {"content": b"plain text"}, 400, ""),
        ("post", "/api/v1/enrollment-tokens", {"json": {"device_id": "a/b", "target": "x86_64"}}, 400, "device id"),
        (
            "post",
            "/api/v1/enroll",
            {"json": {"token": "efe_x", "device_id": "cam-1", "csr": "nope"}},
            403,
            "enrollment token",
        ),
        ("post", "/api/v1/models/tiny/versions/1/approval", {"json": {"state": "Maybe"}}, 409, "unknown approval"),
        ("post", "/api/v1/models/tiny/versions/1/approval", {"json": {"state": "Approved"}}, 409, "cannot become"),
        ("patch", "/api/v1/devices/ghost", {"json": {"group": "g"}}, 404, "no device"),
        ("get", "/api/v1/builds/1/download?expires=1&sig=00", {}, 403, "invalid or expired"),
        ("get", "/api/v1/builds/1/download", {}, 422, "expires"),
    ],
)
def test_malformed_requests_get_a_4xx_with_a_reason(api, tiny_packages, method, path, kwargs, status, reason):
    api.post("/api/v1/packages", content=tiny_packages["v1"].read_bytes(), headers=h(api, "admin"))
    api.post("/api/v1/models/tiny/versions/1/approval", json={"state": "Approved"}, headers=h(api, "admin"))
    headers = h(api, "admin") | kwargs.pop("headers", {})
    r = getattr(api, method)(path, headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert reason.lower() in r.json()["error"].lower()


def test_package_download_supports_ranges(api, fleet, tiny_packages):
    api.post("/api/v1/packages", content=tiny_packages["v1"].read_bytes(), headers=h(api, "operator"))
    url = fleet.download_url(1, "tiny/1/unused")
    path = url.split("8080", 1)[1]
    data = tiny_packages["v1"].read_bytes()
    full = api.get(path)
    assert full.status_code == 200 and full.content == data and full.headers["accept-ranges"] == "bytes"
    part = api.get(path, headers={"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == data[100:]
    fleet.clock.advance(fleet.config.download_ttl_s + 1)
    assert api.get(path).status_code == 403


def test_openapi_documents_the_api(api):
    spec = api.get("/openapi.json").json()
    assert {"/api/v1/rollouts", "/api/v1/rollouts/{rollout_id}/{action}", "/api/v1/enroll", "/api/v1/packages"} <= set(
        spec["paths"]
    )


def test_cli_over_a_real_fleet_service(tmp_path, edgefleet_home, tiny_packages):
    from tests_fleet_util import fleet_process

    cli = [sys.executable, "-m", "edgefleet.cli"]
    with fleet_process(tmp_path, edgefleet_home, tiny_packages["key"]) as (url, admin, server, env):
        cfg = server.cfg
        env |= {"EDGEFLEET_FLEET_URL": url, "EDGEFLEET_FLEET_TOKEN": admin}

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(cli + ["fleet", *args], env=env, capture_output=True, text=True)

        up = run("models", "upload", str(tiny_packages["v1"]))
        assert up.returncode == 0 and "PendingManualApproval" in up.stdout, up.stderr
        assert json.loads(run("models", "approve", "tiny", "1", "--json").stdout)["approval"] == "Approved"
        listed = run("models", "list")
        assert "tiny" in listed.stdout and listed.returncode == 0
        bad = run("rollouts", "create", "tiny", "1", "--device-group", "nobody")
        assert (
            bad.returncode == 21
            and "error: fleet API 400: the selection matches no devices" in bad.stderr
            and "fix:" in bad.stderr
        )
        assert run("rollouts", "abort", "7").returncode == 40
        token = run("devices", "enroll-token", "cam-1", "--target", "x86_64", "--group", "lobby").stdout.strip()
        assert token.startswith("efe_")
        assert json.loads(run("devices", "list", "--json").stdout) == []
        ro = subprocess.run(
            cli + ["fleet", "tokens", "create", "--config", str(cfg), "--name", "viewer", "--scope", "read-only"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        denied = run("--token", ro, "models", "approve", "tiny", "1")
        assert denied.returncode == 42 and "scope read-only" in denied.stderr


def test_every_list_is_paged_and_the_client_follows_the_pages(api, fleet):
    from edgefleet.contracts.rest import DevicePage
    from edgefleet.fleet import devices
    from edgefleet.fleet.client import FleetClient

    for i in range(25):
        devices.register_device(fleet, f"cam-{i:02d}", "x86_64", tags=["door"] if i % 3 == 0 else [])
    read = h(api, "read-only")
    first = api.get("/api/v1/devices", params={"limit": 10}, headers=read).json()
    assert [d["id"] for d in first["items"]] == [f"cam-{i:02d}" for i in range(10)] and first["next"] == "cam-09"
    seen, cursor = [], None
    while True:  # a tag filter SQL cannot say still fills pages in id order
        page = api.get("/api/v1/devices", params={"tag": "door", "limit": 4, "cursor": cursor}, headers=read).json()
        seen += [d["id"] for d in page["items"]]
        if (cursor := page["next"]) is None:
            break
    assert seen == [f"cam-{i:02d}" for i in range(0, 25, 3)]
    assert api.get("/api/v1/devices", params={"limit": 1001}, headers=read).status_code == 422
    bad = api.get("/api/v1/rollouts", params={"cursor": "x; DROP"}, headers=read)
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]
    for path in ("/api/v1/models", "/api/v1/rollouts"):
        assert api.get(path, params={"limit": 1}, headers=read).json() == {"items": [], "next": None}
    client = FleetClient(token=api.tokens["read-only"])
    client.http = api  # the CLI's client, on this app
    client.http.headers.update(read)
    assert [d.id for d in client.pages("/devices", DevicePage, page_size=4)] == [f"cam-{i:02d}" for i in range(25)]
