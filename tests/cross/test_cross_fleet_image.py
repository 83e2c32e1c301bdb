"""The fleet's container image: an amd64 Debian tree with the fleet's wheels and code, loaded into
docker by `edgefleet cross image --role fleet`; its `fleet serve` answers /healthz and /metrics."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.cross.image import build_image
from edgefleet.net import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# Measured 311 MB (docs/cross.md); scipy and numpy are ~220 MB of it.
MAX_IMAGE_BYTES = 350_000_000


def wait_healthy(url: str, container, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            container.reload()
            assert container.status in ("created", "running"), container.logs().decode()[-2000:]
        time.sleep(0.2)
    raise AssertionError(f"fleet in the container did not answer: {container.logs().decode()[-2000:]}")


def test_the_fleet_image_serves_the_api_metrics_and_json_logs(docker_client, tmp_path):
    result = build_image("amd64", "edgefleet-fleet-test:amd64", "fleet", quiet=True)
    try:
        assert result.architecture == "amd64"
        assert result.size_bytes <= MAX_IMAGE_BYTES, f"fleet image is {result.size_bytes / 1e6:.1f} MB"
        print(f"fleet image {result.size_bytes / 1e6:.1f} MB")
        config = docker_client.images.get(result.tag).attrs["Config"]
        assert config["Cmd"] == ["fleet", "serve", "--config", "/etc/edgefleet/fleet.toml"]
        usage = docker_client.containers.run(result.tag, ["fleet", "serve", "--help"], network_mode="none", remove=True)
        assert usage.decode().startswith("Usage: edgefleet fleet serve")

        port = free_port()
        (tmp_path / "fleet.toml").write_text(f'format_version = 1\nlisten_port = {port}\nlog_format = "json"\n')
        server = docker_client.containers.run(
            result.tag,
            detach=True,
            network_mode="host",  # no port publishing needed, so no iptables in the daemon
            volumes={str(tmp_path): {"bind": "/etc/edgefleet", "mode": "ro"}},
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, server)
            families = {f.name for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
            assert {"edgefleet_fleet_devices", "edgefleet_fleet_ingest_received"} <= families
            assert httpx.get(f"{url}/api/v1/models").status_code == 401  # the API wants a token
            lines = [json.loads(line) for line in server.logs(stdout=True, stderr=True).decode().splitlines() if line]
            assert any(line["message"] == f"serving the API on http://127.0.0.1:{port}" for line in lines)
        finally:
            server.remove(force=True)
    finally:
        docker_client.images.remove(result.tag, force=True)
