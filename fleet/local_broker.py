"""The embedded default broker: one local mosquitto process with mutual TLS from the fleet's CA.

Layout under `directory`: server.crt/.key (signed by the fleet CA for `host`), fleet.crt/.key
(the fleet's own MQTT identity, CN "fleet"), acl (written by the fleet from its device list
and re-read by mosquitto on SIGHUP), mosquitto.conf, mosquitto.pid, data/ (persistence) and
mosquitto.log. Clients authenticate with certificates only: the CN is the MQTT username.
"""

from __future__ import annotations

import getpass
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from edgefleet.errors import MissingToolError, ServiceError
from edgefleet.fleet.ca import CertificateAuthority
from edgefleet.fleet.config import BrokerConfig
from edgefleet.fleet.devices import FLEET_MQTT_USER, acl_text


def mosquitto_config(*, host: str, port: int, ca_file: Path, cert_file: Path, key_file: Path, acl_file: Path, data_dir: Path, log_file: Path, pid_file: Path | None = None) -> str:
    """A mosquitto.conf for one mutual-TLS listener with certificate CNs as usernames and an ACL."""
    lines = [
        f"user {getpass.getuser()}",  # as root, mosquitto would otherwise drop to a user that cannot read our keys
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl_file}",
        "persistence true",
        f"persistence_location {data_dir}/",
        f"log_dest file {log_file}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        f"listener {port} {host}",
        f"cafile {ca_file}",
        f"certfile {cert_file}",
        f"keyfile {key_file}",
        "require_certificate true",
        "use_identity_as_username true",
    ]
    if pid_file is not None:
        lines.insert(1, f"pid_file {pid_file}")
    return "\n".join(lines) + "\n"


def wait_listening(host: str, port: int, process: subprocess.Popen, log_file: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text()[-1500:] if log_file.exists() else ""
            raise ServiceError(f"mosquitto exited with code {process.returncode}: {tail.strip() or 'no log'}", f"see {log_file}; is port {port} free?")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"mosquitto did not listen on {host}:{port} within {timeout:.0f} s", f"see {log_file}")


class LocalBroker:
    """Start and stop the fleet's own mosquitto; `broker_config()` is what the fleet config needs."""

    def __init__(self, directory: Path, authority: CertificateAuthority, *, host: str = "127.0.0.1", port: int = 8883) -> None:
        self.directory = Path(directory)
        self.host, self.port = host, port
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        self.ca_file = self.directory / "ca.crt"
        self.ca_file.write_text(authority.cert_pem)
        self.server_cert, self.server_key = self._identity(authority, "server", host, [host, "localhost"])
        self.fleet_cert, self.fleet_key = self._identity(authority, "fleet", FLEET_MQTT_USER, None)
        self.acl_file = self.directory / "acl"
        if not self.acl_file.exists():
            self.acl_file.write_text(acl_text([]))
        self.pid_file = self.directory / "mosquitto.pid"
        self.log_file = self.directory / "mosquitto.log"
        self.config_file = self.directory / "mosquitto.conf"
        self.config_file.write_text(mosquitto_config(host=host, port=port, ca_file=self.ca_file, cert_file=self.server_cert, key_file=self.server_key,
                                                     acl_file=self.acl_file, data_dir=self.directory / "data", log_file=self.log_file, pid_file=self.pid_file))
        self.process: subprocess.Popen | None = None

    def _identity(self, authority: CertificateAuthority, stem: str, cn: str, server_names: list[str] | None) -> tuple[Path, Path]:
        cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        if not (cert.exists() and key.exists()):
            key_pem, cert_pem = authority.issue_key_and_cert(cn, server_names=server_names)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            cert.write_bytes(cert_pem)
        return cert, key

    def broker_config(self) -> BrokerConfig:
        return BrokerConfig(host=self.host, port=self.port, ca_file=self.ca_file, cert_file=self.fleet_cert, key_file=self.fleet_key,
                            acl_file=self.acl_file, mosquitto_pid_file=self.pid_file)

    def start(self) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise MissingToolError("mosquitto is not installed", "apt-get install mosquitto")
        self.process = subprocess.Popen([binary, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.host, self.port, self.process, self.log_file)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves sessions and queued QoS 1 messages, then exits."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
