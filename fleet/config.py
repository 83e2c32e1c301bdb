"""Fleet service configuration (format version 1), a strict TOML file, or the defaults.

Secrets never sit in the file: the database password comes from EDGEFLEET_FLEET_DB_PASSWORD
or `database_password_file`, and the fleet signs rollbacks with the key at `signing_key`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from edgefleet.errors import UsageError
from edgefleet.fleet.drift import DriftConfig
from edgefleet.signing import default_signing_key_path, edgefleet_home
from edgefleet.strict import StrictMutable, first_error


class BrokerConfig(StrictMutable):
    host: str = "127.0.0.1"
    port: int = 8883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # What the fleet writes so mosquitto can authorize enrolled devices; mosquitto is sent SIGHUP.
    acl_file: Path | None = None
    mosquitto_pid_file: Path | None = None
    public_host: str | None = None  # the address devices use, if not `host`


class FleetConfig(StrictMutable):
    format_version: Literal[1] = 1
    data_dir: Path = Field(default_factory=lambda: edgefleet_home() / "fleet")
    database_url: str | None = None  # default sqlite:///<data_dir>/fleet.db
    database_password_file: Path | None = None
    package_store: str | None = None  # default <data_dir>/packages; or s3://bucket/prefix
    public_url: str = "http://127.0.0.1:8080"  # how devices reach the HTTP API
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    signing_key: Path = Field(default_factory=default_signing_key_path)
    broker: BrokerConfig | None = None
    tick_seconds: float = 1.0
    enrollment_ttl_s: float = 24 * 3600
    download_ttl_s: float = 24 * 3600
    # Replicas behind one load balancer share these (docs/fleet.md "Replicas"): the key that signs
    # download links (64 hex digits; or env EDGEFLEET_FLEET_DOWNLOAD_SECRET) and the fleet CA
    # (ca.key, ca.crt). Default: created under data_dir, which only one process may then serve.
    download_secret_file: Path | None = None
    ca_dir: Path | None = None
    drift: DriftConfig = Field(default_factory=DriftConfig)  # see docs/drift.md

    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.data_dir / 'fleet.db'}"
        password = os.environ.get("EDGEFLEET_FLEET_DB_PASSWORD")
        if password is None and self.database_password_file:
            password = self.database_password_file.read_text().strip()
        if password and url.startswith("postgresql") and "@" in url:
            from sqlalchemy.engine import make_url

            url = make_url(url).set(password=password).render_as_string(hide_password=False)
        return url

    def resolved_ca_dir(self) -> Path:
        return self.ca_dir or self.data_dir / "ca"

    def resolved_store(self) -> str:
        return self.package_store or str(self.data_dir / "packages")


def load_config(path: Path | None) -> FleetConfig:
    if path is None:
        return FleetConfig()
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"cannot read fleet config {path}: {exc.strerror}", "check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"fleet config {path} is not valid TOML: {exc}", "fix the syntax") from None
    try:
        return FleetConfig.model_validate(raw)
    except ValidationError as exc:
        first = first_error(exc)
        raise UsageError(
            f"fleet config {path}: {first.where}: {first.msg}", "see docs/fleet.md for the config keys"
        ) from None
