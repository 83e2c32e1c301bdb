"""The embedded default broker: one local mosquitto process with mutual TLS from the fleet's CA.

Layout under `directory`: server.crt/.key (signed by the fleet CA for `host`), fleet.crt/.key
(the fleet's own MQTT identity, CN "fleet"), viewer.crt/.key (CN "fleet-viewer": reads alerts),
acl (written by the fleet from its device list
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
from edgefleet.fleet.devices import FLEET_MQTT_USER, FLEET_VIEWER_USER, acl_text

# Broker limits, sized for a fleet of up to ~1,000 cameras (docs/security.md "Broker limits").
# The largest thing a device sends is an alert with a <= 64 KiB thumbnail (agent/config.py).
MAX_PACKET_BYTES = 256 * 1024
# QoS 1 messages queued per offline persistent session: the fleet's own session collects every
# camera's telemetry and alerts while the fleet is down (1,000 cameras x 1 message/10 s = 100/s,
# so ~3 minutes); a camera's session collects only its jobs. Agents keep their own outbox on
# top. Drops past this are counted by mosquitto ($SYS/broker/publish/messages/dropped).
MAX_QUEUED_MESSAGES = 20_000
# The fleet acknowledges a message only once it is committed (fleet/bridge.py); this many may
# be in flight to it at once, enough for whole ingest batches.
MAX_INFLIGHT_MESSAGES = 1_000
# Debian/Ubuntu's mosquitto package ships the dynamic security plugin here.
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def mosquitto_config(
    *,
    host: str,
    port: int,
    ca_file: Path,
    cert_file: Path,
    key_file: Path,
    acl_file: Path | None,
    data_dir: Path,
    log_file: Path,
    pid_file: Path | None = None,
    dynsec_file: Path | None = None,
) -> str:
    """mosquitto.conf: one mutual-TLS listener where certificate CN = username = client id.

    Identity: `use_identity_as_username` makes the CN the user the ACL checks, and
    `use_username_as_clientid` replaces whatever client id a client sends with that CN, so a
    camera can neither take over another client's session (the fleet's, another camera's) nor
    read a session queued for it. Durability: `autosave_on_changes` with an interval of 1 writes
    the persistence file after every change (a queued QoS 1 message is one), so a SIGKILL loses
    at most what was acknowledged during the broker's last loop pass (docs/security.md).
    Authorisation: `acl_file`, or the dynamic security plugin keeping its state in `dynsec_file`
    (`[broker] authorization = "dynsec"`, fleet/broker_auth/dynsec.py).
    """
    if (acl_file is None) == (dynsec_file is None):
        raise ValueError("mosquitto_config takes exactly one of acl_file and dynsec_file")
    auth = (
        [f"acl_file {acl_file}"] if acl_file else [f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {dynsec_file}"]
    )
    lines = [
        f"user {getpass.getuser()}",  # as root, mosquitto would otherwise drop to a user that cannot read our keys
        "per_listener_settings false",
        "allow_anonymous false",
        *auth,
        "persistence true",
        f"persistence_location {data_dir}/",
        "autosave_on_changes true",
        "autosave_interval 1",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "sys_interval 5",  # $SYS counters (dropped messages, queued store) the fleet reports in /api/v1/metrics
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
        "use_username_as_clientid true",
    ]
    if pid_file is not None:
        lines.insert(1, f"pid_file {pid_file}")
    return "\n".join(lines) + "\n"


def wait_listening(host: str, port: int, process: subprocess.Popen, log_file: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text()[-1500:] if log_file.exists() else ""
            raise ServiceError(
                f"mosquitto exited with code {process.returncode}: {tail.strip() or 'no log'}",
                f"see {log_file}; is port {port} free?",
            )
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise ServiceError(f"mosquitto did not listen on {host}:{port} within {timeout:.0f} s", f"see {log_file}")


class LocalBroker:
    """Start and stop the fleet's own mosquitto; `broker_config()` is what the fleet config needs."""

    def __init__(
        self, directory: Path, authority: CertificateAuthority, *, host: str = "127.0.0.1", port: int = 8883
    ) -> None:
        self.directory = Path(directory)
        self.host, self.port = host, port
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        self.ca_file = self.directory / "ca.crt"
        self.ca_file.write_text(authority.cert_pem)
        self.server_cert, self.server_key = self._identity(authority, "server", host, [host, "localhost"])
        self.fleet_cert, self.fleet_key = self._identity(authority, "fleet", FLEET_MQTT_USER, None)
        self.viewer_cert, self.viewer_key = self._identity(authority, "viewer", FLEET_VIEWER_USER, None)  # alerts only
        self.acl_file = self.directory / "acl"
        if not self.acl_file.exists():
            self.acl_file.write_text(acl_text([]))
        self.pid_file = self.directory / "mosquitto.pid"
        self.log_file = self.directory / "mosquitto.log"
        self.config_file = self.directory / "mosquitto.conf"
        self.config_file.write_text(
            mosquitto_config(
                host=host,
                port=port,
                ca_file=self.ca_file,
                cert_file=self.server_cert,
                key_file=self.server_key,
                acl_file=self.acl_file,
                data_dir=self.directory / "data",
                log_file=self.log_file,
                pid_file=self.pid_file,
            )
        )
        self.process: subprocess.Popen | None = None

    def _identity(
        self, authority: CertificateAuthority, stem: str, cn: str, server_names: list[str] | None
    ) -> tuple[Path, Path]:
        cert, key = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        if not (cert.exists() and key.exists()):
            key_pem, cert_pem = authority.issue_key_and_cert(cn, server_names=server_names)
            key.touch(mode=0o600)
            key.write_bytes(key_pem)
            cert.write_bytes(cert_pem)
        return cert, key

    def broker_config(self) -> BrokerConfig:
        return BrokerConfig(
            host=self.host,
            port=self.port,
            ca_file=self.ca_file,
            cert_file=self.fleet_cert,
            key_file=self.fleet_key,
            acl_file=self.acl_file,
            mosquitto_pid_file=self.pid_file,
        )

    def start(self) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise MissingToolError("mosquitto is not installed", "apt-get install mosquitto")
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
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
