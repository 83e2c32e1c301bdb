"""Home Assistant's setup: its certificate from the fleet CA, and the broker ACL with discovery on or off."""

from __future__ import annotations

from pathlib import Path


def test_the_ha_certificate_is_issued_by_the_fleet_ca_for_the_configured_user(
    tmp_path: Path, edgefleet_home, capsys
) -> None:
    from cryptography import x509
    from support.cli import run_cli

    cfg = tmp_path / "fleet.toml"
    cfg.write_text(f'format_version = 1\ndata_dir = "{tmp_path / "data"}"\n[homeassistant]\nuser = "fleet-ha-2"\n')
    result = run_cli(capsys, "fleet", "homeassistant", "cert", "--config", cfg, "--out", tmp_path / "ha")
    assert result.code == 0 and "CN fleet-ha-2" in result.out, result.text
    cert = x509.load_pem_x509_certificate((tmp_path / "ha" / "ha.pem").read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate((tmp_path / "data" / "ca" / "ca.crt").read_bytes()))
    assert cert.subject.rfc4514_string() == "CN=fleet-ha-2"
    assert (tmp_path / "ha" / "ha.key").stat().st_mode & 0o077 == 0


def test_the_acl_gives_ha_only_the_discovery_state_and_status_topics(tmp_path: Path) -> None:
    from edgefleet.fleet.config import HomeAssistantConfig
    from edgefleet.fleet.devices import acl_text

    off = acl_text(["cam-1"])
    assert acl_text(["cam-1"], homeassistant=HomeAssistantConfig()) == off  # discovery off: the ACL is unchanged
    on = acl_text(["cam-1"], homeassistant=HomeAssistantConfig(enabled=True))
    lines = [[line for line in b.splitlines() if not line.startswith("#")] for b in on.split("\n\n")]
    blocks = {b[0]: b[1:] for b in lines if b and b[0].startswith("user ")}
    assert blocks["user fleet-homeassistant"] == [
        "topic read homeassistant/#",
        "topic read edgefleet/ha/#",
        "topic read edgefleet/v1/+/status",
        "topic write homeassistant/status",
    ]
    assert {"topic write homeassistant/#", "topic write edgefleet/ha/#"} <= set(blocks["user fleet"])
    assert blocks["user cam-1"] == [line for line in off.split("user cam-1\n")[1].splitlines() if line]


class RecordingClient:
    """Stands in for paho's client: records publishes (what the fleet would send the broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def publish(self, topic: str, payload, qos: int, retain: bool) -> None:
        self.sent.append((topic, len(payload)))


def test_a_snapshot_over_the_brokers_packet_limit_is_not_published_recording_client(fleet) -> None:
    from edgefleet.fleet import devices
    from edgefleet.fleet.alert_tables import AlertEvent
    from edgefleet.fleet.config import HomeAssistantConfig
    from edgefleet.fleet.homeassistant import HomeAssistant
    from edgefleet.fleet.local_broker import MAX_PACKET_BYTES

    devices.register_device(fleet, "cam-1", "x86_64")
    client = RecordingClient()
    ha = HomeAssistant(fleet, client, HomeAssistantConfig(enabled=True))
    for n, size in enumerate((MAX_PACKET_BYTES, 200_000)):
        key = f"alert-snapshots/cam-1/{n}.jpg"
        fleet.store.path(key).parent.mkdir(parents=True, exist_ok=True)
        fleet.store.path(key).write_bytes(b"\xff\xd8\xff" + bytes(size - 3))
        with fleet.writer() as s, s.begin():
            s.add(
                AlertEvent(
                    device_id="cam-1",
                    received_at=n,
                    label="x",
                    score=1,
                    consecutive=1,
                    source="s",
                    frame="f",
                    boxes=[],
                    snapshot_key=key,
                )
            )
        ha._last_snapshot("cam-1")
    assert client.sent == [("edgefleet/ha/cam-1/snapshot", 200_000)]  # the first was too large for MQTT
