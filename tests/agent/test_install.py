"""`edgefleet agent install`: dry run, identity and CSR, a hand-given certificate, then a real run with what it wrote."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import tomllib

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import NameOID

from agent_support import drop_frame, jpeg
from edgefleet.agent.cli import agent as agent_group
from edgefleet.agent.config import load_config, parse_config
from edgefleet.agent.run import Agent, RunOptions


def install_args(tmp_path, broker, *extra: str) -> list[str]:
    return ["install", "--config", str(tmp_path / "etc/agent.toml"), "--state-dir", str(tmp_path / "state"), "--device-id", "cam-7",
            "--mqtt-host", broker.host, "--mqtt-port", str(broker.port), "--ca", str(broker.pki.ca_file), "--label", "bright",
            "--user", "nobody", "--unit-path", str(tmp_path / "unit/edgefleet-agent.service"), *extra]


def test_dry_run_prints_the_unit_and_config_and_writes_nothing(tmp_path, mqtt_broker):
    result = CliRunner().invoke(agent_group, install_args(tmp_path, mqtt_broker, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "User=nobody" in result.output and "agent run --config" in result.output and "ReadWritePaths=" in result.output
    assert 'device_id = "cam-7"' in result.output and "would create" in result.output
    assert not (tmp_path / "state").exists() and not (tmp_path / "etc").exists() and not (tmp_path / "unit").exists()


def test_root_is_refused_with_error_and_fix(tmp_path, mqtt_broker):
    args = install_args(tmp_path, mqtt_broker)
    args[args.index("nobody")] = "root"
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "agent", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "error: the agent must not run as root" in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.mqtt
def test_install_enroll_by_hand_and_run(tmp_path, mqtt_broker, agent_package):
    package, trust = agent_package
    runner = CliRunner()
    result = runner.invoke(agent_group, install_args(tmp_path, mqtt_broker, "--package", str(package), "--trust", str(trust)))
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
    again = runner.invoke(agent_group, install_args(tmp_path, mqtt_broker, "--package", str(package), "--trust", str(trust), "--cert", str(cert), "--force"))
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
    proc = subprocess.run([sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(tmp_path / "etc/agent.toml")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "error: device certificate" in proc.stderr and "device.csr" in proc.stderr and "Traceback" not in proc.stderr
