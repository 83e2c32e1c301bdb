"""Agent releases (good, crashing, unhealthy) built from this checkout, and a supervisor that restarts the launcher as systemd does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgefleet.agent_release import build_release, device_sources
from edgefleet.package import sha256_file
from edgefleet.runtime_bundle import find_bundle
from edgefleet.signing import create_signing_key, public_path

# Broken releases, as a bad build would be: one file of the device code changed.
CRASH_AT_START = (
    "edgefleet/agent/run.py",
    lambda text: 'raise ImportError("this release is broken: run.py cannot import")\n' + text,
)
# Appended rather than replaced, so the patch holds whatever shape TvmModel.run's body takes.
NAN_MODEL = (
    "edgefleet/agent/runtime.py",
    lambda text: (
        text + "\n\n_run = TvmModel.run\nTvmModel.run = lambda self, inputs: [x * np.nan for x in _run(self, inputs)]\n"
    ),
)


def release_code(root: Path, patch: tuple | None) -> list[tuple[Path, str]]:
    code = device_sources()
    if patch is None:
        return code
    name, change = patch
    out = []
    for path, rel in code:
        if rel == name:
            patched = root / "patched" / rel
            patched.parent.mkdir(parents=True, exist_ok=True)
            new = change(path.read_text())
            assert new != path.read_text(), f"the patch of {rel} changed nothing"
            patched.write_text(new)
            path = patched
        out.append((path, rel))
    return out


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """{"key", "trust", "9.1" (good, with this machine's runtime bundle), "9.2" (good, code only),
    "9.3-crash", "9.3-nan"}: signed agent releases of this checkout."""
    root = tmp_path_factory.mktemp("agent-releases")
    key = create_signing_key(root / "release.key")
    out = {"key": key, "trust": public_path(key.path)}
    specs = {
        "9.1": (None, find_bundle()),
        "9.2": (None, None),
        "9.3-crash": (CRASH_AT_START, None),
        "9.3-nan": (NAN_MODEL, None),
    }
    for name, (patch, bundle) in specs.items():
        out[name] = root / f"agent-{name}.tar.gz"
        build_release(out[name], name.split("-")[0], key, bundle=bundle, code=release_code(root / name, patch))
    return out


class Supervisor:
    """What systemd's Restart=always does: start `edgefleet agent launch` again whenever it exits."""

    def __init__(self, config: Path, log: Path, first_env: dict | None = None) -> None:
        self.config, self.log = config, log
        self.first_env = first_env or {}  # until a start ends SIGKILLed: a fault injected once
        self.exits: list[int] = []
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Supervisor:
        self._thread.start()
        return self

    def _loop(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.first_env}
        while not self._stop.is_set():
            with open(self.log, "ab") as out:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "edgefleet.cli", "agent", "launch", "--config", str(self.config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            self.exits.append(self.process.wait())
            if self.exits[-1] == -9:
                env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._thread.join(25)


def agent_job(job: str, release: Path, url: str, version: str, **probation) -> dict:
    return {
        "schema": 1,
        "id": job,
        "job": job,
        "kind": "agent_install",
        "package": {
            "name": "edgefleet-agent",
            "version": version,
            "sha256": sha256_file(release),
            "size": release.stat().st_size,
            "url": url,
        },
        "probation": {"smoke_runs": 2, "latency_budget_ms": 5000, "health_deadline_s": 15, "max_boots": 2, **probation},
    }


def journal(state_dir: Path) -> dict:
    return json.loads((state_dir / "agent" / "journal.json").read_text())


def wait_for(predicate, timeout: float = 60.0, what: str = "condition", log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what} not met within {timeout} s\n{tail}")


class Camera:
    """One camera: an agent config trusting the model's and the releases' keys, the launcher under a Supervisor, the fleet's view over MQTT."""

    def __init__(
        self, tmp_path: Path, broker, package: tuple[Path, Path], releases: dict, server, device: str = "cam-1"
    ) -> None:
        from agent_support import agent_config, write_config

        pkg, trust = package
        cfg = agent_config(tmp_path, broker, (pkg, trust), device=device)
        cfg["model"]["trusted_keys"] = [str(trust), str(releases["trust"])]
        cfg["telemetry"] = {"interval_s": 1.0}
        self.device = device
        self.state = Path(cfg["state_dir"])
        self.incoming = Path(cfg["sources"][0]["path"])
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.config = write_config(tmp_path / f"{device}.toml", cfg)
        self.log = tmp_path / f"{device}.log"
        self.broker, self.releases, self.server = broker, releases, server
        self.updates = broker.subscriber(f"edgefleet/v1/{device}/jobs/+/update")
        self.status = broker.subscriber(f"edgefleet/v1/{device}/status")
        self.supervisor: Supervisor | None = None

    def start(self, first_env: dict | None = None) -> Camera:
        self.supervisor = Supervisor(self.config, self.log, first_env).start()
        return self

    def stop(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

    def online_version(self) -> str | None:
        """The agent version of the newest retained/online status message."""
        for m in reversed(self.status.messages):
            body = m.json()
            if body.get("state") == "online":
                return body.get("agent_version")
        return None

    def wait_online(self, version: str, timeout: float = 60.0) -> None:
        wait_for(
            lambda: self.online_version() == version, timeout, f"{self.device} online on agent {version}", self.log
        )

    def send(self, job: str, release_name: str, version: str, **probation) -> None:
        import shutil

        release = self.releases[release_name]
        shutil.copy(release, self.server.root / release.name)
        body = agent_job(job, release, self.server.url(release.name), version, **probation)
        self.updates.client.publish(
            f"edgefleet/v1/{self.device}/jobs/notify", json.dumps(body), qos=1
        ).wait_for_publish(5)

    def states(self, job: str) -> list[str]:
        return [m.json()["state"] for m in self.updates.messages if m.topic.split("/")[-2] == job]

    def final(self, job: str, timeout: float = 90.0) -> tuple[str, str]:
        """(state, detail) of the job's first terminal report."""

        def done():
            for m in self.updates.messages:
                body = m.json()
                if m.topic.split("/")[-2] == job and body["state"] in ("committed", "rolled_back", "failed"):
                    return body["state"], body["detail"]
            return None

        return wait_for(done, timeout, f"job {job} finished", self.log)

    def current(self) -> str | None:
        link = self.state / "agent" / "current"
        return os.readlink(link) if link.is_symlink() else None
