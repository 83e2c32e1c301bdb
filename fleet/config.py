"""Fleet service configuration (format version 1), a strict TOML file, or the defaults.

Secrets never sit in the file: the database password comes from EDGEFLEET_FLEET_DB_PASSWORD
or `database_password_file`, and the fleet signs rollbacks with the key at `signing_key`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import Field, ValidationError, model_validator

from edgefleet.errors import UsageError
from edgefleet.fleet.drift import DriftConfig
from edgefleet.logs import LogFormat
from edgefleet.signing import default_signing_key_path, edgefleet_home
from edgefleet.strict import StrictMutable, first_error

# A replica id is an MQTT client id, a broker user and a line of the generated ACL: "fleet" or
# "fleet-<name>" (device ids cannot take either), nothing an ACL or a topic would read as syntax.
REPLICA_ID = r"^fleet(-[A-Za-z0-9_.-]{1,58})?$"


class BrokerConfig(StrictMutable):
    host: str = "127.0.0.1"
    port: int = 8883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # How the broker learns who may do what (fleet/broker_auth): "acl_file" writes `acl_file` and
    # sends SIGHUP to the mosquitto in `mosquitto_pid_file`; "dynsec" sends mosquitto's dynamic
    # security plugin commands over MQTT (the fleet's identity needs that broker's admin role).
    authorization: Literal["acl_file", "dynsec"] = "acl_file"
    acl_file: Path | None = None
    mosquitto_pid_file: Path | None = None
    public_host: str | None = None  # the address devices use, if not `host`
    # Replicas share the device topics through `$share/<share_group>/...`: each message goes to one.
    # Keep it secret: mosquitto lets any client join a group and drops what it deals to a member
    # the ACL does not let read. Default: a random name the first replica stores in the database.
    share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{16,64}$")
    # How long the broker keeps a replica's session (and the messages queued for it) after it
    # disconnects; a replica that returns under its id within this time loses nothing.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60, le=2**32 - 2)
    # `<replica id>.pem` and `.key` of the fleet's replicas (PostgreSQL): a replica dead for good
    # has its broker session drained and ended by another (fleet/adoption.py). Default: none, and
    # its session holds what the broker deals it until it returns or the session expires.
    peer_identities_dir: Path | None = None

    @model_validator(mode="after")
    def _no_file_for_dynsec(self) -> BrokerConfig:
        if self.authorization == "dynsec" and (self.acl_file or self.mosquitto_pid_file):
            raise ValueError(
                'acl_file and mosquitto_pid_file are for authorization = "acl_file"; dynsec is managed over MQTT'
            )
        return self


class AlertsConfig(StrictMutable):
    """[alerts]: the alert events the fleet keeps and their snapshots (docs/fleet.md, "Alert events")."""

    snapshot_max_bytes: int = Field(200_000, ge=16_384, le=1024 * 1024)  # refused above this
    retention_days: float = Field(30.0, gt=0)  # events (and their snapshots) older than this are deleted
    max_events: int = Field(100_000, ge=1)  # past this, the oldest events go first
    # Who may list events and fetch snapshots (pictures of people): read-only, operator or admin.
    read_scope: Literal["read-only", "operator", "admin"] = "read-only"
    webhook_url_file: Path | None = None  # each new event POSTed there (EDGEFLEET_FLEET_ALERT_WEBHOOK wins)
    webhook_timeout_s: float = Field(5.0, gt=0)


class HomeAssistantConfig(StrictMutable):
    """[homeassistant]: MQTT discovery of every camera for Home Assistant (docs/fleet.md), off by default."""

    enabled: bool = False
    discovery_prefix: str = Field("homeassistant", pattern=r"^[A-Za-z0-9_-]+$")
    state_prefix: str = Field("edgefleet/ha", pattern=r"^[A-Za-z0-9_/-]+$")
    # HA's certificate CN, for the broker ACL; a fleet-side name, so no camera can enroll as it.
    user: str = Field("fleet-homeassistant", pattern=r"^(fleet|edgefleet)-[A-Za-z0-9_-]+$")
    alert_off_s: float = Field(10.0, gt=0)  # a label's binary sensor goes OFF this long after its last alert


class FleetConfig(StrictMutable):
    format_version: Literal[1] = 1
    data_dir: Path = Field(default_factory=lambda: edgefleet_home() / "fleet")
    database_url: str | None = None  # default sqlite:///<data_dir>/fleet.db
    database_password_file: Path | None = None
    package_store: str | None = None  # default <data_dir>/packages; or s3://bucket/prefix
    public_url: str = "http://127.0.0.1:8080"  # how devices reach the HTTP API
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    # HTTPS on the listen address (docs/security.md, "Fleet HTTPS"): both files or neither. Without
    # them the API speaks plain HTTP and TLS belongs to a reverse proxy in front of it.
    tls_cert_file: Path | None = None  # PEM: the server certificate, then any intermediate certificates
    tls_key_file: Path | None = None  # PEM: its private key, unencrypted (readable by the service only)
    signing_key: Path = Field(default_factory=default_signing_key_path)
    broker: BrokerConfig | None = None
    tick_seconds: float = 1.0
    # Install jobs of one rollout sent and not yet finished, at most: a wave goes out in slices as
    # jobs finish. Each job comes back as ~8 messages (its states, the status) that wait in the
    # broker's queue for the fleet, and mosquitto drops what goes past max_queued_messages
    # (fleet/local_broker.py MAX_QUEUED_MESSAGES, 20,000) after acknowledging it to the camera.
    max_jobs_in_progress: int = Field(default=1_000, ge=1)
    enrollment_ttl_s: float = 24 * 3600
    download_ttl_s: float = 24 * 3600
    # Replicas behind one load balancer share these (docs/fleet.md "Replicas"): the key that signs
    # download links (64 hex digits; or env EDGEFLEET_FLEET_DOWNLOAD_SECRET) and the fleet CA
    # (ca.key, ca.crt). Default: created under data_dir, which only one process may then serve.
    download_secret_file: Path | None = None
    ca_dir: Path | None = None
    drift: DriftConfig = Field(default_factory=DriftConfig)  # see docs/drift.md
    log_format: LogFormat = "text"  # "json": one object per line (edgefleet/logs.py); `serve --log-format` overrides
    # /metrics (Prometheus) is open on the listen address unless this file holds a bearer token
    # Prometheus must send (its `authorization: credentials_file`); API tokens are not accepted there.
    metrics_token_file: Path | None = None
    # This process's MQTT client id and broker user: "fleet" or "fleet-<name>", stable across
    # restarts (the broker keeps its session by it). Default: the CN of broker.cert_file.
    replica_id: str | None = Field(default=None, pattern=REPLICA_ID)
    telemetry_retention_s: float = Field(default=7 * 24 * 3600, gt=0)  # older telemetry rows are deleted
    prune_interval_s: float = Field(default=600.0, gt=0)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)

    @model_validator(mode="after")
    def _tls_pair(self) -> FleetConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both, or neither")
        if self.tls_cert_file is not None and not self.public_url.startswith("https://"):
            # Devices download packages from public_url: plain HTTP would never reach a TLS listener.
            raise ValueError(f"public_url {self.public_url!r} must be https:// when the fleet serves HTTPS")
        return self

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
