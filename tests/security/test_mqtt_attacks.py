"""Attacks on the broker with a camera's own certificate (and without one), against real mosquitto
running the fleet's configuration (fleet/local_broker.py) and the ACL the fleet writes.

Each row is one attack; a control row per table shows the probe can see a success."""

from __future__ import annotations

import datetime as dt
import ssl
import time

import pytest
from attack_support import Client, nonce, production_broker
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from support.broker import TestPKI

pytestmark = pytest.mark.mqtt


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = production_broker(tmp_path_factory.mktemp("broker"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def watcher(broker):
    """A fleet-side observer that reads every topic."""
    w = Client(broker, "fleet-observer-63").start(broker)
    w.subscribe("#")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def cam1(broker):
    c = Client(broker, "cam-1").start(broker)
    c.subscribe("edgefleet/v1/cam-1/jobs/notify")  # what an agent subscribes to
    yield c
    c.stop()


# ---- publish: (row id, topic cam-1 publishes to, does the fleet side receive it) ----------------
PUBLISH = [
    ("other-camera-alerts", "edgefleet/v1/cam-2/alerts", False),
    ("other-camera-telemetry", "edgefleet/v1/cam-2/telemetry", False),
    ("other-camera-status", "edgefleet/v1/cam-2/status", False),
    ("other-camera-job-update", "edgefleet/v1/cam-2/jobs/j1/update", False),
    ("job-to-itself", "edgefleet/v1/cam-1/jobs/notify", False),
    ("job-to-other-camera", "edgefleet/v1/cam-2/jobs/notify", False),
    ("fleet-namespace", "edgefleet/v1/fleet/status", False),
    ("drift-alarm-forgery", "edgefleet/v1/cam-1/drift", False),
    ("other-protocol-version", "edgefleet/v2/cam-1/alerts", False),
    ("below-own-alerts", "edgefleet/v1/cam-1/alerts/extra", False),
    ("outside-namespace", "cam-1/alerts", False),
    ("control-own-alerts", "edgefleet/v1/cam-1/alerts", True),
    ("control-own-job-update", "edgefleet/v1/cam-1/jobs/j1/update", True),
]


@pytest.mark.parametrize("topic, delivered", [r[1:] for r in PUBLISH], ids=[r[0] for r in PUBLISH])
def test_camera_publishes_only_its_own_uplink_topics(broker, watcher, cam1, topic, delivered):
    probe, fence = nonce(), nonce()
    cam1.publish(topic, probe)
    cam1.publish("edgefleet/v1/cam-1/status", fence)  # allowed; arrives after the probe would have
    watcher.wait_for_payload(fence)
    assert (probe in watcher.payloads()) is delivered


# ---- subscribe: (row id, filter cam-1 subscribes to, topic the fleet side then publishes to, received)
SUBSCRIBE = [
    ("other-camera-jobs", "edgefleet/v1/cam-2/jobs/notify", "edgefleet/v1/cam-2/jobs/notify", False),
    ("all-cameras-jobs", "edgefleet/v1/+/jobs/notify", "edgefleet/v1/cam-2/jobs/notify", False),
    ("whole-namespace", "edgefleet/v1/#", "edgefleet/v1/cam-2/alerts", False),
    ("everything", "#", "edgefleet/v1/cam-2/telemetry", False),
    ("other-camera-subtree", "edgefleet/v1/cam-2/#", "edgefleet/v1/cam-2/status", False),
    ("alerts-of-all", "+/+/+/alerts", "edgefleet/v1/cam-3/alerts", False),
    ("shared-subscription-steal", "$share/g/edgefleet/v1/cam-2/jobs/notify", "edgefleet/v1/cam-2/jobs/notify", False),
    ("control-own-jobs", "edgefleet/v1/cam-3/jobs/notify", "edgefleet/v1/cam-3/jobs/notify", True),
]


@pytest.mark.parametrize("filter_, topic, received", [r[1:] for r in SUBSCRIBE], ids=[r[0] for r in SUBSCRIBE])
def test_camera_reads_only_its_own_jobs(broker, watcher, filter_, topic, received):
    snoop = Client(broker, "cam-3").start(broker)  # cam-3: no other row uses it as a subscriber
    try:
        snoop.subscribe("edgefleet/v1/cam-3/jobs/notify")
        snoop.subscribe(filter_)
        probe, fence = nonce(), nonce()
        watcher.publish(topic, probe)
        watcher.publish("edgefleet/v1/cam-3/jobs/notify", fence)
        snoop.wait_for_payload(fence)
        assert (probe in snoop.payloads()) is received
    finally:
        snoop.stop()
        snoop.client.unsubscribe(filter_)


def _expired_cert(pki: TestPKI, cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = pki._sign(cn, key.public_key(), server=False)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    expired = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past)
        .not_valid_after(past + dt.timedelta(days=1))
        .sign(pki.ca_key, hashes.SHA256())
    )
    return _write(pki.root, f"expired-{cn}", expired, key)


def _write(root, stem, cert, key):
    from cryptography.hazmat.primitives import serialization

    (root / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (root / f"{stem}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return root / f"{stem}.pem", root / f"{stem}.key"


def _no_client_cert(broker):
    """TLS 1.3 reports a missing client certificate after the handshake: the connection must not come up."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv311)
    c.tls_set_context(ssl.create_default_context(cafile=str(broker.pki.ca_file)))
    up = []
    c.on_connect = lambda *a: up.append(a)
    try:
        c.connect(broker.host, broker.port)
        c.loop_start()
        time.sleep(1.0)
    except (ssl.SSLError, OSError):
        pass
    finally:
        c.loop_stop()
    assert not up and not c.is_connected()


TLS = ["no-client-certificate", "certificate-from-another-ca-claiming-fleet", "expired-certificate-from-the-fleet-ca"]


@pytest.mark.parametrize("case", TLS)
def test_a_client_without_a_valid_fleet_certificate_is_refused(broker, tmp_path, case):
    if case == "no-client-certificate":
        return _no_client_cert(broker)
    if case == "certificate-from-another-ca-claiming-fleet":
        cert = TestPKI(tmp_path / "rogue").issue("fleet")
    else:
        cert = _expired_cert(broker.pki, "cam-1")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        Client(broker, "x", cert=cert).start(broker, timeout=3)


def test_a_camera_claiming_the_fleets_username_keeps_its_own_identity(broker, watcher):
    """TLS identity: the certificate CN is the user; a username in CONNECT is ignored."""
    liar = Client(broker, "cam-3")
    liar.client.username_pw_set("fleet", "anything")
    liar.start(broker)
    try:
        liar.subscribe("edgefleet/v1/cam-2/jobs/notify")
        probe = nonce()
        liar.subscribe("edgefleet/v1/cam-3/jobs/notify")
        watcher.publish("edgefleet/v1/cam-2/jobs/notify", probe)
        fence = nonce()
        watcher.publish("edgefleet/v1/cam-3/jobs/notify", fence)
        liar.wait_for_payload(fence)
        assert probe not in liar.payloads()
    finally:
        liar.stop()


@pytest.mark.parametrize(
    "size, delivered", [(300 * 1024, False), (200 * 1024, True)], ids=["over-max-packet-size", "control-under-limit"]
)
def test_broker_refuses_oversize_messages(broker, watcher, cam1, size, delivered):
    """max_packet_size (256 KiB): the broker drops the sender instead of storing the message."""
    sender = Client(broker, "cam-2").start(broker)
    try:
        big = nonce() + b"x" * size
        sender.client.publish("edgefleet/v1/cam-2/alerts", big, qos=1)
        assert _dropped(sender) is not delivered
        fence = nonce()
        cam1.publish("edgefleet/v1/cam-1/status", fence)
        watcher.wait_for_payload(fence)
        if delivered:
            watcher.wait_for_payload(big)
        assert (big in watcher.payloads()) is delivered
    finally:
        sender.stop()


def _dropped(client: Client, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while client.disconnects == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    return client.disconnects > 0
