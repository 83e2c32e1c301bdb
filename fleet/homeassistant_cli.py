"""`edgefleet fleet homeassistant cert`: Home Assistant's MQTT identity, issued by the fleet CA."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("homeassistant")
def homeassistant() -> None:
    """Home Assistant MQTT discovery of the cameras (docs/fleet.md, "Home Assistant")."""


@homeassistant.command("cert")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Fleet config (TOML).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder for ha.key, ha.pem and ca.pem.",
)
def homeassistant_cert(config_path: Path | None, out: Path) -> None:
    """Issue the key and certificate Home Assistant connects to the broker with.

    Its CN is [homeassistant] user, which the generated broker ACL lets read only the discovery,
    state and camera status topics. Give HA's MQTT integration the three files.

    \b
    Examples:
      edgefleet fleet homeassistant cert --config /etc/edgefleet/fleet.toml --out ./ha-mqtt
    """
    from edgefleet.fleet.ca import write_private
    from edgefleet.fleet.config import load_config
    from edgefleet.fleet.core import open_fleet
    from edgefleet.fleet.devices import ca

    fleet = open_fleet(load_config(config_path))
    authority = ca(fleet)
    key, cert = authority.issue_key_and_cert(fleet.config.homeassistant.user)
    out.mkdir(parents=True, exist_ok=True)
    write_private(out / "ha.key", key)
    (out / "ha.pem").write_bytes(cert)
    (out / "ca.pem").write_text(authority.cert_pem)
    click.echo(f"wrote {out}/ha.key, ha.pem (CN {fleet.config.homeassistant.user}) and ca.pem")
