"""Small helpers and fixtures for the fleet tests (also used by tests/security)."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support.postgres import create_database, temporary_postgres

from edgefleet.net import free_port


class Clock:
    """A settable clock for the fleet (rollout timing without sleeping)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_http(url: str, timeout: float = 30.0, verify: ssl.SSLContext | bool = True) -> None:
    """`verify`: an SSL context trusting the private CA of an https URL (httpx's argument)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture
def fleet(tmp_path: Path, edgefleet_home: Path, tiny_packages: dict):
    """A fleet on SQLite in tmp_path with a recording notifier (`fleet.sent`) and a settable clock."""
    from edgefleet.fleet.config import FleetConfig
    from edgefleet.fleet.core import open_fleet

    sent: list[tuple[str, dict]] = []
    config = FleetConfig(data_dir=tmp_path / "fleet", signing_key=tiny_packages["key"])
    f = open_fleet(config, notify=lambda device, payload: sent.append((device, payload)))
    f.clock = Clock()
    f.sent = sent
    return f


@pytest.fixture
def api(fleet):
    """FastAPI's TestClient on `fleet`, with one token per scope in `api.tokens`."""
    from fastapi.testclient import TestClient

    from edgefleet.fleet import auth
    from edgefleet.fleet.api import create_app
    from edgefleet.fleet.ingest import Ingest

    client = TestClient(create_app(fleet, Ingest(fleet)), raise_server_exceptions=False)
    client.tokens = {scope: auth.create_token(fleet, scope, scope) for scope in ("read-only", "operator", "admin")}
    return client


def h(api, scope: str) -> dict:
    return {"Authorization": f"Bearer {api.tokens[scope]}"}


@contextlib.contextmanager
def fleet_process(tmp_path: Path, edgefleet_home: Path, signing_key: Path, *serve_args: str):
    """A real `edgefleet fleet serve [serve_args]` (no broker); yields (url, admin token, process, env)."""
    port = free_port()
    cfg = tmp_path / "fleet.toml"
    cfg.write_text(
        f'format_version = 1\ndata_dir = "{tmp_path / "data"}"\nlisten_port = {port}\npublic_url = "http://127.0.0.1:{port}"\nsigning_key = "{signing_key}"\n'
    )
    env = dict(os.environ, EDGEFLEET_HOME=str(edgefleet_home), COLUMNS="200")
    cli = [sys.executable, "-m", "edgefleet.cli"]
    admin = subprocess.run(
        cli + ["fleet", "tokens", "create", "--config", str(cfg), "--name", "me", "--scope", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    server = subprocess.Popen(
        cli + ["fleet", "serve", "--config", str(cfg), *serve_args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        server.cfg = cfg
        yield url, admin, server, env
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="session")
def postgres_server():
    if os.environ.get("EDGEFLEET_TEST_POSTGRES_URL"):
        yield os.environ["EDGEFLEET_TEST_POSTGRES_URL"].rstrip("/")
        return
    with temporary_postgres() as url:  # FileNotFoundError says what to install
        yield url


@pytest.fixture
def postgres_database(postgres_server):
    """The URL of a fresh, empty database on the test server (dropped afterwards)."""
    from sqlalchemy import create_engine, text

    name = f"fleet_{uuid.uuid4().hex[:10]}"
    yield create_database(postgres_server, name)
    admin = create_engine(
        postgres_server.replace("postgresql://", "postgresql+psycopg://") + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as c:
        c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()
