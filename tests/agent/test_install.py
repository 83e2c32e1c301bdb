"""`edgefleet agent install`: dry run, identity and CSR, a hand-given certificate, then a real run with what it wrote."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading

import pytest
import tomllib
from agent_support import drop_frame, jpeg
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from edgefleet.agent.cli import agent as agent_group
from edgefleet.agent.config import load_config, parse_config
from edgefleet.agent.run import Agent, RunOptions


def install_args(tmp_path, broker, *extra: str) -> list[str]:
    return [
        "install",
        "--config",
        str(tmp_path / "etc/agent.toml"),
        "--state-dir",
        str(tmp_path / "state"),
        "--device-id",
        "cam-7",
        "--mqtt-host",
        broker.host,
        "--mqtt-port",
        str(broker.port),
        "--ca",
        str(broker.pki.ca_file),
        "--label",
        "bright",
        "--user",
        "nobody",
        "--unit-path",
        str(tmp_path / "unit/edgefleet-agent.service"),
        *extra,
    ]


def test_dry_run_prints_the_unit_and_config_and_writes_nothing(tmp_path, mqtt_broker):
    result = CliRunner().invoke(agent_group, install_args(tmp_path, mqtt_broker, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert (
        "User=nobody" in result.output
        and "agent launch --config" in result.output
        and "ReadWritePaths=" in result.output
    )
    assert 'device_id = "cam-7"' in result.output and "would create" in result.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "etc").exists() and not (tmp_path / "unit").exists()


def test_root_is_refused_with_error_and_fix(tmp_path, mqtt_broker):
    args = install_args(tmp_path, mqtt_broker)
    args[args.index("nobody")] = "root"
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "agent", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert (
        "error: the agent must not run as root" in proc.stderr
        and "fix:" in proc.stderr
        and "Traceback" not in proc.stderr
    )


@pytest.mark.mqtt
def test_install_enroll_by_hand_and_run(tmp_path, mqtt_broker, agent_package):
    package, trust = agent_package
    runner = CliRunner()
    result = runner.invoke(
        agent_group, install_args(tmp_path, mqtt_broker, "--package", str(package), "--trust", str(trust))
    )
    assert result.exit_code == 0, result.output
    state = tmp_path / "state"
    key = state / "identity/device.key"
    key_pem = key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr((state / "identity/device.csr").read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-7" and csr.is_signature_valid
    assert not (state / "identity/device.pem").exists() and "have the fleet CA sign" in result.output
    cfg = load_config(tmp_path / "etc/agent.toml")
    assert cfg.mqtt.device_id == "cam-7" and cfg.model.trusted_keys == [state / "trusted" / trust.name]
    assert (tmp_path / "unit/edgefleet-agent.service").read_text().count("User=nobody") == 1

    # The fleet CA signs the CSR; given by hand, the certificate must match the device key.
    wrong, _ = mqtt_broker.pki.issue("cam-7")
    refused = runner.invoke(agent_group, install_args(tmp_path, mqtt_broker, "--cert", str(wrong), "--force"))
    assert refused.exit_code != 0 and "does not belong to this device's private key" in str(refused.exception)
    cert = tmp_path / "cam-7.pem"
    cert.write_bytes(mqtt_broker.pki.sign_csr((state / "identity/device.csr").read_bytes()))
    again = runner.invoke(
        agent_group,
        install_args(
            tmp_path, mqtt_broker, "--package", str(package), "--trust", str(trust), "--cert", str(cert), "--force"
        ),
    )
    assert again.exit_code == 0, again.output
    assert key.read_bytes() == key_pem and "kept the existing device key" in again.output

    raw = tomllib.loads((tmp_path / "etc/agent.toml").read_text())
    raw["health"] = {"enabled": False}
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-7/alerts")
    agent = Agent(parse_config(raw), RunOptions(drain_s=3))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        drop_frame(state / "incoming", "a.jpg", jpeg(250))
        assert alerts.wait_for(1)[0].json()["device"] == "cam-7"
    finally:
        agent.request_stop()
        thread.join(15)


def test_run_without_a_device_certificate_says_how_to_enroll(tmp_path, mqtt_broker):
    result = CliRunner().invoke(agent_group, install_args(tmp_path, mqtt_broker))
    assert result.exit_code == 0, result.output
    proc = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(tmp_path / "etc/agent.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "error: device certificate" in proc.stderr and "device.csr" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.mqtt
def test_install_enrolls_at_a_real_fleet_with_a_one_time_token(tmp_path, mqtt_broker, agent_package, edgefleet_home):
    """`edgefleet fleet serve` (its CA is the broker's CA) signs the CSR; the agent then alerts through the broker."""
    import os
    import socket
    import time
    import urllib.request

    from cryptography.hazmat.primitives import serialization

    package, trust = agent_package
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "fleet"
    (data / "ca").mkdir(parents=True)
    (data / "ca/ca.key").write_bytes(
        mqtt_broker.pki.ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (data / "ca/ca.crt").write_bytes(mqtt_broker.pki.ca_cert.public_bytes(serialization.Encoding.PEM))
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'format_version = 1\ndata_dir = "{data}"\nlisten_port = {port}\npublic_url = "{url}"\nsigning_key = "{str(trust)[:-4]}"\n'
        f'[broker]\nhost = "127.0.0.1"\nport = {mqtt_broker.port}\nca_file = "{mqtt_broker.pki.ca_file}"\ncert_file = "{mqtt_broker.fleet_cert}"\nkey_file = "{mqtt_broker.fleet_key}"\n'
    )
    cli = [sys.executable, "-m", "edgefleet.cli"]
    env = dict(os.environ)
    admin = subprocess.run(
        cli + ["fleet", "tokens", "create", "--config", str(config), "--name", "admin", "--scope", "admin"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    fleet_log = tmp_path / "fleet.log"
    fleet = subprocess.Popen(
        cli + ["fleet", "serve", "--config", str(config)],
        env=env,
        stdout=open(fleet_log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline and fleet.poll() is None, (
                    f"the fleet did not start: {fleet_log.read_text()[-2000:]}"
                )
                time.sleep(0.2)
        request = urllib.request.Request(
            url + "/api/v1/enrollment-tokens",
            method="POST",
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
            data=json.dumps({"device_id": "cam-9", "target": "x86_64"}).encode(),
        )
        token_file = tmp_path / "token"
        token_file.write_text(json.loads(urllib.request.urlopen(request, timeout=10).read())["token"])
        args = [
            "install",
            "--config",
            str(tmp_path / "agent.toml"),
            "--state-dir",
            str(tmp_path / "state"),
            "--device-id",
            "cam-9",
            "--label",
            "bright",
            "--fleet-url",
            url,
            "--enroll-token-file",
            str(token_file),
            "--package",
            str(package),
            "--user",
            "nobody",
            "--unit-path",
            str(tmp_path / "unit"),
        ]
        result = CliRunner().invoke(agent_group, args)
        assert result.exit_code == 0, (result.output, result.exception, fleet_log.read_text()[-2000:])
        again = CliRunner().invoke(agent_group, [*args, "--force"])
        assert "already used" in str(again.exception), "the token is one-time"
    finally:
        fleet.terminate()
        fleet.wait(20)
    cfg = load_config(tmp_path / "agent.toml")
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("127.0.0.1", mqtt_broker.port) and len(cfg.model.trusted_keys) >= 1
    raw = tomllib.loads((tmp_path / "agent.toml").read_text())
    raw["health"] = {"enabled": False}
    alerts = mqtt_broker.subscriber("edgefleet/v1/cam-9/alerts")
    agent = Agent(parse_config(raw), RunOptions(drain_s=3))
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        drop_frame(tmp_path / "state/incoming", "a.jpg", jpeg(250))
        assert alerts.wait_for(1)[0].json()["device"] == "cam-9"
    finally:
        agent.request_stop()
        thread.join(15)
