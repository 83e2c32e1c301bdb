"""Shared by tests/agent_update and tests/fleet: real tiny packages and a range-capable HTTP server."""

from __future__ import annotations

import base64
import hashlib
import shutil
import threading
import time
from pathlib import Path

import pytest
from tiny_models import compile_tiny

from edgefleet.agent.model_slot import ModelSlot
from edgefleet.agent.update import UpdateManager
from edgefleet.contracts.jobs import RollbackAuthorization
from edgefleet.net import free_port
from edgefleet.signing import load_public_key, load_signing_key, public_path


@pytest.fixture(scope="session")
def tiny_packages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"key": signing key path, "v1"/"v2"/"v3": good packages, "v2-nan"/"v3-nan": fail probation, "v2-flat": low confidence}."""
    from edgefleet.signing import create_signing_key

    root = tmp_path_factory.mktemp("tiny-packages")
    key = create_signing_key(root / "keys" / "fleet.key").path
    out = {"key": key}
    for version in ("1", "2", "3"):
        out[f"v{version}"] = compile_tiny(root, "good", version, key)
    out["v2-nan"] = compile_tiny(root / "nan", "nan", "2", key)
    out["v2-flat"] = compile_tiny(root / "flat", "flat", "2", key)
    out["v3-nan"] = compile_tiny(root / "nan3", "nan", "3", key)
    return out


class StaticServer:
    """Serves a folder over HTTP with range requests (Starlette's FileResponse under uvicorn)."""

    def __init__(self, root: Path) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.staticfiles import StaticFiles

        self.root = root
        self.port = free_port()
        self.requests: list[dict] = []
        app = Starlette()
        app.mount("/", StaticFiles(directory=root))

        async def record(scope, receive, send):
            if scope["type"] == "http":
                self.requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        self.server = uvicorn.Server(uvicorn.Config(record, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


@pytest.fixture
def static_server(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    server = StaticServer(root)
    yield server
    server.stop()


DEVICE = "cam-1"


class Device:
    """A device's update side in-process: a model slot with v1 active and an UpdateManager."""

    def __init__(self, root: Path, packages: dict, server) -> None:
        self.root = root
        self.state = root / "state"
        self.key = load_signing_key(packages["key"])
        self.trusted = [load_public_key(public_path(packages["key"]))]
        self.server = server
        self.packages = packages
        self.published: list[tuple[str, dict]] = []
        self.slot = ModelSlot(self.state, self.trusted)
        self.slot.install_initial(packages["v1"])
        self.manager = UpdateManager(
            self.state, self.slot, lambda t, p: self.published.append((t, p)), self.trusted, DEVICE, download_retries=2
        )

    def offer(self, package: Path, name: str) -> dict:
        shutil.copy(package, self.server.root / name)
        return {
            "size": package.stat().st_size,
            "sha256": hashlib.sha256(package.read_bytes()).hexdigest(),
            "url": self.server.url(name),
        }

    def job(self, job_id: str, package_key: str, version: str, kind: str = "install", **extra) -> dict:
        pkg = self.offer(self.packages[package_key], f"{job_id}.tar.gz")
        payload = {
            "schema": 1,
            "id": job_id,
            "job": job_id,
            "kind": kind,
            "package": {"name": "tiny", "version": version, **pkg},
            "probation": {"smoke_runs": 2, "latency_budget_ms": 5000},
        }
        return payload | extra

    def authorization(self, job: str, version: str, device: str = DEVICE) -> dict:
        doc = {"schema": 1, "kind": "rollback", "device": device, "job": job, "name": "tiny", "version": version}
        return doc | {
            "signature": base64.b64encode(
                self.key.sign(RollbackAuthorization.model_validate(doc).signed_bytes())
            ).decode()
        }

    def states(self, job: str) -> list[str]:
        return [p["state"] for t, p in self.published if t == f"jobs/{job}/update"]

    def dirs(self) -> set[str]:
        return {p.name for p in (self.state / "packages").iterdir() if not p.name.startswith(".")}


@pytest.fixture
def device(tmp_path, tiny_packages, static_server) -> Device:
    return Device(tmp_path, tiny_packages, static_server)
