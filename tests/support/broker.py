"""A real mosquitto broker for tests: mutual TLS with a throwaway CA, per-device ACL, persistence.

Use from any test area:

    from support.broker import Broker, mqtt_broker   # mqtt_broker is a pytest fixture

    def test_x(mqtt_broker: Broker):
        cert, key = mqtt_broker.pki.issue("cam-1")          # a device certificate (CN = cam-1)
        sub = mqtt_broker.subscriber("edgefleet/v1/+/alerts")  # connects as "fleet" (may read all)
        ...  mqtt_broker.host, .port, .pki.ca_file  ...
        assert sub.wait_for(1)[0].payload ...
        mqtt_broker.stop(); mqtt_broker.start()             # an outage; persistence keeps sessions

The configuration is the fleet's own (fleet/local_broker.py): the client certificate's CN is
the username and the client id. ACL: user `fleet` (and the observers `fleet-observer-<n>` that
`subscriber()` hands out) may read and write everything under edgefleet/v1/; every other
identity only edgefleet/v1/<its CN>/#. `pki.sign_csr(pem)` signs a device's CSR, as fleet enrollment does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.fleet.local_broker import mosquitto_config
from edgefleet.net import free_port

FLEET_USER = "fleet"
# Fleet-side test clients (observers) need identities of their own: the broker makes the
# certificate CN the client id, so two clients with one certificate would take each other over.
OBSERVERS = 64


def acl_text() -> str:
    from edgefleet.fleet.devices import BROKER_STATS

    fleet_side = [FLEET_USER] + [f"{FLEET_USER}-observer-{i}" for i in range(OBSERVERS)]
    stats = "".join(f"topic read {t}\n" for t in BROKER_STATS)
    users = "".join(f"user {u}\ntopic readwrite edgefleet/v1/#\n{stats}\n" for u in fleet_side)
    return users + "pattern readwrite edgefleet/v1/%u/#\n"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


class TestPKI:
    """A CA in `root`, able to issue server and client certificates and to sign CSRs."""

    __test__ = False  # not a test class

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("edgefleet test CA"))
            .issuer_name(_name("edgefleet test CA"))
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key()), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = self.root / "ca.pem"
        self.ca_file.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def _sign(self, cn: str, public_key, *, server: bool) -> x509.Certificate:
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return builder.sign(self.ca_key, hashes.SHA256())

    def issue(self, cn: str, *, server: bool = False) -> tuple[Path, Path]:
        """A fresh key and certificate for `cn`; returns (cert_file, key_file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(cn, key.public_key(), server=server)
        cert_file, key_file = self.root / f"{cn}.pem", self.root / f"{cn}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_file, key)
        return cert_file, key_file

    def sign_csr(self, csr_pem: bytes) -> bytes:
        """Sign a device CSR (CN taken from it) as a client certificate; returns PEM."""
        csr = x509.load_pem_x509_csr(csr_pem)
        assert csr.is_signature_valid
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        return self._sign(cn, csr.public_key(), server=False).public_bytes(serialization.Encoding.PEM)


class Broker:
    """mosquitto on 127.0.0.1:<free port>, mutual TLS only, ACL per device, persistent sessions."""

    host = "127.0.0.1"

    def __init__(self, root: Path, *, dynsec: bool = False) -> None:
        """dynsec: authorisation by mosquitto's dynamic security plugin instead of an ACL file,
        initialised as docs/security.md tells operators: `mosquitto_ctrl dynsec init`, with the
        fleet's identity as its admin."""
        self.root = Path(root)
        self.pki = TestPKI(self.root / "pki")
        self.port = free_port()
        self.server_cert, self.server_key = self.pki.issue("localhost", server=True)
        self.fleet_cert, self.fleet_key = self.pki.issue(FLEET_USER)
        self.acl_file: Path | None = None
        self.dynsec_file: Path | None = None
        if dynsec:
            self.dynsec_file = self.root / "dynamic-security.json"
            # The password is never used: the broker takes the fleet's identity from its certificate.
            ctrl = ["mosquitto_ctrl", "dynsec", "init", str(self.dynsec_file), FLEET_USER, secrets.token_hex(16)]
            subprocess.run(ctrl, check=True, capture_output=True)
        else:
            self.acl_file = self.root / "acl"
            self.acl_file.write_text(acl_text())
        (self.root / "data").mkdir(exist_ok=True)
        self.log_file = self.root / "mosquitto.log"
        self.config_file = self.root / "mosquitto.conf"
        # The fleet's own broker settings (identity, durability, limits), only the ACL differs.
        self.config_file.write_text(
            mosquitto_config(
                host=self.host,
                port=self.port,
                ca_file=self.pki.ca_file,
                cert_file=self.server_cert,
                key_file=self.server_key,
                acl_file=self.acl_file,
                data_dir=self.root / "data",
                log_file=self.log_file,
                dynsec_file=self.dynsec_file,
            )
        )
        self.process: subprocess.Popen | None = None
        self._clients: list = []
        self._observers = 0

    def start(self, timeout: float = 10.0) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen(
            [binary, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {self.process.stderr.read().decode()[-2000:]} {self.log_file.read_text()[-2000:] if self.log_file.exists() else ''}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what autosave already wrote survives."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file (sessions, queued QoS 1 messages) and exits."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def ssl_context(self, cert: Path, key: Path) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def subscriber(
        self, topic: str, *, identity: str = FLEET_USER, client_id: str | None = None, persistent: bool = True
    ) -> Subscriber:
        """A paho client (QoS 1, persistent session by default) that records what it receives."""
        if identity == FLEET_USER:
            identity = f"{FLEET_USER}-observer-{self._observers}"  # may read and write everything, as the fleet
            self._observers += 1
        cert, key = self.pki.issue(identity)
        # The broker replaces client_id by the CN; it is still sent, as real clients do.
        sub = Subscriber(self, topic, cert, key, client_id or f"{identity}-sub-{len(self._clients)}", persistent)
        self._clients.append(sub)
        return sub

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.stop()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self):
        import json

        return json.loads(self.payload)


class Subscriber:
    """Connects, subscribes with QoS 1, reconnects after broker restarts, and collects messages."""

    def __init__(self, broker: Broker, topic: str, cert: Path, key: Path, client_id: str, persistent: bool) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[Received] = []
        self.granted: list[int] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.topic = topic
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent, protocol=mqtt.MQTTv311
        )
        client.tls_set_context(broker.ssl_context(cert, key))
        client.reconnect_delay_set(1, 1)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.connect(broker.host, broker.port, keepalive=10)
        client.loop_start()
        self.client = client
        if not self._subscribed.wait(10):
            raise RuntimeError(f"subscriber for {topic} did not get a SUBACK")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.granted = [rc.value for rc in reason_codes]
        self._subscribed.set()

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Received]:
        """Wait until at least `count` messages arrived; returns all of them (fails on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"got {len(self.messages)} of {count} messages on {self.topic} within {timeout} s"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_broker(tmp_path: Path):
    """A started Broker in tmp_path/broker; stopped (with its subscribers) after the test."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    broker = Broker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.close()
