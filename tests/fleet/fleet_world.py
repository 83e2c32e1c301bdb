"""Real processes for fleet tests: mosquitto (the fleet's own TLS configuration), a fleet
database with cameras enrolled, `edgefleet fleet serve` replicas started and SIGKILLed on demand,
and camera MQTT clients with their own certificates (tests/fleet/test_fleet_ingest.py,
test_fleet_message_order.py, test_fleet_replica_loss.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select
from support.broker import Broker
from tests_fleet_util import wait_http

from edgefleet.fleet import auth, devices
from edgefleet.fleet.config import FleetConfig
from edgefleet.fleet.core import open_fleet
from edgefleet.fleet.db import Telemetry
from edgefleet.net import free_port

CAMERAS = ["cam-1", "cam-2", "cam-3"]


class World:
    """A broker, a fleet database with CAMERAS enrolled, and `fleet serve` replicas on demand."""

    def __init__(
        self, root: Path, database_url: str | None, home: Path, *, dynsec: bool = False, peers: bool = False
    ) -> None:
        """peers: replicas get every replica's certificate (`peer_identities_dir`, fleet/adoption.py)."""
        self.root, self.peers = root, peers
        self.broker = Broker(root / "broker", dynsec=dynsec)
        self.broker.start()
        self.pid_file = root / "broker" / "mosquitto.pid"
        self.pid_file.write_text(str(self.broker.process.pid))  # the fleet sends SIGHUP after writing the ACL
        self.database_url, self.home = database_url, home
        self.library = open_fleet(self.config("fleet"))
        for cam in CAMERAS:
            devices.register_device(self.library, cam, "x86_64")
        self.token = auth.create_token(self.library, "reader", "read-only")
        self.replicas: dict[str, tuple[subprocess.Popen, str]] = {}

    def config(self, replica: str, port: int = 0) -> FleetConfig:
        cert, key = (
            (self.broker.fleet_cert, self.broker.fleet_key) if replica == "fleet" else self.broker.pki.issue(replica)
        )
        return FleetConfig.model_validate(
            {
                "data_dir": self.root / "fleet-data",
                "database_url": self.database_url,
                "listen_port": port or free_port(),
                "replica_id": replica,
                "broker": {
                    "host": self.broker.host,
                    "port": self.broker.port,
                    "ca_file": self.broker.pki.ca_file,
                    "cert_file": cert,
                    "key_file": key,
                    **({"peer_identities_dir": self.broker.pki.root} if self.peers else {}),
                    **(
                        {"acl_file": self.broker.acl_file, "mosquitto_pid_file": self.pid_file}
                        if self.broker.acl_file
                        else {"authorization": "dynsec"}
                    ),
                },
            }
        )

    def start(self, replica: str) -> None:
        cfg = self.config(replica)
        path = self.root / f"{replica}.toml"
        path.write_text(toml(cfg.model_dump(mode="json", exclude_none=True)))
        log = open(self.root / f"{replica}.log", "ab")
        env = dict(os.environ, EDGEFLEET_HOME=str(self.home))
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.cli", "fleet", "serve", "--config", str(path)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{cfg.listen_port}"
        wait_http(f"{url}/healthz")
        self.replicas[replica] = (process, url)

    def kill(self, replica: str) -> None:
        process, _ = self.replicas.pop(replica)
        process.kill()
        process.wait(timeout=10)

    def stop(self, replica: str) -> None:
        process, _ = self.replicas.pop(replica)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    def metrics(self, replica: str) -> dict[str, int]:
        _, url = self.replicas[replica]
        answer = httpx.get(f"{url}/api/v1/metrics", headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
        return answer.json()["mqtt"]

    def wait_received(self, n: int, timeout: float = 60.0) -> None:
        """Until the running replicas together have committed `n` messages."""
        deadline = time.monotonic() + timeout
        while (got := sum(self.metrics(r).get("received", 0) for r in self.replicas)) < n:
            assert time.monotonic() < deadline, f"{got} of {n} messages ingested after {timeout} s"
            time.sleep(0.2)

    def stored(self) -> list[str]:
        with self.library.session() as s:
            return list(s.scalars(select(Telemetry.message_id)))

    def wait_stored(self, n: int, timeout: float = 120.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(rows := self.stored()) < n:
            assert time.monotonic() < deadline, f"{len(rows)} of {n} messages stored after {timeout} s"
            time.sleep(0.2)
        return rows

    def close(self) -> None:
        for replica in list(self.replicas):
            self.kill(replica)
        self.broker.stop()


def toml(doc: dict, section: str = "") -> str:
    """The fleet config as TOML (strings, numbers and one level of tables are all it holds)."""
    plain = "".join(f"{k} = {json.dumps(v)}\n" for k, v in doc.items() if not isinstance(v, dict))
    tables = "".join(toml(v, k) for k, v in doc.items() if isinstance(v, dict))
    return (f"[{section}]\n" if section else "") + plain + tables


class Camera:
    """A camera's MQTT client (its own certificate): publishes QoS 1 and records what the broker acknowledged."""

    def __init__(self, broker: Broker, device: str) -> None:
        self.device = device
        cert, key = broker.pki.issue(device)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
        self.client.tls_set_context(broker.ssl_context(cert, key))
        self.client.max_inflight_messages_set(50)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.accepted: list[str] = []

    def telemetry(self, n: int, pause_s: float = 0.0) -> None:
        for _ in range(n):
            mid = uuid.uuid4().hex
            body = {"schema": 1, "id": mid, "frames": {"ok": 10}, "alerts": {"person": 1}}
            self.client.publish(f"edgefleet/v1/{self.device}/telemetry", json.dumps(body), qos=1).wait_for_publish(10)
            self.accepted.append(mid)  # PUBACK received: the broker has it
            time.sleep(pause_s)

    def publish(self, suffix: str, body: dict) -> None:
        """One QoS 1 message on this camera's `suffix` topic, returned once the broker has it."""
        self.client.publish(f"edgefleet/v1/{self.device}/{suffix}", json.dumps(body), qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def send_in_background(cameras: list[Camera], n: int, pause_s: float) -> list[threading.Thread]:
    threads = [threading.Thread(target=c.telemetry, args=(n, pause_s)) for c in cameras]
    for t in threads:
        t.start()
    return threads


def accepted(cameras: list[Camera]) -> list[str]:
    return [m for c in cameras for m in c.accepted]


class AckedCamera:
    """A device's MQTT v5 connection under its certificate; records each PUBACK reason code."""

    def __init__(self, broker: Broker, device_id: str) -> None:
        cert, key = broker.pki.issue(device_id)
        self.acks: dict[int, int] = {}
        self.disconnected = threading.Event()
        self._acked = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
        self.client.tls_set_context(broker.ssl_context(cert, key))
        self.client.on_publish = self._on_publish
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert connected.wait(10), f"{device_id} did not connect"

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:
            self.acks[mid] = reason_code.value
            self._acked.notify_all()

    def publish(self, topic: str) -> int:
        """QoS 1 publish; returns the broker's PUBACK reason code (0 accepted, 135 not authorised)."""
        mid = self.client.publish(topic, b"{}", qos=1).mid
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.acks, 10), f"no PUBACK for {topic}"
            return self.acks[mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def csr(device_id: str) -> str:
    """A camera's certificate request (CN = its id), as `edgefleet agent install` makes one."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return request.public_bytes(serialization.Encoding.PEM).decode()
