"""Alert events with snapshots end to end: a real agent process (detection model, [snapshots] on),
real mosquitto, a real `edgefleet fleet serve`; read back with the CLI and the REST API."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from agent_support import agent_config, drop_frame, start_agent, wait_until, write_config
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "fleet"))
from tests_fleet_util import wait_http  # noqa: E402

from edgefleet.net import free_port  # noqa: E402

pytestmark = pytest.mark.mqtt


def bright_frame(size=(1280, 960)) -> bytes:
    """A bright, textured frame (the test detector scores 'person' by brightness)."""
    import numpy as np

    pixels = np.random.default_rng(3).integers(170, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class FleetServe:
    """`edgefleet fleet serve` on the broker with cam-1 and cam-2 registered; alerts readable by
    operators only, unless `sections` (TOML after [broker] and its `broker_extra` keys) says otherwise.
    With `tls`, it serves HTTPS itself with a certificate `fleet server-cert` issued into `tls_dir`."""

    def __init__(
        self,
        tmp_path: Path,
        edgefleet_home: Path,
        broker,
        sections: str = '[alerts]\nread_scope = "operator"\n',
        broker_extra: str = "",
        tls: bool = False,
    ) -> None:
        from edgefleet.fleet import auth, devices
        from edgefleet.fleet.config import load_config
        from edgefleet.fleet.core import open_fleet

        port = free_port()
        self.cfg, self.log = tmp_path / "fleet.toml", tmp_path / "fleet.log"
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self.tls_dir = tmp_path / "tls"
        tls_keys = f'tls_cert_file = "{self.tls_dir / "server.pem"}"\ntls_key_file = "{self.tls_dir / "server.key"}"\n'
        self.cfg.write_text(
            f'format_version = 1\ndata_dir = "{tmp_path / "data"}"\nlisten_port = {port}\n'
            f'public_url = "{self.url}"\nsigning_key = "{tmp_path / "none.key"}"\n{tls_keys if tls else ""}'
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\nca_file = "{broker.pki.ca_file}"\n'
            f'cert_file = "{broker.fleet_cert}"\nkey_file = "{broker.fleet_key}"\n{broker_extra}{sections}'
        )
        fleet = open_fleet(load_config(self.cfg))
        for cam in ("cam-1", "cam-2"):
            devices.register_device(fleet, cam, "x86_64")
        self.tokens = {scope: auth.create_token(fleet, scope, scope) for scope in ("read-only", "operator")}
        self.env = dict(os.environ, EDGEFLEET_HOME=str(edgefleet_home), COLUMNS="200")
        self.verify: ssl.SSLContext | bool = True
        if tls:
            issued = subprocess.run(
                [sys.executable, "-m", "edgefleet.cli", "fleet", "server-cert", "--config", str(self.cfg)]
                + ["--host", "127.0.0.1", "--host", "localhost", "--out", str(self.tls_dir)],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert issued.returncode == 0, issued.stderr
            self.verify = ssl.create_default_context(cafile=str(self.tls_dir / "ca.pem"))
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "fleet", "serve", "--config", str(self.cfg)],
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )
        wait_http(f"{self.url}/healthz", verify=self.verify)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None


@pytest.fixture
def served(tmp_path: Path, edgefleet_home: Path, mqtt_broker, detection_package):
    fleet = FleetServe(tmp_path, edgefleet_home, mqtt_broker)
    fleet.start()
    try:
        yield {"url": fleet.url, "tokens": fleet.tokens, "env": fleet.env, "serve": fleet}
    finally:
        fleet.stop()


def camera(
    tmp_path: Path, broker, package, url: str, device: str = "cam-1", fleet_ca: Path | None = None
) -> tuple[subprocess.Popen, Path]:
    incoming = tmp_path / f"incoming-{device}"
    config = agent_config(
        tmp_path,
        broker,
        package,
        device=device,
        rules={"labels": ["person"], "min_score": 0.5},
        sources=[{"type": "folder", "path": str(incoming), "max_fps": 200.0, "poll_s": 0.05}],
        fleet={"url": url} | ({"ca_file": str(fleet_ca)} if fleet_ca else {}),
        snapshots={"enabled": True, "max_side": 640, "quality": 85, "max_bytes": 150_000},
    )
    return start_agent(write_config(tmp_path / f"{device}.toml", config), log=tmp_path / f"{device}.log"), incoming


def cli(served: dict, *args: str, token: str = "operator") -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "edgefleet.cli",
            "fleet",
            "--url",
            served["url"],
            "--token",
            served["tokens"][token],
            *args,
        ],
        env=served["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_alerts_are_stored_with_their_snapshots_and_served_by_api_and_cli(
    tmp_path: Path, mqtt_broker, detection_package, served
) -> None:
    api = httpx.Client(base_url=served["url"], headers={"Authorization": f"Bearer {served['tokens']['operator']}"})
    agent, incoming = camera(tmp_path, mqtt_broker, detection_package, served["url"])
    try:
        for i in range(2):
            drop_frame(incoming, f"f{i}.jpg", bright_frame())
        wait_until(
            lambda: [e["snapshot"]["stored"] for e in api.get("/api/v1/alerts").json()["items"]] == [True, True],
            timeout=60,
        )
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    page = api.get("/api/v1/alerts", params={"device": "cam-1"}).json()
    assert len(page["items"]) == 2 and len({e["alert_id"] for e in page["items"]}) == 2
    event = page["items"][0]
    assert event["label"] == "person" and event["score"] >= 0.5
    assert event["model"] == {"name": "detector", "version": "1"}
    assert event["frame_size"] == [1280, 960] and event["boxes"] and event["boxes"][0]["label"] == "person"
    assert event["rule"].startswith("person score >= 0.5")
    # The snapshot: the sha256 the alert named, at most 640 px per side and the camera's cap.
    jpeg = api.get(f"/api/v1/alerts/{event['id']}/snapshot")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(jpeg.content).hexdigest() == event["snapshot"]["sha256"]
    assert Image.open(io.BytesIO(jpeg.content)).size == (640, 480) == (event["snapshot"]["width"], 480)
    assert len(jpeg.content) == event["snapshot"]["size"] <= 150_000

    # The CLI, with the filters.
    listed = cli(served, "alerts", "list", "--device", "cam-1", "--label", "person", "--model-version", "1", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)["items"]] == [e["id"] for e in page["items"]]
    for args in (
        ["--label", "car"],
        ["--device", "cam-2"],
        ["--model-version", "2"],
        ["--since", "2099-01-01T00:00:00Z"],
    ):
        out = cli(served, "alerts", "list", *args, "--json")
        assert json.loads(out.stdout)["items"] == [], args
    until = cli(served, "alerts", "list", "--until", str(time.time() + 60), "--limit", "1", "--json")
    first = json.loads(until.stdout)
    assert len(first["items"]) == 1 and first["next"] is not None
    rest = cli(served, "alerts", "list", "--until", str(time.time() + 60), "--cursor", first["next"], "--json")
    assert [e["id"] for e in first["items"] + json.loads(rest.stdout)["items"]] == [e["id"] for e in page["items"]]
    saved = tmp_path / "snap.jpg"
    got = cli(served, "alerts", "snapshot", str(event["id"]), "-o", str(saved))
    assert got.returncode == 0, got.stderr and saved.read_bytes() == jpeg.content
    table = cli(served, "alerts", "list")
    assert "person" in table.stdout and "stored" in table.stdout
    # Reading needs the configured scope (operator here): a read-only token and no token are refused.
    refused = cli(served, "alerts", "list", token="read-only")
    assert refused.returncode != 0 and "needs operator" in refused.stderr
    assert httpx.get(f"{served['url']}/api/v1/alerts/{event['id']}/snapshot").status_code == 401


def test_the_fleet_refuses_snapshots_it_cannot_tie_to_the_uploading_devices_alert(
    tmp_path: Path, mqtt_broker, detection_package, served
) -> None:
    from edgefleet.device_auth import sign_headers

    api = httpx.Client(base_url=served["url"], headers={"Authorization": f"Bearer {served['tokens']['operator']}"})
    agent, incoming = camera(tmp_path, mqtt_broker, detection_package, served["url"])
    try:
        drop_frame(incoming, "f0.jpg", bright_frame())
        wait_until(lambda: [e["snapshot"]["stored"] for e in api.get("/api/v1/alerts").json()["items"]] == [True], 60)
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    named = api.get("/api/v1/alerts").json()["items"][0]["snapshot"]["sha256"]
    keys = {cam: mqtt_broker.pki.issue(cam) for cam in ("cam-1", "cam-2")}
    other = bright_frame((320, 240))
    other_sha = hashlib.sha256(other).hexdigest()

    def put(device: str, sha: str, body: bytes, signer: str | None = None, subject: str | None = None) -> int:
        cert, key = keys[signer or device]
        headers = sign_headers(key.read_bytes(), cert.read_bytes(), signer or device, subject or sha, int(time.time()))
        url = f"{served['url']}/api/v1/devices/{device}/snapshots/{sha}"
        return httpx.put(url, content=body, headers=headers).status_code

    assert put("cam-1", other_sha, other) == 409  # no alert of cam-1 names it
    assert put("cam-2", named, b"\xff\xd8\xff" + b"0" * 100) == 400  # the body is not what the URL names
    assert put("cam-1", other_sha, other, signer="cam-2") == 403  # cam-2 cannot upload as cam-1
    assert put("cam-1", other_sha, other, subject="0" * 64) == 403  # a signature for another upload
    assert httpx.put(f"{served['url']}/api/v1/devices/cam-1/snapshots/{other_sha}", content=other).status_code == 403
    event_id = api.get("/api/v1/alerts").json()["items"][0]["id"]
    stolen = api.get(f"/api/v1/alerts/{event_id}/snapshot").content
    assert put("cam-2", named, stolen) == 403  # cam-2's own signature, but cam-1's alert names it
    assert put("cam-1", named, stolen) == 201  # the owner may send it again: stored once
    persisted = api.get("/api/v1/metrics").json()["persisted"]
    assert persisted["snapshots_refused_unnamed"] >= 1
    assert persisted["snapshots_refused_hash"] == 1
    assert persisted["snapshots_refused_auth"] == 3
    assert persisted["snapshots_refused_other_device"] == 1


def test_a_snapshot_taken_while_the_fleet_is_down_is_uploaded_after_an_agent_restart(
    tmp_path: Path, mqtt_broker, detection_package, served
) -> None:
    """The fleet stops (its MQTT session keeps the alert queued at the broker); the camera alerts,
    cannot upload, and is restarted; once the fleet is back the snapshot arrives from the outbox."""
    serve = served["serve"]
    serve.stop()
    agent, incoming = camera(tmp_path, mqtt_broker, detection_package, served["url"])
    drop_frame(incoming, "f0.jpg", bright_frame())
    state = tmp_path / "state-cam-1" / "outbox.sqlite"
    wait_until(lambda: tried_and_kept(state) == 1, timeout=60)
    agent.terminate()
    agent.wait(timeout=20)
    serve.start()
    agent, _ = camera(tmp_path, mqtt_broker, detection_package, served["url"])
    api = httpx.Client(base_url=served["url"], headers={"Authorization": f"Bearer {served['tokens']['operator']}"})
    try:
        wait_until(lambda: [e["snapshot"]["stored"] for e in api.get("/api/v1/alerts").json()["items"]] == [True], 90)
    finally:
        agent.terminate()
        agent.wait(timeout=20)
    with sqlite3.connect(state) as db:
        assert db.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 0


def test_snapshots_and_packages_travel_over_the_fleets_own_https(
    tmp_path: Path, edgefleet_home: Path, mqtt_broker, detection_package
) -> None:
    """`fleet serve` terminates TLS with a certificate `fleet server-cert` issued from the fleet CA.
    A camera trusting another CA refuses the fleet and keeps its snapshot; with the fleet CA as
    [fleet] ca_file it uploads it, and the agent's package download works over the same HTTPS."""
    serve = FleetServe(tmp_path, edgefleet_home, mqtt_broker, tls=True)
    serve.start()
    fleet_ca = serve.tls_dir / "ca.pem"
    api = httpx.Client(
        base_url=serve.url, verify=serve.verify, headers={"Authorization": f"Bearer {serve.tokens['operator']}"}
    )
    try:
        assert serve.url.startswith("https://") and "serving the API on https://" in serve.log.read_text()
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{serve.url}/healthz")  # the system's CAs do not know the fleet CA
        # The wrong CA (the broker's): the alert arrives over MQTT, its snapshot stays in the outbox.
        agent, incoming = camera(tmp_path, mqtt_broker, detection_package, serve.url, fleet_ca=mqtt_broker.pki.ca_file)
        state = tmp_path / "state-cam-1" / "outbox.sqlite"
        try:
            drop_frame(incoming, "f0.jpg", bright_frame())
            wait_until(lambda: tried_and_kept(state) == 1, timeout=60)
            wait_until(lambda: len(api.get("/api/v1/alerts").json()["items"]) == 1, timeout=30)
        finally:
            agent.terminate()
            agent.wait(timeout=20)
        assert api.get("/api/v1/alerts").json()["items"][0]["snapshot"]["stored"] is False
        assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "cam-1.log").read_text()
        # The fleet CA: the kept snapshot is uploaded over TLS, and the fleet checked its sha256.
        agent, _ = camera(tmp_path, mqtt_broker, detection_package, serve.url, fleet_ca=fleet_ca)
        try:
            wait_until(
                lambda: [e["snapshot"]["stored"] for e in api.get("/api/v1/alerts").json()["items"]] == [True], 90
            )
        finally:
            agent.terminate()
            agent.wait(timeout=20)
        event = api.get("/api/v1/alerts").json()["items"][0]
        jpeg = api.get(f"/api/v1/alerts/{event['id']}/snapshot").content
        assert hashlib.sha256(jpeg).hexdigest() == event["snapshot"]["sha256"]
        # The operator CLI over the same HTTPS, trusting the fleet CA through SSL_CERT_FILE.
        env = serve.env | {"SSL_CERT_FILE": str(fleet_ca)}
        listed = cli({"url": serve.url, "tokens": serve.tokens, "env": env}, "alerts", "list", "--json")
        assert listed.returncode == 0 and len(json.loads(listed.stdout)["items"]) == 1, listed.stderr
        # A package download, as a rollout job names it (public_url, https), with the agent's own code.
        package_over_https(serve, detection_package, tmp_path, wrong_ca=mqtt_broker.pki.ca_file)
    finally:
        api.close()
        serve.stop()


