"""The fleet's shared context: database sessions, package store, keys and the job notifier."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session, sessionmaker

from edgefleet.errors import UsageError
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.db import open_database
from edgefleet.fleet.store import LocalStore, S3Store, open_store
from edgefleet.signing import PublicKey, SigningKey, default_trusted_keys, key_id, load_signing_key

if TYPE_CHECKING:
    from edgefleet.fleet.broker_auth import BrokerAuthorization


class Receipt(Protocol):
    """The broker's acknowledgement of one published job (paho's MQTTMessageInfo)."""

    def wait_for_publish(self, timeout: float | None = None) -> None: ...

    def is_published(self) -> bool: ...


# publish(device_id, payload) sends a job to edgefleet/v1/<device>/jobs/notify (QoS 1); it returns
# a Receipt to wait on, or None where the job is delivered when the call returns (tests' recorders).
Notifier = Callable[[str, dict], Receipt | None]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Fleet:
    config: FleetConfig
    sessions: sessionmaker  # write transactions
    readers: sessionmaker  # read-only work: listings, token checks
    store: LocalStore | S3Store
    signing_key: SigningKey | None
    trusted: list[PublicKey]
    download_secret: bytes
    notify: Notifier = lambda device, payload: None
    # Keeps the broker's rights in step with enrolled devices (fleet/broker_auth); open_fleet sets it.
    broker_auth: BrokerAuthorization = field(init=False)
    # One fleet process mutates rollouts from the API, the MQTT ingest and the ticker.
    lock: threading.RLock = field(default_factory=threading.RLock)
    clock: Callable[[], float] = time.time

    def session(self) -> Session:
        """A session for reading (on SQLite it never blocks writers)."""
        return self.readers()

    def writer(self) -> Session:
        """A session for a write transaction: `with fleet.writer() as s, s.begin(): ...`."""
        return self.sessions()

    def download_signature(self, build_id: int, expires: int) -> str:
        return hmac.new(self.download_secret, f"{build_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def download_url(self, build_id: int, store_key: str) -> str:
        ttl = int(self.config.download_ttl_s)
        presigned = self.store.presigned_url(store_key, ttl)
        if presigned:
            return presigned
        expires = int(self.clock()) + ttl
        base = self.config.public_url.rstrip("/")
        return f"{base}/api/v1/builds/{build_id}/download?expires={expires}&sig={self.download_signature(build_id, expires)}"

    def check_download(self, build_id: int, expires: int, sig: str) -> bool:
        return expires >= self.clock() and hmac.compare_digest(self.download_signature(build_id, expires), sig)

    def fleet_public_keys_pem(self) -> list[str]:
        from edgefleet.signing import public_pem

        return [public_pem(k).decode() for k in self.trusted]


def _secret(config: FleetConfig) -> bytes:
    """The key of download links: shared by every replica when configured, else this process's own."""
    given = os.environ.get("EDGEFLEET_FLEET_DOWNLOAD_SECRET")
    if given is None and config.download_secret_file is not None:
        try:
            given = config.download_secret_file.read_text()
        except OSError as exc:
            raise UsageError(
                f"cannot read download_secret_file {config.download_secret_file}: {exc.strerror}",
                "create it once (`openssl rand -hex 32`) and give every replica the same file",
            ) from None
    if given is not None:
        try:
            secret = bytes.fromhex(given.strip())
        except ValueError:
            secret = b""
        if len(secret) < 32:
            raise UsageError(
                "the download secret must be at least 64 hex digits", "create one with `openssl rand -hex 32`"
            )
        return secret
    path = config.data_dir / "download.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def open_fleet(config: FleetConfig, notify: Notifier | None = None) -> Fleet:
    """Open (and migrate) the database and the store; load the fleet's signing key if present."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    sessions, readers = open_database(config.resolved_database_url())
    signing_key = load_signing_key(config.signing_key) if config.signing_key.exists() else None
    trusted = default_trusted_keys()
    if signing_key and signing_key.key_id not in {key_id(k) for k in trusted}:
        trusted.append(signing_key.public)  # packages the fleet's own key signed are trusted too
    fleet = Fleet(
        config,
        sessions,
        readers,
        open_store(config.resolved_store()),
        signing_key,
        trusted,
        _secret(config),
    )
    if notify:
        fleet.notify = notify
    from edgefleet.fleet.broker_auth.acl_file import AclFile  # it imports this module

    # dynsec needs the fleet's MQTT connection: serve() replaces this once its bridge is up.
    fleet.broker_auth = AclFile(fleet)
    return fleet