def package_over_https(serve: FleetServe, package: tuple[Path, Path], tmp_path: Path, wrong_ca: Path) -> None:
    from edgefleet.agent.update import UpdateRefused, download_context, fetch
    from edgefleet.contracts.jobs import JobPackage
    from edgefleet.fleet import registry
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.db import Build
    from edgefleet.signing import load_public_key

    pkg, trust = package
    fleet = open_fleet(load_config(serve.cfg))
    fleet.trusted.append(load_public_key(trust))
    uploaded = registry.upload_package(fleet, pkg)
    with fleet.session() as s:
        build = s.get(Build, uploaded.builds[0].id)
        url = fleet.download_url(build.id, build.store_key)
    assert url.startswith(serve.url + "/api/v1/builds/")
    job = JobPackage(name="detector", version="1", sha256=build.sha256, size=build.size, url=url)
    with pytest.raises(UpdateRefused, match="download failed after 2 attempts"):
        fetch(job, tmp_path / "refused.tar.gz", 10.0, 2, download_context(wrong_ca))
    fetch(job, tmp_path / "got.tar.gz", 10.0, 2, download_context(serve.tls_dir / "ca.pem"))
    assert (tmp_path / "got.tar.gz").read_bytes() == pkg.read_bytes()


def tried_and_kept(outbox: Path) -> int:
    """Snapshots in the camera's outbox that it tried to upload at least once and still holds."""
    if not outbox.exists():  # connecting would create it
        return 0
    try:
        with sqlite3.connect(outbox) as db:
            return int(db.execute("SELECT COUNT(*) FROM snapshots WHERE attempts >= 1").fetchone()[0])
    except sqlite3.OperationalError:  # the agent is still creating its outbox
        return 0
